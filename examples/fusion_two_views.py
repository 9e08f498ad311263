"""FusionLoss presets on two views of each digit: does each view carry its weight, and does
fusion help?

Each 8x8 digit (pixel noise 0.3) is cut into two "modalities": its left four columns and its
right four columns. One small encoder per view gives a 16-d feature; a gate turns the two into
attention weights (softmax over the views, per sample) and the fused embedding is their
weighted sum, classified by a linear layer (``embscope.demo.TwoViewNet``). The model's forward returns its named embeddings
(``left``, ``right``, ``fused``), the ``attention`` weights and the ``logits``, so the
``diagnose`` command and `diagnose_model` write the views report for it too. The model is
trained once per FusionLoss preset (``embscope.losses.FUSION_PRESETS``):

- ``simple``: label-smoothed cross-entropy only;
- ``standard``: + InfoNCE consistency between the two views' features (weight 0.1);
- ``full``: + attention balance and diversity on the gate weights (0.05);
- ``advanced``: + center loss on the fused embedding (0.01).

Each preset's validation outputs go to `diagnose_views`: each view's own metrics, the fusion
gain (fused minus the best single view, with a paired interval), the agreement of the two
views and the health of the attention, with the views advice. The four presets are then ranked
by EER with `compare_many` (each judged against the best, paired on the same samples).

Writes into ``--out`` (default ``fusion_out/``): ``<preset>/report.json``, ``report.md`` and
``report.html`` for the four presets, and ``presets.md``: the views table (EER of each view
and of the fused embedding, the fusion gain and its interval, attention balance) and the
ranking.

Run: ``python examples/fusion_two_views.py [--epochs 30] [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from embscope.demo import TwoViewNet, digits_multiclass, fusion_loss, train
from embscope.diagnostics import compare_many, diagnose_views
from embscope.losses import FUSION_PRESETS, FusionLoss


def _cell(report, key: str) -> str:
    value = report.metrics.get(key, float("nan"))
    low, high = report.intervals.get(key, (float("nan"), float("nan")))
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="2 epochs (for CI smoke tests)")
    parser.add_argument("--out", type=Path, default=Path("fusion_out"))
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs
    torch.set_num_threads(1)  # tiny models: threads cost more than they save

    split = digits_multiclass(seed=0, noise=0.3)
    lines = [
        "| preset | EER fused | EER left | EER right | fusion gain (EER) | fusion is | "
        "attention on left | balance gap | advice |",
        "|---|---|---:|---:|---|---|---:|---:|---|",
    ]
    reports = {}
    for preset in FUSION_PRESETS:
        torch.manual_seed(0)
        model = TwoViewNet()
        criterion = FusionLoss(num_classes=10, feat_dim=16, mode=preset)

        # fusion_loss hands FusionLoss the logits, each view's features, the gate's weights and
        # the fused embedding; the center term's class centres are parameters of the loss
        params = list(model.parameters()) + list(criterion.parameters())
        train(model, split, epochs=epochs, seed=0, loss=fusion_loss(criterion), params=params)

        model.eval()
        with torch.no_grad():
            out = model(split.x_val)
        report = diagnose_views(
            {name: out[name] for name in ("left", "right", "fused")},
            split.y_val,
            logits=out["logits"],
            attention=out["attention"],
            ids=split.ids_val,
        )
        report.save(args.out / preset, force=True)  # this script's own folder
        reports[preset] = report
        m = report.metrics
        verdict = report.sections["views"]["fusion_gain"]["eer"]["verdict"]
        advice = ", ".join(r.action for r in report.recommendations) or "none"
        lines.append(
            f"| {preset} | {_cell(report, 'eer')} | {m['views.left.eer']:.3f} | "
            f"{m['views.right.eer']:.3f} | {_cell(report, 'fusion_gain.eer')} | {verdict} | "
            f"{m['attention.left.mean']:.2f} | {m['attention.balance_gap']:.2f} | {advice} |"
        )
        print(lines[-1])
    ranking = compare_many(
        list(reports.values()),
        list(reports),
        rank_by="eer",
        metrics=["eer", "tar_at_far_1e-2", "recall_at_1", "macro_f1"],
    )
    text = "\n".join(lines) + "\n\n" + ranking.to_markdown() + "\n"
    (args.out / "presets.md").write_text(text)
    print()
    print(ranking.to_markdown())
    print(f"\nreports and presets.md in {args.out}/")


if __name__ == "__main__":
    main()
