"""CI verdicts: ``--fail-on`` rules and reading earlier reports for ``--baseline``/``compare``."""

from __future__ import annotations

import difflib
import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embscope.cli.errors import UsageError, one_line

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
    """Read an embscope report.json as a ``Report``; `UsageError` naming ``option`` otherwise."""
    from embscope.cli.checkpoint import path_problem
    from embscope.diagnostics import Report

    path = Path(path)
    if path.is_dir() and (path / "report.json").is_file():
        path = path / "report.json"
    fix = "give the report.json of an earlier run"
    problem = path_problem(path)
    if problem is not None:
        raise UsageError(option, f"{path} {problem}", fix)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise UsageError(option, f"{path} does not exist", fix) from error
    except PermissionError as error:
        raise UsageError(option, f"{path} is not readable", "check its permissions") from error
    except IsADirectoryError as error:
        raise UsageError(option, f"{path} is a folder without a report.json", fix) from error
    except UnicodeDecodeError as error:
        raise UsageError(option, f"{path} is not text (not UTF-8)", fix) from error
    except OSError as error:
        raise UsageError(option, f"{path} cannot be read ({error})", fix) from error
    fix = "give a report.json written by diagnose"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(
            option, f"{path} is not JSON ({error.msg}, line {error.lineno})", fix
        ) from error
    except RecursionError as error:
        raise UsageError(option, f"{path} is not a report (JSON nested too deeply)", fix) from error
    problem = _report_shape(data)
    if problem is not None:
        raise UsageError(option, f"{path} is not an embscope report ({problem})", fix)
    try:
        return Report.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UsageError(
            option, f"{path} is not an embscope report ({one_line(str(error), 200)})", fix
        ) from error


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), "a number")


def _report_shape(data: Any) -> str | None:
    """What is wrong with the structure of a parsed report.json; None when it has the shape
    ``Report.from_dict`` reads (the schema itself is checked there)."""
    if not isinstance(data, dict):
        return f"it holds {_json_type(data)}, not an object"
    if "metrics" not in data:
        return "it has no 'metrics'"
    metrics = data["metrics"]
    if not isinstance(metrics, dict):
        return f"its 'metrics' is {_json_type(metrics)}, not an object of name -> number"
    for name, value in metrics.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number and value not in ("nan", "inf", "-inf"):
            return f"metric {name!r} is {_json_type(value)}, not a number"
    for key in ("reasons", "sampled", "sections", "meta"):
        if key in data and not isinstance(data[key], dict):
            return f"its {key!r} is {_json_type(data[key])}, not an object"
    recs = data.get("recommendations", [])
    if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
        return "its 'recommendations' is not a list of objects"
    return None
