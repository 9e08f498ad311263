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


def broken_rules(rules: list[Rule], metrics: Mapping[str, float]) -> list[str]:
    """A line per broken rule; `UsageError` for a rule naming a metric the report lacks."""
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


def regressions(
    report: Any,
    baseline: Any,
    *,
    baseline_path: str | Path,
    tolerance: float,
    metrics: list[str] | None,
) -> list[Any]:
    """``check_regression``; a baseline that cannot be compared is a `UsageError` (exit 2)."""
    from embscope.diagnostics import check_regression
    from embscope.diagnostics.advice import IncomparableReports

    try:
        return check_regression(report, baseline, tolerance=tolerance, metrics=metrics)
    except IncomparableReports as error:
        raise UsageError(
            "--baseline",
            f"{baseline_path} cannot be compared with this run: {'; '.join(error.differences)}",
            "check chosen metrics with --metrics NAME,NAME, or give a baseline of the same "
            "classes, logits and space",
        ) from error
    except ValueError as error:  # a metric named by --metrics that a report lacks, or "n"
        raise UsageError(
            "--metrics", str(error), "name metrics both reports hold, with a better direction"
        ) from error


def compare_reports(
    report_a: Any, report_b: Any, *, paths: tuple[str, str], metrics: list[str] | None
) -> Any:
    """``compare``; reports that cannot be compared are a `UsageError` (exit 2)."""
    from embscope.diagnostics import compare
    from embscope.diagnostics.advice import IncomparableReports

    try:
        return compare(report_a, report_b, metrics=metrics)
    except IncomparableReports as error:
        raise UsageError(
            paths[1],
            f"cannot be compared with {paths[0]}: {'; '.join(error.differences)}",
            "compare chosen metrics with --metrics NAME,NAME",
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
