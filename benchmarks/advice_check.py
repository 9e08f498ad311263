"""The advice benchmark: does each recommendation hold up when it is followed?

Over a grid that no single rule was tuned on, small models are trained on scikit-learn's 8x8
digit scans and diagnosed; every recommendation is read from one half of the validation set,
followed (the action, with its suggested value), and its effect measured on the other half, so
that no recommendation is credited on the data it was drawn from. "Followed" means:

- ``decrease_scale`` / ``increase_scale`` / ``decrease_margin`` / ``increase_margin``: retrain
  with the same seed (same data, initial weights and batches) and the suggested s or m;
- ``calibrate_temperature``: divide the held-out logits by the T fitted on the advice half;
- ``disable_arcface`` / ``enable_arcface`` (from ``recommend(arcface, baseline=baseline)``):
  keep the baseline (BCE or linear softmax, same seed) or the margin head;
- ``fix_eval_margin``: the model is evaluated as a validation loop that passes the labels, with
  a forward that applies the margin whenever labels come (the same trained weights); following
  the advice evaluates it with the margin only in training;
- ``check_head``: the trained body is diagnosed with a freshly initialised head; following the
  advice puts the trained head back. On trained heads a ``check_head`` is a false alarm.

Per rule the table counts the models where it fired, those where its target metric moved the
right way on the held-out half (for ``check_head`` the accuracy; for ``fix_eval_margin`` the
task metric the validation loop reports; for a verdict against the baseline, whether
``compare`` on the held-out half reaches the same verdict), and those where the task metric (F1
for the binary task, macro-F1 for ten classes) was not worse by more than 0.01.

Grid: two architectures (an MLP 64 -> 64 -> 16, and a small CNN: conv 3x3 x 8, pool, conv 3x3
x 16, pool, linear 64 -> 16); two tasks (``digits_binary``: odd vs even, positives thinned to a
third; ``digits_multiclass``: the ten digits) at three pixel-noise levels each; per cell the
baseline head (BCE for two classes, a linear softmax for ten) and ten ArcFace heads with m from
0.05 to 1.2 and s from 2 to 64; seeds 0..4; 20 epochs of Adam. The advice's thresholds were
chosen on seeds 100..104 (``--first-seed 100``); the published records are from seeds 0..4.

Usage::

    python benchmarks/advice_check.py                 # the full grid, 5 seeds, 2 processes
    python benchmarks/advice_check.py --write         # ... and write the track records
    python benchmarks/advice_check.py --quick         # MLP, one noise level, 2 seeds

``--write`` stores the per-rule counts in ``diagnostics/track_record.json``, the file every
recommendation's ``track_record`` evidence is read from. Only the advice is checked here; the
metrics themselves are tested against independent references in tests/diagnostics.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from embscope.demo import DigitsNet, Split, digits_binary, digits_multiclass, train
from embscope.diagnostics import (
    calibration_metrics,
    compare,
    diagnose,
    find_margin_head,
    probe_margin_leak,
    recommend,
)
from embscope.diagnostics.advice import RULES, SEVERITY, calibration_gap
from embscope.losses import ArcFaceHead, BCEHead

D = 16
NOISE = {"binary": (0.2, 0.5, 0.9), "ten": (0.2, 0.6, 1.2)}
ARCFACE = (  # (m, s)
    (0.05, 16),
    (0.05, 64),
    (0.2, 2),
    (0.2, 8),
    (0.2, 64),
    (0.5, 4),
    (0.5, 32),
    (0.9, 16),
    (1.2, 8),
    (1.2, 64),
)
QUICK_ARCFACE = ((0.2, 2), (0.2, 64), (0.5, 32), (1.2, 8))
# heads also diagnosed through a leaking forward and with a fresh head (fix_eval_margin and
# check_head do not depend on training, so a few settings suffice)
VARIANTS = ((0.05, 16), (0.2, 64), (0.5, 32), (1.2, 8))
QUICK_NOISE = {"binary": (0.5,), "ten": (0.6,)}
TASK_METRIC = {"binary": "f1", "ten": "macro_f1"}
TARGET = {
    "fix_eval_margin": "task metric as the validation loop reports it",
    "check_head": "accuracy",
    "collapse": "task metric as the validation loop reports it",
    "collapse_after_probe": "accuracy",
    "collapse_to_prior": "accuracy",
    "calibrate_temperature": "ECE and NLL",
    "decrease_scale": "saturation_fraction",
    "increase_scale": "gray_zone_fraction",
    "decrease_margin": "fallback_fraction",
    "increase_margin": "fisher_ratio",
    "disable_arcface": "held-out verdict",
    "disable_arcface_task_tied": "held-out verdict",
    "enable_arcface": "held-out verdict",
}
TOLERANCE = 0.01
RECORD_FILE = Path(__file__).resolve().parents[1] / "diagnostics" / "track_record.json"


class DigitsCNN(DigitsNet):
    """A small CNN on the 8x8 scans (inputs [N, 64]): conv 3x3 (8) -> ReLU -> max-pool 2 ->
    conv 3x3 (16) -> ReLU -> max-pool 2 -> linear 64 -> 16, then the head."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__(head)
        self.body = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64, D),
        )


class LeakyEval(nn.Module):
    """A trained model whose head applies its margin whenever labels are passed, in evaluation
    too (a forward that hands the labels to an ArcFace head in train mode): the bug that
    ``fix_eval_margin`` is about. Same weights as ``model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        if labels is None:
            return self.model(x)
        embedding = self.model.body(x)
        head = self.model.head
        was_training = head.training
        head.train(True)
        try:
            return embedding, head(embedding, labels)
        finally:
            head.train(was_training)


ARCHS = {"mlp": DigitsNet, "cnn": DigitsCNN}


@dataclass(frozen=True)
class Config:
    """A model to train: architecture, task, and head (m None: the baseline head)."""

    arch: str
    task: str
    m: float | None = None
    s: float | None = None

    @property
    def classes(self) -> int:
        return 2 if self.task == "binary" else 10

    def head(self) -> nn.Module:
        if self.m is None:
            return BCEHead(D) if self.classes == 2 else nn.Linear(D, self.classes)
        return ArcFaceHead(D, self.classes, m=self.m, s=self.s)

    def __str__(self) -> str:
        if self.m is None:
            return "BCE" if self.classes == 2 else "linear softmax"
        return f"ArcFace m={self.m:g} s={self.s:g}"


def halves(split: Split, seed: int) -> tuple[Split, tuple[torch.Tensor, torch.Tensor]]:
    """The split with half of its validation part (the advice half), and the other half."""
    order = torch.randperm(len(split.y_val), generator=torch.Generator().manual_seed(seed))
    val, test = order[: len(order) // 2], order[len(order) // 2 :]
    kept = replace(
        split,
        x_val=split.x_val[val],
        y_val=split.y_val[val],
        digits_val=split.digits_val[val],
        ids_val=[split.ids_val[i] for i in val.tolist()],
    )
    return kept, (split.x_val[test], split.y_val[test])


def data(task: str, noise: float, seed: int) -> Split:
    if task == "binary":
        return digits_binary(seed=seed, noise=noise, val_fraction=0.4)
    return digits_multiclass(seed=seed, noise=noise, val_fraction=0.4)


def fit(config: Config, split: Split, seed: int, epochs: int) -> nn.Module:
    torch.manual_seed(seed)
    model = ARCHS[config.arch](config.head())
    train(model, split, epochs=epochs, seed=seed)
    return model


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    with_labels: bool = False,
    probed: bool = True,
):
    """(report, logits) of ``model`` on (x, y) in eval mode, as a validation loop that passes
    the labels to forward when ``with_labels``, probed for a margin at evaluation when
    ``probed``; pair and retrieval metrics are skipped (no rule reads them when logits are
    given)."""
    model.eval()
    head = find_margin_head(model)
    leak = probe_margin_leak(model, x[:256], y[:256]) if probed else None
    embedding, logits = model(x, y) if with_labels else model(x)
    report = diagnose(
        embedding, y, logits, head=head, margin_leak=leak, pair_rows=2, retrieval_rows=2, hard_k=0
    )
    return report, logits


def rule_of(rec) -> str | None:
    record = rec.evidence.get("track_record")
    return record.get("rule") if isinstance(record, dict) else None


def outcome(rule, rec, config, noise, seed, variant, target, task) -> dict:
    (tb, ta, improved), (kb, ka) = target, task
    return {
        "rule": rule,
        "action": rec.action,
        "severity": rec.severity,
        "value": rec.value,
        "arch": config.arch,
        "task": config.task,
        "noise": noise,
        "seed": seed,
        "model": str(config),
        "variant": variant,
        "target_before": tb,
        "target_after": ta,
        "target_improved": bool(improved),
        "task_before": kb,
        "task_after": ka,
        "task_not_worse": bool(ka >= kb - TOLERANCE),
    }


def better(name: str, before: float, after: float) -> bool:
    lower = name in ("saturation_fraction", "gray_zone_fraction", "fallback_fraction")
    if not (math.isfinite(before) and math.isfinite(after)):
        return False
    return after < before if lower else after > before


def run_cell(cell: tuple) -> tuple[list[dict], dict]:
    """Every model of one (architecture, task, noise, seed) cell: outcomes of every rule that
    fired, and how many models of each variant were diagnosed."""
    arch, task, noise, seed, designs, epochs = cell
    cpu = time.process_time()
    torch.set_num_threads(1)
    split, (x_test, y_test) = halves(data(task, noise, seed), seed)
    metric = TASK_METRIC[task]
    trained: dict[Config, nn.Module] = {}

    def model_for(config: Config) -> nn.Module:
        if config not in trained:
            trained[config] = fit(config, split, seed, epochs)
        return trained[config]

    tests: dict[Config, tuple] = {}

    def test_of(config: Config):
        if config not in tests:
            tests[config] = evaluate(model_for(config), x_test, y_test)
        return tests[config]

    rows: list[dict] = []

    def record(rule, rec, config, variant, target, task) -> None:
        rows.append(outcome(rule, rec, config, noise, seed, variant, target, task))

    probes: list[dict] = []
    counts = {"trained": 0, "trained_margin": 0, "leaky": 0, "fresh": 0, "cpu_s": 0.0}
    base = Config(arch, task)
    base_val, _ = evaluate(model_for(base), split.x_val, split.y_val)
    for m, s in ((None, None), *designs):
        config = Config(arch, task, m, s)
        model = model_for(config)
        report, _ = evaluate(model, split.x_val, split.y_val)
        recs = report.recommendations
        if m is not None:
            recs = recommend(report, baseline=base_val)
        counts["trained"] += 1
        counts["trained_margin"] += m is not None
        test_report, test_logits = test_of(config)
        k_before = test_report.metrics[metric]
        probes.append(probe(report, test_report, test_logits, y_test, config, noise, seed))
        for rec in recs:
            rule = rule_of(rec)
            if rule is None:
                continue
            if rule == "calibrate_temperature":
                temp = report.metrics["fitted_temperature"]
                b = calibration_metrics(test_logits, y_test)
                a = calibration_metrics(test_logits / temp, y_test)
                improved = a.ece < b.ece and a.nll < b.nll
                target = ((b.ece, b.nll), (a.ece, a.nll), improved)
                record(rule, rec, config, "trained", target, (k_before, k_before))
                continue
            if rule in ("decrease_scale", "increase_scale", "decrease_margin", "increase_margin"):
                name = TARGET[rule]
                changed = (
                    replace(config, s=float(rec.value))
                    if "scale" in rule
                    else replace(config, m=float(rec.value))
                )
                after, _ = test_of(changed)
                tb, ta = test_report.metrics[name], after.metrics[name]
                target = (tb, ta, better(name, tb, ta))
                record(rule, rec, config, "trained", target, (k_before, after.metrics[metric]))
                continue
            if rec.action in ("disable_arcface", "enable_arcface"):
                base_test, _ = test_of(base)
                verdict = compare(base_test, test_report).verdict
                disable = rec.action == "disable_arcface"
                agrees = verdict == ("disable_arcface" if disable else "keep_arcface")
                kb, ka = (
                    (k_before, base_test.metrics[metric])
                    if disable
                    else (base_test.metrics[metric], k_before)
                )
                record(rule, rec, config, "trained", (0, 0, agrees), (kb, ka))
                continue
            # check_head or a collapse on a trained model: nothing to put right
            record(rule, rec, config, "trained", (0, 0, False), (k_before, k_before))
        if (m, s) not in VARIANTS:
            continue
        # the same weights, evaluated by a loop that passes labels to a leaking forward, with
        # the margin-leak probe and without it
        counts["leaky"] += 1
        for probed in (True, False):
            leaky_val, _ = evaluate(
                LeakyEval(model), split.x_val, split.y_val, with_labels=True, probed=probed
            )
            for rec in leaky_val.recommendations:
                rule = rule_of(rec)
                if rule not in ("fix_eval_margin", "collapse"):
                    continue
                before, _ = evaluate(LeakyEval(model), x_test, y_test, with_labels=True)
                after, _ = evaluate(model, x_test, y_test, with_labels=True)
                kb, ka = before.metrics[metric], after.metrics[metric]
                record(rule, rec, config, "leaky", (kb, ka, ka > kb), (kb, ka))
        # the trained body with a fresh head
        counts["fresh"] += 1
        fresh = copy.deepcopy(model)
        torch.manual_seed(10_000 + seed)
        fresh.head = config.head()
        fresh_val, _ = evaluate(fresh, split.x_val, split.y_val)
        for rec in fresh_val.recommendations:
            rule = rule_of(rec)
            if rule not in ("check_head", "collapse", "collapse_after_probe", "collapse_to_prior"):
                continue
            before, _ = evaluate(fresh, x_test, y_test)
            acc_b, acc_a = before.metrics["accuracy"], test_report.metrics["accuracy"]
            target = (acc_b, acc_a, acc_a > acc_b)
            record(rule, rec, config, "fresh", target, (before.metrics[metric], k_before))
    counts["cpu_s"] = time.process_time() - cpu
    return rows, counts, probes


def probe(report, test_report, test_logits, y_test, config, noise, seed) -> dict:
    """What the rules read on the advice half, and the held-out calibration before and after
    dividing by its fitted temperature, for every trained model (fired or not)."""
    m = report.metrics
    gap = calibration_gap(report) or {}
    out = {
        "model": str(config),
        "arch": config.arch,
        "task": config.task,
        "noise": noise,
        "seed": seed,
        "gap": gap.get("value"),
        "gap_beyond_noise": gap.get("beyond_noise"),
    }
    for key in (
        "n",
        "fitted_temperature",
        "ece",
        "nll",
        "saturation_fraction",
        "gray_zone_fraction",
        "fallback_fraction",
        "fisher_ratio",
        "score_ks",
        "head.s",
        "head.m",
    ):
        out[key] = m.get(key)
    temp = m.get("fitted_temperature")
    if temp is not None and math.isfinite(temp):
        b = calibration_metrics(test_logits, y_test)
        a = calibration_metrics(test_logits / temp, y_test)
        out["test_ece"], out["test_nll"] = b.ece, b.nll
        out["test_ece_t"], out["test_nll_t"] = a.ece, a.nll
    return out


def cells(args) -> list[tuple]:
    archs = ("mlp",) if args.quick else ("cnn", "mlp")  # the slower cells first
    noise = QUICK_NOISE if args.quick else NOISE
    designs = QUICK_ARCFACE if args.quick else ARCFACE
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    return [
        (arch, task, level, seed, designs, args.epochs)
        for arch in archs
        for task in ("binary", "ten")
        for level in noise[task]
        for seed in seeds
    ]


def records(rows: list[dict]) -> dict:
    out = {}
    for rule in RULES:
        mine = [r for r in rows if r["rule"] == rule]
        out[rule] = {
            "fired": len(mine),
            "target": TARGET[rule],
            "target_improved": sum(r["target_improved"] for r in mine),
            "task_not_worse": sum(r["task_not_worse"] for r in mine),
            "severity": SEVERITY.get(rule, "error/warning" if rule == "collapse" else "error"),
            "by_task": {
                task: {
                    "fired": sum(r["task"] == task for r in mine),
                    "target_improved": sum(r["target_improved"] for r in mine if r["task"] == task),
                    "task_not_worse": sum(r["task_not_worse"] for r in mine if r["task"] == task),
                }
                for task in ("binary", "ten")
            },
        }
    return out


def share(k: int, n: int) -> str:
    return f"{k}/{n} ({k / n:.0%})" if n else "-"


def table(recs: dict) -> str:
    lines = [
        "| rule | severity | target | fired | target improved | task not worse | "
        "binary: fired, improved, not worse | 10 classes: fired, improved, not worse |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for rule, r in recs.items():
        b, t = r["by_task"]["binary"], r["by_task"]["ten"]
        lines.append(
            f"| {rule} | {r['severity']} | {r['target']} | {r['fired']} | "
            f"{share(r['target_improved'], r['fired'])} | "
            f"{share(r['task_not_worse'], r['fired'])} | "
            f"{b['fired']}, {b['target_improved']}, {b['task_not_worse']} | "
            f"{t['fired']}, {t['target_improved']}, {t['task_not_worse']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per cell (default 5)")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--quick", action="store_true", help="MLP, one noise level, 2 seeds")
    parser.add_argument("--write", action="store_true", help=f"write {RECORD_FILE.name}")
    parser.add_argument(
        "--rows", type=Path, help="also write every outcome and what the rules read, as JSON"
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds = min(args.seeds, 2)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    work = cells(args)
    rows: list[dict] = []
    probes: list[dict] = []
    counts = {"trained": 0, "trained_margin": 0, "leaky": 0, "fresh": 0, "cpu_s": 0.0}
    done = 0
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for cell_rows, cell_counts, cell_probes in pool.imap_unordered(run_cell, work, chunksize=1):
            rows.extend(cell_rows)
            probes.extend(cell_probes)
            for k, v in cell_counts.items():
                counts[k] += v
            done += 1
            print(
                f"{done}/{len(work)} cells, {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    wall = time.perf_counter() - started
    recs = records(rows)
    print(table(recs))
    false_alarms = sum(r["rule"] == "check_head" and r["variant"] == "trained" for r in rows)
    caught = sum(r["rule"] == "check_head" and r["variant"] == "fresh" for r in rows)
    print(
        f"\ncheck_head: {false_alarms} of {counts['trained_margin']} trained margin heads "
        f"(false alarms), {caught} of {counts['fresh']} fresh heads on trained bodies; "
        f"fix_eval_margin on {counts['leaky']} leaking forwards"
    )
    grid = (
        f"{len(work)} cells ({'MLP' if args.quick else 'MLP and CNN'}, binary and 10 classes, "
        f"noise {NOISE if not args.quick else QUICK_NOISE}, seeds {args.first_seed}.."
        f"{args.first_seed + args.seeds - 1}), {counts['trained']} trained models, "
        f"{args.epochs} epochs"
    )
    print(
        f"{grid}; torch {torch.__version__}; {args.workers} processes; {wall:.0f} s wall, "
        f"{counts['cpu_s']:.0f} s CPU in the workers"
    )
    if args.rows:
        args.rows.write_text(json.dumps({"rows": rows, "probes": probes}) + "\n", encoding="utf-8")
    if args.write:
        payload = {
            "command": "python benchmarks/advice_check.py --write"
            + (" --quick" if args.quick else "")
            + (f" --seeds {args.seeds}" if args.seeds != 5 and not args.quick else "")
            + (f" --first-seed {args.first_seed}" if args.first_seed else ""),
            "grid": grid,
            "models": counts,
            "wall_s": round(wall),
            "cpu_s": round(counts["cpu_s"]),
            "torch": torch.__version__,
            "tolerance": TOLERANCE,
            "rules": recs,
        }
        RECORD_FILE.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {RECORD_FILE}")


if __name__ == "__main__":
    main()
