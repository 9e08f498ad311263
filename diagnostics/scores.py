"""Score distributions: KS, Hellinger and Fisher score between the scores of the classes,
for binary models and one-vs-rest for multi-class ones (the streaming state of histograms of
P(class) and their moments, and the macro averages from it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._validation import as_tensor, check_batch, check_label_range
from .state import HIST_BINS_FINE

NAN = float("nan")


# ----------------------------------------------------------------------------------------------
# Score distributions.
# ----------------------------------------------------------------------------------------------


def ks_distance(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup_x |F_a(x) - F_b(x)|.

    The same number as ``scipy.stats.ks_2samp(a, b).statistic``. Range [0, 1]; 1 means the two
    samples do not overlap, 0 identical empirical distributions. nan if either is empty.
    """
    a = np.sort(np.asarray(as_tensor(a, "a").double().cpu().numpy(), dtype=np.float64).ravel())
    b = np.sort(np.asarray(as_tensor(b, "b").double().cpu().numpy(), dtype=np.float64).ravel())
    if a.size == 0 or b.size == 0:
        return NAN
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def histogram_edges(bins: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return np.linspace(lo, hi, bins + 1)


def _histogram_update(values: torch.Tensor, bins: int, lo: float = 0.0, hi: float = 1.0):
    """Counts over ``bins`` equal bins on [lo, hi], numpy's convention (last bin closed);
    values outside are clipped into the end bins."""
    v = values.double()
    idx = ((v - lo) / (hi - lo) * bins).floor().clamp(0, bins - 1).long()
    return torch.bincount(idx, minlength=bins).to("cpu", torch.float64)


def hellinger_from_counts(p_counts, q_counts) -> float:
    """Hellinger distance sqrt(1 - sum_b sqrt(p_b q_b)) of two histograms over shared bins.

    Range [0, 1]; 0 identical, 1 disjoint supports. nan if either histogram is empty.
    """
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return NAN
    bc = np.sum(np.sqrt(p / p.sum() * q / q.sum()))
    return float(math.sqrt(max(0.0, 1.0 - bc)))


def hellinger_distance(a, b, *, bins: int = 50, range: tuple[float, float] = (0.0, 1.0)) -> float:
    """Hellinger distance between the histograms of two samples over ``bins`` equal bins on
    ``range`` (values outside are clipped into the end bins). See :func:`hellinger_from_counts`.
    """
    lo, hi = range
    ta = as_tensor(a, "a").reshape(-1)
    tb = as_tensor(b, "b").reshape(-1)
    return hellinger_from_counts(
        _histogram_update(ta, bins, lo, hi), _histogram_update(tb, bins, lo, hi)
    )


def fisher_score(a, b) -> float:
    """(m1 - m0)^2 / (v1 + v0) of two samples (population variances). Higher separates more."""
    a = np.asarray(as_tensor(a, "a").double().cpu().numpy()).ravel()
    b = np.asarray(as_tensor(b, "b").double().cpu().numpy()).ravel()
    if a.size == 0 or b.size == 0:
        return NAN
    v = a.var() + b.var()
    return float((a.mean() - b.mean()) ** 2 / v) if v > 0 else NAN


def positive_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """log P(pos) / P(neg) of a binary model: the logit itself ([N]) or z1 - z0 ([N, 2]).

    Monotone in P(positive), so rank statistics (KS) on it equal those on the probability, but
    it does not saturate at 0 or 1 in floating point.
    """
    return logits if logits.ndim == 1 else logits[:, 1] - logits[:, 0]


@dataclass(frozen=True)
class ScoreSeparation:
    """How well the positive-class score separates the two classes (binary models).

    ks: KS statistic between scores of class 1 and class 0 (higher better, seeds: > 0.5).
    hellinger: Hellinger distance of their histograms (higher better, seeds: > 0.5).
    fisher: (m1 - m0)^2 / (v1 + v0) of the scores (higher better).
    """

    ks: float
    hellinger: float
    fisher: float
    bin_edges: tuple

    def to_dict(self) -> dict:
        return {"score_ks": self.ks, "score_hellinger": self.hellinger, "score_fisher": self.fisher}


def score_separation(logits, labels, *, bins: int = 50) -> ScoreSeparation:
    """Separation of P(positive) between the classes of a binary model.

    logits: [N] single logits (P = sigmoid) or [N, 2] (P = softmax column 1); labels in {0, 1}.
    """
    b = check_batch(torch.zeros(len(labels), 1), labels, logits)
    if b.logits is None or (b.logits.ndim == 2 and b.logits.shape[1] != 2):
        raise ValueError("logits must be [N] or [N, 2] for a binary score; use macro one-vs-rest")
    check_label_range(b.labels, 2, "two classes of a binary model")
    odds = positive_log_odds(b.logits).double()
    p = torch.sigmoid(odds)
    pos, neg = b.labels == 1, b.labels == 0
    return ScoreSeparation(
        ks_distance(odds[pos], odds[neg]),
        hellinger_distance(p[pos], p[neg], bins=bins),
        fisher_score(p[pos], p[neg]),
        tuple(histogram_edges(bins)),
    )


def _ovr_state(p: torch.Tensor, y: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """One-vs-rest score state of rows with class probabilities ``p`` [B, k]: histograms of
    P(class c) over all rows and over the rows of class c (``HIST_BINS_FINE`` bins, binned in
    p's dtype), and their sums and sums of squares in float64; on p's device."""
    bins = HIST_BINS_FINE
    flat = (p * bins).long().clamp_max_(bins - 1)
    flat += torch.arange(0, k * bins, bins, device=p.device)
    p64 = p.double()  # narrow logits only (C <= MAX_COLUMN_KEYS) or reservoir rows: small
    ptrue = p64.gather(1, y[:, None])[:, 0]
    zeros = torch.zeros(k, dtype=torch.float64, device=p.device)
    return {
        "all_hist": torch.bincount(flat.view(-1), minlength=k * bins).view(k, bins),
        "pos_hist": torch.bincount(flat.gather(1, y[:, None])[:, 0], minlength=k * bins).view(
            k, bins
        ),
        "pos_sum": zeros.index_add(0, y, ptrue),
        "pos_sumsq": zeros.index_add(0, y, ptrue * ptrue),
        "all_sum": p64.sum(0),
        "all_sumsq": (p64 * p64).sum(0),
    }


def _ovr_from_rows(logits: torch.Tensor, labels: torch.Tensor, k: int):
    """One-vs-rest histograms and moments, as the streaming state keeps them, from rows."""
    state = _ovr_state(torch.softmax(logits.double(), dim=1), labels, k)
    moments = {key: state[key].numpy() for key in ("pos_sum", "pos_sumsq", "all_sum", "all_sumsq")}
    n_c = torch.bincount(labels, minlength=k).double().numpy()
    return state["pos_hist"].double().numpy(), state["all_hist"].double().numpy(), moments, n_c


def _ovr_separation(pos_h, all_h, moments, n_c, bins: int) -> tuple[float, float, float]:
    """Macro-averaged one-vs-rest KS, Hellinger (``bins`` coarse bins) and Fisher score."""
    n = n_c.sum()
    neg_h = all_h - pos_h
    group = HIST_BINS_FINE // bins
    ks, hel, fis = [], [], []
    for c in np.nonzero(n_c > 0)[0]:
        n_neg = n - n_c[c]
        if n_neg <= 0:
            continue
        ks.append(np.max(np.abs(np.cumsum(pos_h[c]) / n_c[c] - np.cumsum(neg_h[c]) / n_neg)))
        hel.append(
            hellinger_from_counts(
                pos_h[c].reshape(-1, group).sum(1), neg_h[c].reshape(-1, group).sum(1)
            )
        )
        m1 = moments["pos_sum"][c] / n_c[c]
        v1 = moments["pos_sumsq"][c] / n_c[c] - m1 * m1
        m0 = (moments["all_sum"][c] - moments["pos_sum"][c]) / n_neg
        v0 = (moments["all_sumsq"][c] - moments["pos_sumsq"][c]) / n_neg - m0 * m0
        v = max(v1, 0) + max(v0, 0)
        fis.append((m1 - m0) ** 2 / v if v > 0 else NAN)
    ks_v = float(np.mean(ks)) if ks else NAN
    hel_v = float(np.nanmean(hel)) if hel and np.isfinite(hel).any() else NAN
    fis_v = float(np.nanmean(fis)) if fis and np.isfinite(fis).any() else NAN
    return ks_v, hel_v, fis_v


def ovr_score_separation(logits, labels, *, bins: int = 50) -> ScoreSeparation:
    """Macro-averaged one-vs-rest separation of a multi-class model's softmax scores.

    For each class c present: KS, Hellinger (``bins`` equal bins) and Fisher score between
    P(c) on the rows of class c and P(c) on the other rows, averaged over classes, as the
    report's ``score_ks``, ``score_hellinger`` and ``score_fisher`` of [N, C] logits (P(c)
    binned at 1/1000). logits [N, C] with C >= 3; labels in [0, C). Higher is better.
    """
    b = check_batch(torch.zeros(len(labels), 1), labels, logits)
    if b.logits is None or b.logits.ndim != 2 or b.logits.shape[1] < 3:
        raise ValueError(
            "logits must be [N, C] with C >= 3 for one-vs-rest scores; "
            "use score_separation for binary models"
        )
    if not isinstance(bins, int) or bins < 1 or HIST_BINS_FINE % bins:
        raise ValueError(f"bins must be a positive divisor of {HIST_BINS_FINE}, got {bins!r}")
    k = b.logits.shape[1]
    check_label_range(b.labels, k, "logit columns")
    ks, hel, fis = _ovr_separation(*_ovr_from_rows(b.logits, b.labels, k), bins)
    return ScoreSeparation(ks, hel, fis, tuple(histogram_edges(bins)))
