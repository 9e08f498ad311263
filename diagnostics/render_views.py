"""The HTML page's multi-view part: ``report.sections["views"]`` (views_report.py).

Each view's headline metrics side by side (the best view of each row marked), the fusion
gains with their intervals and verdicts, the agreement of each pair of views, and, when the
model gave attention weights, their distribution per view and their mean per class. Reads only
the report's data (a report loaded from JSON renders the same). Registered with the page by
:func:`register`, called on import (render.py imports this module).
"""

from __future__ import annotations

import html
import io
import math

TITLE = "Views: does each view carry its weight, and does fusion help?"
GUIDES = {
    "views_attention": "Left: how often each view gets each weight (a healthy gate spreads "
    "around 1/V; a spike at 0 or 1 means one view decides alone). Right: each class's mean "
    "weight per view (a class far from the others relies on one view).",
}
AGREEMENT = (
    ("nn_agreement", "same nearest neighbour"),
    ("knn_overlap", "10-NN overlap"),
    ("spearman", "Spearman of similarities"),
    ("only_first_right", "only first right"),
    ("only_second_right", "only second right"),
    ("complementarity", "complementarity"),
)


def register() -> None:
    from .render_html import register_section

    register_section("views", TITLE, views_html)


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _fmt(v) -> str:
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    if float(v) == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"  # a count
    return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"


def _interval(report, key: str) -> str:
    iv = report.intervals.get(key)
    if not iv or not all(math.isfinite(x) for x in iv):
        return ""
    return f" <span class='iv'>[{_fmt(iv[0])}, {_fmt(iv[1])}]</span>"


def _agreement_key(pair: dict, what: str) -> str:
    return f"agreement.{pair['first']}.{pair['second']}.{what}"


def views_html(report) -> str:
    """An HTML fragment for the views section."""
    from .registry import direction

    sec = report.sections.get("views") or {}
    names = sec.get("names") or []
    if not names:
        return ""
    parts = [
        f"<p class='lead'>Views {_e(', '.join(names))}"
        + (
            f"; the fused embedding is <code>{_e(sec['fused'])}</code>"
            if sec.get("fused") and sec["fused"] not in names
            else ""
        )
        + f". Agreement and paired intervals on {_e(sec.get('joint_rows'))} samples seen in "
        "every view.</p>"
    ]
    rows = []
    for key, values in (sec.get("table") or {}).items():
        finite = {
            v: x for v, x in values.items() if isinstance(x, (int, float)) and math.isfinite(x)
        }
        better = direction(key)
        best = None
        if better and finite:
            pick = max if better == "higher" else min
            best = pick(finite, key=finite.get)
        cells = "".join(
            f"<td{' class=best' if v == best else ''}>{_e(_fmt(values.get(v)))}"
            f"{_interval(report, f'views.{v}.{key}')}</td>"
            for v in names
        )
        rows.append(f"<tr><th><code>{_e(key)}</code></th>{cells}</tr>")
    head = "".join(f"<th>{_e(v)}</th>" for v in names)
    parts.append(
        f"<h3>Each view's metrics</h3><table class='views'><tr><th>metric</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
    )
    gains = sec.get("fusion_gain") or {}
    if gains:
        rows = [
            f"<tr><th><code>{_e(k)}</code></th><td>{_e(_fmt(g['fused']))}</td>"
            f"<td>{_e(g['best_view'])}: {_e(_fmt(g['best']))}</td><td>{_e(_fmt(g['gain']))}"
            f"{_interval(report, f'fusion_gain.{k}')}</td><td>{_e(g['verdict'])}</td></tr>"
            for k, g in gains.items()
        ]
        parts.append(
            "<h3>Fusion gain (fused minus the best single view; paired intervals)</h3>"
            "<table class='views'><tr><th>metric</th><th>fused</th><th>best view</th>"
            "<th>gain</th><th>fusion is</th></tr>" + "".join(rows) + "</table>"
        )
    pairs = sec.get("agreement") or []
    if pairs:
        head = "".join(f"<th>{_e(label)}</th>" for _, label in AGREEMENT)
        rows = [
            f"<tr><th>{_e(p['first'])} / {_e(p['second'])}</th>"
            + "".join(
                f"<td>{_e(_fmt(p.get(k)))}{_interval(report, _agreement_key(p, k))}</td>"
                for k, _ in AGREEMENT
            )
            + "</tr>"
            for p in pairs
        ]
        parts.append(
            "<h3>Agreement between views</h3><table class='views'><tr><th>views</th>"
            + head
            + "</tr>"
            + "".join(rows)
            + "</table>"
        )
    att = sec.get("attention")
    if att:
        stats = ", ".join(
            f"{_e(v)} {_fmt(att['mean'][v])} &plusmn; {_fmt(att['std'][v])}" for v in att["views"]
        )
        parts.append(
            f"<h3>Attention</h3><p>Mean &plusmn; std weight: {stats}; balance gap "
            f"{_e(_fmt(att['balance_gap']))}{_interval(report, 'attention.balance_gap')}; "
            f"{_e(_fmt(att['degenerate_fraction']))}"
            f"{_interval(report, 'attention.degenerate_fraction')} of samples put over "
            f"{_e(att['threshold'])} on one view.</p>"
        )
        try:
            from .render_html import figure

            parts.append(
                figure(
                    "views_attention",
                    attention_png(att),
                    GUIDES["views_attention"],
                    "attention weights",
                )
            )
        except ImportError:  # a page without plots: the numbers above stand alone
            pass
    return "".join(parts)


def attention_png(att: dict) -> bytes:
    """Histograms of each view's weight and its mean per class, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    views = att["views"]
    edges = att["edges"]
    classes = list(att["by_class"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=90)
    for v in views:
        counts = att["hist"][v]
        total = max(sum(counts), 1)
        ax1.stairs([c / total for c in counts], edges, label=v, linewidth=1.6)
    ax1.axvline(1 / len(views), color="grey", linestyle=":", linewidth=1)
    ax1.set_xlabel("attention weight")
    ax1.set_ylabel("share of samples")
    ax1.legend(frameon=False)
    width = 0.8 / len(views)
    for i, v in enumerate(views):
        xs = [c + (i - (len(views) - 1) / 2) * width for c in range(len(classes))]
        ax2.bar(xs, [att["by_class"][c][v] for c in classes], width=width, label=v)
    ax2.axhline(1 / len(views), color="grey", linestyle=":", linewidth=1)
    ax2.set_xticks(range(len(classes)))
    ax2.set_xticklabels(classes, fontsize=8)
    ax2.set_xlabel("class")
    ax2.set_ylabel("mean weight")
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


try:  # the page's hook for sections other modules render (render_html.register_section)
    register()
except ImportError:  # a page without that hook: the section stays in report.json only
    pass
