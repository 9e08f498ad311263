"""A 95% interval for every scalar metric of a report, from the Diagnoser's state.

(Over 400 lines: one section per family of metrics, sharing the pool, the seeded streams and
the bootstrap weights; the fitted, head and exact intervals live in interval_extras.py.)

How each interval is obtained depends on what its metric is computed from:

- a proportion of samples (``accuracy``, ``negative_margin_fraction``, ``gray_zone_fraction``,
  ``saturation_fraction``, ``centroid_confusion_fraction``, ``recall_at_k`` over its queries,
  ...): the Wilson score interval (Wilson, JASA 1927). A count (``gray_zone_count``, ...) gets
  the interval of its rate times n.
- a mean of per-sample values (``margin_mean``, ``prob_mean``, the binary ``brier``/``nll``,
  the angle means): mean +- z times its standard error, stratified by class.
- any other function of per-sample values (``f1``, ``macro_f1``, ``margin_median``,
  ``margin_p05``, the binary ``score_ks``/``score_hellinger``/``score_fisher``, ``ece``,
  ``mce``): a bootstrap stratified by class (the class sizes stay fixed), with a fixed seed, on
  at most ``POOL_ROWS`` samples drawn per class in proportion; its standard deviation is
  scaled to the n the metric is computed on (standard errors scale as 1 / sqrt(n)).
- a metric of the reservoir's rows (pairs, NC1, centroid confusion, the geometry when the
  metric itself uses every sample): a bootstrap (or the standard error) over the reservoir's
  rows; for a metric computed on every sample (``fisher_ratio``, ``intra_mean``, ...) it is
  scaled from the reservoir's m rows to N, for one computed on the reservoir it is the
  uncertainty of that sample, so it includes the sampling.
- retrieval over the queries: recall@k by Wilson over the queries' hits, MAP@R by the
  stratified standard error of the per-query AP@R (`knn_retrieval(per_query=True)`).

Intervals from a standard error are value +- z se, clipped to the metric's range, so they
always hold the value; ``z`` is the normal quantile of the level (1.96 at 95%). What is not
estimated from the samples (``n``, ``head.s``, a column's min and max, yes/no findings, ...)
gets the exact interval [v, v]; the fitted temperature, the head's alignment, the logit
column statistics and the leak scores are in interval_extras.py; a metric that is nan has
none, and ``interval_methods`` says why. Replicates and subsamples are seeded from the
Diagnoser's ``seed``: a report is reproducible.

Cost: per-sample bootstraps draw one weight matrix (replicates x at most ``POOL_ROWS``
samples) shared by every metric of the pool; the geometry bootstrap is replicates x reservoir
rows x D multiply-adds; pair metrics resample ``PAIR_ROWS`` rows (their pairs, weighted).
Measured in benchmarks/README.md.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from dataclasses import replace

import numpy as np
import torch

from . import interval_extras as X
from . import metrics as M
from .interval_core import (  # noqa: F401  (wilson, z_value, metric_range: public here too)
    LEVEL,
    _boot,
    _Intervals,
    _sd,
    _stratified_se,
    _weights,
    calibration_replicates,
    metric_range,
    wilson,
    z_value,
)
from .registry import PAIR_KEYS, info
from .scores import _ovr_from_rows, _ovr_separation
from .state import HIST_BINS_FINE

NAN = float("nan")
REPLICATES = 200  # bootstrap replicates of per-sample metrics
POOL_ROWS = 6_000  # per-sample bootstraps resample at most this many samples
GEOMETRY_REPLICATES = 100  # bootstrap replicates over the reservoir's rows (x D each)
GEOMETRY_ROWS = 4_000  # ... of at most this many of them (a uniform sample: the first by key)
PAIR_ROWS = 200  # pair metrics: rows resampled (their 19,900 pairs weighted per replicate;
# up to twice as many rows while they hold under the 10,000 impostor pairs of FAR 1e-4)
PAIR_REPLICATES = 100
JACKKNIFE_ROWS = 1_000  # MAP@R's delete-a-group jackknife runs on at most this many rows
JACKKNIFE_GROUPS = 10
NC1_ROWS = 2_000  # NC1's per-row spread is measured on at most this many reservoir rows
HIST_CELLS = 40_000_000  # multinomial histogram bootstraps: replicates x classes x bins

# seeds of the groups, mixed with the Diagnoser's seed (one stream per group: adding a metric
# to one group leaves the others' intervals unchanged)
_SEEDS = {
    "pool": 1,
    "confusion": 2,
    "geometry": 3,
    "pairs": 4,
    "ovr": 5,
    "fitted": 6,
    "angle": 7,
    "head": 8,
    "retrieval": 9,
}


def _rng(seed: int, group: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, _SEEDS[group]])


def _pool_fn(d, group: str):
    """(labels, columns) -> (pool indices, stratified bootstrap weights) of ``group``'s own
    stream: rows drawn by a hash of their values (``columns``), as the per-sample pool."""

    def draw(labels: np.ndarray, columns: list) -> tuple[np.ndarray, np.ndarray]:
        idx = _pool(labels, POOL_ROWS, _value_keys(columns, d.seed, group))
        return idx, _weights(labels[idx], REPLICATES, _rng(d.seed, group))

    return draw


def _pool(labels: np.ndarray, max_rows: int, keys: np.ndarray) -> np.ndarray:
    """Indices of about ``max_rows`` samples, each class in proportion (and at least one of
    every class): those whose pseudo-random ``keys`` (uint64, a hash of their values) fall
    under max_rows / n of the key range; all of them when there are few enough. In the order
    of (label, key): which rows are drawn and in which order depends on their values only,
    not on the order they arrived in."""
    n = len(labels)
    if n > max_rows:
        cut = np.uint64(min(2**64 - 1, int(2**64 * max_rows / n)))
        chosen = keys < cut
        _, codes = np.unique(labels, return_inverse=True)
        lowest = np.full(codes.max() + 1, np.iinfo(np.uint64).max, dtype=np.uint64)
        np.minimum.at(lowest, codes, keys)
        chosen |= keys == lowest[codes]  # every class keeps its lowest-key row
        idx = np.flatnonzero(chosen)
    else:
        idx = np.arange(n)
    return idx[np.lexsort((keys[idx], labels[idx]))]


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _value_keys(columns: list[np.ndarray], seed: int, group: str) -> np.ndarray:
    """A uint64 hash of each row's values (and of the seed and the group): equal rows get
    equal keys, whatever their position."""
    h = np.full(len(columns[0]), (int(seed) * 1_000_003 + _SEEDS[group]) & (2**64 - 1), np.uint64)
    with np.errstate(over="ignore"):
        for column in columns:
            bits = np.ascontiguousarray(column, dtype=np.float64).view(np.uint64)
            h = _mix(h ^ bits)
    return h


# ----------------------------------------------------------------------------------------------
# The entry point.
# ----------------------------------------------------------------------------------------------


def with_intervals(report, d, level: float = LEVEL, retrieval=None):
    """``report`` with ``intervals``, ``interval_level`` and ``interval_methods`` from the
    Diagnoser ``d``'s state, its per-sample values (``samples``, what a paired comparison
    needs) and the fingerprint of its data (``meta["data"]``). ``retrieval``: the report's
    `RetrievalResult` with its per-query values, when it has retrieval metrics."""
    out = _Intervals(report.metrics, level)
    labels = torch.cat(d.samples["label"]).numpy() if d.samples["label"] else np.zeros(0, int)
    reps_cm = None
    if d.num_columns is not None:
        s = {k: torch.cat(v).numpy() for k, v in d.samples.items() if v}
        columns = [labels, *(s[k] for k in ("pred", "margin", "top_prob", "gray") if k in s)]
        keys = _value_keys(columns, d.seed, "pool")
        idx = _pool(labels, POOL_ROWS, keys)
        pool = (idx, _weights(labels[idx], REPLICATES, _rng(d.seed, "pool")))
        reps_cm = _task(d, out, labels, s["pred"], pool)
        _per_sample(d, out, s, labels, pool)
        _calibration(d, out, s, labels, pool)
        X.temperature(d, out, _pool_fn(d, "fitted"))
        X.column_stats(d, out)
        if d.num_columns > 2:
            _ovr(d, out)
    if d.head is not None:
        _head(d, out, labels, reps_cm)
    _geometry(d, out)
    _reservoir(d, out, retrieval)
    _descriptive(out)
    samples = _samples(d, labels)
    meta = {**report.meta, "data": fingerprint(samples, d)}
    return replace(
        report,
        intervals=out.intervals,
        interval_level=level,
        interval_methods=out.methods,
        samples=samples,
        meta=meta,
    )


# ----------------------------------------------------------------------------------------------
# The task: accuracy, F1.
# ----------------------------------------------------------------------------------------------


def _task(d, out: _Intervals, labels: np.ndarray, pred: np.ndarray, pool: tuple):
    """accuracy, f1, macro_f1; returns the confusion replicates [reps, k, k] of a
    multinomial bootstrap (None beyond 64 classes)."""
    cm = d.confusion.numpy()
    n = cm.sum()
    out.wilson("accuracy", np.trace(cm), n, "Wilson (correct predictions over samples)")
    k = cm.shape[0]
    names = [k for k in ("f1", "macro_f1") if out.has(k)]
    if not names and (d.head is None or k > 64):
        return None
    rng = _rng(d.seed, "confusion")
    if k <= 64:  # resample each class's predictions: a multinomial over its confusion row
        rows = cm.sum(1)
        live = rows > 0
        p = np.where(live[:, None], cm / np.where(live, rows, 1)[:, None], 1.0 / k)
        reps = rng.multinomial(rows.astype(np.int64), p, size=(REPLICATES, k)).astype(np.float64)
        method = _boot(REPLICATES, int(n), int(n), "samples") + " of the (label, prediction) pairs"
        if not names:
            return reps
    else:  # many classes: resample (label, prediction) pairs of a pool
        idx, w = pool
        cell = labels[idx] * k + pred[idx]
        reps = np.stack([np.bincount(cell, weights=wr, minlength=k * k) for wr in w]).reshape(
            -1, k, k
        )
        method = _boot(len(w), len(idx), int(n)) + " of the (label, prediction) pairs"
    scale = math.sqrt(reps[0].sum() / n)
    tp = np.diagonal(reps, axis1=1, axis2=2)
    denom = 2 * tp + (reps.sum(1) - tp) + (reps.sum(2) - tp)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate without any F1
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)
        macro = np.nanmean(f1, axis=1)
    out.normal("macro_f1", _sd(macro) * scale, method)
    if k == 2:
        out.normal("f1", _sd(f1[:, 1]) * scale, method)
    return reps if k <= 64 else None


# ----------------------------------------------------------------------------------------------
# Per-sample values: margins, the gray zone, binary score separation.
# ----------------------------------------------------------------------------------------------


def _per_sample(d, out: _Intervals, s: dict, labels: np.ndarray, pool: tuple) -> None:
    n = len(labels)
    margin = s["margin"].astype(np.float64)
    top = s["top_prob"].astype(np.float64)
    wrong = s["pred"] != labels
    out.wilson("negative_margin_fraction", (margin < 0).sum(), n, "Wilson (samples over n)")
    gray = s["gray"].astype(bool).sum()
    out.wilson("gray_zone_fraction", gray, n, "Wilson (samples over n)")
    out.wilson("gray_zone_count", gray, n, "Wilson on the rate, times n", times=n)
    confident = (wrong & (top >= M.CONFIDENT)).sum()
    out.wilson("confident_error_count", confident, n, "Wilson on the rate, times n", times=n)
    out.normal("margin_mean", _stratified_se(margin, labels), "normal (stratified standard error)")
    if d.num_columns <= 2:
        p = 1.0 / (1.0 + np.exp(-s["log_odds"].astype(np.float64)))
        sat = ((p < 1e-3) | (p > 1 - 1e-3)).sum()
        cm = d.confusion.numpy()
        out.wilson("pred_positive_rate", cm[:, 1].sum(), cm.sum(), "Wilson (samples over n)")
        out.wilson("label_positive_rate", (labels == 1).sum(), n, "Wilson (samples over n)")
        out.normal("prob_mean", _stratified_se(p, labels), "normal (stratified standard error)")
    else:
        sat = (top > 1 - 1e-3).sum()
        out.normal("prob_mean", _stratified_se(top, labels), "normal (stratified standard error)")
    out.wilson("saturation_fraction", sat, n, "Wilson (samples over n)")

    idx, w = pool
    scale = math.sqrt(len(idx) / n)
    method = _boot(REPLICATES, len(idx), n)
    # margin quantiles: weighted quantiles of the sorted pool ("inverted cdf")
    order = np.argsort(margin[idx], kind="stable")
    sorted_m = margin[idx][order]
    cw = np.cumsum(w[:, order], axis=1)
    for name, q in (("margin_median", 0.5), ("margin_p05", 0.05)):
        j = np.argmax(cw >= q * cw[:, -1:], axis=1)
        out.normal(name, _sd(sorted_m[j]) * scale, method)
    del cw
    if d.num_columns <= 2:
        _binary_scores(d, out, s["log_odds"][idx].astype(np.float64), labels[idx], w, scale, method)


def _binary_scores(d, out: _Intervals, odds, y, w, scale: float, method: str) -> None:
    """score_ks, score_hellinger, score_fisher of the pool's replicates."""
    if not (y == 1).any() or (y == 1).all():
        return
    reps = score_replicates(odds, 1.0 / (1.0 + np.exp(-odds)), y == 1, w, d.bins)
    for name, values in reps.items():
        out.normal(name, _sd(values) * scale, method)


def score_replicates(score, p, pos, w, bins: int) -> dict[str, np.ndarray]:
    """Per replicate (rows of weights ``w``): the KS distance between the classes' weighted
    ``score`` distributions, the Hellinger distance of their histograms of ``p`` (``bins``
    equal bins on [0, 1]) and the Fisher score of ``p``; ``score`` is monotone in ``p`` (the
    log-odds, or p itself). Everything from cumulative sums over the rows sorted once."""
    order = np.argsort(score, kind="stable")
    v, pos, p = score[order], pos[order], p[order]
    ws = w[:, order]
    cp = np.cumsum(ws * pos, axis=1, dtype=np.float64)
    cn = np.cumsum(ws * ~pos, axis=1, dtype=np.float64)
    tp, tn = cp[:, -1:], cn[:, -1:]
    last = np.concatenate([v[1:] != v[:-1], [True]])  # the end of each run of equal scores
    ks = np.max(np.abs(cp[:, last] / tp - cn[:, last] / tn), axis=1)
    b = np.clip(np.floor(np.clip(p, 0, 1) * bins), 0, bins - 1).astype(np.int64)
    ends = np.searchsorted(b, np.arange(bins), side="right") - 1  # last row of each bin

    def hist(c):
        at = np.where(ends >= 0, c[:, np.clip(ends, 0, None)], 0.0)
        return np.diff(np.concatenate([np.zeros((len(c), 1)), at], axis=1), axis=1)

    hp, hn = hist(cp) / tp, hist(cn) / tn
    hel = np.sqrt(np.maximum(0.0, 1.0 - np.sqrt(np.maximum(hp * hn, 0.0)).sum(1)))
    del cp, cn
    wp, wn = ws * pos, ws * ~pos
    m1, m0 = (wp @ p) / tp[:, 0], (wn @ p) / tn[:, 0]
    v1 = (wp @ (p * p)) / tp[:, 0] - m1 * m1
    v0 = (wn @ (p * p)) / tn[:, 0] - m0 * m0
    var = np.maximum(v1, 0) + np.maximum(v0, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        fis = np.where(var > 0, (m1 - m0) ** 2 / var, np.nan)
    return {"score_ks": ks, "score_hellinger": hel, "score_fisher": fis}


# ----------------------------------------------------------------------------------------------
# Calibration.
# ----------------------------------------------------------------------------------------------


def _calibration(d, out: _Intervals, s: dict, labels: np.ndarray, pool: tuple) -> None:
    n = len(labels)
    top = s["top_prob"].astype(np.float64)
    correct = (s["pred"] == labels).astype(np.float64)
    idx, w = pool
    reps = calibration_replicates(top[idx], correct[idx], w)
    scale = math.sqrt(len(idx) / n)
    method = _boot(REPLICATES, len(idx), n) + " of (confidence, correct)"
    out.normal("ece", _sd(reps["ece"]) * scale, method)
    out.normal("mce", _sd(reps["mce"]) * scale, method)
    if d.num_columns <= 2:
        margin = s["margin"].astype(np.float64)  # log P(true) / P(other)
        nll = np.logaddexp(0.0, -margin)
        brier = 2.0 / (1.0 + np.exp(margin)) ** 2
        how = "normal (stratified standard error of the per-sample values)"
        out.normal("nll", _stratified_se(nll, labels), how)
        out.normal("brier", _stratified_se(brier, labels), how)
    else:
        res = d.reservoir
        if len(res) == 0:
            for key in ("brier", "nll"):
                out.none(
                    key,
                    "none: the per-sample values come from the reservoir, and reservoir_size is 0",
                )
        else:
            z = res.extra.double()
            y = res.labels
            lse = torch.logsumexp(z, dim=1)
            z_y = z.gather(1, y[:, None])[:, 0]
            p = torch.softmax(z, dim=1)
            nll = (lse - z_y).numpy()
            brier = ((p * p).sum(1) - 2 * torch.exp(z_y - lse) + 1).clamp_min(0).numpy()
            m = len(res)
            how = f"normal (the per-sample spread on the reservoir's {m} rows, over n = {n})"
            ratio = math.sqrt(m / n)
            out.normal("nll", _stratified_se(nll, y.numpy()) * ratio, how)
            out.normal("brier", _stratified_se(brier, y.numpy()) * ratio, how)


# ----------------------------------------------------------------------------------------------
# One-vs-rest score separation of multi-class models.
# ----------------------------------------------------------------------------------------------


def _ovr(d, out: _Intervals) -> None:
    """Resample each class's histograms of P(class) (multinomials over the bins: the class's own
    samples, and the others'), then the macro-averaged KS, Hellinger and Fisher score."""
    names = [k for k in ("score_ks", "score_hellinger", "score_fisher") if out.has(k)]
    if not names:
        return
    k = len(d._values)
    if d.ovr is not None:
        pos_h, all_h = d.ovr["pos_hist"].numpy(), d.ovr["all_hist"].numpy()
        n_c = d.counts.numpy()
        where = ""
    else:
        res = d.reservoir
        pos_h, all_h, _, n_c = _ovr_from_rows(res.extra, res.labels, k)
        where = f" on the reservoir's {len(res)} rows (includes the sampling)"
    neg_h = all_h - pos_h
    n = n_c.sum()
    reps = int(max(20, min(REPLICATES, HIST_CELLS // max(1, k * HIST_BINS_FINE))))
    rng = _rng(d.seed, "ovr")
    live = n_c > 0
    centres = (np.arange(HIST_BINS_FINE) + 0.5) / HIST_BINS_FINE
    rows = [], [], []
    for _ in range(reps):
        pos = np.zeros_like(pos_h)
        neg = np.zeros_like(neg_h)
        for h, target, totals in ((pos_h, pos, n_c), (neg_h, neg, n - n_c)):
            t = totals.astype(np.int64)
            ok = live & (t > 0)
            p = h[ok] / h[ok].sum(1, keepdims=True)
            target[ok] = rng.multinomial(t[ok], p)
        moments = {
            "pos_sum": pos @ centres,
            "pos_sumsq": pos @ centres**2,
            "all_sum": (pos + neg) @ centres,
            "all_sumsq": (pos + neg) @ centres**2,
        }
        for j, v in enumerate(_ovr_separation(pos, pos + neg, moments, n_c, d.bins)):
            rows[j].append(v)
    method = f"bootstrap ({reps}, multinomial per class over the one-vs-rest histograms){where}"
    for j, name in enumerate(("score_ks", "score_hellinger", "score_fisher")):
        out.normal(name, _sd(np.asarray(rows[j])), method)


# ----------------------------------------------------------------------------------------------
# Margin heads.
# ----------------------------------------------------------------------------------------------


def _head(d, out: _Intervals, labels: np.ndarray, reps_cm) -> None:
    t = torch.cat(d.samples["angle_true"]).numpy().astype(np.float64)
    o = torch.cat(d.samples["angle_other"]).numpy().astype(np.float64)
    how = "normal (stratified standard error)"
    out.normal("angle_true_mean", _stratified_se(t, labels), how)
    ok = np.isfinite(o)
    out.normal("angle_nearest_other_mean", _stratified_se(o[ok], labels[ok]), how)
    if d.head.kind == "angular":
        fallback = (np.radians(t) + d.head.m > math.pi).sum()
        out.wilson("fallback_fraction", fallback, len(t), "Wilson (samples over n)")
    X.angle_quantile(out, t, labels, _pool_fn(d, "angle"))
    X.centroid_alignment(d, out, GEOMETRY_REPLICATES, GEOMETRY_ROWS, _rng(d.seed, "head"))
    if reps_cm is not None:
        X.dead_classes(d, out, reps_cm, out.level)


# ----------------------------------------------------------------------------------------------
# Geometry from the class sums: a bootstrap over the reservoir's rows, scaled to N.
# ----------------------------------------------------------------------------------------------


def _geometry(d, out: _Intervals) -> None:
    names = ("fisher_ratio", "intra_mean", "inter_mean", "intra_inter_ratio")
    if not any(out.has(k) for k in names):
        return
    res = d.reservoir
    if len(res) < 2:
        for key in names:
            out.none(key, "none: it is bootstrapped over the reservoir, and reservoir_size is 0")
        return
    order = torch.argsort(res.keys)[:GEOMETRY_ROWS]
    x = res.rows[order].double()
    y = res.labels[order].numpy()
    m = len(y)
    n = float(d.counts.sum())
    rng = _rng(d.seed, "geometry")
    reps = GEOMETRY_REPLICATES
    w = _weights(y, reps, rng)
    classes = np.unique(y)
    k = len(classes)
    n_c = np.array([(y == c).sum() for c in classes], dtype=np.float64)
    # rows centred on their class mean (float64, once): the replicates' sums of deviations are
    # small, so they are taken in float32 without the cancellation of q_c - |s_c|^2 / n_c
    s_norm2 = np.zeros((reps, k))
    q_c = np.zeros((reps, k))
    within_c = np.zeros((reps, k))
    total = np.zeros((reps, x.shape[1]))
    for j, c in enumerate(classes):
        rows = torch.from_numpy(np.flatnonzero(y == c))
        xc = x.index_select(0, rows)
        mean = xc.mean(0)
        dev = xc - mean
        wc = torch.from_numpy(w[:, rows.numpy()])
        s_dev = (wc @ dev.float()).double().numpy()  # [reps, D]: sum of w_i (x_i - mean_c)
        q_dev = wc.double() @ (dev * dev).sum(1)  # sum of w_i |x_i - mean_c|^2
        mu = mean.numpy()
        s_c = s_dev + n_c[j] * mu  # sum of w_i x_i (the weights of a class sum to n_c)
        total += s_c
        s_norm2[:, j] = (s_c * s_c).sum(1)
        # q_c - |s_c|^2 / n_c = sum w |x - mean|^2 - |s_dev|^2 / n_c, without cancellation
        within_c[:, j] = q_dev.numpy() - (s_dev * s_dev).sum(1) / n_c[j]
        q_c[:, j] = within_c[:, j] + s_norm2[:, j] / n_c[j]
    tot2 = (total * total).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tr_w = within_c.sum(1)
        tr_b = np.sum(s_norm2 / n_c, 1) - tot2 / m
        fisher = np.where((k >= 2) & (tr_w > 0), np.maximum(tr_b, 0) / tr_w, np.nan)
        intra_pairs = np.sum(n_c * (n_c - 1) / 2)
        inter_pairs = (m * m - np.sum(n_c * n_c)) / 2
        half = 0.5 if d.space == "cosine" else 1.0
        intra = np.maximum(np.sum(n_c * within_c, 1), 0) * half / intra_pairs
        inter = (np.sum(q_c * (m - n_c), 1) - (tot2 - s_norm2.sum(1))) * half / inter_pairs
        ratio = intra / inter
    scale = math.sqrt(m / n)
    method = f"bootstrap ({reps}, stratified by class) over {m} of the reservoir's rows" + (
        f", scaled to N = {int(n)}" if m < n else ""
    )
    for name, v in zip(names, (fisher, intra, inter, ratio), strict=True):
        out.normal(name, _sd(v) * scale, method)


# ----------------------------------------------------------------------------------------------
# Metrics of the reservoir: centroid confusion, NC1, pairs, retrieval.
# ----------------------------------------------------------------------------------------------


def _reservoir(d, out: _Intervals, retrieval=None) -> None:
    res = d.reservoir
    if len(res) == 0:
        return
    n = float(d.counts.sum())
    m = len(res)
    note = (
        "" if res.exact else f" on the reservoir's {m} of {int(n)} samples (includes the sampling)"
    )
    if out.has("centroid_confusion_fraction"):
        confused = round(out.metrics["centroid_confusion_fraction"] * m)
        out.wilson("centroid_confusion_fraction", confused, m, "Wilson (samples over n)" + note)
        out.wilson(
            "centroid_confusion_count", confused, m, "Wilson on the rate, times N" + note, times=n
        )
    order = torch.argsort(res.keys)
    x, y = res.rows[order], res.labels[order]
    _nc1(d, out, x, y, n)
    _pairs(d, out, x[: d.pair_rows], y[: d.pair_rows], n)
    _retrieval(d, out, x[: d.retrieval_rows], y[: d.retrieval_rows], n, retrieval)


def _nc1(d, out: _Intervals, x: torch.Tensor, y: torch.Tensor, n: float) -> None:
    """NC1 = N / (k m) sum_i |(x_i - mu_{y_i}) A^+|^2 over the m reservoir rows: a mean of
    per-row terms, whose standard error is their spread over sqrt(m) (class means held)."""
    if not out.has("nc1"):
        return
    present = d.counts > 0
    k = int(present.sum())
    means = d.sums / d.counts.clamp_min(1)[:, None]
    mu = d.sums.sum(0) / d.counts.sum()
    a = (means - mu)[present] * d.counts[present].sqrt()[:, None]
    with M.one_thread():
        u, sv, vh = torch.linalg.svd(a, full_matrices=False)
    cut = sv[0] * max(a.shape) * torch.finfo(sv.dtype).eps if len(sv) else 0.0
    r = min(k - 1, int((sv > cut).sum()))
    a_pinv = (vh[:r].T / sv[:r]) @ u[:, :r].T
    rows = x[:NC1_ROWS].double()
    proj = rows @ a_pinv - (means @ a_pinv)[y[:NC1_ROWS]]
    terms = (proj * proj).sum(1).numpy() * n / k
    m = len(d.reservoir)
    se = float(np.std(terms, ddof=1) / math.sqrt(m)) if len(terms) > 1 else NAN
    note = "" if d.reservoir.exact else " (includes the sampling)"
    out.normal(
        "nc1",
        se,
        f"normal (per-row terms on {len(terms)} of the reservoir's {m} rows, class means held)"
        + note,
    )


def _pairs(d, out: _Intervals, x: torch.Tensor, y: torch.Tensor, n: float) -> None:
    """Resample ``PAIR_ROWS`` rows of the pair subset (stratified), weighting each pair by how
    often both its rows were drawn; the replicates' spread is scaled to the subset's size."""
    names = PAIR_KEYS
    if not any(out.has(k) for k in names):
        return
    used = len(y)
    m = min(PAIR_ROWS, used)
    while m < min(used, 2 * PAIR_ROWS) and _impostor_pairs(y[:m]) < 10_000:  # TAR at FAR 1e-4
        m = min(used, 2 * PAIR_ROWS, m + m // 4)
    xs = torch.nn.functional.normalize(x[:m].float(), dim=1)
    ys = y[:m].numpy()
    i, j = np.triu_indices(m, 1)
    sim = (xs @ xs.T).numpy()[i, j].astype(np.float64)
    gen = ys[i] == ys[j]
    if gen.all() or not gen.any():
        for key in names:
            out.none(key, "none: the bootstrap subset lacks same-class or different-class pairs")
        return
    order = np.argsort(-sim, kind="stable")
    sim, gen, i, j = sim[order], gen[order], i[order], j[order]
    rng = _rng(d.seed, "pairs")
    w = _weights(ys, PAIR_REPLICATES, rng)
    values = {key: [] for key in names}
    edges = M.histogram_edges(d.bins, -1.0, 1.0)
    hb = np.clip(np.searchsorted(edges, sim, side="right") - 1, 0, d.bins - 1)
    fars = {"tar_at_far_1e-2": 1e-2, "tar_at_far_1e-3": 1e-3, "tar_at_far_1e-4": 1e-4}
    with np.errstate(invalid="ignore", divide="ignore"):  # a replicate without genuine pairs
        _pair_replicates(d, values, w, i, j, gen, hb, fars)
    scale = math.sqrt(m / used)
    sampled = d.reservoir.seen > used
    note = f", scaled to the {used} rows used" if m < used else ""
    note += f" (includes the sampling of {used} of {int(n)} samples)" if sampled else ""
    method = f"bootstrap ({PAIR_REPLICATES}, stratified by class) of {m} rows' pairs{note}"
    for key in names:
        if values[key] is None:
            out.none(
                key,
                "none: the bootstrap subset has too few impostor pairs for this false accept rate",
            )
        else:
            out.normal(key, _sd(np.asarray(values[key])) * scale, method)


def _impostor_pairs(y: torch.Tensor) -> int:
    counts = torch.bincount(y).double()
    n = float(counts.sum())
    return int((n * n - float((counts * counts).sum())) / 2)


def _pair_replicates(d, values: dict, w, i, j, gen, hb, fars: dict) -> None:
    """Append each replicate's pair metrics to ``values`` (pairs sorted by decreasing
    similarity; ``w`` the rows' weights, ``i``/``j`` the pairs' rows, ``hb`` their bins)."""
    reps = len(w)
    for chunk in np.array_split(np.arange(reps), max(1, reps // 25)):
        wp = w[chunk][:, i] * w[chunk][:, j]  # [reps, pairs], pairs by decreasing similarity
        tp = np.cumsum(wp * gen, axis=1, dtype=np.float64)
        fp = np.cumsum(wp * ~gen, axis=1, dtype=np.float64)
        tpr = tp / tp[:, -1:]
        fpr = fp / fp[:, -1:]
        zeros = np.zeros((len(chunk), 1))
        tpr0, fpr0 = np.concatenate([zeros, tpr], 1), np.concatenate([zeros, fpr], 1)
        values["pair_ks"] += list(np.max(np.abs(tpr - fpr), axis=1))
        values["roc_auc"] += list(
            np.sum(np.diff(fpr0, axis=1) * (tpr0[:, 1:] + tpr0[:, :-1]) / 2, 1)
        )
        dd = fpr0 - (1 - tpr0)
        kk = np.argmax(dd >= 0, axis=1)
        rows = np.arange(len(chunk))
        d0, d1 = dd[rows, kk - 1], dd[rows, kk]
        t = np.where(d1 != d0, d0 / np.where(d1 != d0, d0 - d1, 1), 0.0)
        values["eer"] += list(fpr0[rows, kk - 1] + t * (fpr0[rows, kk] - fpr0[rows, kk - 1]))
        n_imp = int((~gen).sum())
        for key, far in fars.items():
            if n_imp < math.ceil(1 / far - 1e-9):
                values[key] = None
                continue
            at = (fpr0 <= far).sum(1) - 1
            values[key] += list(tpr0[rows, at])
        hg = np.stack([np.bincount(hb[gen], weights=r[gen], minlength=d.bins) for r in wp])
        hi = np.stack([np.bincount(hb[~gen], weights=r[~gen], minlength=d.bins) for r in wp])
        hg /= hg.sum(1, keepdims=True)
        hi /= hi.sum(1, keepdims=True)
        values["pair_hellinger"] += list(np.sqrt(np.maximum(0, 1 - np.sqrt(hg * hi).sum(1))))


def _retrieval(d, out: _Intervals, x, y: torch.Tensor, n: float, retrieval=None) -> None:
    """Over the queries (the rows used with a classmate among them): recall@k by Wilson over
    the queries' hits (counted from the per-query values when the `RetrievalResult` has them).

    MAP@R by a delete-a-group jackknife: every row is a query and a reference to all the
    others, so the per-query AP@R values are correlated and their standard error understates
    the spread of MAP@R between samples (by a factor of 1.5-2.5 on digits-like data); leaving
    out each of ``JACKKNIFE_GROUPS`` groups of rows in turn and recomputing MAP@R on the rest
    measures both roles. On at most ``JACKKNIFE_ROWS`` rows (the first by key: a uniform
    sample), the standard error scaled from them to the rows used (1 / sqrt(rows))."""
    counts = torch.bincount(y)
    queries = int((counts[y] >= 2).sum())
    if queries == 0:
        return
    used = len(y)
    note = (
        f" (includes the sampling of {used} of {int(n)} samples)" if d.reservoir.seen > used else ""
    )
    pq = getattr(retrieval, "per_query", None)
    if pq is not None and len(pq.ap) != queries:
        pq = None
    for name in [k for k in out.metrics if re.fullmatch(r"recall_at_\d+", k)]:
        if not out.has(name):
            continue
        k = int(name.rsplit("_", 1)[1])
        if pq is not None and k in pq.ks:
            hits = int(pq.hits[:, pq.ks.index(k)].sum())
        else:
            hits = round(out.metrics[name] * queries)
        out.wilson(
            name, hits, queries, f"Wilson (queries with a hit over {queries} queries)" + note
        )
    if not out.has("map_at_r"):
        return
    m = min(used, JACKKNIFE_ROWS)
    groups = JACKKNIFE_GROUPS
    v = _jackknife_map_at_r(x[:m], y[:m].numpy(), groups, d.space)
    if v is None:
        out.none("map_at_r", "none: too few rows with a classmate to leave groups out")
        return
    se = math.sqrt((groups - 1) / groups * float(((v - v.mean()) ** 2).sum()))
    scaled = f" on {m} of the {used} rows, scaled to {used}" if m < used else ""
    out.normal(
        "map_at_r",
        se * math.sqrt(m / used),
        f"delete-a-group jackknife ({groups} groups of rows, each left out in turn){scaled}" + note,
    )


def _jackknife_map_at_r(x: torch.Tensor, y: np.ndarray, groups: int, space: str):
    """MAP@R of the rows without each group (rows at positions g, g + groups, ...), from one
    ranking of every row's neighbours (float64; ties by the lower row, as knn_retrieval):
    leaving rows out removes them from each remaining query's ranked list and its R. None
    when a subset has no query."""
    m = len(y)
    xs = x.double()
    if space == "cosine":
        xs = torch.nn.functional.normalize(xs, dim=1)
        sim = xs @ xs.T
    else:
        sq = (xs * xs).sum(1)
        sim = 2 * xs @ xs.T - sq[:, None] - sq[None, :]
    sim.fill_diagonal_(-math.inf)
    order = np.argsort(-sim.numpy(), axis=1, kind="stable")[:, : m - 1]  # self is last
    rel = y[order] == y[:, None]  # [m, m - 1], ranked neighbours
    group = np.arange(m) % groups
    gr = group[order]
    values = []
    for g in range(groups):
        keep = gr != g
        rows = group != g
        rk = rel[rows] & keep[rows]
        r = rk.sum(1)
        live = r > 0
        if not live.any():
            return None
        pos = np.cumsum(keep[rows], axis=1)  # rank among the rows kept
        hit = rk & (pos <= r[:, None])
        prec = np.cumsum(hit, axis=1) / np.maximum(pos, 1)
        ap = (prec * hit).sum(1)[live] / r[live]
        values.append(float(ap.mean()))
    return np.asarray(values)


# ----------------------------------------------------------------------------------------------
# What has no interval, and why.
# ----------------------------------------------------------------------------------------------


def _descriptive(out: _Intervals) -> None:
    X.exact(out, X.EXACT_DATA, "a count of the data, not an estimate")
    X.exact(out, X.HEAD_SETTINGS, "a setting of the head")
    X.exact(out, X.HEAD_WEIGHTS, "a property of the head's weights, which are not sampled")
    X.exact(out, X.FINDINGS, "a yes/no finding of this data, not an estimate")
    for name in out.metrics:
        if name in out.intervals or name in out.methods:
            continue
        v = out.metrics[name]
        if v is None or not math.isfinite(v):
            out.methods[name] = "none: the value is undefined (see reasons)"
        elif name in ("n", "num_classes", "nonfinite_count", "zero_norm_count"):
            out.methods[name] = "none: descriptive (a count of the data, not an estimate)"
        elif name.startswith("logits.col"):
            out.methods[name] = "none: descriptive (statistics of the logit columns)"
        elif info(name) is not None and info(name).direction is None:
            out.methods[name] = "none: descriptive"
        else:
            out.methods[name] = "none: no interval method for this metric"


# ----------------------------------------------------------------------------------------------
# Per-sample values for paired comparisons, and the data's fingerprint.
# ----------------------------------------------------------------------------------------------


def hash_ids(ids) -> np.ndarray:
    """64-bit BLAKE2b hashes of sample ids (strings), as uint64."""
    out = np.empty(len(ids), dtype=np.uint64)
    for i, s in enumerate(ids):
        out[i] = int.from_bytes(
            hashlib.blake2b(str(s).encode("utf-8"), digest_size=8).digest(), "little"
        )
    return out


def _samples(d, labels: np.ndarray) -> dict:
    """What a paired comparison needs, per sample in arrival order: label values, and with
    logits the prediction, margin, top probability and gray-zone flag; hashed ids if given."""
    values = np.asarray(d._values, dtype=np.int64)
    out = {"label": values[labels].astype(np.int32) if len(labels) else labels.astype(np.int32)}
    if d.ids is not None and len(d.ids) == len(labels):
        out["id_hash"] = hash_ids(d.ids)
    if d.num_columns is not None:
        s = {k: torch.cat(v).numpy() for k, v in d.samples.items() if v}
        out["pred"] = values[s["pred"]].astype(np.int32)
        out["margin"] = s["margin"].astype(np.float32)
        out["top_prob"] = s["top_prob"].astype(np.float32)
        out["gray"] = s["gray"].astype(bool)
    return out


def fingerprint(samples: dict, d) -> dict:
    """What identifies the data a report was computed on: n, the class counts, a hash of the
    label vector (in arrival order), of the set of ids and of the (id, label) pairs (both
    independent of order), and the logit width."""
    labels = samples["label"]
    values, counts = np.unique(labels, return_counts=True)
    fp = {
        "n": int(len(labels)),
        "class_counts": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
        "labels_sha256": hashlib.sha256(labels.astype("<i8").tobytes()).hexdigest()[:16],
        "logit_columns": d.num_columns,
    }
    if "id_hash" in samples:
        ids = np.sort(samples["id_hash"])
        fp["ids_sha256"] = hashlib.sha256(ids.astype("<u8").tobytes()).hexdigest()[:16]
        order = np.argsort(samples["id_hash"], kind="stable")
        pairs = np.stack([samples["id_hash"][order].astype("<u8"), labels[order].astype("<u8")], 1)
        fp["id_labels_sha256"] = hashlib.sha256(pairs.tobytes()).hexdigest()[:16]
    return fp
