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


def load_report(path: str | Path, option: str) -> Any:
    """Read an embscope report.json as a ``Report``; `UsageError` naming ``option`` otherwise."""
    from embscope.diagnostics import Report

    path = Path(path)
    if path.is_dir() and (path / "report.json").is_file():
        path = path / "report.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise UsageError(
            option, f"{path} does not exist", "give the report.json of an earlier run"
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(
            option, f"{path} cannot be read ({error})", "give the report.json of an earlier run"
        ) from error
    try:
        return Report.from_json(text)
    except json.JSONDecodeError as error:
        raise UsageError(
            option,
            f"{path} is not JSON ({error.msg}, line {error.lineno})",
            "give a report.json written by diagnose",
        ) from error
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(
            option,
            f"{path} is not an embscope report ({error})",
            "give a report.json written by diagnose",
        ) from error
