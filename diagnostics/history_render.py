"""Rendering a `History`: trend plots (PNG) and one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from .advice import DEFAULT_THRESHOLDS
from .render_text import evidence_text, fmt

# (title, metric, threshold line or None); a plot is drawn when the history holds its metric
PLOTS = (
    ("margin_median", None),
    ("gray_zone_fraction", None),
    ("confident_error_rate", None),
    ("score_ks", DEFAULT_THRESHOLDS["score_ks"]),
    ("fisher_ratio", DEFAULT_THRESHOLDS["fisher_ratio"]),
    ("intra_inter_ratio", DEFAULT_THRESHOLDS["intra_inter_ratio"]),
    ("ece", None),
    ("eer", None),
)
SPLIT_STYLE = {"val": ("C0", "validation"), "train": ("C1", "training")}


def _series(history, metric: str, split: str) -> dict:
    if metric == "confident_error_rate":
        s = history.series("confident_error_count", split)
        n = history.series("n", split)["value"]
        return {**s, "value": s["value"] / n, "low": s["low"] / n, "high": s["high"] / n}
    return history.series(metric, split)


def _plot(history, metric: str, threshold: float | None) -> bytes | None:
    from matplotlib.figure import Figure

    drawn = False
    fig = Figure(figsize=(4.6, 2.9))
    fig.subplots_adjust(left=0.15, right=0.97, bottom=0.17, top=0.87)
    ax = fig.add_subplot()
    for split, (color, label) in SPLIT_STYLE.items():
        s = _series(history, metric, split)
        if not np.any(np.isfinite(s["value"])):
            continue
        drawn = True
        ax.plot(s["epoch"], s["value"], marker="o", markersize=3, color=color, label=label)
        if np.any(np.isfinite(s["low"])):
            ax.fill_between(s["epoch"], s["low"], s["high"], color=color, alpha=0.2, lw=0)
    if not drawn:
        return None
    if threshold is not None:
        ax.axhline(threshold, color="grey", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_title(metric, fontsize=10)
    ax.set_xlabel("epoch", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def history_plots(history) -> dict[str, bytes]:
    """metric -> PNG of its values and intervals per epoch (validation, and training where
    present): the task metric first, then the metrics the trend rules read."""
    out = {}
    for metric, threshold in ((history.task_metric, None), *PLOTS):
        if metric not in out:
            png = _plot(history, metric, threshold)
            if png is not None:
                out[metric] = png
    return out


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}
.broken{color:#b00020}.holds{color:#1b6e20}.inconclusive{color:#666}
.plots img{max-width:48%;margin:4px;border:1px solid #eee}
"""


def history_html(history, trends: list) -> str:
    """One page: the verdicts with their evidence, then the trend plots (inline PNGs)."""
    e = html.escape
    val = history.epochs("val")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>embscope history</title>",
        f"<style>{_CSS}</style></head><body><h1>embscope training history</h1>",
        f"<p>{len(val)} validation reports"
        + (f", epochs {val[0]}-{val[-1]}" if val else "")
        + f"; task metric <code>{e(history.task_metric)}</code>.</p>",
        "<h2>Trends</h2><ul>",
    ]
    for t in trends:
        value = "" if t.value is None else f" ({e(fmt(float(t.value)))})"
        severity = f" [{e(t.severity)}]" if t.verdict == "broken" else ""
        evidence = "".join(
            f"<li>{e(k)}: {e(evidence_text(v))}</li>" for k, v in t.evidence.items()
        )
        parts.append(
            f"<li><b class='{e(t.verdict)}'>{e(t.verdict)}</b>{severity} <code>{e(t.rule)}</code>"
            f"{value}: {e(t.reason)}<ul>{evidence}</ul></li>"
        )
    parts.append("</ul><h2>Plots</h2><div class='plots'>")
    for name, png in history_plots(history).items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<img alt='{e(name)}' src='data:image/png;base64,{data}'>")
    parts.append("</div></body></html>")
    return "\n".join(parts)
