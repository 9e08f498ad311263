"""A report as Markdown (report.md, for pull requests): where it came from, the
recommendations with their evidence, the key metrics, the classes, the largest confusions, the
hardest samples and every metric by group."""

from __future__ import annotations

from .render_text import (
    KEY_METRICS,
    class_columns,
    direction_text,
    evidence_text,
    fmt,
    group_title,
    grouped_metrics,
    interval_text,
    level_text,
    note_text,
    provenance,
    report_title,
    shown_metrics,
    undefined_line,
)
from .sections import Confusion, Hardest

MAX_CLASS_ROWS = 50  # the classes table lists this many classes (report.json has them all)
MAX_CONFUSION_ROWS = 10


def _table(header: list[str], rows: list[list[str]], right: int = 1) -> list[str]:
    align = ["---"] + ["---:"] * right + ["---"] * (len(header) - 1 - right)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def report_markdown(report, *, created: str | None = None) -> str:
    lines = [f"# {report_title(report)}", ""]
    lines += [f"- {label}: {text}" for label, text in provenance(report, created)]
    lines.append("")
    if report.recommendations:
        lines += ["## Recommendations", ""]
        for r in report.recommendations:
            value = f" (suggested value: {fmt(r.value)})" if r.value is not None else ""
            lines.append(f"- **{r.severity}** `{r.action}`{value}: {r.reason}")
            for name, e in r.evidence.items():
                lines.append(f"  - {name}: {evidence_text(e)}")
        lines.append("")
    level = level_text(report)
    shown, undefined = shown_metrics(report, KEY_METRICS)
    lines += ["## Key metrics", ""]
    lines += _table(
        ["metric", "value", level, "better"],
        [[k, fmt(report.metrics[k]), interval_text(report, k), _better(k)] for k in shown],
        right=2,
    )
    note = undefined_line(undefined)
    if note:
        lines += ["", note]
    lines += _classes(report)
    lines += _confusions(report)
    lines += _hardest(report)
    lines += ["", "## All metrics"]
    for group, names in grouped_metrics(report):
        lines += ["", f"### {group_title(group)}", ""]
        lines += _table(
            ["metric", "value", level, "better", "note"],
            [
                [
                    k,
                    fmt(report.metrics[k]),
                    interval_text(report, k),
                    _better(k),
                    note_text(report, k),
                ]
                for k in names
            ],
            right=2,
        )
    if getattr(report, "interval_methods", None):
        lines += ["", "How each interval was obtained (or why a metric has none): report.json's"]
        lines += ["`interval_methods`."]
    return "\n".join(lines) + "\n"


def _better(name: str) -> str:
    return direction_text(name)


def _classes(report) -> list[str]:
    found = class_columns(report)
    if found is None:
        return []
    table, header, cells, _ = found
    rows = [cells(r) for r in table.rows[:MAX_CLASS_ROWS]]
    lines = ["", "## Classes", ""] + _table(header, rows, right=len(header) - 1)
    if len(table.rows) > MAX_CLASS_ROWS:
        lines.append(f"\n({len(table.rows) - MAX_CLASS_ROWS} more classes in report.json)")
    return lines


def _confusions(report) -> list[str]:
    conf = report.sections.get("confusion")
    if not isinstance(conf, Confusion) or not conf.largest:
        return []
    rows = [[str(t), str(p), str(c)] for t, p, c in conf.largest[:MAX_CONFUSION_ROWS]]
    return ["", "## Largest confusions", ""] + _table(
        ["true class", "predicted", "samples"], rows, right=2
    )


def _hardest(report) -> list[str]:
    hardest = report.sections.get("hardest")
    if not isinstance(hardest, Hardest) or not hardest.rows:
        return []
    rows = [
        [
            h.id,
            str(h.label),
            "" if h.predicted is None else str(h.predicted),
            "" if h.top_prob is None else fmt(h.top_prob),
            fmt(h.margin),
        ]
        for h in hardest.rows
    ]
    return ["", "## Hardest samples", ""] + _table(
        ["id", "label", "predicted", "P(predicted)", "margin"], rows, right=4
    )
