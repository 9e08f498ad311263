"""The HTML page's segmentation part: ``report.sections["segmentation"]`` (dense predictions).

Per-class table sorted by pixel count (IoU, F1, precision, recall, presence recall, easy
cross-entropy share, one-vs-rest ECE, gray zone), IoU/F1 bars, the confusion matrix
normalised by true class, and the worst images with their true and predicted masks as
thumbnails. Reads only the report's data (a report loaded from JSON renders the same).
Registered with the page by :func:`register`, which ``render.py`` calls on import.
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

TITLE = "Segmentation: per-class pixels"
GUIDES = {
    "seg_bars": "IoU and F1 (Dice) of each class, classes ordered by pixel count (largest on "
    "top). Small classes at the bottom with short bars are the ones the model misses.",
    "seg_confusion": "Rows: true class; columns: predicted class; colour: share of the true "
    "class's pixels. A small class whose row is red in the background column is swallowed "
    "by the background.",
}
THUMB_SCALE = 3  # thumbnails drawn this many screen pixels per mask pixel (at most)


def register() -> None:
    from .render_html import register_section

    register_section("segmentation", TITLE, segmentation_html)


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) and abs(v) < 1000 else f"{v:,.0f}"


def segmentation_html(report) -> str:
    """An HTML fragment for the segmentation section."""
    from .render_html import figure

    sec = report.sections.get("segmentation") or {}
    rows = sec.get("classes") or []
    if not rows:
        return ""
    m = report.metrics
    lead = (
        f"<p class='lead'>{_e(_fmt(m.get('n')))} labelled pixels in "
        f"{_e(_fmt(m.get('seg.images')))} images ({_e(_fmt(m.get('seg.ignored_count')))} "
        f"pixels = {_e(sec.get('ignore_index'))} ignored). mIoU {_e(_fmt(m.get('miou')))}, "
        f"mean F1 {_e(_fmt(m.get('mean_f1')))}, frequency-weighted IoU "
        f"{_e(_fmt(m.get('fw_iou')))}, imbalance {_e(_fmt(m.get('imbalance_ratio')))}:1; "
        f"{_e(_fmt(m.get('seg.easy_loss_share')))} of the cross-entropy comes from easy pixels "
        "(p_true &gt; 0.9).</p>"
    )
    parts = [lead, _class_table(rows)]
    plots = []
    bars = _bars_png(rows)
    if bars is not None:
        plots.append(figure("seg_bars", bars, GUIDES["seg_bars"], "IoU and F1 per class"))
    conf = _confusion_png(sec)
    if conf is not None:
        plots.append(
            figure("seg_confusion", conf, GUIDES["seg_confusion"], "pixel confusion matrix")
        )
    if plots:
        parts.append(f"<div class='plots'>{''.join(plots)}</div>")
    parts.append(_worst(sec))
    return "".join(parts)


def _class_table(rows: list[dict]) -> str:
    columns = [
        ("class", "class"),
        ("pixels", "pixels"),
        ("pixel_fraction", "share"),
        ("iou", "IoU"),
        ("f1", "F1"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("presence_recall", "found in images"),
        ("images_with_class", "images"),
        ("easy_loss_share", "easy CE share"),
        ("ece", "ECE (1-vs-rest)"),
        ("gray_fraction", "gray zone"),
    ]
    head = "".join(f"<th>{_e(title)}</th>" for _, title in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='num'>{_e(_fmt(r.get(key)) if key != 'class' else r['class'])}</td>"
            for key, _ in columns
        )
        + "</tr>"
        for r in rows
    )
    return (
        "<div class='scroll'><table class='seg-classes'><thead><tr>"
        f"{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _bars_png(rows: list[dict]) -> bytes | None:
    from matplotlib.figure import Figure

    shown = rows[:40]
    names = [str(r["class"]) for r in shown]
    iou = [r.get("iou") or 0.0 for r in shown]
    f1 = [r.get("f1") or 0.0 for r in shown]
    fig = Figure(figsize=(5.0, 0.8 + 0.28 * len(shown)))
    ax = fig.subplots()
    y = np.arange(len(shown))
    ax.barh(y - 0.2, iou, height=0.4, label="IoU", color="#4477aa")
    ax.barh(y + 0.2, f1, height=0.4, label="F1", color="#ee7733")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_ylabel("class (by pixel count)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _confusion_png(sec: dict) -> bytes | None:
    from matplotlib.figure import Figure

    cm = np.asarray(sec.get("confusion_normalised") or [], dtype=float)
    if cm.ndim != 2 or cm.shape[0] > 60:
        return None
    k = cm.shape[0]
    fig = Figure(figsize=(1.5 + 0.3 * k, 1.2 + 0.3 * k))
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Reds", vmin=0, vmax=1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 30:
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _png(fig)


def _palette(ignore: int) -> np.ndarray:
    """Distinct colours for class indices 0-255; background (0) dark, ``ignore`` white."""
    rng = np.random.default_rng(7)
    pal = rng.integers(40, 256, size=(256, 3)).astype(np.uint8)
    pal[0] = (20, 20, 20)
    if 0 <= ignore < 256:
        pal[ignore] = (255, 255, 255)
    return pal


def _mask_img(mask, ignore: int) -> str:
    from PIL import Image

    a = np.asarray(mask, dtype=np.int64)
    pal = _palette(ignore)
    rgb = pal[np.clip(a, 0, 255)]
    rgb[(a < 0) | (a > 255)] = (255, 255, 255)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8), mode="RGB").save(buf, format="PNG")
    h, w = a.shape
    scale = max(1, min(THUMB_SCALE, 144 // max(h, w, 1)))
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (
        f"<img width='{w * scale}' height='{h * scale}' style='image-rendering:pixelated' "
        f"src='data:image/png;base64,{data}'>"
    )


def _worst(sec: dict) -> str:
    worst = sec.get("worst_images") or []
    if not worst:
        return ""
    ignore = int(sec.get("ignore_index", 255))
    cells = []
    for w in worst:
        name = w.get("id") or "(no id)"
        cells.append(
            "<figure class='seg-worst'>"
            f"{_mask_img(w['true'], ignore)} {_mask_img(w['pred'], ignore)}"
            f"<figcaption>{_e(name)}: mean IoU {_e(_fmt(w.get('mean_iou')))} "
            "(left: true mask, right: predicted; white = ignored)</figcaption></figure>"
        )
    return "<h3>Worst images (lowest mean IoU)</h3><div class='plots'>" + "".join(cells) + "</div>"


try:  # the page's hook for sections other modules render (render_html.register_section)
    register()
except ImportError:  # a page without that hook: the section stays in report.json only
    pass
