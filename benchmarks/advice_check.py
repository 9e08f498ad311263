"""Does embscope's advice hold up when it is applied?

For each scenario below a small model is trained on scikit-learn's digits in a setting where
embscope recommends a change. The recommendation is read from the report of a validation half;
then it is applied (the recommended action, with the recommended value where it has one), the
model is retrained with the same seed (same data, same initial weights, same batches), and the
targeted metrics of the model before and after are measured on the other, held-out half (so that
a recommendation drawn from a set is never credited on that same set). Over several seeds the
table says how often the metric improved, counting only the seeds where the recommendation fired.

Scenarios (C = number of classes; data from ``embscope.cli.demo``):

- ``fix_eval_margin``: binary gray-zone task, ArcFace (m = 0.2, s = 16) whose forward applies the
  margin whenever labels are passed (the notes' bug), validated with labels -> the fixed forward.
- ``decrease_scale``: binary, ArcFace m = 0.2, s = 64 -> s = the suggested value.
- ``disable_arcface``: binary with less noise (0.2), ArcFace m = 0.5, s = 16 -> BCE head.
- ``enable_arcface`` (binary, info): binary with heavy noise (1.2), BCE -> ArcFace m = 0.5 and
  s = max(NormFace, AdaCos) scale as the reason states.
- ``enable_arcface`` (C = 10): ten digits with heavy noise (1.5), linear softmax head -> ArcFace.
- ``increase_scale``: ten digits, noise 0.5, ArcFace m = 0.3, s = 2 -> s = the suggested value.
- ``decrease_margin``: ten digits, noise 0.5, ArcFace m = 1.2, s = 16 -> m = the suggested value.
- ``increase_margin``: ten digits, noise 0.5, ArcFace m = 0.1, s = 32 -> m = the suggested value.

A second table checks ``check_head`` ("the head looks untrained"): how often it fires on trained
heads (false alarms) and on the same bodies with a freshly initialised head (what it is for).

Usage::

    python benchmarks/advice_check.py               # 5 seeds, about two minutes on two cores
    python benchmarks/advice_check.py --seeds 3 --epochs 10

Only the advice is checked here; the metrics themselves are tested against independent
references in tests/diagnostics.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from embscope.cli.demo import (
    EMBEDDING_DIM,
    DigitsNet,
    LeakyMarginNet,
    Split,
    diagnose_model,
    digits_binary,
    digits_multiclass,
    train,
)
from embscope.diagnostics import adacos_scale, direction, normface_scale, recommend
from embscope.diagnostics.report import Recommendation
from embscope.losses import ArcFaceHead, BCEHead

D = EMBEDDING_DIM


def halves(split: Split, seed: int) -> tuple[Split, tuple[torch.Tensor, torch.Tensor]]:
    """The split with half of its validation part, and the other half as a held-out test set."""
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


@dataclass(frozen=True)
class Config:
    """A model to train: its class, head kind (``bce``, ``linear``, ``arcface``) and settings."""

    head: str
    num_classes: int
    m: float = 0.0
    s: float = 1.0
    leaky: bool = False

    def build(self) -> nn.Module:
        if self.head == "bce":
            head: nn.Module = BCEHead(D)
        elif self.head == "linear":
            head = nn.Linear(D, self.num_classes)
        else:
            head = ArcFaceHead(D, self.num_classes, m=self.m, s=self.s)
        return (LeakyMarginNet if self.leaky else DigitsNet)(head)

    def __str__(self) -> str:
        if self.head == "arcface":
            return f"ArcFace m={self.m:g} s={self.s:g}" + (" (margin leaks)" if self.leaky else "")
        return {"bce": "BCE", "linear": "linear softmax"}[self.head]


def apply(rec: Recommendation, config: Config) -> Config:
    """The configuration after following ``rec``."""
    c = config.num_classes
    if rec.action == "fix_eval_margin":
        return replace(config, leaky=False)
    if rec.action in ("decrease_scale", "increase_scale"):
        return replace(config, s=float(rec.value))
    if rec.action in ("decrease_margin", "increase_margin"):
        return replace(config, m=float(rec.value))
    if rec.action == "disable_arcface":
        return Config("bce" if c == 2 else "linear", c)
    if rec.action == "enable_arcface":
        # the values the recommendation's reason states: m = 0.5, s = max(NormFace, AdaCos)
        return Config("arcface", c, m=0.5, s=max(normface_scale(c), adacos_scale(c)))
    raise ValueError(f"rec.action {rec.action!r} has no configuration change to apply")


@dataclass(frozen=True)
class Scenario:
    """``before`` is trained and diagnosed; with ``baseline``, the recommendation comes from
    ``recommend(before_report, baseline=baseline_report)`` (the A/B comparison). ``metrics``:
    the one the recommendation targets first, then the task's quality metric."""

    name: str
    action: str
    data: Callable[[int], Split]
    before: Config
    metrics: tuple[str, ...]
    baseline: Config | None = None


def binary(noise: float) -> Callable[[int], Split]:
    return lambda seed: digits_binary(seed=seed, noise=noise, val_fraction=0.4)


def ten(noise: float) -> Callable[[int], Split]:
    return lambda seed: digits_multiclass(seed=seed, noise=noise, val_fraction=0.4)


SCENARIOS = (
    Scenario(
        "binary, margin applied at evaluation",
        "fix_eval_margin",
        binary(0.35),
        Config("arcface", 2, m=0.2, s=16, leaky=True),
        ("f1", "accuracy"),
    ),
    Scenario(
        "binary, ArcFace s = 64",
        "decrease_scale",
        binary(0.35),
        Config("arcface", 2, m=0.2, s=64),
        ("saturation_fraction", "f1"),
    ),
    Scenario(
        "binary, ArcFace vs a BCE baseline",
        "disable_arcface",
        binary(0.35),
        Config("arcface", 2, m=0.2, s=16),
        ("f1", "score_ks"),
        baseline=Config("bce", 2),
    ),
    Scenario(
        "binary, separated (noise 0.2), no baseline",
        "disable_arcface",
        binary(0.2),
        Config("arcface", 2, m=0.5, s=16),
        ("f1", "score_ks"),
    ),
    Scenario(
        "binary, heavy noise (1.2)",
        "enable_arcface",
        binary(1.2),
        Config("bce", 2),
        ("f1", "score_ks"),
    ),
    Scenario(
        "10 digits, heavy noise (1.5)",
        "enable_arcface",
        ten(1.5),
        Config("linear", 10),
        ("fisher_ratio", "macro_f1"),
    ),
    Scenario(
        "10 digits, ArcFace s = 2",
        "increase_scale",
        ten(0.5),
        Config("arcface", 10, m=0.3, s=2),
        ("gray_zone_fraction", "macro_f1"),
    ),
    Scenario(
        "10 digits, ArcFace m = 1.2",
        "decrease_margin",
        ten(0.5),
        Config("arcface", 10, m=1.2, s=16),
        ("fallback_fraction", "macro_f1"),
    ),
    Scenario(
        "10 digits, ArcFace m = 0.1",
        "increase_margin",
        ten(0.5),
        Config("arcface", 10, m=0.1, s=32),
        ("fisher_ratio", "macro_f1"),
    ),
)


def fit(config: Config, split: Split, seed: int, epochs: int) -> nn.Module:
    torch.manual_seed(seed)
    model = config.build()
    train(model, split, epochs=epochs, seed=seed)
    return model


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    # as a validation loop that hands the labels to forward; reservoir_size=0: no rule used here
    # needs the vector-based metrics (pairs, retrieval) when logits are given
    return diagnose_model(model, x, y, eval_with_labels=True, reservoir_size=0)


@dataclass
class Outcome:
    scenario: Scenario
    fired: int = 0
    runs: int = 0
    values: list = None  # (rec value or None, after config)
    before: dict = None
    after: dict = None


def run_scenario(scenario: Scenario, seeds: list[int], epochs: int) -> Outcome:
    out = Outcome(scenario, values=[], before={k: [] for k in scenario.metrics})
    out.after = {k: [] for k in scenario.metrics}
    for seed in seeds:
        split, (x_test, y_test) = halves(scenario.data(seed), seed)
        model = fit(scenario.before, split, seed, epochs)
        report = evaluate(model, split.x_val, split.y_val)
        recs = report.recommendations
        if scenario.baseline is not None:
            base = evaluate(fit(scenario.baseline, split, seed, epochs), split.x_val, split.y_val)
            recs = recommend(report, baseline=base)
        out.runs += 1
        rec = next((r for r in recs if r.action == scenario.action), None)
        if rec is None:
            continue
        out.fired += 1
        after_config = apply(rec, scenario.before)
        out.values.append(after_config)
        before = evaluate(model, x_test, y_test).metrics
        after = evaluate(fit(after_config, split, seed, epochs), x_test, y_test).metrics
        for k in scenario.metrics:
            out.before[k].append(before[k])
            out.after[k].append(after[k])
    return out


def improved(name: str, before: list[float], after: list[float]) -> int:
    better = direction(name)
    return sum(
        (a > b) if better == "higher" else (a < b)
        for b, a in zip(before, after, strict=True)
        if math.isfinite(a) and math.isfinite(b)
    )


def describe_after(configs: list[Config], action: str) -> str:
    if not configs:
        return action
    first = configs[0]
    if action in ("decrease_scale", "increase_scale"):
        values = sorted(c.s for c in configs)
        return f"{action} (s -> {values[0]:g}..{values[-1]:g})"
    if action in ("decrease_margin", "increase_margin"):
        values = sorted(c.m for c in configs)
        return f"{action} (m -> {values[0]:g}..{values[-1]:g})"
    return f"{action} (-> {first})"


def main_table(outcomes: list[Outcome]) -> str:
    lines = [
        "| scenario | before | recommendation (applied) | fired | metric | before | after | improved |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    for o in outcomes:
        sc = o.scenario
        rec = describe_after(o.values, sc.action)
        for i, k in enumerate(sc.metrics):
            b, a = o.before[k], o.after[k]
            n = len(b)
            mean_b = f"{np.mean(b):.3f}" if n else "-"
            mean_a = f"{np.mean(a):.3f}" if n else "-"
            first = i == 0
            lines.append(
                f"| {sc.name if first else ''} | {sc.before if first else ''} | "
                f"{rec if first else ''} | {f'{o.fired}/{o.runs}' if first else ''} | "
                f"{k} ({direction(k)} is better) | {mean_b} | {mean_a} | "
                f"{improved(k, b, a)}/{n} |"
            )
    return "\n".join(lines)


def check_head_table(seeds: list[int], epochs: int) -> str:
    """check_head on trained heads (false alarms) and on freshly initialised heads."""
    cases = (
        ("binary", binary(0.35), (Config("arcface", 2, m=0.2, s=s) for s in (8, 16, 64))),
        ("binary, noise 0.8", binary(0.8), (Config("arcface", 2, m=0.5, s=s) for s in (8, 64))),
        ("10 digits", ten(0.5), (Config("arcface", 10, m=0.3, s=s) for s in (8, 16, 64))),
    )
    lines = [
        "| task | heads | check_head on the trained head | on a fresh head, same body |",
        "|---|---|---:|---:|",
    ]
    for task, data, configs in cases:
        configs = list(configs)
        trained = fresh = n = 0
        for config in configs:
            for seed in seeds:
                split, _ = halves(data(seed), seed)
                model = fit(config, split, seed, epochs)
                actions = [
                    r.action for r in evaluate(model, split.x_val, split.y_val).recommendations
                ]
                trained += "check_head" in actions
                torch.manual_seed(10_000 + seed)
                model.head = config.build().head  # a new, untrained head on the trained body
                actions = [
                    r.action for r in evaluate(model, split.x_val, split.y_val).recommendations
                ]
                fresh += "check_head" in actions
                n += 1
        heads = ", ".join(f"s={c.s:g}" for c in configs) + f" (m={configs[0].m:g})"
        lines.append(f"| {task} | ArcFace {heads} | {trained}/{n} (false alarms) | {fresh}/{n} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    started = time.perf_counter()
    outcomes = [run_scenario(sc, seeds, args.epochs) for sc in SCENARIOS]
    print(main_table(outcomes))
    print()
    print(check_head_table(seeds, args.epochs))
    print(
        f"\n{len(seeds)} seeds, {args.epochs} epochs, torch {torch.__version__}, "
        f"{time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
