"""Several models side by side (ablations): one ranked table of the judged metrics, and which
differences from the best are real.

``compare_many(reports)`` ranks the models by a task metric (``rank_by``; default the first of
f1 (two classes), macro_f1, miou, map_at_r, recall_at_1, fisher_ratio that every report holds)
and judges every model against the best on every judged metric (the registry's gated set, as
`compare` and the gate) with the one decision rule, `compare.decide`: a model is worse than the
best when the difference exceeds the metric's tolerance and z standard errors of the
difference (paired on the same samples when both reports keep them, else from the two
intervals). With k models there are k - 1 comparisons per metric, so z is that of the level
1 - (1 - level) / (k - 1) (Bonferroni): at 95% and four models, z = 2.39 instead of 1.96, and
the chance that any model is called worse than the best by noise alone stays under 5% per
metric. A model not worse than the best is tied with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .compare import (
    _check_comparable,
    _finite,
    _get,
    _judge,
    not_comparable,
    paired_standard_errors,
)
from .intervals import LEVEL, z_value
from .provenance import same_checkpoint
from .registry import gated_keys
from .report import Report, direction

RANK_BY = ("f1", "macro_f1", "miou", "map_at_r", "recall_at_1", "fisher_ratio")


@dataclass(frozen=True)
class Ranking:
    """The models in rank order and, per judged metric, how each compares with that metric's
    best model.

    names: the models, best first (by ``rank_by``); rank_by: the metric that orders them;
    metrics: the judged metrics (columns); values / intervals: name -> metric -> value /
    (low, high) or None; status: name -> metric -> "best", "tied" or "worse" (or "undefined");
    decisions: name -> metric -> the `Decision` against that metric's best; level: the overall
    level; z: the corrected z of each comparison; omitted: metrics not the same quantity in
    every model; notes: lines on provenance (same checkpoints).
    """

    names: list
    rank_by: str
    metrics: list
    values: dict
    intervals: dict
    status: dict
    decisions: dict
    level: float
    z: float
    omitted: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def tied_with_best(self) -> list:
        """The models not worse than the best on ``rank_by`` (the best included)."""
        return [n for n in self.names if self.status[n][self.rank_by] in ("best", "tied")]

    def to_dict(self) -> dict:
        from .report import _clean

        return {
            "names": self.names,
            "rank_by": self.rank_by,
            "metrics": self.metrics,
            "values": _clean(self.values),
            "intervals": {
                n: {k: list(v) if v else None for k, v in row.items()}
                for n, row in self.intervals.items()
            },
            "status": self.status,
            "decisions": {
                n: {k: d.to_dict() for k, d in row.items()} for n, row in self.decisions.items()
            },
            "level": self.level,
            "z": self.z,
            "tied_with_best": self.tied_with_best,
            "omitted": self.omitted,
            "notes": self.notes,
        }

    def to_markdown(self) -> str:
        """The verdict on ``rank_by``, then one row per model (best first): each judged metric's
        value and interval, marked ``(worse)`` when worse than that metric's best model."""
        k = len(self.names)
        best = self.names[0]
        tied = [n for n in self.tied_with_best if n != best]
        worse = [n for n in self.names if self.status[n][self.rank_by] == "worse"]
        verdict = f"**Best by {self.rank_by}: {best}**"
        verdict += (
            f"; tied with it on {self.rank_by}: {', '.join(tied)}"
            if tied
            else "; no model tied with it"
        )
        verdict += f"; worse: {', '.join(worse)}" if worse else ""
        # a tie on the ranking metric is not a tie overall: say where each model is worse
        losses = []
        for name in self.names:
            bad = [m for m in self.metrics if self.status[name].get(m) == "worse"]
            if bad:
                losses.append(f"{name} is worse than the best on {', '.join(bad)}")
        lines = [
            verdict + ".",
            "",
            *([("; ".join(losses) + "."), ""] if losses else []),
            f"{k} models. Each is judged against the best model of each metric with compare's "
            f"rule (beyond the metric's tolerance and z standard errors of the difference, "
            f"paired on the same samples where the reports allow); z = {self.z:.3g}, Bonferroni "
            f"over the {k - 1} comparisons per metric (overall level {self.level:.0%}). "
            "(worse): worse than the metric's best; ~: not measurably different from it.",
            "",
        ]
        head = "| rank | model | " + " | ".join(self.metrics) + " |"
        rule = "|---:|---|" + "---:|" * len(self.metrics)
        lines += [head, rule]
        for i, name in enumerate(self.names):
            cells = [self._cell(name, m) for m in self.metrics]
            lines.append(f"| {i + 1} | {name} | " + " | ".join(cells) + " |")
        lines += ["", "Interval: each report's own interval of the value. Tests per cell:"]
        for name in self.names:
            for m in self.metrics:
                d = self.decisions[name].get(m)
                if d is not None and self.status[name][m] == "worse":
                    lines.append(
                        f"- {name}, {m}: {d.b:.4g} vs {d.a:.4g} ({d.delta:+.4g}), beyond the "
                        f"tolerance {d.tolerance:.3g} and the noise {d.noise:.3g} ({d.test})"
                    )
        if lines[-1].endswith("Tests per cell:"):
            lines[-1] = "Interval: each report's own interval of the value. No model is worse."
        if self.omitted:
            lines += [
                "",
                f"Not compared (not the same quantity in every model): {', '.join(self.omitted)}",
            ]
        lines += ["", *self.notes] if self.notes else []
        return "\n".join(lines) + "\n"

    def _cell(self, name: str, metric: str) -> str:
        v = self.values[name].get(metric, math.nan)
        if not _finite(v):
            return "nan"
        iv = self.intervals[name].get(metric)
        text = f"{v:.4g}" + (f" [{iv[0]:.3g}, {iv[1]:.3g}]" if iv else "")
        status = self.status[name][metric]
        mark = {"best": " best", "tied": " ~", "worse": " (worse)"}.get(status, "")
        return text + mark


def _rank_metric(reports: Sequence[Report], common: set[str]) -> str:
    for name in RANK_BY:
        if name in common and all(_finite(_get(r, name)) for r in reports):
            return name
    raise ValueError(
        f"the reports share no task metric to rank by (one of {', '.join(RANK_BY)}); pass rank_by"
    )


def compare_many(
    reports: Sequence[Report],
    names: Sequence[str] | None = None,
    *,
    rank_by: str | None = None,
    metrics: Sequence[str] | None = None,
    tolerance=None,
    level: float = LEVEL,
    allow_different_data: bool = False,
) -> Ranking:
    """Rank three or more models (two work too) and judge every one against the best.

    reports: the models' reports (same classes, logits and data, as `compare` requires);
    names: their names (default "model 1", ...). rank_by: the metric that orders them (default:
    see the module). metrics: the metrics judged (default: the registry's gated set, those
    every report holds and that mean the same in every model). tolerance: as in `compare`.
    level: the overall level; each of the k - 1 comparisons per metric is made at
    1 - (1 - level) / (k - 1).

    Raises `IncomparableReports` / `DifferentData` as `compare` does (naming the models), and
    ValueError for fewer than two reports, names of another length or duplicated, or a
    ``rank_by`` that is not a metric with a direction held by every report.
    """
    reports = list(reports)
    if len(reports) < 2 or not all(isinstance(r, Report) for r in reports):
        raise ValueError("compare_many needs at least two Reports")
    names = [f"model {i + 1}" for i in range(len(reports))] if names is None else list(names)
    if len(names) != len(reports) or len(set(names)) != len(names):
        raise ValueError(f"names must be {len(reports)} distinct names, got {names}")
    for i in range(1, len(reports)):
        _check_comparable(reports[0], reports[i], None, (names[0], names[i]), allow_different_data)
    common = set.intersection(*(set(r.metrics) for r in reports))
    omitted = set()
    for i in range(len(reports)):
        for j in range(i + 1, len(reports)):
            omitted |= not_comparable(reports[i], reports[j])
    if metrics is None:
        judged = [k for k in gated_keys() if k in common and k not in omitted]
    else:
        judged = list(dict.fromkeys(metrics))
        for m in judged:
            if m not in common or direction(m) is None:
                raise ValueError(f"{m!r} is not a metric with a direction held by every report")
    if rank_by is None:
        rank_by = _rank_metric(reports, common)
    elif rank_by not in common or direction(rank_by) is None:
        raise ValueError(f"rank_by {rank_by!r} is not a metric with a direction in every report")
    judged = [rank_by, *[m for m in judged if m != rank_by]]
    judged = [m for m in judged if any(_finite(_get(r, m)) for r in reports)]

    sign = 1.0 if direction(rank_by) == "higher" else -1.0
    order = sorted(
        range(len(reports)),
        key=lambda i: (
            -sign * _get(reports[i], rank_by) if _finite(_get(reports[i], rank_by)) else math.inf,
            i,
        ),
    )
    reports = [reports[i] for i in order]
    names = [names[i] for i in order]
    k = len(reports)
    each = 1 - (1 - level) / max(1, k - 1)
    values = {n: {m: _get(r, m) for m in judged} for n, r in zip(names, reports, strict=True)}
    intervals = {
        n: {m: _interval(r, m) for m in judged} for n, r in zip(names, reports, strict=True)
    }
    status = {n: {} for n in names}
    decisions = {n: {} for n in names}
    paired_cache: dict[tuple[int, int], dict] = {}
    for m in judged:
        best = _best(reports, m)
        for i, (n, r) in enumerate(zip(names, reports, strict=True)):
            if best is None or not _finite(_get(r, m)):
                status[n][m] = "undefined"
                continue
            if i == best:
                status[n][m] = "best"
                continue
            key = (best, i)
            if key not in paired_cache:
                paired_cache[key] = paired_standard_errors(reports[best], r, judged)
            d = _judge(m, [reports[best]], r, tolerance, paired_cache[key], each)
            decisions[n][m] = d
            status[n][m] = "worse" if d.outcome == "worse" else "tied"
    return Ranking(
        names,
        rank_by,
        judged,
        values,
        intervals,
        status,
        decisions,
        level,
        z_value(each),
        sorted(omitted),
        _notes(reports, names),
    )


def _best(reports: list[Report], metric: str) -> int | None:
    sign = 1.0 if direction(metric) == "higher" else -1.0
    finite = [i for i, r in enumerate(reports) if _finite(_get(r, metric))]
    if not finite:
        return None
    return max(finite, key=lambda i: (sign * _get(reports[i], metric), -i))


def _interval(report: Report, name: str) -> tuple | None:
    iv = report.intervals.get(name) if isinstance(report.intervals, dict) else None
    return (float(iv[0]), float(iv[1])) if iv else None


def _notes(reports: list[Report], names: list[str]) -> list[str]:
    """Models that come from the same weights (an ablation that changed nothing)."""
    out = []
    for i in range(len(reports)):
        for j in range(i + 1, len(reports)):
            if same_checkpoint(reports[i], reports[j]):
                out.append(f"{names[i]} and {names[j]} come from the same checkpoint.")
    if all(same_checkpoint(reports[0], r) is None for r in reports[1:]):
        out.append("Checkpoints: unknown (the reports record no checkpoint fingerprint).")
    return out
