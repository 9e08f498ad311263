"""The report: typed data first (metrics, sections, recommendations), rendering separately."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .registry import direction  # re-exported: report.direction
from .sections import parse_sections, sections_to_dict

SCHEMA = "embscope.report/1"
NAN = float("nan")


def _clean(value):
    """JSON-safe: nan/inf become strings so the file stays valid JSON; tuples become lists."""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _clean(value.item())
    return value


def _unclean_number(value):
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return value


@dataclass(frozen=True)
class Recommendation:
    """One piece of advice: what to do, how urgent, an optional suggested value, why, and the
    measurements it rests on (``evidence``: metric -> {"value", "threshold", "op"})."""

    action: str
    severity: str  # "error" | "warning" | "info"
    reason: str
    value: float | None = None
    evidence: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return _clean(
            {
                "action": self.action,
                "severity": self.severity,
                "value": self.value,
                "reason": self.reason,
                "evidence": self.evidence,
            }
        )

    @classmethod
    def from_dict(cls, d: dict) -> Recommendation:
        ev = {
            k: {kk: _unclean_number(vv) for kk, vv in v.items()}
            if isinstance(v, dict)
            else _unclean_number(v)
            for k, v in d.get("evidence", {}).items()
        }
        return cls(d["action"], d["severity"], d["reason"], _unclean_number(d.get("value")), ev)


@dataclass(frozen=True)
class Report:
    """A diagnostics report.

    metrics: flat mapping of dotted name -> number (what CI compares; nan when undefined).
    reasons: why a metric is nan, or how it was obtained (e.g. "binned", "sampled").
    sampled: for metrics computed on the bounded reservoir, {"exact", "sample_size", "population"}.
    sections: what the plots and tables are drawn from, typed (``sections.py``: histograms,
        reliability, logit columns, class margins, confusion, classes, hardest samples, head,
        PCA); the dict form of report.json given here is read into those types, and sections
        of other names (e.g. ``"thumbnails"``: id -> base64 PNG) are kept as given.
    recommendations: advice with its evidence.
    meta: schema and the options the report was computed with; ``meta["data"]`` the data's
        fingerprint (n, class counts, hashes of the labels and ids; `intervals.fingerprint`).
    intervals: metric -> [low, high], the ``interval_level`` (0.95) interval of its value.
    interval_level: the level of ``intervals`` (None: a report without intervals).
    interval_methods: metric -> how its interval was obtained, or why it has none.
    samples: per-sample values for paired comparisons (label, pred, margin, top_prob, gray,
        id_hash), saved next to report.json as samples.npz; None when not kept.
    """

    metrics: dict
    reasons: dict = field(default_factory=dict)
    sampled: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)
    recommendations: list = field(default_factory=list)
    meta: dict = field(default_factory=lambda: {"schema": SCHEMA})
    intervals: dict = field(default_factory=dict)
    interval_level: float | None = None
    interval_methods: dict = field(default_factory=dict)
    samples: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sections", parse_sections(self.sections))

    def with_recommendations(self, recs: list) -> Report:
        return replace(self, recommendations=list(recs))

    # -- data ----------------------------------------------------------------------------------
    @staticmethod
    def direction(name: str) -> str | None:
        return direction(name)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "metrics": _clean({k: float(v) for k, v in self.metrics.items()}),
            "reasons": dict(self.reasons),
            "sampled": _clean(self.sampled),
            "recommendations": [r.to_dict() for r in self.recommendations],
            "sections": _clean(sections_to_dict(self.sections)),
            "meta": _clean({**self.meta, "schema": SCHEMA}),
            **(
                {
                    "intervals": _clean(self.intervals),
                    "interval_level": self.interval_level,
                    "interval_methods": dict(self.interval_methods),
                }
                if self.interval_level is not None
                else {}
            ),
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            found = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not an embscope report: expected schema {SCHEMA!r}, got {found!r}")
        metrics = {k: float(_unclean_number(v)) for k, v in d["metrics"].items()}
        return cls(
            metrics=metrics,
            reasons=dict(d.get("reasons", {})),
            sampled=d.get("sampled", {}),
            sections=d.get("sections", {}),
            recommendations=[Recommendation.from_dict(r) for r in d.get("recommendations", [])],
            meta=d.get("meta", {"schema": SCHEMA}),
            intervals={
                k: [float(_unclean_number(x)) for x in v]
                for k, v in (d.get("intervals") or {}).items()
            },
            interval_level=d.get("interval_level"),
            interval_methods=dict(d.get("interval_methods") or {}),
        )

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))

    def to_frame(self):
        """pandas DataFrame, one row per metric: name, value, the interval's low and high (nan
        without one), direction, exact, reason and how the interval was obtained."""
        import pandas as pd

        rows = [
            {
                "metric": k,
                "value": v,
                "low": self.intervals.get(k, (NAN, NAN))[0],
                "high": self.intervals.get(k, (NAN, NAN))[1],
                "direction": direction(k),
                "exact": self.sampled.get(k, {}).get("exact", True),
                "reason": self.reasons.get(k, ""),
                "interval": self.interval_methods.get(k, ""),
            }
            for k, v in self.metrics.items()
        ]
        return pd.DataFrame(rows).set_index("metric")

    # -- rendering (separate module) -------------------------------------------------------------
    def to_markdown(self) -> str:
        from .render import report_markdown

        return report_markdown(self)

    def to_html(self, plots: dict[str, bytes] | None = None) -> str:
        """One self-contained page; ``plots`` (from :meth:`plot_pngs`) avoids re-rendering."""
        from .render import report_html

        return report_html(self, plots)

    def plot_pngs(self) -> dict[str, bytes]:
        from .render import report_plots

        return report_plots(self)

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        """A short summary: samples and classes, headline metrics, recommendations."""
        return _summary(self)

    # -- files ---------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str], force: bool = False) -> list[Path]:
        """Write report.json, report.md, report.html and plots/*.png into ``folder`` (as the
        ``diagnose`` command does) and return their paths.

        Atomic: the report is written into a new folder next to ``folder`` and swapped in
        whole, keeping the user's own files of an earlier folder. An earlier report
        is replaced only with ``force=True``; a refusal is an `InputError` (a ValueError), a
        failed write the `OSError`, and ``folder`` is then as it was (see
        `embscope.diagnostics.output`).
        """
        from .output import save_report

        return save_report(self, folder, force=force)

    @classmethod
    def load(cls, source: str | os.PathLike[str]) -> Report:
        """The report in a report.json file, or in a report folder written by :meth:`save`.

        Raises `InputError` (a ValueError) naming the path and what is wrong with it.
        """
        from .output import read_report

        return read_report(source, cls.from_dict)


SUMMARY_REASON_CHARS = 100  # a recommendation's reason in the summary is cut to this length
SUMMARY_RECOMMENDATIONS = 6


def _summary(report: Report) -> str:
    from .render import KEY_METRICS

    m = report.metrics

    def number(value: float) -> str:
        if math.isfinite(value) and value == int(value) and abs(value) < 1e12:
            return str(int(value))
        return f"{value:.4g}"

    head = f"<embscope Report: n = {number(m.get('n', NAN))}"
    if "num_classes" in m:
        head += f", {number(m['num_classes'])} classes"
    if report.meta.get("space"):
        head += f", {report.meta['space']} space"
    lines = [head + ">"]
    named = [k for k in KEY_METRICS if k in m and k not in ("n", "num_classes")]
    shown = [k for k in named if not math.isnan(m[k])]
    width = max((len(k) for k in shown), default=0)
    for name in shown:
        better = direction(name)
        lines.append(
            f"  {name:<{width}}  {number(m[name]):>8}"
            + (f"  ({better} is better)" if better else "")
        )
    undefined = [k for k in named if math.isnan(m[k])]
    if undefined:
        lines.append(f"  undefined here (see report.reasons): {', '.join(undefined)}")
    recs = report.recommendations
    lines.append("recommendations:" if recs else "recommendations: none")
    for rec in recs[:SUMMARY_RECOMMENDATIONS]:
        value = "" if rec.value is None else f" -> {number(float(rec.value))}"
        reason = " ".join(str(rec.reason).split())
        if len(reason) > SUMMARY_REASON_CHARS:
            reason = reason[: SUMMARY_REASON_CHARS - 3] + "..."
        lines.append(f"  [{rec.severity}] {rec.action}{value}: {reason}")
    if len(recs) > SUMMARY_RECOMMENDATIONS:
        lines.append(f"  ... and {len(recs) - SUMMARY_RECOMMENDATIONS} more")
    return "\n".join(lines)
