"""Watch a training run: a report per epoch, the history of every metric, and trend verdicts.

A ten-class ArcFace model (m = 0.3, s = 16) is trained on the digits (pixel noise 0.2). A
``TrainingMonitor`` (embscope.integrations.monitor) is three lines in the loop: after each epoch
the validation set goes through ``monitor.update(x, y)`` batch by batch (the model runs as
``diagnose_model`` runs it), 300 training samples too (``split="train"``, for the
train/validation gap), and ``monitor.epoch_end()`` computes the reports, appends them to the
history and writes them. The script then prints the history's trend verdicts: margins rising,
gray zone and confident errors falling, KS and Fisher above their thresholds, the
train/validation gap, oscillation of macro-F1 and the best epoch.

Writes into ``--out`` (default ``monitor_out/``): ``epoch_NNN/`` and ``epoch_NNN_train/`` (the
report folders), ``history.csv`` (one row per epoch and split, every metric with its interval),
``history.html`` (the verdicts and the trend plots), ``trends.png`` (a few metrics against the
epoch), ``first_vs_last.md`` (``compare`` of the first epoch's report, A, with the last one's,
B) and ``last/`` (the last epoch's report.json, report.md and report.html).
``diagnose history monitor_out`` judges the same folder from the command line.

Run: ``python examples/training_monitor.py [--epochs 15] [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from embscope.demo import DigitsNet, digits_multiclass, train  # noqa: E402
from embscope.diagnostics import compare  # noqa: E402
from embscope.integrations.monitor import TrainingMonitor  # noqa: E402
from embscope.losses import ArcFaceHead  # noqa: E402

PLOTTED = ("macro_f1", "margin_median", "gray_zone_fraction", "confident_error_count")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="2 epochs (for CI smoke tests)")
    parser.add_argument("--out", type=Path, default=Path("monitor_out"))
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs
    torch.set_num_threads(1)  # tiny models: threads cost more than they save

    split = digits_multiclass(seed=0, noise=0.2)
    torch.manual_seed(0)
    model = DigitsNet(ArcFaceHead(16, 10, m=0.3, s=16))
    monitor = TrainingMonitor(model, args.out)

    def on_epoch(epoch: int, model) -> None:
        for start in range(0, len(split.y_val), 128):  # as a validation loop over a DataLoader
            monitor.update(split.x_val[start : start + 128], split.y_val[start : start + 128])
        monitor.update(split.x_train[:300], split.y_train[:300], split="train")
        report = monitor.epoch_end(epoch)
        m = report.metrics
        print(
            f"epoch {epoch:2d}: macro-F1 {m['macro_f1']:.3f}, margin median "
            f"{m['margin_median']:.2f}, gray zone {m['gray_zone_fraction']:.1%}, "
            f"confident errors {m['confident_error_count']:g}"
        )

    train(model, split, epochs=epochs, seed=0, on_epoch=on_epoch)
    history = monitor.history

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(13, 3))
    for ax, name in zip(axes, PLOTTED, strict=True):
        s = history.series(name)
        ax.plot(s["epoch"], s["value"], marker="o", markersize=3)
        ax.fill_between(s["epoch"], s["low"], s["high"], alpha=0.2, lw=0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle("Validation diagnostics per epoch, with 95% intervals (ArcFace m=0.3, s=16)")
    fig.tight_layout()
    fig.savefig(args.out / "trends.png", dpi=90)

    first, last = monitor.reports["val"][0], monitor.reports["val"][-1]
    (args.out / "first_vs_last.md").write_text(
        f"# epoch 1 (A) vs epoch {epochs} (B)\n\n" + compare(first, last).to_markdown()
    )
    last.save(args.out / "last", force=True)

    print("\ntrends:")
    for trend in monitor.judge():
        print(f"  {trend}")
    print(f"files in {args.out}/ (history.html: the verdicts and the trend plots)")


if __name__ == "__main__":
    main()
