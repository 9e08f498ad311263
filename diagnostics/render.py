"""Rendering a Report: Markdown, a self-contained HTML page, and PNG plots.

Everything here reads only the report's data, so a report loaded from JSON renders the same.
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

from .registry import headline_keys
from .render_views import views_html  # noqa: F401  (registers its section)

KEY_METRICS = headline_keys()  # the summary's metrics, from the registry


def fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v == int(v) and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4g}"
    return str(v)


def key_metrics(report) -> list[tuple[str, float]]:
    return [(k, report.metrics[k]) for k in KEY_METRICS if k in report.metrics]


def interval_text(report, name: str) -> str:
    """ "[low, high]" of a metric's interval, or "" when it has none."""
    iv = getattr(report, "intervals", {}).get(name)
    if not iv:
        return ""
    return f"[{fmt(float(iv[0]))}, {fmt(float(iv[1]))}]"


def _level(report) -> str:
    level = getattr(report, "interval_level", None)
    return f"{level:.0%} interval" if level else "interval"


def _metric_rows(report) -> list[tuple[str, str, str, str, str]]:
    from .report import direction

    rows = []
    for k, v in report.metrics.items():
        d = direction(k) or ""
        note = report.reasons.get(k, "")
        s = report.sampled.get(k)
        if s and not s.get("exact", True):
            note = (
                note + "; " if note else ""
            ) + f"sampled {s['sample_size']} of {s['population']}"
        rows.append((k, fmt(v), interval_text(report, k), d, note))
    return rows


def report_markdown(report) -> str:
    lines = ["# embscope report", ""]
    if report.recommendations:
        lines += ["## Recommendations", ""]
        for r in report.recommendations:
            value = f" (suggested value: {fmt(r.value)})" if r.value is not None else ""
            lines.append(f"- **{r.severity}** `{r.action}`{value}: {r.reason}")
            for name, e in r.evidence.items():
                lines.append(f"  - {name}: {_evidence_text(e)}")
        lines.append("")
    level = _level(report)
    lines += ["## Key metrics", "", f"| metric | value | {level} |", "|---|---:|---:|"]
    lines += [f"| {k} | {fmt(v)} | {interval_text(report, k)} |" for k, v in key_metrics(report)]
    classes = report.sections.get("classes") or []
    if classes:
        cols = list(classes[0].keys())
        lines += ["", "## Classes", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in classes[:50]:
            lines.append("| " + " | ".join(fmt(row[c]) for c in cols) + " |")
        if len(classes) > 50:
            lines.append(f"\n({len(classes) - 50} more classes in report.json)")
    hardest = report.sections.get("hardest") or []
    if hardest:
        lines += ["", "## Hardest samples", "", "| id | label | margin |", "|---|---:|---:|"]
        lines += [f"| {h['id']} | {h['label']} | {fmt(h['margin'])} |" for h in hardest]
    lines += [
        "",
        "## All metrics",
        "",
        f"| metric | value | {level} | better | note |",
        "|---|---:|---:|---|---|",
    ]
    lines += [f"| {k} | {v} | {i} | {d} | {n} |" for k, v, i, d, n in _metric_rows(report)]
    if getattr(report, "interval_methods", None):
        lines += ["", "How each interval was obtained (or why a metric has none): report.json's"]
        lines += ["`interval_methods`."]
    return "\n".join(lines) + "\n"


def _evidence_text(e) -> str:
    if not isinstance(e, dict):
        return fmt(e)
    if "fired" in e:  # a rule's track record
        return (
            f"fired in {fmt(e['fired'])} models; {e.get('target') or 'target'} improved in "
            f"{fmt(e.get('target_improved'))}, task metric not worse in "
            f"{fmt(e.get('task_not_worse'))}"
        )
    parts = [f"{fmt(e.get('value'))}"]
    if isinstance(e.get("interval"), (list, tuple)) and len(e["interval"]) == 2:
        parts.append(f"[{fmt(e['interval'][0])}, {fmt(e['interval'][1])}]")
    if "threshold" in e:
        parts.append(f"(rule: {e.get('op', '')} {fmt(e['threshold'])})")
    if "baseline" in e:
        parts.append(f"(baseline {fmt(e['baseline'])})")
    if "how" in e:
        parts.append(f"[{e['how']}]")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def _figure(width: float = 6.0, height: float = 3.2):
    """A bare Agg figure with fixed margins: no pyplot state, one draw per savefig."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.16, top=0.88)
    return fig, fig.add_subplot()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def _hist_plot(h: dict, title: str, density: bool = True) -> bytes:
    fig, ax = _figure()
    edges = np.asarray(h["edges"], dtype=float)
    for name, counts in h["counts"].items():
        c = np.asarray(counts, dtype=float)
        if density and c.sum() > 0:
            c = c / c.sum()
        ax.stairs(c, edges, label=f"{name} (n={int(np.sum(counts))})", fill=False, linewidth=1.5)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(h.get("xlabel", ""))
    ax.set_ylabel("share of samples" if density else "count")
    if len(h["counts"]) <= 10:
        ax.legend(fontsize=8)
    return _png(fig)


def report_plots(report) -> dict[str, bytes]:
    """name -> PNG bytes for every plot the report's data supports."""
    out = {}
    m = report.metrics
    hists = report.sections.get("histograms", {})
    if "score" in hists:
        out["scores"] = _hist_plot(
            hists["score"],
            f"Scores by true class: KS {fmt(m.get('score_ks', math.nan))}, "
            f"Hellinger {fmt(m.get('score_hellinger', math.nan))}",
        )
    if "margin" in hists:
        out["margins"] = _hist_plot(
            {**hists["margin"], "xlabel": "logit margin (true minus best other)"},
            f"Logit margins: median {fmt(m.get('margin_median', math.nan))}, "
            f"negative {fmt(m.get('negative_margin_fraction', math.nan))}",
        )
    if "angle" in hists:
        out["angles"] = _hist_plot(
            hists["angle"],
            f"Angles to class weights (ArcFace Fig. 4): fallback share "
            f"{fmt(m.get('fallback_fraction', math.nan))}",
        )
    if "pair" in hists:
        out["pairs"] = _hist_plot(
            hists["pair"],
            f"Genuine vs impostor pairs: KS {fmt(m.get('pair_ks', math.nan))}, "
            f"EER {fmt(m.get('eer', math.nan))}",
        )
    rel = report.sections.get("reliability")
    if rel and rel.get("count"):
        out["reliability"] = _reliability_plot(
            rel,
            f"Reliability: ECE {fmt(m.get('ece', math.nan))}, "
            f"MCE {fmt(m.get('mce', math.nan))}, "
            f"fitted T {fmt(m.get('fitted_temperature', math.nan))}",
        )
    cols = report.sections.get("logit_columns")
    if cols and len(cols["col"]) <= 16:
        out["logit_columns"] = _logit_columns_plot(cols)
    pca = report.sections.get("pca")
    if pca and pca.get("x"):
        out["pca"] = _pca_plot(pca)
    return out


def _reliability_plot(rel: dict, title: str) -> bytes:
    """Accuracy per confidence bin (bars over the bins), each bin's mean confidence against its
    accuracy (points; empty bins have none) and the diagonal of perfect calibration."""
    fig, ax = _figure(4.5, 4.5)
    edges = np.asarray(rel["edges"], dtype=float)
    acc = np.asarray(rel["accuracy"], dtype=float)  # "nan" (a report read from JSON) too
    conf = np.asarray(rel["confidence"], dtype=float)
    count = np.asarray(rel["count"], dtype=float)
    ax.bar(
        edges[:-1],
        np.nan_to_num(acc),
        np.diff(edges),
        align="edge",
        alpha=0.35,
        edgecolor="tab:blue",
        label="accuracy per bin",
    )
    seen = count > 0
    ax.plot(
        conf[seen], acc[seen], "o", color="tab:blue", markersize=4, label="(confidence, accuracy)"
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def _logit_columns_plot(cols: dict) -> bytes:
    fig, ax = _figure()
    n_cols = len(cols["col"])
    n_cls = len(cols["by_class"])
    width = 0.8 / max(n_cls, 1)
    for k, row in enumerate(cols["by_class"][:16]):
        means = [row[j]["mean"] for j in range(n_cols)]
        stds = [row[j]["std"] for j in range(n_cols)]
        xs = np.arange(n_cols) + (k - (n_cls - 1) / 2) * width
        ax.bar(xs, means, width, yerr=stds, label=f"true class {k}", capsize=2)
    ax.set_xticks(range(n_cols), [f"col{j}" for j in range(n_cols)])
    ax.axhline(0, color="k", linewidth=0.5)
    ax.set_title("Logit columns by true class (mean and std)", fontsize=10)
    if n_cls <= 10:
        ax.legend(fontsize=7)
    return _png(fig)


def _pca_plot(pca: dict) -> bytes:
    from matplotlib import colormaps

    fig, ax = _figure(4.5, 4.5)
    labels = np.asarray(pca["label"])
    uniq = np.unique(labels)
    xs, ys = np.asarray(pca["x"]), np.asarray(pca["y"])
    if len(uniq) <= 10:
        cmap = colormaps["tab10"]
        for i, c in enumerate(uniq):
            sel = labels == c
            ax.scatter(xs[sel], ys[sel], s=6, color=cmap(i), label=str(c), alpha=0.7)
    else:  # one call for many classes, coloured by class rank
        rank = np.searchsorted(uniq, labels)
        ax.scatter(xs, ys, s=6, c=rank, cmap=colormaps["viridis"], alpha=0.7)
    ax.set_title("2-D PCA of embeddings by class", fontsize=10)
    if len(uniq) <= 10:
        ax.legend(fontsize=7, markerscale=2)
    return _png(fig)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.error{color:#b00020}.warning{color:#a15c00}.info{color:#235a97}
.plots img{max-width:48%;margin:4px;border:1px solid #eee}
"""


def report_html(report, plots: dict[str, bytes] | None = None) -> str:
    """One self-contained HTML page (inline PNG plots, no external resources)."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>embscope report</title>",
        f"<style>{_CSS}</style></head><body><h1>embscope report</h1>",
    ]
    if report.recommendations:
        parts.append("<h2>Recommendations</h2><ul>")
        for r in report.recommendations:
            value = f" (suggested value: {e(fmt(r.value))})" if r.value is not None else ""
            ev = "".join(f"<li>{e(k)}: {e(_evidence_text(v))}</li>" for k, v in r.evidence.items())
            parts.append(
                f"<li><b class='{e(r.severity)}'>{e(r.severity)}</b> <code>{e(r.action)}</code>"
                f"{value}: {e(r.reason)}<ul>{ev}</ul></li>"
            )
        parts.append("</ul>")
    level = _level(report)
    parts.append(
        f"<h2>Key metrics</h2><table><tr><th>metric</th><th>value</th><th>{e(level)}</th></tr>"
    )
    parts += [
        f"<tr><td>{e(k)}</td><td class='num'>{e(fmt(v))}</td>"
        f"<td class='num'>{e(interval_text(report, k))}</td></tr>"
        for k, v in key_metrics(report)
    ]
    parts.append("</table><h2>Plots</h2><div class='plots'>")
    for name, png in (report_plots(report) if plots is None else plots).items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<img alt='{e(name)}' src='data:image/png;base64,{data}'>")
    parts.append("</div>")
    hardest = report.sections.get("hardest") or []
    if hardest:
        parts.append(
            "<h2>Hardest samples</h2><table><tr><th>id</th><th>label</th><th>margin</th></tr>"
        )
        parts += [
            f"<tr><td>{e(str(h['id']))}</td><td class='num'>{h['label']}</td>"
            f"<td class='num'>{e(fmt(h['margin']))}</td></tr>"
            for h in hardest
        ]
        parts.append("</table>")
    parts.append(
        f"<h2>All metrics</h2><table><tr><th>metric</th><th>value</th><th>{e(level)}</th>"
        "<th>better</th><th>note</th></tr>"
    )
    methods = getattr(report, "interval_methods", {}) or {}
    parts += [
        f"<tr><td>{e(k)}</td><td class='num'>{e(v)}</td>"
        f"<td class='num' title='{e(methods.get(k, ''))}'>{e(i)}</td><td>{e(d)}</td>"
        f"<td>{e(n)}</td></tr>"
        for k, v, i, d, n in _metric_rows(report)
    ]
    parts.append("</table></body></html>")
    return "\n".join(parts)
