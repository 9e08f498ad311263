"""CI verdicts: ``--fail-on`` rules and reading earlier reports for ``--baseline``/``compare``."""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embscope.cli.errors import UsageError

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_RULE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(<=|>=|==|!=|<|>)\s*([^\s<>=!]+)\s*$")


@dataclass(frozen=True)
class Rule:
    """``metric op threshold``: the run fails when the comparison is true (or the metric is nan)."""

    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    def broken_by(self, value: float) -> bool:
        """True when ``value`` meets the failure condition; an undefined (nan) value fails too."""
        return math.isnan(value) or OPERATORS[self.op](value, self.threshold)


def parse_fail_on(text: str) -> list[Rule]:
    """Parse ``"score_ks<0.5,f1<0.8"`` into rules; `UsageError` on bad syntax."""
    rules = []
    for part in text.split(","):
        if not part.strip():
            continue
        match = _RULE.match(part)
        threshold = None
        if match:
            try:
                threshold = float(match.group(3))
            except ValueError:
                threshold = None
        if match is None or threshold is None or math.isnan(threshold):
            raise UsageError(
                "--fail-on",
                f"{part.strip()!r} is not METRIC<OP>NUMBER",
                "write rules like 'score_ks<0.5,f1<0.8' with one of < <= > >= == !=",
            )
        rules.append(Rule(match.group(1), match.group(2), threshold))
    if not rules:
        raise UsageError("--fail-on", "holds no rule", "write rules like 'score_ks<0.5,f1<0.8'")
    return rules


def rule_values(report: Any) -> dict[str, float]:
    """What ``--fail-on`` rules can name: every metric, and ``METRIC.low`` / ``METRIC.high``,
    the bounds of its interval (nan for an undefined metric, which then breaks its rule)."""
    values = {k: float(v) for k, v in report.metrics.items()}
    intervals = getattr(report, "intervals", None) or {}
    for name, value in report.metrics.items():
        bounds = intervals.get(name)
        if bounds:
            values[f"{name}.low"], values[f"{name}.high"] = float(bounds[0]), float(bounds[1])
        elif math.isnan(float(value)):
            values[f"{name}.low"] = values[f"{name}.high"] = math.nan
    return values


def broken_rules(rules: list[Rule], metrics: Mapping[str, float]) -> list[str]:
    """A line per broken rule; `UsageError` for a rule naming a metric the report lacks (or the
    bound of an interval it does not have)."""
    lines = []
    for rule in rules:
        if rule.metric not in metrics:
            close = difflib.get_close_matches(rule.metric, list(metrics), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see report.json's metrics"
            raise UsageError("--fail-on", f"the report has no metric {rule.metric!r}", hint)
        value = float(metrics[rule.metric])
        if rule.broken_by(value):
            shown = "nan (undefined)" if math.isnan(value) else f"{value:.4g}"
            lines.append(f"{rule.metric} = {shown} breaks --fail-on rule {rule}")
    return lines


def parse_metric_names(text: str, option: str = "--metrics") -> list[str]:
    """``"f1,recall_at_1"`` -> ``["f1", "recall_at_1"]``; `UsageError` when it names none."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    bad = [name for name in names if not re.fullmatch(r"[A-Za-z_][\w.\-]*", name)]
    if bad or not names:
        what = f"{bad[0]!r} is not a metric name" if bad else "names no metric"
        raise UsageError(option, what, "give comma-separated metric names, e.g. f1,recall_at_1")
    return names


_TOLERANCE_ITEM = re.compile(r"^\s*(?:([A-Za-z_][\w.\-]*)\s*=\s*)?([^=\s]+)\s*$")
MAX_TOLERANCE = 1e300  # finite: an infinite tolerance would silently switch the gate off


def tolerance_items(text: str) -> list[tuple[str | None, float]]:
    """One ``--tolerance``: ``0.03``, ``f1=0.01,ece=0.02`` or both (``0.03,f1=0.01``), as
    (metric or None for the global one, value). ValueError naming the bad part."""
    from embscope.diagnostics.registry import info

    items: list[tuple[str | None, float]] = []
    for part in text.split(","):
        if not part.strip() and "," in text:
            continue
        match = _TOLERANCE_ITEM.match(part)
        try:
            value = float(match.group(2)) if match else math.nan
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= MAX_TOLERANCE:  # also nan
            raise ValueError(f"must be a finite number >= 0, got {part.strip()!r}")
        name = match.group(1)
        if name is not None and (info(name) is None or info(name).direction is None):
            raise ValueError(f"{name!r} is not a metric with a better direction")
        items.append((name, value))
    return items


def tolerance_value(
    given: list[list[tuple[str | None, float]]] | None,
) -> float | dict[str, float] | None:
    """The tolerance of every ``--tolerance`` given (later ones win): None when none is given
    (each metric's default), a float when only a global number is, else a dict of metric ->
    tolerance (the global one under ``"*"`` when given)."""
    glob, per = None, {}
    for items in given or []:
        for name, value in items:
            if name is None:
                glob = value
            else:
                per[name] = value
    if not per:
        return glob
    return {"*": glob, **per} if glob is not None else per


def tolerance_text(tolerance: float | dict[str, float] | None) -> str:
    """``0.02`` (the global one; metrics with their own default show it on their line) or
    ``0.02, f1=0.01``."""
    if tolerance is None:
        return "0.02"
    if not isinstance(tolerance, dict):
        return f"{tolerance:g}"
    rest = [f"{k}={v:g}" for k, v in tolerance.items() if k != "*"]
    return ", ".join([f"{tolerance.get('*', 0.02):g}", *rest])


def parse_gate(text: str) -> list[str]:
    """``--gate f1,ece``: metric names with a better direction (`UsageError` otherwise)."""
    from embscope.diagnostics.registry import info

    names = parse_metric_names(text, "--gate")
    for name in names:
        if info(name) is None or info(name).direction is None:
            raise UsageError(
                "--gate",
                f"{name!r} is not a metric with a better direction",
                "name metrics of report.json that can regress, e.g. f1,ece",
            )
    return names


def _incomparable(error: Any, option: str, path: str, against: str) -> UsageError:
    """The one line for reports that cannot be compared: other data (`DifferentData`) or other
    classes, logits or space."""
    from embscope.diagnostics.compare import DifferentData

    if isinstance(error, DifferentData):
        return UsageError(
            option,
            f"{path} was computed on other data than {against}: {'; '.join(error.differences)}",
            "give a report of the same data, or pass --allow-different-data",
        )
    fix = (
        "check chosen metrics with --metrics NAME,NAME, or give a baseline of the same "
        "classes, logits and space"
        if option == "--baseline"
        else "compare chosen metrics with --metrics NAME,NAME"
    )
    if option == "--baseline":
        what = f"{path} cannot be compared with {against}: {'; '.join(error.differences)}"
    else:
        what = f"cannot be compared with {against}: {'; '.join(error.differences)}"
    return UsageError(option, what, fix)


def _one_or_all(values: list) -> Any:
    return values[0] if len(values) == 1 else values


def regressions(
    report: Any,
    baseline: Any,
    *,
    baseline_path: str | Path | list,
    tolerance: float | dict[str, float] | None,
    metrics: list[str] | None,
    gate: list[str] | None = None,
    allow_different_data: bool = False,
) -> list[Any]:
    """``check_regression`` against one baseline or several (lists of reports and paths); a
    baseline that cannot be compared, or is of other data, is a `UsageError` (exit 2)."""
    from embscope.diagnostics import check_regression
    from embscope.diagnostics.compare import IncomparableReports

    baselines = baseline if isinstance(baseline, list) else [baseline]
    paths = [
        str(p) for p in (baseline_path if isinstance(baseline_path, list) else [baseline_path])
    ]
    try:
        return check_regression(
            report,
            _one_or_all(baselines),
            tolerance=tolerance,
            metrics=metrics,
            gate=gate,
            allow_different_data=allow_different_data,
        )
    except IncomparableReports as error:
        # several baselines: the library names them baseline1, baseline2, ... in that order
        which = _named_side(error, "baseline", paths)
        raise _incomparable(error, "--baseline", which, "this run") from error
    except ValueError as error:  # a metric named by --metrics that a report lacks, or "n"
        raise UsageError(
            "--metrics", str(error), "name metrics both reports hold, with a better direction"
        ) from error


def _named_side(error: Any, prefix: str, paths: list[str]) -> str:
    """The path of the baseline an error is about (sides "baseline2", "A3", ...)."""
    side = next((s for s in error.sides if s.startswith(prefix)), "")
    if len(paths) > 1 and side.startswith(prefix) and side[len(prefix) :].isdigit():
        return paths[int(side[len(prefix) :]) - 1]
    return paths[0]


def compare_reports(
    report_a: Any,
    report_b: Any,
    *,
    paths: tuple[Any, str],
    metrics: list[str] | None,
    tolerance: float | dict[str, float] | None = None,
    gate: list[str] | None = None,
    allow_different_data: bool = False,
) -> Any:
    """``compare`` of B against A, or against several baselines (``report_a`` and
    ``paths[0]`` lists); reports that cannot be compared are a `UsageError` (exit 2)."""
    from embscope.diagnostics import compare
    from embscope.diagnostics.compare import IncomparableReports

    baselines = report_a if isinstance(report_a, list) else [report_a]
    names = [str(p) for p in (paths[0] if isinstance(paths[0], list) else [paths[0]])]
    try:
        return compare(
            _one_or_all(baselines),
            report_b,
            metrics=metrics,
            tolerance=tolerance,
            gate=gate,
            allow_different_data=allow_different_data,
        )
    except IncomparableReports as error:
        raise _incomparable(
            error, str(paths[1]), str(paths[1]), _named_side(error, "A", names)
        ) from error
    except ValueError as error:
        raise UsageError("--metrics", str(error), "name metrics both reports hold") from error


def load_report(path: str | Path, option: str) -> Any:
    """Read an embscope report.json (or the one in a report folder) as a ``Report``;
    `UsageError` naming ``option`` otherwise."""
    from embscope.diagnostics import InputError, Report

    try:
        return Report.load(path)
    except InputError as error:
        raise UsageError(option, f"{error.subject} {error.what}", error.fix()) from error


def model_names(paths: list[str]) -> list[str]:
    """Short names of report paths: a report folder's name (``runs/bce/report.json`` and
    ``runs/bce`` -> ``bce``), else the file's name; the whole path where names would repeat."""
    names = []
    for p in paths:
        path = Path(p)
        names.append(path.parent.name if path.suffix == ".json" and path.parent.name else path.name)
    if len(set(names)) < len(names) or not all(names):
        return [str(p) for p in paths]
    return names


def rank_reports(args: Any) -> int:
    """``diagnose compare A.json B.json C.json ...``: `compare_many`'s ranked table."""
    from embscope.diagnostics.compare import IncomparableReports
    from embscope.diagnostics.ranking import compare_many

    paths = [str(p) for p in args.many]
    twice = sorted({p for p in paths if paths.count(p) > 1})
    if twice:
        raise UsageError("diagnose compare", f"{twice[0]} is given twice", "give each report once")
    reports = [load_report(p, p) for p in paths]
    names = model_names(paths)
    metrics = parse_metric_names(args.metrics) if args.metrics is not None else None
    if metrics is None and args.gate is not None:
        metrics = parse_gate(args.gate)
    try:
        ranking = compare_many(
            reports,
            names,
            rank_by=args.rank_by,
            metrics=metrics,
            tolerance=tolerance_value(args.tolerance),
            allow_different_data=args.allow_different_data,
        )
    except IncomparableReports as error:
        path = paths[names.index(error.sides[1])] if error.sides[1] in names else paths[-1]
        against = paths[names.index(error.sides[0])] if error.sides[0] in names else paths[0]
        raise _incomparable(error, path, path, against) from error
    except ValueError as error:
        option = "--rank-by" if args.rank_by and "rank_by" in str(error) else "--metrics"
        raise UsageError(option, str(error), "name metrics every report holds") from error
    print(ranking.to_markdown().rstrip())
    return 0


def checkpoint_lines(report: Any, baseline: Any, paths: list[str]) -> list[str]:
    """Whether the run and each baseline come from the same weights (`provenance`)."""
    from embscope.diagnostics.provenance import checkpoint_phrase

    baselines = baseline if isinstance(baseline, list) else [baseline]
    return [
        checkpoint_phrase(b, report, (str(p), "this run"))
        + (f" ({p})" if len(baselines) > 1 else "")
        for b, p in zip(baselines, paths, strict=False)
        if b.meta.get("checkpoint") or report.meta.get("checkpoint")  # precomputed: nothing to say
    ]
