"""A binary classifier switched from BCE to ArcFace, end to end, on a gray-zone task from real data.

The story: a binary eye-state classifier trained with BCE got an ArcFace head to fix its gray
zone; validation then collapsed (``col0 mean=-4.060, col1 mean=0.443, probs mean=0.982``, F1
near 0) because the margin was applied at evaluation, and s was judged too large. Here the
same four models are trained on odd-vs-even digits (positives thinned to a third, pixel noise,
``embscope.demo.digits_binary``) and diagnosed on the validation set:

1. ``bce``: one logit with BCE (the baseline);
2. ``arcface_s8``: ArcFace m = 0.2, s = 8 (the switch);
3. ``arcface_leak_s16``: ArcFace m = 0.2, s = 16 whose forward applies the margin whenever labels
   are passed, validated with labels (the margin leaks into validation);
4. ``arcface_s64``: ArcFace m = 0.2, s = 64 (the face-recognition scale).

Writes into ``--out`` (default ``eye_state_out/``): ``<model>/report.json``, ``report.md`` and
``report.html`` for each of the four models, and ``comparison_<model>.md`` (BCE as A, each
ArcFace model as B). Prints each model's key numbers and what embscope recommends for it.

Run: ``python examples/eye_state_arcface.py [--epochs 20] [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from embscope.demo import DigitsNet, LeakyMarginNet, digits_binary, train
from embscope.diagnostics import compare, diagnose_model, recommend
from embscope.losses import ArcFaceHead, BCEHead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="2 epochs (for CI smoke tests)")
    parser.add_argument("--out", type=Path, default=Path("eye_state_out"))
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs
    torch.set_num_threads(1)  # tiny models: threads cost more than they save

    split = digits_binary(seed=0)
    torch.manual_seed(0)
    models = {
        "bce": DigitsNet(BCEHead(16)),
        "arcface_s8": DigitsNet(ArcFaceHead(16, 2, m=0.2, s=8)),
        "arcface_leak_s16": LeakyMarginNet(ArcFaceHead(16, 2, m=0.2, s=16)),
        "arcface_s64": DigitsNet(ArcFaceHead(16, 2, m=0.2, s=64)),
    }
    reports = {}
    for name, model in models.items():
        model.body.load_state_dict(models["bce"].body.state_dict())  # one initial body for all
        train(model, split, epochs=epochs, seed=0)
        # a validation loop that passes the labels to forward, as many do
        reports[name] = diagnose_model(
            model, (split.x_val, split.y_val), ids=split.ids_val, eval_with_labels=True
        )

    bce = reports["bce"]
    for name, report in reports.items():
        if name != "bce":
            # advice from this report alone, plus the measured verdict against the BCE baseline
            report = report.with_recommendations(recommend(report, baseline=bce))
            reports[name] = report
            comparison = compare(bce, report)
            (args.out).mkdir(parents=True, exist_ok=True)
            (args.out / f"comparison_{name}.md").write_text(
                f"# bce (A) vs {name} (B)\n\n" + comparison.to_markdown()
            )
        report.save(args.out / name, force=True)  # this script's own folder
        m = report.metrics
        print(
            f"\n{name}: f1 {m['f1']:.3f}, score KS {m['score_ks']:.3f}, "
            f"predicted positive {m['pred_positive_rate']:.1%} (labels {m['label_positive_rate']:.1%}), "
            f"mean P(positive) {m['prob_mean']:.3f}, gray zone {m['gray_zone_fraction']:.1%}"
        )
        for rec in report.recommendations:
            value = "" if rec.value is None else f" -> {rec.value:g}"
            print(f"  [{rec.severity}] {rec.action}{value}: {rec.reason}")
    print(f"\nreports and comparisons in {args.out}/")


if __name__ == "__main__":
    main()
