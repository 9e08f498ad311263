"""From a segmentation evaluation's state (``segmentation.DenseState``) to report metrics.

Per class k (rows of the pixel confusion matrix are true classes, columns predictions), with
TP, FP, FN its pixel counts:

- ``iou`` = TP / (TP + FP + FN), ``f1`` (Dice) = 2 TP / (2 TP + FP + FN), ``precision`` =
  TP / (TP + FP), ``recall`` = TP / (TP + FN): nan where the denominator is 0;
- ``pixel_fraction`` = (TP + FN) / labelled pixels;
- ``presence_recall``: of the images that contain class k, the share where at least one of
  its pixels is predicted right (does the model find the class at all);
- ``easy_loss_share``: the share of class k's summed cross-entropy that comes from its easy
  pixels (p_true > 0.9).

Over classes: ``miou`` and ``mean_f1`` average the classes present in the masks; ``fw_iou``
weights each class's IoU by its pixel fraction; ``imbalance_ratio`` is the largest class's
pixel count over the smallest's (classes present); ``seg.easy_loss_share`` is the share of
all the cross-entropy from easy pixels. They equal scikit-learn's ``jaccard_score`` /
``f1_score`` (``average=None``) on the flattened labelled pixels.

Intervals: a bootstrap over images. Pixels of one image are not independent, so whole images
are resampled: each image's counts were added into one of ``IMAGE_GROUPS`` groups chosen by a
hash of its content, and the groups are resampled (Poisson weights, ``REPLICATES`` draws,
percentile intervals). With fewer images than groups nearly every group is one image; beyond,
a group is a random set of images, which resamples them in blocks (a stated approximation
with the same expected variance).
"""

from __future__ import annotations

import math

import numpy as np

from .segmentation import GROUP_COLUMNS, HIST_BINS, IMAGE_GROUPS

NAN = float("nan")
REPLICATES = 400
CLASS_KEYS = 64  # per-class keys up to this many classes (beyond: the section's table only)
PER_CLASS = ("iou", "f1", "precision", "recall", "pixel_fraction", "presence_recall")
COL = {name: i for i, name in enumerate(GROUP_COLUMNS)}


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def scores(tp, fp, fn, present=None, found=None, ce=None, ce_easy=None) -> dict[str, np.ndarray]:
    """Per-class and overall scores from counts ``[..., k]`` (a leading replicate axis is
    allowed): the module docstring's definitions."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    true = tp + fn
    out = {
        "iou": _div(tp, tp + fp + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, true),
    }
    total = true.sum(-1, keepdims=True)
    out["pixel_fraction"] = _div(true, np.broadcast_to(total, true.shape))
    here = true > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        n_here = here.sum(-1)
        out["miou"] = np.where(n_here > 0, np.where(here, out["iou"], 0).sum(-1) / n_here, np.nan)
        out["mean_f1"] = np.where(n_here > 0, np.where(here, out["f1"], 0).sum(-1) / n_here, np.nan)
        out["fw_iou"] = np.where(
            n_here > 0,
            np.where(here, out["pixel_fraction"] * np.nan_to_num(out["iou"]), 0).sum(-1),
            np.nan,
        )
        big = np.where(here, true, -np.inf).max(-1)
        small = np.where(here, true, np.inf).min(-1)
        out["imbalance_ratio"] = np.where(n_here > 0, big / small, np.nan)
        out["accuracy"] = _div(tp.sum(-1), total[..., 0])
        f1_any = np.where(here | ((tp + fp) > 0), out["f1"], np.nan)
        n_f1 = np.isfinite(f1_any).sum(-1)
        out["macro_f1"] = np.where(n_f1 > 0, np.nansum(f1_any, -1) / np.maximum(n_f1, 1), np.nan)
    if present is not None:
        out["presence_recall"] = _div(np.asarray(found, float), np.asarray(present, float))
    if ce is not None:
        ce, ce_easy = np.asarray(ce, float), np.asarray(ce_easy, float)
        out["easy_loss_share"] = _div(ce_easy, ce)
        out["easy_loss_share_all"] = _div(ce_easy.sum(-1), ce.sum(-1))
    return out


def dense_metrics(ds) -> tuple[dict, dict, dict]:
    """(metrics, reasons, per-class arrays) of a DenseState's exact pixel counts."""
    g = ds.state["groups"].numpy().sum(0)  # [k, columns]
    cm = ds.state["confusion"].numpy()
    tp = np.diag(cm).copy()
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    s = scores(tp, fp, fn, *(g[:, COL[c]] for c in GROUP_COLUMNS[3:]))
    metrics: dict[str, float] = {}
    reasons: dict[str, str] = {}
    labelled = float(cm.sum())
    metrics["n"] = labelled
    metrics["num_classes"] = float((cm.sum(1) > 0).sum())
    metrics["accuracy"] = float(s["accuracy"])
    metrics["macro_f1"] = float(s["macro_f1"])
    for key in ("miou", "mean_f1", "fw_iou", "imbalance_ratio"):
        metrics[key] = float(s[key])
    metrics["seg.images"] = float(ds.state["images"])
    metrics["seg.ignored_count"] = float(ds.state["ignored"])
    metrics["seg.nonfinite_count"] = float(ds.state["nonfinite"])
    metrics["seg.easy_loss_share"] = float(s["easy_loss_share_all"])
    if ds.k <= CLASS_KEYS:
        for c in range(ds.k):
            for name in (*PER_CLASS, "easy_loss_share"):
                key = f"seg.class{c}.{name}"
                metrics[key] = float(s[name][c])
                if not math.isfinite(metrics[key]):
                    reasons[key] = _why(name, tp[c], fp[c], fn[c])
    return metrics, reasons, {**s, "tp": tp, "fp": fp, "fn": fn, "cm": cm}


def _why(name: str, tp: float, fp: float, fn: float) -> str:
    if tp + fn == 0 and name in ("recall", "pixel_fraction", "presence_recall", "easy_loss_share"):
        return "undefined: no pixel of this class in the masks"
    if tp + fn + fp == 0:
        return "undefined: the class is neither in the masks nor predicted"
    if name == "precision":
        return "undefined: the class is never predicted"
    return "undefined"


def dense_intervals(ds, metrics: dict, level: float, seed: int) -> tuple[dict, dict]:
    """Percentile intervals from the bootstrap over image groups (module docstring)."""
    groups = ds.state["groups"].numpy()  # [G, k, columns]
    used = groups[:, :, COL["present"]].sum(1) + groups[:, :, COL["tp"]].sum(1) > 0
    g = groups[used]
    method = (
        f"bootstrap over images ({REPLICATES} replicates; images hashed into {IMAGE_GROUPS} "
        f"groups resampled as units, {len(g)} in use)"
    )
    intervals: dict[str, list[float]] = {}
    methods: dict[str, str] = {}
    if len(g) < 2:
        for key in metrics:
            if key in _OVERALL or key.startswith("seg.class"):
                methods[key] = "none: fewer than two images"
        return intervals, methods
    rng = np.random.default_rng([int(seed), 17])
    w = rng.poisson(1.0, size=(REPLICATES, len(g))).astype(np.float64)
    rep = np.einsum("rg,gkc->rkc", w, g)
    s = scores(*(rep[..., COL[c]] for c in GROUP_COLUMNS))
    alpha = (1 - level) / 2
    pairs = [(key, s[key]) for key in _OVERALL_FROM]
    pairs.append(("seg.easy_loss_share", s["easy_loss_share_all"]))
    if ds.k <= CLASS_KEYS:
        for c in range(ds.k):
            for name in (*PER_CLASS, "easy_loss_share"):
                pairs.append((f"seg.class{c}.{name}", s[name][:, c]))
    for key, values in pairs:
        v = metrics.get(key)
        if v is None or not math.isfinite(v):
            continue
        ok = values[np.isfinite(values)]
        if len(ok) < REPLICATES / 2:
            methods[key] = "none: the bootstrap gave too few finite replicates"
            continue
        lo, hi = np.quantile(ok, [alpha, 1 - alpha])
        intervals[key] = [float(min(v, lo)), float(max(v, hi))]
        methods[key] = method
    for key in ("seg.images", "seg.ignored_count", "seg.nonfinite_count", "n", "num_classes"):
        if key in metrics:
            methods[key] = "none: a count of the data"
    return intervals, methods


_OVERALL_FROM = ("accuracy", "macro_f1", "miou", "mean_f1", "fw_iou", "imbalance_ratio")
_OVERALL = (*_OVERALL_FROM, "seg.easy_loss_share", "seg.images", "seg.ignored_count")


def class_calibration(ds) -> list[dict]:
    """Per class: one-vs-rest expected calibration error of p_k (10 bins from the HIST_BINS
    histogram: sum over bins of |mean p_k - share of class k| weighted by the bin's pixels)
    and the gray-zone share of its pixels."""
    pos = ds.state["pos_hist"].numpy()
    allh = ds.state["all_hist"].numpy()
    psum = ds.state["all_psum"].numpy()
    cm = ds.state["confusion"].numpy()
    gray = ds.state["gray"].numpy()
    step = HIST_BINS // 10
    out = []
    for c in range(ds.k):
        n_all = allh[c].reshape(10, step).sum(1)
        n_pos = pos[c].reshape(10, step).sum(1)
        conf = psum[c].reshape(10, step).sum(1)
        total = n_all.sum()
        ok = n_all > 0
        ece = (
            float(np.abs(conf[ok] - n_pos[ok]).sum() / total) if total > 0 and n_pos.sum() else NAN
        )
        pixels = cm[c].sum()
        out.append(
            {
                "ece": ece,
                "gray_fraction": float(gray[c] / pixels) if pixels else NAN,
            }
        )
    return out
