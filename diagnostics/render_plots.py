"""The report's plots as PNG bytes, drawn from its typed sections (sections.py).

Every plot keeps its legend outside the axes (nothing covers data) and stays readable from two
classes to thousands: per-class views switch from one row per class to a ranked view beyond
``MAX_CLASS_ROWS`` classes, the confusion matrix is drawn up to ``MAX_CONFUSION_PLOT`` classes
(the HTML lists the largest confusions beyond). Labels and axis titles are chosen here, from
the sections' identifiers.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np

from .render_text import fmt

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from .sections import (
    ClassMargins,
    Confusion,
    Histogram,
    Histograms,
    LogitColumns,
    Pca,
    Reliability,
)

DPI = 100
MAX_CLASS_ROWS = 40  # per-class margins: one row per class up to this, a ranked view beyond
MAX_CONFUSION_PLOT = 30  # the confusion matrix is drawn up to this many classes
MAX_ANNOTATED = 10  # heatmaps write their numbers in the cells up to this many rows/columns
MAX_LEGEND = 12  # classes named in the PCA's legend; beyond, colours by class rank
MAX_SERIES = 4  # class series a histogram draws one by one; beyond, their sum

AXIS_LABELS = {
    "probability": "P(positive class)",
    "ovr_probability": "P(class), one-vs-rest",
    "margin": "logit margin (true class minus best other)",
    "angle": "angle to a class weight (degrees)",
    "cosine": "cosine similarity of a pair",
}
SERIES_LABELS = {
    "true_class": "own class",
    "other_classes": "other classes",
    "all": "all samples",
    "to_true_class": "to own class weight",
    "to_nearest_other": "to nearest other class weight",
    "genuine": "genuine (same class)",
    "impostor": "impostor (different class)",
}


def series_label(key) -> str:
    if isinstance(key, int):
        return f"class {key}"
    return SERIES_LABELS.get(key, str(key))


def _figure(width: float = 6.4, height: float = 3.8):
    """A bare Agg figure laid out by constrained layout (room for labels and outside legends):
    no pyplot state, one draw per savefig."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _legend(fig, ax, **kw) -> None:
    """The legend below the axes, outside them (the axes keep the figure's width)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ncols = len(handles) if len(handles) <= 3 else 4
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=ncols,
            fontsize=8,
            frameon=False,
            **kw,
        )


def _short(v: float) -> str:
    """A number in a heatmap cell: 2 to 3 significant digits, never an exponent."""
    if not np.isfinite(v):
        return "nan"
    return f"{v:.0f}" if abs(v) >= 10 else f"{v:.1f}" if abs(v) >= 1 else f"{v:.2f}"


def histogram_plot(h: Histogram, title: str) -> Figure:
    """Each series as a share of its samples per bin (step lines over the shared edges). Class
    series beyond MAX_SERIES are drawn as their sum (the per-class views show the classes)."""
    fig, ax = _figure()
    edges = np.asarray(h.edges, dtype=float)
    series = list(h.series)
    if len(series) > MAX_SERIES and all(isinstance(k, int) for k, _ in series):
        series = [("all", np.sum([c for _, c in series], axis=0))]
    for key, counts in series:
        c = np.asarray(counts, dtype=float)
        total = c.sum()
        ax.stairs(
            c / total if total > 0 else c,
            edges,
            label=f"{series_label(key)} (n={int(total)})",
            linewidth=1.5,
        )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(AXIS_LABELS.get(h.quantity, h.quantity))
    ax.set_ylabel("share of the series")
    if h.quantity == "margin":
        ax.axvline(0, color="0.3", linewidth=0.8, linestyle=":")
    _legend(fig, ax)
    return fig


def reliability_plot(rel: Reliability, title: str) -> Figure:
    """Accuracy per confidence bin (bars), each bin's mean confidence against its accuracy
    (points; empty bins have none) and the diagonal of perfect calibration."""
    fig, ax = _figure(6.4, 4.4)
    edges = np.asarray(rel.edges, dtype=float)
    acc = np.asarray(rel.accuracy, dtype=float)
    conf = np.asarray(rel.confidence, dtype=float)
    count = np.asarray(rel.count, dtype=float)
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
        conf[seen],
        acc[seen],
        "o",
        color="tab:blue",
        markersize=4,
        label="bin: confidence, accuracy",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for left, width, n in zip(edges[:-1], np.diff(edges), count, strict=True):
        if n > 0:  # how many samples each bin holds
            ax.text(left + width / 2, 0.01, f"{int(n)}", ha="center", va="bottom", fontsize=6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    _legend(fig, ax)
    return fig


def logit_columns_plot(cols: LogitColumns) -> Figure:
    """Mean logit of each column (x) for the samples of each true class (y): a heatmap, so any
    number of classes and columns up to 16 reads without a legend."""
    from matplotlib import colormaps

    labels = cols.class_labels()
    means = np.array([[c.mean for c in row] for row in cols.by_class], dtype=float)
    stds = np.array([[c.std for c in row] for row in cols.by_class], dtype=float)
    k, c = means.shape
    fig, ax = _figure(min(2.8 + 0.45 * c, 6.4), min(1.8 + 0.32 * k, 6.4))
    reach = np.nanmax(np.abs(means)) if np.isfinite(means).any() else 1.0
    image = ax.imshow(means, cmap=colormaps["RdBu_r"], vmin=-reach, vmax=reach, aspect="auto")
    fig.colorbar(image, ax=ax, label="mean logit", shrink=0.9)
    ax.set_xticks(range(c), [str(j) for j in range(c)], fontsize=8)
    ax.set_yticks(range(k), [str(v) for v in labels], fontsize=8)
    ax.set_xlabel("logit column")
    ax.set_ylabel("true class")
    if k <= MAX_ANNOTATED and c <= MAX_ANNOTATED:
        for i in range(k):
            for j in range(c):
                text = _short(means[i, j])
                if c <= 4:
                    text += f"\n\u00b1{_short(stds[i, j])}"
                dark = abs(means[i, j]) > 0.6 * reach
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
    ax.set_title("Mean logit by true class" + (" (\u00b1 std)" if c <= 4 else ""), fontsize=10)
    return fig


def class_margins_plot(cm: ClassMargins) -> Figure:
    """Per class: the median logit margin, its middle half and its 5th-95th percentile range.
    One row per class up to MAX_CLASS_ROWS classes; beyond, each statistic over the classes
    ranked (a quantile curve per statistic: where the curve of 5th percentiles crosses 0 says
    how many classes have more than 5% errors)."""
    k = len(cm.label)
    p05, p25, med = (np.asarray(v, dtype=float) for v in (cm.p05, cm.p25, cm.median))
    p75, p95 = np.asarray(cm.p75, dtype=float), np.asarray(cm.p95, dtype=float)
    if k <= MAX_CLASS_ROWS:
        fig, ax = _figure(6.4, min(max(2.8, 1.6 + 0.26 * k), 12.0))
        y = np.arange(k)
        ax.hlines(y, p05, p95, color="tab:blue", linewidth=1, label="5th-95th percentile")
        ax.hlines(y, p25, p75, color="tab:blue", linewidth=5, alpha=0.5, label="middle half")
        ax.plot(med, y, "o", color="black", markersize=3.5, label="median")
        ax.axvline(0, color="tab:red", linewidth=0.8, linestyle=":")
        ax.set_yticks(y, [str(v) for v in cm.label], fontsize=8 if k <= 20 else 6)
        ax.set_ylim(k - 0.5, -0.5)
        ax.set_ylabel("true class")
        ax.set_xlabel("logit margin (true class minus best other)")
    else:
        share = (np.arange(k) + 0.5) / k
        fig, ax = _figure()
        ax.plot(share, np.sort(p95), color="tab:blue", alpha=0.5, label="95th percentile")
        ax.plot(share, np.sort(med), color="black", linewidth=1.5, label="median")
        ax.plot(share, np.sort(p05), color="tab:blue", label="5th percentile")
        ax.axhline(0, color="tab:red", linewidth=0.8, linestyle=":")
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"share of the {k} classes, ranked by each statistic")
        ax.set_ylabel("a class's logit margin")
    ax.set_title("Logit margins by class", fontsize=10)
    _legend(fig, ax)
    return fig


def confusion_plot(conf: Confusion) -> Figure:
    """Rows: true class, columns: predicted class; colour = share of the row (recall on the
    diagonal), counts written in the cells up to MAX_ANNOTATED classes."""
    from matplotlib import colormaps

    cm = np.asarray(conf.matrix, dtype=float)
    k = len(conf.labels)
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = min(2.6 + 0.3 * k, 5.2)
    fig, ax = _figure(side + 1.2, side)
    image = ax.imshow(share, cmap=colormaps["Blues"], vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.85)
    ticks = [str(v) for v in conf.labels]
    size = 8 if k <= 20 else 6
    ax.set_xticks(range(k), ticks, fontsize=size, rotation=90 if k > 12 else 0)
    ax.set_yticks(range(k), ticks, fontsize=size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= MAX_ANNOTATED:
        for i, j in zip(*np.nonzero(cm), strict=True):  # empty cells stay blank
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if share[i, j] > 0.6 else "black",
            )
    ax.set_title("Confusion matrix", fontsize=10)
    return fig


def pca_plot(pca: Pca) -> Figure:
    """The embeddings' 2-D PCA, coloured by class (named in a legend up to MAX_LEGEND classes,
    by class rank beyond)."""
    from matplotlib import colormaps

    fig, ax = _figure(6.4, 5.0)
    labels = np.asarray(pca.label)
    uniq = np.unique(labels)
    xs, ys = np.asarray(pca.x), np.asarray(pca.y)
    if len(uniq) <= MAX_LEGEND:
        cmap = colormaps["tab10" if len(uniq) <= 10 else "tab20"]
        for i, c in enumerate(uniq):
            sel = labels == c
            ax.scatter(xs[sel], ys[sel], s=6, color=cmap(i), label=f"class {c}", alpha=0.7)
    else:  # one call for many classes, coloured by class rank
        rank = np.searchsorted(uniq, labels)
        points = ax.scatter(xs, ys, s=4, c=rank, cmap=colormaps["viridis"], alpha=0.7)
        fig.colorbar(points, ax=ax, label="class (rank of its label)", shrink=0.85)
    ax.set_xlabel("first principal direction")
    ax.set_ylabel("second principal direction")
    ax.set_title(f"2-D PCA of {len(xs)} embeddings", fontsize=10)
    _legend(fig, ax, markerscale=2)
    return fig


def _value(report, name: str) -> str:
    return fmt(report.metrics.get(name, math.nan))


def report_plots(report) -> dict[str, bytes]:
    """name -> PNG bytes for every plot the report's data supports (file names of plots/)."""
    return {name: _png(fig) for name, fig in report_figures(report).items()}


def report_figures(report) -> dict[str, Figure]:
    """name -> matplotlib Figure for every plot the report's data supports."""
    out = {}
    sections = report.sections
    hists = sections.get("histograms")
    if isinstance(hists, Histograms):
        if hists.score is not None:
            kind = "one-vs-rest scores" if hists.score.quantity == "ovr_probability" else "Scores"
            out["scores"] = histogram_plot(
                hists.score,
                f"{kind.capitalize()} by true class: KS {_value(report, 'score_ks')}, "
                f"Hellinger {_value(report, 'score_hellinger')}",
            )
        if hists.margin is not None:
            out["margins"] = histogram_plot(
                hists.margin,
                f"Logit margins: median {_value(report, 'margin_median')}, "
                f"negative {_value(report, 'negative_margin_fraction')}",
            )
    margins = sections.get("class_margins")
    if isinstance(margins, ClassMargins) and len(margins.label) > 1:
        out["class_margins"] = class_margins_plot(margins)
    cols = sections.get("logit_columns")
    if isinstance(cols, LogitColumns) and cols.by_class and len(cols.columns) <= 16:
        out["logit_columns"] = logit_columns_plot(cols)
    rel = sections.get("reliability")
    if isinstance(rel, Reliability) and sum(rel.count) > 0:
        out["reliability"] = reliability_plot(
            rel,
            f"Reliability: ECE {_value(report, 'ece')}, fitted T "
            f"{_value(report, 'fitted_temperature')}",
        )
    conf = sections.get("confusion")
    if (
        isinstance(conf, Confusion)
        and conf.matrix is not None
        and len(conf.labels) <= MAX_CONFUSION_PLOT
    ):
        out["confusion"] = confusion_plot(conf)
    if isinstance(hists, Histograms) and hists.angle is not None:
        out["angles"] = histogram_plot(
            hists.angle,
            f"Angles to the class weights: fallback share {_value(report, 'fallback_fraction')}",
        )
    if isinstance(hists, Histograms) and hists.pair is not None:
        out["pairs"] = histogram_plot(
            hists.pair,
            f"Genuine vs impostor pairs: KS {_value(report, 'pair_ks')}, "
            f"EER {_value(report, 'eer')}",
        )
    pca = sections.get("pca")
    if isinstance(pca, Pca) and pca.x:
        out["pca"] = pca_plot(pca)
    return out
