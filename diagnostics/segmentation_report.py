"""The report of a dense (segmentation) evaluation.

Two parts:

- exact, from every labelled pixel: ``n`` (labelled pixels), ``num_classes``, ``accuracy``,
  ``macro_f1``, ``miou``, ``mean_f1``, ``fw_iou``, ``imbalance_ratio`` and the ``seg.*`` keys
  (``segmentation_metrics``), with intervals from the bootstrap over images;
- the ordinary report (``assembly.assemble``) of a Diagnoser holding the class-stratified
  pixel sample as its per-sample values and reservoir, and the exact twin's fixed-shape state
  (``DenseState.twin``: every labelled pixel): calibration (ECE, MCE, Brier, NLL), the class
  geometry, logit column statistics and one-vs-rest score separation are exact; margins, the
  gray zone, the fitted temperature and the vector metrics come from the sample and are
  flagged in ``sampled`` (the sample over-represents small classes by design, so their
  class-mix-dependent values describe the sample, not the pixel population).

``sections["segmentation"]`` holds the per-class table (sorted by pixel count), the confusion
matrix normalised by true class, the per-class calibration and gray zone, and the worst images
with thumbnails of their true and predicted masks.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np

from . import metrics as M
from . import state as S
from .reservoir import Reservoir
from .segmentation_metrics import class_calibration, dense_intervals, dense_metrics
from .state import MAX_COLUMN_KEYS

SAMPLED_HOW = "class-stratified pixel sample"


def dense_report(d):
    """The Report of Diagnoser ``d`` holding a dense state (``d._dense``)."""
    from .advice import recommend
    from .assembly import assemble

    ds = d._dense
    if ds is None or ds.k is None or float(ds.state["confusion"].sum()) == 0:
        ignored = 0 if ds is None or not ds.state else int(ds.state["ignored"])
        bad = 0 if ds is None or not ds.state else int(ds.state["nonfinite"])
        raise ValueError(
            "no usable pixels: every mask pixel was ignore_index "
            f"({d.ignore_index}; {ignored} pixels) or had NaN/Inf outputs ({bad} pixels)"
        )
    metrics, reasons, per = dense_metrics(ds)
    x, y, z = ds.sample()
    flat = copy.copy(d)
    flat._dense = None
    flat.reservoir = Reservoir(max(len(y), 1), d.seed)
    flat.sync_on_compute = False
    flat.reset()
    flat.update(x, y, z)
    exact = _from_twin(flat, ds.twin)
    base = assemble(flat)
    sampled = {
        key: {
            "exact": False,
            "sample_size": int(len(y)),
            "population": float(metrics["n"]),
            "how": SAMPLED_HOW,
        }
        for key in base.metrics
        if key not in metrics and key not in exact
    }
    all_metrics = {**base.metrics, **metrics}
    all_reasons = {k: v for k, v in base.reasons.items() if k not in metrics}
    all_reasons.update(reasons)
    intervals, methods = dense_intervals(ds, metrics, base.interval_level or 0.95, d.seed)
    base_intervals = {k: v for k, v in base.intervals.items() if k not in metrics}
    base_methods = {k: v for k, v in base.interval_methods.items() if k not in metrics}
    for key in exact & set(base_methods):
        if key in base_intervals:
            base_methods[key] += "; its spread from the class-stratified pixel sample"
    sections = dict(base.sections)
    sections["segmentation"] = _section(d, ds, per)
    meta = {
        **base.meta,
        **d._meta(),
        "dense": {
            "ignore_index": d.ignore_index,
            "classes": ds.k,
            "embeddings": "given" if ds.embedded else "the logits (no embeddings given)",
            "sampled_pixels": ds.sampled_pixels,
            "labelled_pixels": float(metrics["n"]),
        },
    }
    # what identifies the data: every labelled pixel's class (compare refuses other data);
    # no per-sample values: two models' pixel samples hold different pixels, so pairing them
    # would be wrong (comparisons use the intervals)
    pixels = per["cm"].sum(1)
    meta["data"] = {
        "n": int(metrics["n"]),
        "class_counts": {str(c): int(v) for c, v in enumerate(pixels) if v > 0},
        "images": int(metrics["seg.images"]),
        "logit_columns": ds.k,
    }
    report = replace(
        base,
        samples=None,
        metrics=all_metrics,
        reasons=all_reasons,
        sampled={**{k: v for k, v in base.sampled.items() if k not in metrics}, **sampled},
        sections=sections,
        intervals={**base_intervals, **intervals},
        interval_methods={**base_methods, **methods},
        meta=meta,
    )
    return report.with_recommendations(recommend(report, thresholds=d.thresholds))


def _from_twin(flat, twin) -> set[str]:
    """Put the twin's exact fixed-shape state (every labelled pixel) in place of ``flat``'s
    (the pixel sample's); return the keys then computed from every pixel. The per-sample
    fields and the reservoir stay the sample's."""
    if twin is None or twin.dim is None or twin.dim != flat.dim:
        return set()
    for name, f in S.FIELDS.items():
        if f.reduce != "cat" and name in twin.state and name in flat.state:
            flat.state[name] = twin.state[name].clone()
    keys = {"nonfinite_count", "zero_norm_count", "ece", "mce", "brier", "nll"}
    keys |= set(M._geometry_compute(flat.counts, flat.sums, flat.sqnorms, flat.space).to_dict())
    if flat.num_columns <= MAX_COLUMN_KEYS:  # one-vs-rest histograms and column statistics
        keys |= {"score_ks", "score_hellinger", "score_fisher"}
        keys |= {k for k in _column_keys(flat)}
    return keys


def _column_keys(flat) -> list[str]:
    cs = M._column_stats_compute(flat.colstats)
    return list(M.flatten_column_stats(cs))


def _section(d, ds, per) -> dict:
    cm = per["cm"]
    pixels = cm.sum(1)
    cal = class_calibration(ds)
    order = np.argsort(-pixels, kind="stable")
    rows = []
    for c in order.tolist():
        row = {"class": c, "pixels": float(pixels[c])}
        for name in (
            "pixel_fraction",
            "iou",
            "f1",
            "precision",
            "recall",
            "presence_recall",
            "easy_loss_share",
        ):
            v = float(per[name][c])
            row[name] = v if math.isfinite(v) else None
        row["images_with_class"] = float(ds.state["groups"][:, c, 3].sum())
        row.update({k: (v if math.isfinite(v) else None) for k, v in cal[c].items()})
        rows.append(row)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(pixels[:, None] > 0, cm / np.maximum(pixels[:, None], 1), 0.0)
    worst = [{k: v for k, v in w.items() if k != "order"} for w in ds.worst]
    return {
        "classes": rows,
        "confusion_normalised": norm.round(6).tolist(),
        "confusion_classes": list(range(ds.k)),
        "ignore_index": d.ignore_index,
        "worst_images": worst,
    }
