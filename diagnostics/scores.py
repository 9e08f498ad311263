"""One-vs-rest score separation of multi-class models: the streaming state (histograms of
P(class) and their moments) and the macro-averaged KS, Hellinger and Fisher score from it."""

from __future__ import annotations

import numpy as np
import torch

from . import metrics as M
from .state import HIST_BINS_FINE

NAN = float("nan")


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
            M.hellinger_from_counts(
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
