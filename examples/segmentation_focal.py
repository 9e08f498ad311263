"""Cross-entropy vs focal loss on a segmentation task with rare classes, diagnosed per class.

The task is the digit-stroke segmentation of ``embscope.segdemo``: each 8x8 digit scan
upsampled to 16x16, stroke pixels labelled by their digit (classes 1-10) and the rest
background (0); the digits 5-9 keep a tenth of their scans, so their strokes are rare (the
imbalance ratio is a few hundred to one). A tiny fully-convolutional model is trained four
ways on the same data:

- ``ce``: cross-entropy;
- ``focal``: focal loss, gamma = 2 (the usual setting for about 100:1), no alpha;
- ``focal_alpha``: focal loss, gamma = 2, alpha = per-class weights 1 / sqrt(pixel fraction);
- ``ce_weighted``: cross-entropy with those class weights.

Each model is diagnosed on held-out images (``Diagnoser.update(features [B, 32, H, W],
masks [B, H, W], logits [B, 11, H, W])``). Writes into ``--out`` (default ``seg_focal_out/``):
``<model>/report.json``, ``report.md`` and ``report.html`` for the four models,
``per_class.md`` (each class's pixel share and F1 under every loss) and
``comparison_<model>.md`` (CE as A, each other model as B). Prints mIoU, mean F1, the rare
classes' F1 and the share of the cross-entropy from easy pixels.

Run: ``python examples/segmentation_focal.py [--epochs 30] [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from embscope.diagnostics import Diagnoser, compare
from embscope.losses import FocalLoss
from embscope.segdemo import (
    NUM_CLASSES,
    TinyFCN,
    class_frequencies,
    digit_strokes,
    pixel_criterion,
    train_fcn,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="2 epochs (for CI smoke tests)")
    parser.add_argument("--out", type=Path, default=Path("seg_focal_out"))
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs
    torch.set_num_threads(1)  # tiny models: threads cost more than they save

    split = digit_strokes(seed=0, rare_keep=0.1)
    freq = class_frequencies(split.y_train)
    weights = np.where(freq > 0, 1 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
    weights = (weights / (weights * freq).sum()).tolist()
    losses = {
        "ce": torch.nn.CrossEntropyLoss(),
        "focal": FocalLoss(alpha=None, gamma=2.0, task="multiclass"),
        "focal_alpha": FocalLoss(alpha=weights, gamma=2.0, task="multiclass"),
        "ce_weighted": torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32)),
    }
    rare = list(split.rare_classes)
    reports = {}
    for name, loss in losses.items():
        torch.manual_seed(0)
        model = train_fcn(
            TinyFCN(), split.x_train, split.y_train, pixel_criterion(loss), epochs=epochs
        )
        d = Diagnoser(reservoir_size=2000)
        with torch.no_grad():
            for start in range(0, len(split.y_test), 64):
                x = split.x_test[start : start + 64]
                d.update(model.features(x), split.y_test[start : start + 64], model(x))
        report = d.compute()
        reports[name] = report
        report.save(args.out / name, force=True)  # this script's own folder
        if name != "ce":
            (args.out / f"comparison_{name}.md").write_text(
                f"# ce (A) vs {name} (B)\n\n" + compare(reports["ce"], report).to_markdown()
            )
        m = report.metrics
        rare_f1 = np.nanmean([m[f"seg.class{k}.f1"] for k in rare])
        print(
            f"{name:12s} mIoU {m['miou']:.3f}  mean F1 {m['mean_f1']:.3f}  rare classes' F1 "
            f"{rare_f1:.3f}  easy-pixel share of the CE {m['seg.easy_loss_share']:.3f}"
        )
    lines = [
        "| class | pixel share | " + " | ".join(f"F1 {n}" for n in losses) + " |",
        "|---|---|" + "---|" * len(losses),
    ]
    first = reports["ce"].metrics
    for k in sorted(range(NUM_CLASSES), key=lambda c: -first[f"seg.class{c}.pixel_fraction"]):
        cells = [f"{reports[n].metrics[f'seg.class{k}.f1']:.3f}" for n in losses]
        tag = " (rare)" if k in rare else ""
        lines.append(
            f"| {k}{tag} | {first[f'seg.class{k}.pixel_fraction']:.4f} | "
            + " | ".join(cells)
            + " |"
        )
    (args.out / "per_class.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    print(f"\nreports, per_class.md and comparisons in {args.out}/")


if __name__ == "__main__":
    main()
