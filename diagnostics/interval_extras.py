"""Intervals of the report's remaining scalars: fitted quantities, the head's facts, the logit
column statistics, the margin-leak scores and the exact quantities of the data.

- ``fitted_temperature``: the NLL-optimal T is an M-estimate of u = 1 / T (the root of
  sum_i psi_i(u), psi_i the derivative of sample i's NLL in u); its standard error is the
  sandwich sqrt(sum psi_i^2) / sum psi_i' (Huber 1967), computed on the rows T was fitted on;
  the interval is u +- z se, inverted to T. ``fitted_scale = s / T`` takes it through s.
- ``ece_at_fitted_temperature`` / ``nll_at_fitted_temperature``: the metric of the rows divided
  by T (T held): a stratified bootstrap of (confidence, correct) for ECE, the stratified
  standard error of the per-row NLL.
- ``angle_true_p99``: a weighted quantile of the stratified bootstrap of the samples.
- ``head.centroid_alignment``: a bootstrap over the reservoir's rows of each class mean's
  deviation, scaled to the class's N (the full-data means moved by it), the alignment
  recomputed per replicate.
- ``head.dead_class_count``: the percentile interval of multinomial replicates of the confusion
  rows (a class never predicted stays so in every replicate: the interval widens upwards only).
- ``logits.col*.mean``: mean +- z std / sqrt(count); ``.std``: normal-theory standard error
  std / sqrt(2 (count - 1)); ``.min`` / ``.max``: exact (the extremes of these samples).
- the leak scores: Wilson for the accuracies; F1 by the delta method of its ratio
  2 TP / (2 TP + FP + FN) over the samples (macro-F1: classes as independent).
- quantities that are no estimate (``n``, ``num_classes``, the skipped-row counts, the head's
  settings and its weights' properties, yes/no findings): an exact interval [v, v], the method
  saying why.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .calibration import T_MAX, T_MIN
from .interval_core import (
    _boot,
    _sd,
    _stratified_se,
    _weights,
    calibration_replicates,
)

NAN = float("nan")
EXACT_DATA = ("n", "num_classes", "nonfinite_count", "zero_norm_count")
HEAD_SETTINGS = ("head.s", "head.m", "head.num_classes")
HEAD_WEIGHTS = ("head.min_weight_angle", "head.weight_norm_cv")
FINDINGS = ("head.margin_leak", "head.looks_untrained")


def exact(out, names, why: str) -> None:
    """[v, v] for quantities that are not estimated from the samples."""
    for name in names:
        if out.has(name) and name not in out.intervals:
            v = float(out.metrics[name])
            out.intervals[name] = [v, v]
            out.methods[name] = f"exact: {why}"


# ----------------------------------------------------------------------------------------------
# The fitted temperature, the fitted scale and the metrics at T.
# ----------------------------------------------------------------------------------------------


def fitted_rows(d) -> tuple[str, np.ndarray, np.ndarray | None, np.ndarray]:
    """The rows the temperature is fitted on (as assembly fits it): ("margins", signed margins,
    None, labels) for one logit or two columns, ("logits", None, [m, C] logits, labels) on the
    reservoir from three columns on (ordered by key), ("", ...) when there are none."""
    if d.num_columns <= 2:
        margins = torch.cat(d.samples["margin"]).double().numpy()
        labels = torch.cat(d.samples["label"]).numpy()
        return "margins", margins, None, labels
    res = d.reservoir
    if len(res) == 0 or res.extra is None:
        return "", None, None, np.zeros(0, int)
    order = torch.argsort(res.keys)
    return "logits", None, res.extra[order].double().numpy(), res.labels[order].numpy()


def temperature_se(u: float, margins=None, logits=None, labels=None) -> float:
    """Sandwich standard error of u = 1 / T at the NLL's root: sqrt(sum psi^2) / sum psi'.

    One logit (``margins`` m_i, log P(true) / P(other)): psi_i = -m_i sigmoid(-u m_i), psi_i' =
    m_i^2 sigmoid(u m_i) sigmoid(-u m_i). Logits z_i with label y_i: psi_i = E_p[z_i] - z_iy,
    psi_i' = Var_p[z_i], p = softmax(u z_i).
    """
    if margins is not None:
        m = np.asarray(margins, dtype=np.float64)
        s_neg = 0.5 * (1 - np.tanh(u * m / 2))  # sigmoid(-u m), stable
        psi = -m * s_neg
        dpsi = m * m * s_neg * (1 - s_neg)
    else:
        z = torch.as_tensor(logits, dtype=torch.float64)
        p = torch.softmax(u * z, dim=1)
        ez = (p * z).sum(1)
        zy = z.gather(1, torch.as_tensor(labels, dtype=torch.int64)[:, None])[:, 0]
        psi = (ez - zy).numpy()
        dpsi = ((p * z * z).sum(1) - ez * ez).numpy()
    h = float(dpsi.sum())
    if not h > 0:
        return NAN
    return math.sqrt(float((psi * psi).sum())) / h


def temperature(d, out, pool_fn) -> None:
    """fitted_temperature, fitted_scale, and the ECE and NLL at T (``pool_fn(labels, columns)``
    gives (pool indices, bootstrap weights) as the per-sample bootstraps draw them)."""

    t = out.metrics.get("fitted_temperature")
    if not out.has("fitted_temperature"):
        return
    kind, margins, logits, labels = fitted_rows(d)
    if not kind:
        return
    where = (
        f"on all {len(labels)} margins"
        if kind == "margins"
        else f"on the reservoir's {len(labels)} rows (includes the sampling)"
    )
    at_edge = t <= T_MIN * (1 + 1e-9) or t >= T_MAX * (1 - 1e-9)
    if at_edge:
        exact(
            out,
            ["fitted_temperature"],
            "the fit stopped at the end of its search range "
            f"[{T_MIN:g}, {T_MAX:g}]: the value is a bound",
        )
        lo_t = hi_t = t
    else:
        u = 1.0 / t
        se = temperature_se(u, margins, logits, labels)
        if not math.isfinite(se):
            out.none("fitted_temperature", "none: the NLL has no curvature at the fit")
            return
        half = out.z * se
        lo_t = max(T_MIN, 1.0 / (u + half))
        hi_t = min(T_MAX, 1.0 / (u - half)) if u - half > 1.0 / T_MAX else T_MAX
        lo_t, hi_t = min(lo_t, t), max(hi_t, t)
        out.intervals["fitted_temperature"] = [lo_t, hi_t]
        out.methods["fitted_temperature"] = (
            "sandwich standard error of the M-estimate 1/T (delta method), " + where
        )
    if out.has("fitted_scale"):
        scale = float(out.metrics["fitted_scale"])
        s = scale * t
        out.intervals["fitted_scale"] = [min(scale, s / hi_t), max(scale, s / lo_t)]
        out.methods["fitted_scale"] = "s / T over the fitted temperature's interval"
    # the rows divided by T (T held)
    if kind == "margins":
        zt = margins / t
        nll = np.logaddexp(0.0, -zt)
        top = 1.0 / (1.0 + np.exp(-np.abs(zt)))
        correct = (margins > 0).astype(np.float64)
    else:
        z = torch.as_tensor(logits) / t
        lse = torch.logsumexp(z, 1)
        y = torch.as_tensor(labels, dtype=torch.int64)
        nll = (lse - z.gather(1, y[:, None])[:, 0]).numpy()
        top = torch.exp(z.max(1).values - lse).numpy()
        correct = (z.argmax(1) == y).double().numpy()
    out.normal(
        "nll_at_fitted_temperature",
        _stratified_se(nll, labels),
        f"normal (stratified standard error of the per-row NLL at T, T held), {where}",
    )
    if out.has("ece_at_fitted_temperature"):
        idx, w = pool_fn(labels, [labels, top, correct])
        reps = calibration_replicates(top[idx], correct[idx], w)
        scale = math.sqrt(len(idx) / len(labels))
        out.normal(
            "ece_at_fitted_temperature",
            _sd(reps["ece"]) * scale,
            _boot(len(w), len(idx), len(labels)) + f" of (confidence, correct) at T, {where}",
        )


# ----------------------------------------------------------------------------------------------
# The head.
# ----------------------------------------------------------------------------------------------


def angle_quantile(out, t: np.ndarray, labels: np.ndarray, pool_fn) -> None:
    """angle_true_p99: the weighted 99th percentile ("linear", as numpy's default) of each
    replicate of the stratified bootstrap."""

    if not out.has("angle_true_p99") or len(t) < 2:
        return
    idx, w = pool_fn(labels, [labels, t])
    order = np.argsort(t[idx], kind="stable")
    v = t[idx][order]
    cw = np.cumsum(w[:, order], axis=1)
    j = np.argmax(cw >= 0.99 * cw[:, -1:], axis=1)
    scale = math.sqrt(len(idx) / len(t))
    out.normal("angle_true_p99", _sd(v[j]) * scale, _boot(len(w), len(idx), len(t)))


def centroid_alignment(d, out, reps: int, max_rows: int, rng) -> None:
    """head.centroid_alignment over replicates of the class means: each mean moved by its
    bootstrap deviation on the reservoir's rows, scaled by sqrt(m_c / N_c) to the class's N."""

    name = "head.centroid_alignment"
    if not out.has(name):
        return
    res = d.reservoir
    if len(res) < 2:
        out.none(name, "none: it is bootstrapped over the reservoir, and reservoir_size is 0")
        return
    order = torch.argsort(res.keys)[:max_rows]
    x, y = res.rows[order].double(), res.labels[order].numpy()
    w = torch.from_numpy(_weights(y, reps, rng)).double()
    counts = d.counts.double()
    means = (d.sums / counts.clamp_min(1)[:, None]).double()
    k = min(d.head.num_classes, means.shape[0])
    present = (counts > 0)[:k]
    moved = means[:k].expand(reps, -1, -1).clone()  # [reps, k, D]
    for c in np.unique(y):
        if c >= k:
            continue
        rows = np.flatnonzero(y == c)
        xc = x[rows]
        dev = (w[:, rows] @ (xc - xc.mean(0))) / len(rows)  # replicate mean - reservoir mean
        moved[:, c] += dev * math.sqrt(len(rows) / float(counts[c]))
    wu = F.normalize(d.head.weight.detach().double().cpu()[:k][present], dim=1)
    mu = moved[:, present]
    if int(present.sum()) >= 2:
        wu, mu = wu - wu.mean(0), mu - mu.mean(1, keepdim=True)
    cos = F.cosine_similarity(wu.expand_as(mu), mu, dim=2).mean(1).numpy()
    m = len(y)
    out.normal(
        name,
        _sd(cos),
        f"bootstrap ({reps}, stratified by class) of the class means over {m} of the "
        f"reservoir's rows, scaled to each class's N",
    )


def dead_classes(d, out, reps_cm: np.ndarray | None, level: float) -> None:
    """head.dead_class_count: the percentile interval of the confusion replicates (``reps_cm``
    [reps, k, k], rows true, columns predicted)."""
    name = "head.dead_class_count"
    if not out.has(name):
        return
    if reps_cm is None:
        out.none(name, "none: too many classes for the confusion bootstrap")
        return
    k = min(d.head.num_classes, reps_cm.shape[1])
    present = d.confusion.numpy().sum(1)[:k] > 0
    dead = ((reps_cm.sum(1)[:, :k] == 0) & present).sum(1)
    v = float(out.metrics[name])
    lo, hi = np.quantile(dead, [(1 - level) / 2, (1 + level) / 2])
    out.intervals[name] = [float(min(v, lo)), float(max(v, hi))]
    out.methods[name] = (
        f"bootstrap percentile ({len(dead)} multinomial replicates of the confusion rows; "
        "a class never predicted stays so)"
    )


# ----------------------------------------------------------------------------------------------
# Logit column statistics.
# ----------------------------------------------------------------------------------------------


def column_stats(d, out) -> None:
    """logits.col{j}[.class{k}].{mean,std,min,max} from the column-stat state's counts."""
    cs = d.colstats
    if cs is None:
        return
    counts = cs["count"].double().numpy()
    n_all = float(counts.sum())
    for name in [k for k in out.metrics if k.startswith("logits.col")]:
        if not out.has(name):
            continue
        parts = name.split(".")
        stat = parts[-1]
        count = n_all
        if len(parts) == 4 and parts[2].startswith("class"):
            count = float(counts[int(parts[2][5:])])
        if stat in ("min", "max"):
            exact(out, [name], f"the {stat} of these samples (an extreme, not an estimate)")
            continue
        std = out.metrics.get(".".join(parts[:-1] + ["std"]), NAN)
        if stat == "mean" and count >= 2:
            out.normal(
                name,
                std * math.sqrt(count / (count - 1)) / math.sqrt(count),
                "normal (standard error of the mean)",
            )
        elif stat == "std" and count >= 2:
            out.normal(
                name,
                std / math.sqrt(2 * (count - 1)),
                "normal (normal-theory standard error of a standard deviation)",
            )
        else:
            out.none(name, "none: fewer than two samples")


# ----------------------------------------------------------------------------------------------
# The margin-leak scores (added after the report by diagnose_model).
# ----------------------------------------------------------------------------------------------
