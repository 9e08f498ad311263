"""From a ViewsDiagnoser's state to one Report.

(Over 400 lines: every views key and its interval is assembled here, read top to bottom, as
assembly.py does for one view; the quantities themselves are in views_metrics.py.)

Keys (each with a registry record, a README row and an interval where it is an estimate):

- the fused view's own report, unprefixed, when there is a fused view (so the regression gate,
  ``compare`` and the summary read the model's output as for any model);
- ``views.<name>.<metric>``: every metric of each view's own report, the same numbers as
  ``diagnose(views[name], labels)`` (with the logits and head for the fused view), with its
  interval;
- ``fusion_gain.<metric>`` for eer, roc_auc, pair_ks, recall_at_1 and map_at_r: the fused
  view's value minus the best other view's (the best by the metric's direction; negative is
  better for eer). Its interval is a paired bootstrap on the joint sample (the same samples in
  both views): pair metrics resample the rows of the pairs of the first 200 joint rows
  (stratified by class, each pair weighted by how often both its rows were drawn), retrieval
  metrics take the standard error of the per-query differences; the spread is scaled from the
  rows resampled to the rows each view's metric used, and centred on the reported difference.
  The best view is chosen once, on the reported values, not per replicate;
- ``agreement.<a>.<b>.<what>`` for each pair of views other than the fused one (views_metrics);
- ``attention.<name>.mean``, ``attention.<name>.std``, ``attention.balance_gap``,
  ``attention.degenerate_fraction`` and, up to 16 classes, ``attention.<name>.class<K>.mean``.

``sections["views"]`` holds what the page shows side by side (render_views.py):
the headline metrics per view, which view is best, the fusion gains with their intervals, the
agreement pairs and the attention histograms and class means.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import views_metrics as VM
from .intervals import LEVEL, metric_range, wilson, z_value
from .registry import direction
from .report import Report
from .state import MAX_COLUMN_KEYS

NAN = float("nan")
FUSION_KEYS = ("eer", "roc_auc", "pair_ks", "recall_at_1", "map_at_r")
PAIR_FUSION_KEYS = ("eer", "roc_auc", "pair_ks")
SIDE_BY_SIDE = (
    "n",
    "accuracy",
    "macro_f1",
    "fisher_ratio",
    "intra_inter_ratio",
    "pair_ks",
    "eer",
    "tar_at_far_1e-3",
    "roc_auc",
    "recall_at_1",
    "map_at_r",
)
# what each pair of views gets in the agreement section (views_metrics.agreement)
AGREEMENT_KEYS = (
    "nn_agreement",
    "knn_overlap",
    "spearman",
    "only_first_right",
    "only_second_right",
    "complementarity",
)
DATA_KEYS = ("n", "num_classes", "nonfinite_count", "zero_norm_count")


def _finite(*values) -> bool:
    return all(v is not None and isinstance(v, (int, float)) and math.isfinite(v) for v in values)


class _Out:
    """The report's fields, filled step by step."""

    def __init__(self):
        self.metrics: dict[str, float] = {}
        self.reasons: dict[str, str] = {}
        self.sampled: dict[str, dict] = {}
        self.intervals: dict[str, list[float]] = {}
        self.methods: dict[str, str] = {}
        self.z = z_value(LEVEL)

    def put(
        self,
        key: str,
        value: float,
        *,
        se=None,
        method: str = "",
        reason: str = "",
        wilson_of: tuple | None = None,
    ) -> None:
        value = float(value)
        self.metrics[key] = value
        if reason:
            self.reasons[key] = reason
        if not math.isfinite(value):
            self.methods[key] = "none: the value is undefined (see reasons)"
            return
        if wilson_of is not None:
            lo, hi = wilson(*wilson_of, LEVEL)
            self.intervals[key] = [min(value, lo), max(value, hi)]
        elif se is not None and math.isfinite(se):
            low, high = metric_range(key)
            half = self.z * max(float(se), 0.0)
            self.intervals[key] = [max(low, value - half), min(high, value + half)]
        else:
            self.methods[key] = method or "none: descriptive"
            return
        self.methods[key] = method

    def take(self, report: Report, prefix: str = "") -> None:
        """Every metric of ``report`` with its interval, reason and sampling, under ``prefix``."""
        for key, value in report.metrics.items():
            self.metrics[prefix + key] = value
            if key in report.intervals:
                self.intervals[prefix + key] = list(report.intervals[key])
            if key in report.interval_methods:
                self.methods[prefix + key] = report.interval_methods[key]
            if key in report.reasons:
                self.reasons[prefix + key] = report.reasons[key]
            if key in report.sampled:
                self.sampled[prefix + key] = report.sampled[key]


def assemble_views(vd) -> Report:
    """The report of a ViewsDiagnoser's state (its ``compute()`` without the sync)."""
    from .views_advice import recommend_views

    reports = {name: vd.diagnosers[name].compute() for name in vd.names}
    out = _Out()
    inputs = vd.inputs
    base = reports[vd.fused] if vd.fused else reports[inputs[0]]
    if vd.fused:
        out.take(base)
        sections = dict(base.sections)
        recs = list(base.recommendations)
    else:
        for key in DATA_KEYS:
            out.metrics[key] = base.metrics[key]
            out.methods[key] = base.interval_methods.get(key, "none: descriptive")
        sections, recs = {}, []
    for name, report in reports.items():
        out.take(report, f"views.{name}.")
    joint = _joint(vd)
    section = {
        "names": list(vd.names),
        "fused": vd.fused,
        "inputs": inputs,
        "dims": dict(vd.dims),
        "joint_rows": len(joint["labels"]),
        "table": {
            key: {v: out.metrics.get(f"views.{v}.{key}", NAN) for v in vd.names}
            for key in SIDE_BY_SIDE
            if any(f"views.{v}.{key}" in out.metrics for v in vd.names)
        },
    }
    if vd.fused:
        section["fusion_gain"] = _fusion_gain(vd, out, joint)
    section["agreement"] = _agreement(vd, out, joint)
    if vd.attention is not None:
        section["attention"] = _attention(vd, out)
    sections["views"] = section
    meta = {**base.meta, "views": {k: section[k] for k in ("names", "fused", "inputs", "dims")}}
    if not vd.fused:
        meta = {k: v for k, v in meta.items() if not k.startswith("head")}
    report = Report(
        metrics=out.metrics,
        reasons=out.reasons,
        sampled=out.sampled,
        sections=sections,
        meta=meta,
        intervals=out.intervals,
        interval_level=LEVEL,
        interval_methods=out.methods,
        samples=base.samples if vd.fused else None,
    )
    return report.with_recommendations(recs + recommend_views(report))


def _joint(vd) -> dict:
    """The joint sample in key order (independent of batching and merge order), split by view."""
    res = vd.joint
    if len(res) == 0:
        return {"labels": torch.zeros(0, dtype=torch.int64), "views": {}}
    order = torch.argsort(res.keys, stable=True)
    rows, labels = res.rows[order], res.labels[order]
    views, at = {}, 0
    for name in vd.names:
        d = vd.dims[name]
        views[name] = rows[:, at : at + d]
        at += d
    return {"labels": labels, "views": views}


# ----------------------------------------------------------------------------------------------
# Fusion gain.
# ----------------------------------------------------------------------------------------------


def _used(out: _Out, key: str, fallback: float) -> float:
    return float(out.sampled.get(key, {}).get("sample_size", fallback))


def _fusion_gain(vd, out: _Out, joint: dict) -> dict:
    fused, inputs = vd.fused, vd.inputs
    y = joint["labels"]
    m = len(y)
    pb = min(m, VM.BOOT_PAIR_ROWS)
    yb = y[:pb].numpy()
    counts = np.unique(yb, return_counts=True)[1]
    pair_ok = len(counts) >= 2 and counts.max() >= 2  # genuine and impostor pairs
    weights = VM.stratified_weights(yb, VM.REPLICATES, vd.seed) if pair_ok else None
    cache: dict = {}

    def pair_reps(view):
        if view not in cache:
            cache[view] = VM.pair_replicates(joint["views"][view][:pb], yb, weights)
        return cache[view]

    def per_query(view):
        key = ("q", view)
        if key not in cache:
            cache[key] = VM.retrieval_per_query(joint["views"][view], y)
        return cache[key]

    section = {}
    n = out.metrics.get(f"views.{fused}.n", NAN)
    for key in FUSION_KEYS:
        name = f"fusion_gain.{key}"
        fv = out.metrics.get(f"views.{fused}.{key}")
        cands = {v: out.metrics.get(f"views.{v}.{key}") for v in inputs}
        cands = {v: x for v, x in cands.items() if _finite(x)}
        if fv is None:
            continue
        if not _finite(fv) or not cands:
            out.put(name, NAN, reason=f"needs {key} of the fused view and of another view")
            continue
        sign = 1.0 if direction(key) == "higher" else -1.0
        best = next(iter(cands))  # the first in the views' order wins ties
        for v, x in cands.items():
            best = v if sign * (x - cands[best]) > 0 else best
        gain = fv - cands[best]
        se, method = NAN, ""
        used = _used(out, f"views.{fused}.{key}", n)
        if key in PAIR_FUSION_KEYS and pair_ok:
            with np.errstate(invalid="ignore", divide="ignore"):
                diff = pair_reps(fused)[key] - pair_reps(best)[key]
            ok = diff[np.isfinite(diff)]
            if len(ok) >= VM.REPLICATES // 2:
                se = float(np.std(ok, ddof=1)) * math.sqrt(pb / max(used, pb))
            method = (
                f"paired bootstrap ({VM.REPLICATES}, stratified by class) of the pairs of "
                f"{pb} samples seen in both views, scaled to the {int(used)} rows used; "
                f"the best view ({best}) held"
            )
        elif key not in PAIR_FUSION_KEYS and m >= 3:
            diff = per_query(fused)[key] - per_query(best)[key]
            if len(diff) >= 2:
                se = float(np.std(diff, ddof=1) / math.sqrt(len(diff))) * math.sqrt(
                    m / max(used, m)
                )
            method = (
                f"paired standard error of the per-query differences on {m} samples seen in "
                f"both views, scaled to the {int(used)} rows used; the best view ({best}) held"
            )
        out.put(
            name,
            gain,
            se=se if math.isfinite(se) else None,
            method=method or "none: too few samples seen in both views",
        )
        lo, hi = out.intervals.get(name, (NAN, NAN))
        better = (hi < 0) if direction(key) == "lower" else (lo > 0)
        worse = (lo > 0) if direction(key) == "lower" else (hi < 0)
        section[key] = {
            "fused": fv,
            "best_view": best,
            "best": cands[best],
            "gain": gain,
            "interval": [lo, hi],
            "verdict": "better" if better else "worse" if worse else "not significant",
        }
    return section


# ----------------------------------------------------------------------------------------------
# Agreement between views.
# ----------------------------------------------------------------------------------------------


def _agreement(vd, out: _Out, joint: dict) -> list:
    inputs = vd.inputs
    y = joint["labels"]
    m = len(y)
    pairs = [(a, b) for i, a in enumerate(inputs) for b in inputs[i + 1 :]]
    section = []
    if m < 3:
        for a, b in pairs:
            for what in AGREEMENT_KEYS:
                out.put(
                    f"agreement.{a}.{b}.{what}",
                    NAN,
                    reason=f"needs 3 or more samples seen in every view, got {m}",
                )
        return section
    k = min(VM.KNN, m - 1)
    nn = {v: VM.neighbours(joint["views"][v], k) for v in inputs}
    for a, b in pairs:
        g = VM.agreement(joint["views"][a], joint["views"][b], y, nn[a], nn[b])
        prefix = f"agreement.{a}.{b}."
        note = f" on {m} samples seen in every view" + (
            f" (of {vd.joint.seen})" if vd.joint.seen > m else ""
        )
        out.put(
            prefix + "nn_agreement",
            g["nn_agreement"],
            wilson_of=(g["nn_same"], m),
            method="Wilson (samples over n)" + note,
        )
        se = float(np.std(g["overlap"], ddof=1) / math.sqrt(m))
        out.put(
            prefix + "knn_overlap",
            g["knn_overlap"],
            se=se,
            method=f"normal (standard error of the per-sample overlaps of {k} neighbours)" + note,
        )
        ra, rb, i, j = g["ranks"]
        reps = VM.spearman_replicates(ra, rb, i, j, y[: g["spearman_rows"]].numpy(), vd.seed)
        ok = reps[np.isfinite(reps)]
        out.put(
            prefix + "spearman",
            g["spearman"],
            se=float(np.std(ok, ddof=1)) if len(ok) > 2 else None,
            method=f"bootstrap ({VM.REPLICATES}, stratified by class) over the rows of the "
            f"{len(ra)} pairs of {g['spearman_rows']} samples, ranks held",
        )
        q = g["queries"]
        why = "" if q else "needs samples with a classmate among the samples seen in every view"
        for what, count in (
            ("only_first_right", g["only_first"]),
            ("only_second_right", g["only_second"]),
            ("complementarity", g["only_first"] + g["only_second"]),
        ):
            out.put(
                prefix + what,
                g[what],
                wilson_of=(count, q) if q else None,
                method=f"Wilson (samples over {q} with a classmate)" + note,
                reason=why,
            )
        section.append(
            {
                "first": a,
                "second": b,
                **{w: g[w] for w in AGREEMENT_KEYS},
            }
        )
    return section


# ----------------------------------------------------------------------------------------------
# Attention.
# ----------------------------------------------------------------------------------------------


def _attention(vd, out: _Out) -> dict:
    a = VM.attention_compute(vd.attention)
    n = a["n"]
    inputs = vd.inputs
    se_how = "normal (standard error of the mean weight)"
    for i, v in enumerate(inputs):
        out.put(f"attention.{v}.mean", a["mean"][i], se=a["se_mean"][i], method=se_how)
        out.put(
            f"attention.{v}.std",
            a["std"][i],
            se=a["se_std"][i],
            method="normal (delta method on the second and fourth moments)",
        )
    out.put(
        "attention.balance_gap",
        a["balance_gap"],
        se=a["se_gap"],
        method="normal (delta method: the signed sum of the views' mean weights)",
    )
    out.put(
        "attention.degenerate_fraction",
        a["degenerate"] / n if n else NAN,
        wilson_of=(a["degenerate"], n) if n else None,
        method="Wilson (samples over n)",
    )
    labels = list(a["by_label"])
    if len(labels) <= MAX_COLUMN_KEYS:
        for label in labels:
            c = a["by_label"][label]
            for i, v in enumerate(inputs):
                out.put(
                    f"attention.{v}.class{label}.mean",
                    c["mean"][i],
                    se=c["se"][i],
                    method=se_how + f" over the class's {int(c['n'])} samples",
                )
    return {
        "views": inputs,
        "n": n,
        "edges": a["edges"].tolist(),
        "hist": {v: a["hist"][i].tolist() for i, v in enumerate(inputs)},
        "mean": {v: float(a["mean"][i]) for i, v in enumerate(inputs)},
        "std": {v: float(a["std"][i]) for i, v in enumerate(inputs)},
        "by_class": {
            str(label): {v: float(a["by_label"][label]["mean"][i]) for i, v in enumerate(inputs)}
            for label in labels
        },
        "balance_gap": a["balance_gap"],
        "degenerate_fraction": a["degenerate"] / n if n else NAN,
        "threshold": VM.DEGENERATE,
    }
