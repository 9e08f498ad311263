"""From a Diagnoser's state to a Report: every metric, section and reason.

The Diagnoser (diagnoser.py) accumulates; this module reads its declared state (state.py) and
its options, and never changes them, so ``compute()`` can be called any number of times.
Over 400 lines because it is one function per part of the report, called in the order the
parts depend on each other (logits before calibration, vectors before pairs and retrieval);
the metrics themselves live in their topic modules.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import metrics as M
from .advice import recommend
from .calibration import (
    NO_SCALE,
    TemperatureFit,
    _calibration_compute,
    _fit_temperature,
    calibration_metrics,
)
from .heads import head_health, head_provenance, provenance_reasons, stated_facts
from .intervals import with_intervals
from .pca import pca_view
from .registry import PAIR_KEYS as _PAIR_KEYS
from .registry import VECTOR_KEYS as _VECTOR_KEYS
from .registry import subset_of
from .report import Report
from .scores import _ovr_from_rows, _ovr_separation
from .sections import (
    ClassMargins,
    ClassRow,
    ClassTable,
    Confusion,
    Hardest,
    HardSample,
    Head,
    Histogram,
    Histograms,
    LogitColumns,
    Pca,
    Reliability,
)
from .state import HIST_BINS_FINE, MAX_COLUMN_KEYS

NAN = float("nan")
MAX_PLOT_SERIES = 10  # per-class histograms in the report up to this many classes
_AT_T = ("ece_at_fitted_temperature", "nll_at_fitted_temperature")


def assemble(d) -> Report:
    """The report of a Diagnoser's state (its ``compute()`` without the sync)."""
    metrics: dict[str, float] = {}
    reasons: dict[str, str] = {}
    sampled: dict[str, dict] = {}
    sections: dict = {}
    order = np.argsort(np.asarray(d._values, dtype=np.int64), kind="stable")
    n = 0.0 if d.counts is None else float(d.counts.sum())
    if n == 0:
        raise ValueError(d._no_rows_message())
    present = d.counts > 0
    metrics["n"] = n
    metrics["num_classes"] = float(present.sum())
    metrics["nonfinite_count"] = float(d.nonfinite)
    metrics["zero_norm_count"] = float(d.zero_norm)
    labels = torch.cat(d.samples["label"])
    _geometry(d, metrics, reasons)
    if d.num_columns is not None:
        _logits(d, metrics, reasons, sampled, sections, labels)
        _calibration(d, metrics, reasons, sampled, sections)
    if d.head is not None:
        _head(d, metrics, reasons, sections)
    elif stated_facts(d.head_info):
        _stated_head(d, metrics, reasons, sections)
    retrieval = _vectors(d, metrics, reasons, sampled, sections)
    sections["classes"] = _class_table(d, order)
    if d.num_columns is None and "hardest" not in sections:
        sections["hardest"] = Hardest()
    if "histograms" in sections:
        sections["histograms"] = Histograms(**sections["histograms"])
    if d.margin_leak is not None:
        metrics["head.margin_leak"] = 1.0 if d.margin_leak else 0.0
    report = Report(
        metrics=metrics, reasons=reasons, sampled=sampled, sections=sections, meta=d._meta()
    )
    report = with_intervals(report, d, retrieval=retrieval)
    return report.with_recommendations(recommend(report, thresholds=d.thresholds))


def _geometry(d, metrics, reasons) -> None:
    g = M._geometry_compute(d.counts, d.sums, d.sqnorms, d.space)
    metrics.update(g.to_dict())
    reasons.update(g.reasons)


def _logits(d, metrics, reasons, sampled, sections, labels) -> None:
    s = {k: torch.cat(v) for k, v in d.samples.items() if v}
    y = labels
    k = len(d._values)
    margin = s["margin"].numpy()
    metrics.update(M._margin_summary(margin))
    cm = d.confusion.numpy()
    metrics.update(M.classification_scores(cm))
    hard = M._hard_compute(s, y, d.ids, d.hard_k)
    metrics.update(hard.to_dict())
    sections["hardest"] = Hardest(tuple(HardSample.from_dict(h) for h in hard.hardest))
    cs = M._column_stats_compute(d.colstats)
    labels_of_rows = d._values[: len(cs["by_class"])]  # by_class rows are class slots
    sections["logit_columns"] = LogitColumns.from_dict({**cs, "labels": labels_of_rows})
    sections["confusion"] = Confusion.of(cm, d._values)
    yy = y.numpy()
    values = np.asarray(d._values)
    sections["class_margins"] = ClassMargins.of(margin, values[yy])
    if (d.num_columns or 0) <= MAX_COLUMN_KEYS:
        metrics.update(M.flatten_column_stats(cs))
    top = s["top_prob"].numpy()
    edges = M.histogram_edges(d.bins)
    sections["histograms"] = {}
    mhist_edges = np.histogram_bin_edges(margin, bins=40)
    series = (
        {int(d._values[c]): yy == c for c in range(k)}
        if k <= MAX_PLOT_SERIES
        else {"all": np.ones(len(yy), dtype=bool)}
    )
    sections["histograms"]["margin"] = Histogram.of(
        "margin",
        mhist_edges,
        {key: np.histogram(margin[sel], mhist_edges)[0] for key, sel in series.items()},
    )
    if d.num_columns <= 2:
        odds = s["log_odds"]
        p = torch.sigmoid(odds).numpy()
        pos, neg = (y == 1).numpy(), (y == 0).numpy()
        metrics["prob_mean"] = float(p.mean())
        # the prediction (argmax / p >= 0.5) decides, as in the confusion matrix
        metrics["pred_positive_rate"] = float(cm[:, 1].sum() / cm.sum())
        metrics["label_positive_rate"] = float(pos.mean())
        metrics["saturation_fraction"] = float(((p < 1e-3) | (p > 1 - 1e-3)).mean())
        metrics["score_ks"] = M.ks_distance(odds[pos], odds[neg])
        hp = np.histogram(np.clip(p[pos], 0, 1), edges)[0]
        hn = np.histogram(np.clip(p[neg], 0, 1), edges)[0]
        metrics["score_hellinger"] = M.hellinger_from_counts(hp, hn)
        metrics["score_fisher"] = M.fisher_score(p[pos], p[neg])
        if not pos.any() or not neg.any():
            for key in ("score_ks", "score_hellinger", "score_fisher"):
                reasons[key] = "needs samples of both classes"
        sections["histograms"]["score"] = Histogram.of("probability", edges, {0: hn, 1: hp})
    else:
        _multiclass_scores(d, metrics, reasons, sampled, sections, top)


def _multiclass_scores(d, metrics, reasons, sampled, sections, top) -> None:
    """One-vs-rest score separation, macro-averaged over classes: from exact histograms
    (binned at 1/1000 of probability) up to MAX_COLUMN_KEYS columns, from the reservoir's
    logits beyond (exact when it holds every sample)."""
    metrics["prob_mean"] = float(top.mean())
    metrics["saturation_fraction"] = float((top > 1 - 1e-3).mean())
    for key in ("pred_positive_rate", "label_positive_rate", "f1"):
        metrics[key] = NAN
        reasons[key] = "defined for binary models only"
    if d.ovr is not None:
        pos_h, all_h = d.ovr["pos_hist"].numpy(), d.ovr["all_hist"].numpy()
        moments = {k: d.ovr[k].numpy() for k in ("pos_sum", "pos_sumsq", "all_sum", "all_sumsq")}
        n_c = d.counts.numpy()
        how = f"binned at 1/{HIST_BINS_FINE} of probability"
    else:
        res = d.reservoir
        if len(res) == 0:
            for key in ("score_ks", "score_hellinger", "score_fisher"):
                metrics[key] = NAN
                reasons[key] = "wide logits are scored on the reservoir, and reservoir_size is 0"
            return
        pos_h, all_h, moments, n_c = _ovr_from_rows(res.extra, res.labels, len(d._values))
        how = f"binned at 1/{HIST_BINS_FINE}, on the reservoir of {len(res)} samples"
        info = {"exact": res.exact, "sample_size": len(res), "population": res.seen}
        for key in ("score_ks", "score_hellinger", "score_fisher"):
            sampled[key] = dict(info)
    ks, hel, fis = _ovr_separation(pos_h, all_h, moments, n_c, d.bins)
    metrics["score_ks"], metrics["score_hellinger"], metrics["score_fisher"] = ks, hel, fis
    reasons["score_ks"] = f"one-vs-rest, macro-averaged over classes; {how}"
    group = HIST_BINS_FINE // d.bins
    neg_h = all_h - pos_h
    sections["histograms"]["score"] = Histogram.of(
        "ovr_probability",
        M.histogram_edges(d.bins),
        {
            "true_class": pos_h.sum(0).reshape(-1, group).sum(1),
            "other_classes": neg_h.sum(0).reshape(-1, group).sum(1),
        },
    )


def _calibration(d, metrics, reasons, sampled, sections) -> None:
    """ECE, MCE, Brier and NLL from the exact calibration sums, a reliability diagram, and
    the NLL-optimal temperature: fitted on every margin for one logit or two columns (the
    NLL of a binary model depends on its margins only), on the reservoir's logits from
    three columns on (exact when it holds every sample, else flagged in ``sampled``)."""
    rows = None  # (logits, labels) the temperature is fitted on, to score them at T
    if d.num_columns <= 2:
        margins = torch.cat(d.samples["margin"])
        fit = _fit_temperature(margins=margins)
        how = f"fitted on all {len(margins)} margins"
        labels = torch.cat(d.samples["label"])
        rows = ((2 * labels - 1).to(margins.dtype) * margins, labels)  # one logit: log-odds
    else:
        res = d.reservoir
        if len(res) == 0:
            fit = TemperatureFit(
                NAN, reason="fitted on the reservoir's logits, and reservoir_size is 0"
            )
        else:
            order = torch.argsort(res.keys)  # independent of arrival order
            fit = _fit_temperature(logits=res.extra[order], labels=res.labels[order])
            rows = (res.extra[order], res.labels[order])
            info = {"exact": res.exact, "sample_size": len(res), "population": res.seen}
            for key in ("fitted_temperature", "fitted_scale") + _AT_T:
                sampled[key] = dict(info)
        how = f"fitted on the logits of the reservoir's {len(res)} rows"
    scale, why = _logit_scale(d)
    result = _calibration_compute(d.calibration, fit, scale, why)
    metrics.update(result.to_dict())
    reasons.update(result.reasons)
    reasons.setdefault("fitted_temperature", how)
    sections["reliability"] = Reliability.from_dict(result.reliability)
    # what dividing the logits by T would give, on the rows T was fitted on (in-sample: the
    # advice's track record says how it holds on other data)
    t = metrics.get("fitted_temperature", NAN)
    if rows is not None and math.isfinite(t) and t > 0:
        at_t = calibration_metrics(rows[0].double() / t, rows[1])
        metrics["ece_at_fitted_temperature"] = at_t.ece
        metrics["nll_at_fitted_temperature"] = at_t.nll
    else:
        for key in _AT_T:
            metrics[key] = NAN
            reasons[key] = "no fitted temperature"


def _logit_scale(d) -> tuple[float | None, str]:
    """The head's s when the logits can be its scaled cosines s cos(theta) (one column per
    head class, every |z| <= s up to 0.1%), else None and why not. An s stated without the
    head's weights (``head_info``) is checked against the logits alone."""
    if d.head is None:
        s = stated_facts(d.head_info).get("s")
        if s is None:
            return None, NO_SCALE
    else:
        s = d.head.s
    if d.head is not None and d.num_columns != d.head.num_classes:
        return None, (
            f"the logits ({d._describe(d.num_columns)}) do not have one column per "
            f"class of the head ({d.head.num_classes}): they are not its s * cos(theta)"
        )
    cs = d.colstats
    reach = max(float(cs["max"].max()), -float(cs["min"].min()))
    if not s > 0 or reach > s * (1 + 1e-3):
        return None, (
            f"the logits reach |z| = {reach:.4g}, beyond the head's s = {s:g}: they are not "
            "its s * cos(theta)"
        )
    return s, ""


def _head(d, metrics, reasons, sections) -> None:
    hp = d.head
    t = torch.cat(d.samples["angle_true"]).numpy()
    o = torch.cat(d.samples["angle_other"]).numpy()
    metrics["angle_true_mean"] = float(t.mean())
    metrics["angle_true_p99"] = float(np.percentile(t, 99))
    metrics["angle_nearest_other_mean"] = float(np.nanmean(o)) if np.isfinite(o).any() else NAN
    if hp.kind == "angular":
        metrics["fallback_fraction"] = float((np.radians(t) + hp.m > math.pi).mean())
    else:
        metrics["fallback_fraction"] = NAN
        reasons["fallback_fraction"] = "defined for angular (ArcFace-like) margins only"
    edges = np.linspace(0, 180, 61)
    sections.setdefault("histograms", {})["angle"] = Histogram.of(
        "angle",
        edges,
        {
            "to_true_class": np.histogram(t, edges)[0],
            "to_nearest_other": np.histogram(o[np.isfinite(o)], edges)[0],
        },
    )
    means = d.sums / d.counts.clamp_min(1)[:, None]
    predicted = d.confusion.sum(0) if d.confusion is not None else None
    h, r = head_health(
        hp,
        means,
        d.counts > 0,
        predicted,
        bool(d.head_info.get("missing_from_checkpoint")),
    )
    metrics.update(h)
    reasons.update(r)
    reasons.update(provenance_reasons(head_provenance(hp, d.head_info), hp.s, hp.m))
    sections["head"] = Head(hp.kind, hp.m, hp.s, hp.num_classes)


def _stated_head(d, metrics, reasons, sections) -> None:
    """A head known by its stated s, m and kind only (``head_info``; no weights): its settings
    as metrics, for the advice and the comparison; angles and the head's health need weights.
    Its classes are the logit columns (two for one binary logit), else the classes present."""
    facts = stated_facts(d.head_info)
    if d.num_columns is not None:
        classes = 2 if d.num_columns == 1 else d.num_columns
    else:
        classes = int((d.counts > 0).sum())
    for key in ("s", "m"):
        metrics[f"head.{key}"] = facts.get(key, NAN)
        if key not in facts:
            reasons[f"head.{key}"] = f"not stated (head_info[{key!r}], --head-{key})"
        else:
            reasons[f"head.{key}"] = "stated; the head's weights are not known"
    metrics["head.num_classes"] = float(classes)
    sections["head"] = Head(
        facts.get("kind", "unknown"), facts.get("m"), facts.get("s"), classes, weights=False
    )


def _vectors(d, metrics, reasons, sampled, sections):
    """Metrics that need the vectors, on the reservoir (exact when it holds every sample);
    returns the retrieval result (its per-query values give the intervals) or None."""
    res = d.reservoir
    names = _VECTOR_KEYS
    if len(res) == 0:
        for key in names:
            metrics[key] = NAN
            reasons[key] = "reservoir_size is 0: vector-based metrics are off"
        return None
    order = torch.argsort(res.keys)  # independent of arrival order
    x, y = res.rows[order], res.labels[order]
    info = {"exact": res.exact, "sample_size": len(res), "population": res.seen}
    for key in names:
        rows = {"pair": d.pair_rows, "retrieval": d.retrieval_rows}.get(subset_of(key), len(res))
        used = min(rows, len(res))
        sampled[key] = {
            "exact": res.exact and used == len(res),
            "sample_size": used,
            "population": res.seen,
        }
    n_total = float(d.counts.sum())
    weight = n_total / len(res)
    value, why = M._nc1_compute(x, y, d.counts, d.sums, weight)
    metrics["nc1"] = value
    if why:
        reasons["nc1"] = why
    means = d.sums / d.counts.clamp_min(1)[:, None]
    present = d.counts > 0
    if int(present.sum()) >= 2:
        confused = M._centroid_confusion_compute(x, y, means, present, d.space)
        metrics["centroid_confusion_count"] = confused * weight
        metrics["centroid_confusion_fraction"] = confused / len(res)
        sampled["centroid_confusion_fraction"] = dict(info)
    else:
        metrics["centroid_confusion_count"] = NAN
        reasons["centroid_confusion_count"] = "needs at least two classes"
    _pairs(d, x[: d.pair_rows], y[: d.pair_rows], metrics, reasons, sections)
    retrieval = _retrieval(d, x[: d.retrieval_rows], y[: d.retrieval_rows], metrics, reasons)
    sections["pca"] = Pca.from_dict(pca_view(x, y, d._values, d.seed, limit=d.pca_rows))
    return retrieval


def _pairs(d, x, y, metrics, reasons, sections) -> None:
    """Genuine vs impostor cosine similarities of every pair among these rows."""
    from .pairs import pair_similarities
    from .verification import verification_metrics

    n = len(y)
    ps = pair_similarities(x, y, max_pairs=max(1, n * (n - 1) // 2), seed=d.seed)
    if not (len(ps.genuine) and len(ps.impostor)):
        for key in _PAIR_KEYS:
            metrics[key] = NAN
            reasons[key] = "needs same-class and different-class pairs"
        return
    g, i = ps.genuine.astype(np.float64), ps.impostor.astype(np.float64)
    v = verification_metrics(g, i)
    metrics["pair_ks"] = v.ks  # from the ROC's one sort (max |TAR - FAR|)
    edges = M.histogram_edges(d.bins, -1.0, 1.0)
    # equal bins by range: numpy's fast path, the same counts as by these edges
    hg = np.histogram(np.clip(g, -1, 1), d.bins, range=(-1.0, 1.0))[0]
    hi = np.histogram(np.clip(i, -1, 1), d.bins, range=(-1.0, 1.0))[0]
    metrics["pair_hellinger"] = M.hellinger_from_counts(hg, hi)
    metrics.update(v.to_dict())
    for note_key, note in (getattr(v, "notes", None) or {}).items():
        reasons.setdefault(str(note_key), str(note))
    sections.setdefault("histograms", {})["pair"] = Histogram.of(
        "cosine", edges, {"genuine": hg, "impostor": hi}
    )


def _retrieval(d, x, y, metrics, reasons):
    """Exact kNN retrieval among these rows (each one a query against the others)."""
    from .retrieval import knn_retrieval

    if int((torch.bincount(y) >= 2).sum()) == 0:
        for key in ("recall_at_1", "recall_at_5", "map_at_r"):
            metrics[key] = NAN
            reasons[key] = "no class has two samples"
        return None
    # reservoir rows live on the CPU; 1024-row blocks keep the working memory near 0.2 GB
    # for 5,000 rows of two classes (2048: 0.6 GB) at the same speed
    r = knn_retrieval(x, y, ks=(1, 5), space=d.space, chunk_size=1024, per_query=True)
    metrics.update(r.to_dict())
    return r


def _class_table(d, order) -> ClassTable:
    n_c = d.counts.numpy()
    means = (d.sums / d.counts.clamp_min(1)[:, None]).numpy()
    q = d.sqnorms.numpy()
    rows = []
    for slot in order:
        if n_c[slot] == 0:
            continue
        spread = q[slot] / n_c[slot] - means[slot] @ means[slot]
        recall = predicted = None
        if d.confusion is not None:
            cm = d.confusion.numpy()
            recall = float(cm[slot, slot] / cm[slot].sum()) if cm[slot].sum() else NAN
            predicted = int(cm[:, slot].sum())
        rows.append(
            ClassRow(
                int(d._values[slot]),
                int(n_c[slot]),
                float(np.linalg.norm(means[slot])),
                float(max(spread, 0.0)),
                recall,
                predicted,
            )
        )
    return ClassTable(tuple(rows))
