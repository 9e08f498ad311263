"""Do the trend rules of `History.judge` hold up on held-out data? Their track record.

Small models are trained on the digits (an MLP; two classes, and ten at pixel noise 0.2) with
four recipes each: a plain head (BCE / linear softmax, lr 3e-3), an ArcFace head (m 0.3,
s 16), the plain head at lr 3e-2 (a learning rate that makes the validation score swing) and
the plain head on 120 training samples with a wide hidden layer (it overfits: a gap, a best
epoch before the last). After every epoch the validation set is split in two fixed halves, A
and B, each diagnosed on its own, plus a report on 300 training samples. The rules are read
from A's history at epochs 4, 8 and 12 (the history up to then); every conclusive verdict
("holds" or "broken") is checked on B's history of the same epochs:

- slope rules: B's slope over the same epochs has the sign the verdict claims;
- threshold rules and the train/validation gap: B's value is on the claimed side;
- steady_task_metric broken: B's task metric changes direction at least ``reversals`` times
  among moves of at least the amplitude over the same epochs (holds: none);
- best_epoch broken ("keep epoch N"): B's task metric at A's best epoch beats B's at the last
  epoch (following the advice pays off on held-out data).

A rule's broken verdict is a warning when it was confirmed in at least 90% of at least 10
firings; otherwise information. The rules' parameters (0.05 amplitude, 0.1 gap, the advice's
thresholds) come from the usual practice, not from this grid.

Run: ``nice -n 10 python benchmarks/history_check.py [--seeds 0 1] [--epochs 12]
[--workers 2] [--write]``; --write updates diagnostics/history_track_record.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

RECIPES = ("plain", "arcface", "high_lr", "overfit", "lr_0.1", "noisy_labels")
DEFAULT_RECIPES = RECIPES[:4]
TASKS = ("binary", "tenclass")
CHECKPOINTS = (4, 8, 12)
OPTIONS = {"reservoir_size": 300, "pair_rows": 100, "retrieval_rows": 100}
RECORD_FILE = Path(__file__).resolve().parents[1] / "diagnostics" / "history_track_record.json"


def _run(job: tuple[str, str, int, int]) -> list[dict]:
    """Train one model, keep the A / B / train histories, judge A, check on B."""
    import torch
    from torch import nn

    from embscope.demo import DigitsNet, digits_binary, digits_multiclass, train
    from embscope.diagnostics import History, diagnose_model
    from embscope.losses import ArcFaceHead, BCEHead

    task, recipe, seed, epochs = job
    torch.set_num_threads(1)
    split = (
        digits_binary(seed=seed) if task == "binary" else digits_multiclass(seed=seed, noise=0.2)
    )
    classes = 2 if task == "binary" else 10
    torch.manual_seed(seed)
    if recipe == "arcface":
        head = ArcFaceHead(16, classes, m=0.3, s=16.0)
    else:
        head = BCEHead(16) if task == "binary" else nn.Linear(16, classes)
    hidden = 256 if recipe in ("overfit", "noisy_labels") else 64
    model = DigitsNet(head, hidden=hidden)
    batch_size = 64
    if recipe in ("overfit", "noisy_labels"):
        from dataclasses import replace

        split = replace(split, x_train=split.x_train[:120], y_train=split.y_train[:120])
    if recipe == "noisy_labels":  # a third of the training labels replaced, small batches
        g_noise = np.random.default_rng(2000 + seed)
        y = split.y_train.clone()
        flip = torch.as_tensor(g_noise.random(len(y)) < 1 / 3)
        y[flip] = torch.as_tensor(g_noise.integers(0, classes, int(flip.sum())))
        split = replace(split, y_train=y)
        batch_size = 8
    lr = {"high_lr": 3e-2, "lr_0.1": 1e-1}.get(recipe, 3e-3)
    g = np.random.default_rng(1000 + seed)
    order = g.permutation(len(split.y_val))
    halves = {"A": order[: len(order) // 2], "B": order[len(order) // 2 :]}
    histories = {"A": History(), "B": History()}
    n_train = min(300, len(split.y_train))

    def on_epoch(epoch: int, m) -> None:
        for name, idx in halves.items():
            report = diagnose_model(m, (split.x_val[idx], split.y_val[idx]), **OPTIONS)
            histories[name].append(report, epoch=epoch)
        train_report = diagnose_model(
            m, (split.x_train[:n_train], split.y_train[:n_train]), **OPTIONS
        )
        for history in histories.values():
            history.append(train_report, epoch=epoch, split="train")

    train(model, split, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, on_epoch=on_epoch)
    rows = []
    for upto in (c for c in CHECKPOINTS if c <= epochs):
        a, b = (_prefix(histories[k], upto) for k in ("A", "B"))
        for trend in a.judge():
            if trend.verdict == "inconclusive":
                continue
            confirmed = _confirmed(trend, a, b)
            if confirmed is None:
                continue
            rows.append(
                {
                    "task": task,
                    "recipe": recipe,
                    "seed": seed,
                    "epoch": upto,
                    "rule": trend.rule,
                    "verdict": trend.verdict,
                    "confirmed": bool(confirmed),
                }
            )
    return rows


def _prefix(history, upto: int):
    from embscope.diagnostics import History

    frame = history.to_frame()
    return History.from_frame(frame[frame["epoch"] <= upto])


def _confirmed(trend, a, b) -> bool | None:
    """Does B's history agree with A's verdict? None: nothing to check."""
    from embscope.diagnostics.history_rules import (
        DEFAULTS,
        SLOPE_RULES,
        THRESHOLD_RULES,
        _series,
        weighted_slope,
    )
    from embscope.diagnostics.registry import direction

    holds = trend.verdict == "holds"
    task = a.task_metric
    for rule, metric, better in SLOPE_RULES:
        if trend.rule == rule:
            s = _series(b, metric)
            epochs = _epochs_of(trend, metric)
            keep = np.isin(s["epoch"], np.arange(epochs[0], epochs[1] + 1))
            slope = weighted_slope(s["epoch"][keep], s["value"][keep], s["se"][keep])
            if slope is None:
                return None
            right = slope.slope > 0 if better == "higher" else slope.slope < 0
            return right if holds else not right
    for rule, metric, op, _key in THRESHOLD_RULES:
        if trend.rule == rule:
            s = _series(b, metric)
            value = s["value"][-1]
            threshold = trend.evidence[metric]["threshold"]
            beyond = value > threshold if op == ">" else value < threshold
            return beyond if holds else not beyond
    sign = 1.0 if direction(task) != "lower" else -1.0
    val = _series(b, task)
    if trend.rule == "train_val_gap":
        train = _series(b, task, split="train")
        gap = sign * (train["value"][-1] - val["value"][-1])
        return (gap < DEFAULTS["gap"]) if holds else (gap > DEFAULTS["gap"])
    if trend.rule == "steady_task_metric":
        epochs = trend.evidence[task]["epochs"]
        v = val["value"][np.isin(val["epoch"], epochs)]
        moves = [np.sign(d) for d in np.diff(v) if abs(d) >= DEFAULTS["amplitude"]]
        reversals = sum(1 for x, y in zip(moves, moves[1:], strict=False) if x != y)
        return reversals == 0 if holds else reversals >= DEFAULTS["reversals"]
    if trend.rule == "best_epoch":
        if holds:
            return None  # "the last epoch is as good as any": nothing to follow
        best = int(trend.value)
        at_best = val["value"][val["epoch"] == best][0]
        return bool(sign * (at_best - val["value"][-1]) > 0)
    return None


def _epochs_of(trend, metric: str) -> list[int]:
    """The epochs the verdict read: the recent window for a broken recent trend."""
    for key, e in trend.evidence.items():
        if key.startswith(f"{metric} slope, last") and trend.verdict == "broken":
            if "last" in trend.reason:
                return e["epochs"]
    return trend.evidence[f"{metric} slope"]["epochs"]


def _table(rows: list[dict]) -> dict:
    counts: dict = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in rows:
        c = counts[r["rule"]]
        for key in (r["verdict"], f"{r['verdict']}:{r['task']}"):
            c[key][0] += 1
            c[key][1] += int(r["confirmed"])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(DEFAULT_RECIPES))
    parser.add_argument("--write", action="store_true")
    parser.add_argument(
        "--accumulate",
        action="store_true",
        help="add these counts to the track record already written (another part of the grid)",
    )
    args = parser.parse_args()
    jobs = [(t, r, s, args.epochs) for t in TASKS for r in args.recipes for s in args.seeds]
    start = time.time()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = [row for result in pool.map(_run, jobs) for row in result]
    wall = time.time() - start
    counts = _table(rows)
    from embscope.diagnostics.history_rules import RULES

    print(f"{len(jobs)} runs, {wall:.0f} s wall\n")
    print(
        "| rule | holds: fired, confirmed | broken: fired, confirmed | broken, binary | "
        "broken, 10 classes | severity when broken |"
    )
    print("|---|---:|---:|---:|---:|---|")
    record = {}
    earlier = {}
    if args.accumulate:
        from embscope.diagnostics.track_records import read_rules

        earlier = read_rules(RECORD_FILE)
    for rule in RULES:
        c = counts.get(rule, {})
        h, b = c.get("holds", [0, 0]), c.get("broken", [0, 0])
        before = earlier.get(rule, {}).get("counts")
        if before:  # counts of the earlier part of the grid
            b = [b[0] + before["broken_fired"], b[1] + before["broken_confirmed"]]
            h = [
                h[0] + before["fired"] - before["broken_fired"],
                h[1] + before["confirmed"] - before["broken_confirmed"],
            ]
        warning = b[0] >= 10 and b[1] >= 0.9 * b[0]
        severity = "warning" if warning else "info"
        record[rule] = {
            "severity": severity,
            "counts": {
                "fired": h[0] + b[0],
                "confirmed": h[1] + b[1],
                "broken_fired": b[0],
                "broken_confirmed": b[1],
            },
        }

        def share(pair):
            return f"{pair[1]}/{pair[0]}" + (f" ({pair[1] / pair[0]:.0%})" if pair[0] else "")

        print(
            f"| {rule} | {share(h)} | {share(b)} | {share(c.get('broken:binary', [0, 0]))} | "
            f"{share(c.get('broken:tenclass', [0, 0]))} | {severity} |"
        )
    if args.write:
        data = json.loads(RECORD_FILE.read_text(encoding="utf-8")) if RECORD_FILE.is_file() else {}
        data["rules"] = record
        RECORD_FILE.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"\nwrote {RECORD_FILE}")


if __name__ == "__main__":
    main()
