"""Focal loss vs plain BCE on a strongly imbalanced binary task, diagnosed side by side.

The task is odd vs even digits with the odd (positive) class thinned to a tenth (about 1
positive for 10 negatives) and pixel noise 0.35 (``digits_binary(positive_keep=0.1)``). Three
single-logit models on the same embedding MLP are trained:

- ``bce``: binary cross-entropy;
- ``focal_a25``: focal loss with the paper's alpha = 0.25, gamma = 2 (Lin et al., ICCV 2017);
- ``focal_a75``: focal loss with alpha = 0.75 (more weight on the rare positives), gamma = 2.

Writes into ``--out`` (default ``focal_out/``): ``<model>/report.json``, ``report.md`` and
``report.html`` for the three models, and ``comparison_<model>.md`` (BCE as A, each focal model
as B). Prints F1, score KS, the predicted vs true positive rate, the gray zone and the
recommendations of each model.

Run: ``python examples/focal_imbalanced.py [--epochs 30] [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from embscope.demo import DigitsNet, digits_binary, train
from embscope.diagnostics import compare, diagnose_model
from embscope.losses import BCEHead, FocalLoss


def focal(alpha: float, gamma: float = 2.0):
    criterion = FocalLoss(alpha=alpha, gamma=gamma, task="binary")

    def loss(model, x, y):
        _, logit = model(x)
        return criterion(logit, y.float())

    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="2 epochs (for CI smoke tests)")
    parser.add_argument("--out", type=Path, default=Path("focal_out"))
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs
    torch.set_num_threads(1)  # tiny models: threads cost more than they save

    split = digits_binary(seed=0, positive_keep=0.1, noise=0.35)
    n_pos, n = int(split.y_train.sum()), len(split.y_train)
    print(f"training set: {n_pos} positives of {n} ({n_pos / n:.1%})")
    losses = {"bce": None, "focal_a25": focal(0.25), "focal_a75": focal(0.75)}
    reports = {}
    for name, loss in losses.items():
        torch.manual_seed(0)
        model = DigitsNet(BCEHead(16))
        if loss is None:
            train(model, split, epochs=epochs, seed=0)  # BCE with logits
        else:
            train(model, split, epochs=epochs, seed=0, loss=loss)
        report = diagnose_model(model, (split.x_val, split.y_val), ids=split.ids_val)
        reports[name] = report
        report.save(args.out / name, force=True)  # this script's own folder
        if name != "bce":
            (args.out / f"comparison_{name}.md").write_text(
                f"# bce (A) vs {name} (B)\n\n" + compare(reports["bce"], report).to_markdown()
            )
        m = report.metrics
        print(
            f"\n{name}: f1 {m['f1']:.3f}, score KS {m['score_ks']:.3f}, predicted positive "
            f"{m['pred_positive_rate']:.1%} (labels {m['label_positive_rate']:.1%}), "
            f"gray zone {m['gray_zone_fraction']:.1%}, confident errors "
            f"{m['confident_error_count']:g}"
        )
        for rec in report.recommendations:
            print(f"  [{rec.severity}] {rec.action}: {rec.reason}")
    print(f"\nreports and comparisons in {args.out}/")


if __name__ == "__main__":
    main()
