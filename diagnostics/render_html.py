"""A report as one self-contained HTML page (report.html): no network, no JavaScript.

The page answers, in order: where the report came from (header), what to do (recommendations
and their evidence), the headline metrics with their direction and interval, then one part per
question (are the classes separated? are the logits healthy and calibrated? where is the gray
zone and which samples are in it? how do retrieval and verification look?), each with its
metrics and plots, every plot with a line on how to read it; then the metrics of every group,
folded. Sections other tools add are rendered where one registered a renderer for them
(:func:`register_section`).

Over 400 lines: the page's parts, in reading order, in one place; its style sheet
(render_style.py), its words (render_text.py) and its plots (render_plots.py) live apart.
"""

from __future__ import annotations

import base64
import html
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .render_plots import MAX_CLASS_ROWS, report_plots
from .render_style import CSS
from .render_text import (
    GRAY_METRICS,
    GUIDES,
    KEY_METRICS,
    LOGIT_METRICS,
    RETRIEVAL_METRICS,
    SEPARATION_METRICS,
    arrow,
    class_columns,
    direction_text,
    evidence_text,
    fmt,
    group_title,
    grouped_metrics,
    interval_text,
    level_text,
    meaning,
    note_text,
    provenance,
    report_title,
    sampled_text,
    shown_metrics,
    undefined_line,
)
from .sections import ClassMargins, Confusion, Hardest, Head, Histograms

e = html.escape
MAX_CLASSES_SHOWN = 30  # classes listed openly; beyond, those needing attention, the rest folded
MAX_CONFUSIONS_SHOWN = 10


@dataclass(frozen=True)
class ExtraSection:
    """How to render a section another tool adds to ``report.sections[name]``: a title and a
    function of the report returning an HTML fragment (escaped by that function)."""

    name: str
    title: str
    html: Callable


EXTRA_SECTIONS: dict[str, ExtraSection] = {}


def register_section(name: str, title: str, render: Callable) -> None:
    """Render ``report.sections[name]``, when present, as a part of the page titled ``title``,
    after the built-in questions: ``render(report) -> str`` (an HTML fragment; plots as
    :func:`figure`)."""
    EXTRA_SECTIONS[name] = ExtraSection(name, title, render)


# ----------------------------------------------------------------------------------------------
# pieces
# ----------------------------------------------------------------------------------------------


def _png_size(png: bytes) -> tuple[int, int] | None:
    if png[:8] != b"\x89PNG\r\n\x1a\n" or len(png) < 24:
        return None
    return struct.unpack(">II", png[16:24])


def figure(name: str, png: bytes, guide: str, what: str = "") -> str:
    """A plot with its reading guide: ``<figure>`` holding the PNG inline (its alt text the
    plot's name, as in plots/; ``what`` it shows as its title)."""
    data = base64.b64encode(png).decode("ascii")
    size = _png_size(png)
    dims = f" width='{size[0]}' height='{size[1]}'" if size else ""
    return (
        f"<figure class='plot' id='plot-{e(name)}'><img alt='{e(name)}' title='{e(what)}'{dims} "
        f"src='data:image/png;base64,{data}'><figcaption>{e(guide)}</figcaption></figure>"
    )


def _figures(items: list[str]) -> str:
    return f"<div class='plots'>{''.join(items)}</div>" if items else ""


def _card(report, name: str) -> str:
    iv = interval_text(report, name)
    better = direction_text(name)
    tip = "; ".join(t for t in (meaning(name), report.reasons.get(name, "")) if t)
    note = sampled_text(report, name)
    return (
        f"<div class='card' title='{e(tip)}'><div class='name'><code>{e(name)}</code>"
        + (
            f" <span class='dir' title='{e(better)} is better'>{arrow(name)}</span>"
            if better
            else ""
        )
        + f"</div><div class='value'>{e(fmt(report.metrics[name]))}</div>"
        + (f"<div class='iv'>{e(iv)}</div>" if iv else "")
        + (f"<div class='note'>{e(note)}</div>" if note else "")
        + "</div>"
    )


def _cards(report, names) -> str:
    shown, undefined = shown_metrics(report, names)
    out = ""
    if shown:
        out += "<div class='cards'>" + "".join(_card(report, k) for k in shown) + "</div>"
    line = undefined_line(undefined)
    if line:
        out += f"<p class='muted'>{e(line)}</p>"
    return out


def _table(
    header: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), cls: str = ""
) -> str:
    """A table in a horizontally scrolling box (never wider than the page); cells are HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='num'>{c}</td>" if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return (
        f"<div class='scroll'><table class='{cls}'><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


def _section(anchor: str, title: str, body: str, lead: str = "") -> str:
    if not body:
        return ""
    lead_html = f"<p class='lead'>{e(lead)}</p>" if lead else ""
    return f"<section id='{e(anchor)}'><h2>{e(title)}</h2>{lead_html}{body}</section>"


# ----------------------------------------------------------------------------------------------
# the parts of the page
# ----------------------------------------------------------------------------------------------


def _header(report, created: str | None) -> str:
    facts = "".join(
        f"<div><dt>{e(label)}</dt><dd>{e(text)}</dd></div>"
        for label, text in provenance(report, created)
    )
    return (
        f"<header><p class='kicker'>embscope diagnostics</p><h1>{e(report_title(report))}</h1>"
        f"<dl class='facts'>{facts}</dl></header>"
    )


def _recommendations(report) -> str:
    if not report.recommendations:
        return _section(
            "recommendations",
            "Recommendations",
            "<p>No recommendation: no rule fired on this report.</p>",
        )
    items = []
    for r in report.recommendations:
        value = (
            f" <span class='suggested'>suggested value {e(fmt(r.value))}</span>"
            if r.value is not None
            else ""
        )
        rows = [[f"<code>{e(k)}</code>", e(evidence_text(v))] for k, v in r.evidence.items()]
        evidence = ""
        if rows:  # open for errors and warnings, folded for information
            opened = " open" if r.severity in ("error", "warning") else ""
            evidence = (
                f"<details class='evidence'{opened}><summary>Evidence ({len(rows)})</summary>"
                + _table(["evidence", "measured"], rows, cls="evidence")
                + "</details>"
            )
        items.append(
            f"<div class='rec {e(r.severity)}'><div class='rec-head'>"
            f"<span class='sev'>{e(r.severity)}</span> "
            f"<code class='action'>{e(r.action)}</code>{value}</div>"
            f"<p>{e(r.reason)}</p>{evidence}</div>"
        )
    return _section("recommendations", "Recommendations", "".join(items))


def _key_metrics(report) -> str:
    shown, undefined = shown_metrics(report, KEY_METRICS)
    rows = [
        [
            f"<code>{e(k)}</code>",
            e(fmt(report.metrics[k])),
            e(interval_text(report, k)),
            f"{arrow(k)} {e(direction_text(k))}".strip(),
            e(meaning(k)),
        ]
        for k in shown
    ]
    body = _table(
        ["metric", "value", e(level_text(report)), "better", "meaning"], rows, numeric={1, 2}
    )
    line = undefined_line(undefined)
    if line:
        body += f"<p class='muted'>{e(line)}</p>"
    return _section("key-metrics", "Key metrics", body)


def _separation(report, plots: dict[str, bytes]) -> str:
    hists = report.sections.get("histograms")
    ovr = (
        isinstance(hists, Histograms)
        and hists.score is not None
        and hists.score.quantity == "ovr_probability"
    )
    figs = []
    if "scores" in plots:
        figs.append(
            figure(
                "scores",
                plots["scores"],
                GUIDES["scores_ovr" if ovr else "scores"],
                "score distributions",
            )
        )
    if "confusion" in plots:
        figs.append(
            figure("confusion", plots["confusion"], GUIDES["confusion"], "confusion matrix")
        )
    if "pca" in plots:
        figs.append(figure("pca", plots["pca"], GUIDES["pca"], "2-D PCA of the embeddings"))
    body = (
        _cards(report, SEPARATION_METRICS) + _figures(figs) + _confusions(report) + _classes(report)
    )
    return _section(
        "separation",
        "Are the classes separated?",
        body,
        "In the scores the model gives and in the embedding space itself.",
    )


def _logits(report, plots: dict[str, bytes]) -> str:
    margins = report.sections.get("class_margins")
    ranked = isinstance(margins, ClassMargins) and len(margins.label) > MAX_CLASS_ROWS
    figs = []
    for name, alt in (
        ("margins", "logit margin distribution"),
        ("class_margins", "logit margins by class"),
        ("logit_columns", "mean logit by true class"),
        ("reliability", "reliability diagram"),
        ("angles", "angles to the class weights"),
    ):
        if name in plots:
            guide = GUIDES["class_margins_ranked" if name == "class_margins" and ranked else name]
            figs.append(figure(name, plots[name], guide, alt))
    body = _cards(report, LOGIT_METRICS) + _head(report) + _figures(figs)
    return _section(
        "logits",
        "Are the logits healthy and calibrated?",
        body,
        "Margins, per-class logits, the head's scale and how well the probabilities match "
        "the accuracy.",
    )


def _head(report) -> str:
    head = report.sections.get("head")
    if not isinstance(head, Head):
        return ""
    parts = [f"kind {head.kind}", f"{head.num_classes} classes"]
    if head.s is not None:
        parts.append(f"s = {fmt(float(head.s))}")
    if head.m is not None:
        parts.append(f"m = {fmt(float(head.m))} rad")
    if not head.weights:
        parts.append("settings stated, weights not known")
    return f"<p class='muted'>Margin head: {e(', '.join(parts))}.</p>"


def _gray_zone(report) -> str:
    body = _cards(report, GRAY_METRICS) + _hardest(report)
    return _section(
        "gray-zone",
        "Where is the gray zone, and which samples are in it?",
        body,
        "Gray zone: binary |P - 0.5| < 0.1, multi-class top-1 minus top-2 probability < 0.2. "
        "The hardest samples are those with the smallest margins: the most confident errors "
        "first.",
    )


def _retrieval(report, plots: dict[str, bytes]) -> str:
    figs = (
        [figure("pairs", plots["pairs"], GUIDES["pairs"], "genuine and impostor pairs")]
        if "pairs" in plots
        else []
    )
    body = _cards(report, RETRIEVAL_METRICS) + _figures(figs)
    return _section(
        "retrieval",
        "How do retrieval and verification look?",
        body,
        "Each sample as a query against the others (leave-one-out), and every pair judged "
        "same class or not by its cosine similarity.",
    )


def _thumbnail(thumbs, sample_id: str) -> str:
    data = thumbs.get(sample_id) if isinstance(thumbs, dict) else None
    if not isinstance(data, str) or not data:
        return ""
    src = data if data.startswith("data:") else f"data:image/png;base64,{data}"
    return f"<img class='thumb' alt='{e(sample_id)}' src='{e(src)}'>"


def _probability(p: float | None) -> str:
    """A probability with the digits that tell it from 1 (0.99996 is not "1")."""
    if p is None:
        return ""
    if p > 0.9999:
        return "> 0.9999"
    return f"{p:.4f}" if p > 0.99 else fmt(p)


def _hardest(report) -> str:
    hardest = report.sections.get("hardest")
    if not isinstance(hardest, Hardest) or not hardest.rows:
        return ""
    thumbs = report.sections.get("thumbnails")
    with_images = isinstance(thumbs, dict) and any(h.id in thumbs for h in hardest.rows)
    header = (["input"] if with_images else []) + [
        "id",
        "label",
        "predicted",
        "P(predicted)",
        "margin",
    ]
    rows = []
    for h in hardest.rows:
        row = [_thumbnail(thumbs, h.id)] if with_images else []
        wrong = h.predicted is not None and h.predicted != h.label
        row += [
            f"<code>{e(h.id)}</code>",
            e(str(h.label)),
            ("<b>" if wrong else "")
            + e("" if h.predicted is None else str(h.predicted))
            + ("</b>" if wrong else ""),
            e(_probability(h.top_prob)),
            e(fmt(h.margin)),
        ]
        rows.append(row)
    offset = 1 if with_images else 0
    return "<h3>Hardest samples</h3>" + _table(
        header, rows, numeric={offset + 1, offset + 2, offset + 3, offset + 4}, cls="hardest"
    )


def _confusions(report) -> str:
    conf = report.sections.get("confusion")
    if not isinstance(conf, Confusion) or not conf.largest:
        return ""
    rows = [[e(str(t)), e(str(p)), e(str(c))] for t, p, c in conf.largest[:MAX_CONFUSIONS_SHOWN]]
    return "<h3>Largest confusions</h3>" + _table(
        ["true class", "predicted as", "samples"], rows, numeric={0, 1, 2}
    )


def _classes(report) -> str:
    found = class_columns(report)
    if found is None:
        return ""
    table, header, cells, by_label = found
    logits = table.rows[0].recall is not None

    def row(r) -> list[str]:
        return [e(c) for c in cells(r)]

    numeric = set(range(len(header)))
    rows = list(table.rows)
    if len(rows) <= MAX_CLASSES_SHOWN:
        return "<h3>Classes</h3>" + _table(header, [row(r) for r in rows], numeric)
    if by_label:
        worst = sorted(rows, key=lambda r: by_label.get(r.label, (float("inf"),))[0])
        what = "lowest median margin"
    elif logits:
        worst = sorted(rows, key=lambda r: r.recall)
        what = "lowest recall"
    else:
        worst = sorted(rows, key=lambda r: -r.spread)
        what = "largest spread"
    attention = _table(header, [row(r) for r in worst[:MAX_CLASSES_SHOWN]], numeric)
    everything = _table(header, [row(r) for r in rows], numeric)
    return (
        f"<h3>Classes: the {MAX_CLASSES_SHOWN} with the {what}, of {len(rows)}</h3>{attention}"
        f"<details><summary>All {len(rows)} classes</summary>{everything}</details>"
    )


def _extra_sections(report) -> str:
    out = []
    for name, extra in EXTRA_SECTIONS.items():
        if name in report.sections:
            out.append(_section(f"extra-{name}", extra.title, extra.html(report)))
    return "".join(out)


def _all_metrics(report) -> str:
    level = e(level_text(report))
    methods = getattr(report, "interval_methods", {}) or {}
    parts = []
    for group, names in grouped_metrics(report):
        rows = [
            [
                f"<code>{e(k)}</code>",
                e(fmt(report.metrics[k])),
                f"<span title='{e(methods.get(k, ''))}'>{e(interval_text(report, k))}</span>",
                f"{arrow(k)} {e(direction_text(k))}".strip(),
                e(note_text(report, k)),
            ]
            for k in names
        ]
        table = _table(["metric", "value", level, "better", "note"], rows, numeric={1, 2})
        parts.append(
            f"<details class='group'><summary>{e(group_title(group))} "
            f"<span class='muted'>({len(names)})</span></summary>{table}</details>"
        )
    body = "".join(parts)
    if methods:
        body += (
            "<p class='muted'>How each interval was obtained (or why a metric has none): "
            "report.json's <code>interval_methods</code> (also shown on hovering an interval).</p>"
        )
    return _section(
        "all-metrics", "All metrics", body, "By group; open a group to see its metrics."
    )


def _options(report) -> str:
    meta = report.meta if isinstance(report.meta, dict) else {}
    keys = ("space", "reservoir_size", "seed", "bins", "schema")
    items = [f"{k} = {meta[k]}" for k in keys if meta.get(k) is not None]
    return f"<footer><p class='muted'>Options: {e(', '.join(items))}.</p></footer>" if items else ""


_NAV = (
    ("recommendations", "Recommendations"),
    ("key-metrics", "Key metrics"),
    ("separation", "Separation"),
    ("logits", "Logits and calibration"),
    ("gray-zone", "Gray zone"),
    ("retrieval", "Retrieval"),
    ("all-metrics", "All metrics"),
)


def report_html(
    report, plots: dict[str, bytes] | None = None, *, created: str | None = None
) -> str:
    """One self-contained HTML page (inline PNG plots, no external resources, no scripts)."""
    plots = report_plots(report) if plots is None else plots
    title = report_title(report)
    parts = [
        _recommendations(report),
        _key_metrics(report),
        _separation(report, plots),
        _logits(report, plots),
        _gray_zone(report),
        _retrieval(report, plots),
        _extra_sections(report),
        _all_metrics(report),
    ]
    present = {a for a, _ in _NAV if f"id='{a}'" in "".join(parts)}
    nav = " ".join(f"<a href='#{a}'>{e(t)}</a>" for a, t in _NAV if a in present)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{e(title)}: embscope report</title><style>{CSS}</style></head><body><main>"
        + _header(report, created)
        + f"<nav>{nav}</nav>"
        + "".join(parts)
        + _options(report)
        + "</main></body></html>"
    )
