"""Is the multi-view advice right? Two-view models on the digits' half images, advice read on one
half of the validation set, judged on the other.

Each 8x8 digit (pixel noise 0.3) is cut into two views, its left and its right four columns; a
model has one encoder per view, a gate giving each sample's two views a softmax weight (its
logits multiplied by ``sharpness``: 1 or 6, sharper gates degenerate more easily) and a linear
classifier on the fused (weighted) embedding, trained with a FusionLoss preset (simple,
standard, full, advanced). The right view is clean, noisier (extra pixel noise 1.0) or dead
(replaced by noise: it carries nothing), or clean with a gate that starts on the left view
(its bias favours it by a logit difference of 4: a gate that settled on one view early). Grid:
4 settings x 2 sharpnesses x 4 presets x seeds.

For each model the validation set is split in two stratified halves A and B.
``diagnose_views`` on A gives the advice (`recommend_views`, with the preset's w_attention);
following it is judged on B:

- ``raise_attention_balance``: retrain with the suggested w_attention (4 x, or 0.05 from 0),
  same seed. Target: the balance gap on B falls; task not worse: the fused EER on B rises by
  at most 0.01.
- ``prefer_single_view``: keep the view named best on A. Target: on B, the fusion gain on EER
  is not significantly better either (its interval does not lie below 0); task not worse: that
  view's EER on B is at most the fused EER + 0.01.

The thresholds (views_advice.VIEW_THRESHOLDS) were chosen on seeds 100 and 101 with gate
sharpness 1 and 4 and the first three settings; the published table is from seeds 0 and 1
with sharpness 1 and 6 and all four.

Usage: ``nice -n 10 python benchmarks/views_check.py [--seeds 0 1 2] [--write]``; ``--write``
stores the counts in diagnostics/views_track_record.json (read by views_advice.py).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from embscope.demo import RIGHT_COLUMNS, Split, TwoViewNet, digits_multiclass, fusion_loss, train
from embscope.diagnostics.views import diagnose_views
from embscope.diagnostics.views_advice import VIEW_RULES, recommend_views
from embscope.losses import FUSION_PRESETS, FusionLoss

RIGHT_VIEWS = ("clean", "noisy", "dead", "clean_gate_left")
GATE_BIAS = 4.0  # clean_gate_left: the gate starts with this logit difference for the left view
SHARPNESS = (1.0, 6.0)
EPOCHS = 20
BATCH = 128
TOLERANCE = 0.01
OUT = Path(__file__).resolve().parents[1] / "diagnostics" / "views_track_record.json"


def make_split(seed: int, right: str) -> Split:
    split = digits_multiclass(seed=seed, noise=0.3)
    g = torch.Generator().manual_seed(1000 + seed)
    xs = []
    for x in (split.x_train, split.x_val):
        x = x.clone()
        if right == "noisy":
            x[:, RIGHT_COLUMNS] += torch.randn(len(x), 32, generator=g)
        elif right == "dead":
            x[:, RIGHT_COLUMNS] = torch.randn(len(x), 32, generator=g)
        xs.append(x)
    return Split(
        xs[0],
        split.y_train,
        xs[1],
        split.y_val,
        split.digits_train,
        split.digits_val,
        split.ids_val,
    )


def fit(
    split: Split, preset: str, sharpness: float, seed: int, w_attention=None, split_kind=""
) -> nn.Module:
    torch.manual_seed(seed)
    model = TwoViewNet(sharpness)
    if split_kind == "clean_gate_left":  # a gate that settles on one view from the start
        with torch.no_grad():
            model.gate.bias.copy_(torch.tensor([GATE_BIAS / 2, -GATE_BIAS / 2]))
    weights = {} if w_attention is None else {"w_attention": w_attention}
    criterion = FusionLoss(num_classes=10, feat_dim=16, mode=preset, **weights)

    params = list(model.parameters()) + list(criterion.parameters())
    loss = fusion_loss(criterion)
    train(model, split, epochs=EPOCHS, batch_size=BATCH, seed=seed, loss=loss, params=params)
    return model


def halves(y: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two stratified halves of the validation rows."""
    rng = np.random.default_rng(seed + 500)
    a, b = [], []
    for c in np.unique(y.numpy()):
        rows = rng.permutation(np.flatnonzero(y.numpy() == c))
        a += list(rows[: len(rows) // 2])
        b += list(rows[len(rows) // 2 :])
    return np.sort(a), np.sort(b)


def report(model: nn.Module, split: Split, rows: np.ndarray):
    model.eval()
    with torch.no_grad():
        out = model(split.x_val[rows])
    views = {k: out[k] for k in ("left", "right", "fused")}
    return diagnose_views(
        views, split.y_val[rows], logits=out["logits"], attention=out["attention"]
    )


def run_cell(cell: tuple[int, str]) -> list[dict]:
    """Every sharpness and preset of one (seed, right view): the models, the advice on half A
    and, where a rule fired, its judgement on half B."""
    torch.set_num_threads(1)
    seed, right = cell
    split = make_split(seed, right)
    a_rows, b_rows = halves(split.y_val, seed)
    rows = []
    for sharpness in SHARPNESS:
        for preset in FUSION_PRESETS:
            cpu0 = time.process_time()
            w_att = FUSION_PRESETS[preset]["w_attention"]
            model = fit(split, preset, sharpness, seed, split_kind=right)
            ra = report(model, split, a_rows)
            recs = {r.action: r for r in recommend_views(ra, w_attention=w_att)}
            row = {
                "seed": seed,
                "right": right,
                "sharpness": sharpness,
                "preset": preset,
                "a": _summary(ra),
                "fired": sorted(recs),
                "judged": {},
            }
            if recs:  # half B judges what fired
                rb = report(model, split, b_rows)
                row["b"] = _summary(rb)
            if "raise_attention_balance" in recs:
                value = recs["raise_attention_balance"].value
                followed = fit(split, preset, sharpness, seed, w_attention=value, split_kind=right)
                rb2 = report(followed, split, b_rows)
                m, m2 = rb.metrics, rb2.metrics
                row["judged"]["raise_attention_balance"] = (
                    bool(m2["attention.balance_gap"] < m["attention.balance_gap"]),
                    bool(m2["eer"] <= m["eer"] + TOLERANCE),
                )
                row["followed"] = {"w_attention": value, "b": _summary(rb2)}
            if "prefer_single_view" in recs:
                best = ra.sections["views"]["fusion_gain"]["eer"]["best_view"]
                verdict = rb.sections["views"]["fusion_gain"]["eer"]["verdict"]
                row["judged"]["prefer_single_view"] = (
                    verdict != "better",
                    bool(rb.metrics[f"views.{best}.eer"] <= rb.metrics["eer"] + TOLERANCE),
                )
            row["cpu_s"] = time.process_time() - cpu0
            rows.append(row)
            print(json.dumps(_short(row)), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--rows", type=Path, help="write every model's row as JSON lines here")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    counts = {r: {"fired": 0, "target_improved": 0, "task_not_worse": 0} for r in VIEW_RULES}
    per_setting: dict = {}
    cells = [(seed, right) for seed in args.seeds for right in RIGHT_VIEWS]
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        results = pool.map(run_cell, cells)
    rows_out = [row for rows in results for row in rows]
    models = sum(1 + ("followed" in row) for row in rows_out)
    cpu = sum(row["cpu_s"] for row in rows_out)
    for row in rows_out:
        for rule, (improved, not_worse) in row["judged"].items():
            _count(counts, per_setting, rule, row["right"], improved, not_worse)
    wall = time.time() - start
    targets = {
        "raise_attention_balance": "attention balance gap",
        "prefer_single_view": "held-out fusion-gain verdict",
    }
    for rule in VIEW_RULES:
        counts[rule]["target"] = targets[rule]
    print()
    print(
        "| rule | fired | target improved | task not worse | clean / noisy / dead / gate-left: "
        "fired, improved, not worse |"
    )
    print("|---|---:|---:|---:|---|")
    for rule in VIEW_RULES:
        c = counts[rule]
        split_cells = " / ".join(
            ", ".join(str(x) for x in per_setting.get((rule, r), (0, 0, 0))) for r in RIGHT_VIEWS
        )
        print(
            f"| {rule} | {c['fired']} | {_share(c['target_improved'], c['fired'])} | "
            f"{_share(c['task_not_worse'], c['fired'])} | {split_cells} |"
        )
    print(f"\n{models} models, {wall:.0f} s wall, {cpu:.0f} s CPU")
    if args.rows:
        args.rows.write_text("\n".join(json.dumps(r) for r in rows_out) + "\n")
    if args.write:
        OUT.write_text(
            json.dumps(
                {
                    "command": "python benchmarks/views_check.py --write",
                    "grid": f"right view {RIGHT_VIEWS} x gate sharpness {SHARPNESS} x presets "
                    f"{tuple(FUSION_PRESETS)} x seeds {args.seeds}, {EPOCHS} epochs",
                    "models": models,
                    "wall_s": round(wall),
                    "cpu_s": round(cpu),
                    "torch": torch.__version__,
                    "tolerance": TOLERANCE,
                    "rules": counts,
                },
                indent=1,
            )
            + "\n"
        )
        print(f"wrote {OUT}")


def _count(counts, per_setting, rule, right, improved, not_worse) -> None:
    c = counts[rule]
    c["fired"] += 1
    c["target_improved"] += int(improved)
    c["task_not_worse"] += int(not_worse)
    f, i, n = per_setting.get((rule, right), (0, 0, 0))
    per_setting[(rule, right)] = (f + 1, i + int(improved), n + int(not_worse))


def _share(k: int, n: int) -> str:
    return "-" if n == 0 else f"{k}/{n} ({100 * k / n:.0f}%)"


KEYS = (
    "eer",
    "macro_f1",
    "views.left.eer",
    "views.right.eer",
    "views.left.recall_at_1",
    "views.right.recall_at_1",
    "fusion_gain.eer",
    "attention.left.mean",
    "attention.balance_gap",
    "attention.degenerate_fraction",
)


def _summary(r) -> dict:
    out = {k: r.metrics.get(k, math.nan) for k in KEYS}
    out["fusion_gain.eer.interval"] = r.intervals.get("fusion_gain.eer")
    return out


def _short(row: dict) -> dict:
    a = row["a"]
    return {
        "cell": f"{row['seed']} {row['right']} x{row['sharpness']:g} {row['preset']}",
        "fired": row["fired"],
        **{
            k: round(a[k], 3)
            for k in (
                "eer",
                "views.left.eer",
                "views.right.eer",
                "fusion_gain.eer",
                "attention.left.mean",
                "attention.degenerate_fraction",
            )
        },
    }


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
