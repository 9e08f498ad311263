"""Verification: ROC over genuine / impostor pair scores, EER, TAR at fixed FAR, ROC AUC."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

NAN = float("nan")


def far_key(far: float) -> str:
    """Report key of a FAR: ``f"tar_at_far_{far:.0e}"`` without the exponent's padding.

    1e-3 -> "tar_at_far_1e-3", 0.01 -> "tar_at_far_1e-2", 5e-4 -> "tar_at_far_5e-4".
    """
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"tar_at_far_{mantissa}e{int(exponent)}"


def _scores(x, name: str) -> np.ndarray:
    """1-D finite scores -> float64 numpy array."""
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu().numpy()
    elif isinstance(x, (np.ndarray, list, tuple)):
        arr = np.asarray(x)
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor, numpy array or list of scores, got {type(x).__name__}"
        )
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D [n] scores, got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} must be finite scores, got {int(bad.sum())} NaN or Inf values "
            f"(first at index {int(np.argmax(bad))})"
        )
    return arr


def _check_fars(fars) -> tuple[float, ...]:
    if isinstance(fars, (int, float)) and not isinstance(fars, bool):
        fars = (fars,)
    if not isinstance(fars, Iterable):
        raise TypeError(f"fars must be a sequence of rates in (0, 1), got {fars!r}")
    fars = tuple(fars)
    for far in fars:
        if isinstance(far, bool) or not isinstance(far, (int, float)) or not 0 < far < 1:
            raise ValueError(f"fars must lie in (0, 1), got {far!r}")
    return tuple(float(f) for f in fars)


def _roc(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, strictest first.

    A pair is accepted when its score >= threshold; the first point is (0, 0) at +inf and the
    last (1, 1) at the lowest score. These are scikit-learn's ``roc_curve(...,
    drop_intermediate=False)`` points.
    """
    g, i = np.sort(genuine), np.sort(impostor)
    n_g, n_i = len(g), len(i)
    # merging the two sorted runs: a stable argsort of their concatenation is a linear merge
    both = np.concatenate([g, i])
    order = np.argsort(both, kind="stable")
    v = both[order]  # ascending
    first = np.flatnonzero(np.concatenate([[True], v[1:] != v[:-1]]))  # each distinct score
    below_g = np.concatenate([[0], np.cumsum(order < n_g)])[first]  # genuine scores below it
    tp = n_g - below_g
    fp = n_i - (first - below_g)
    thr = v[first][::-1]
    tpr = np.concatenate([[0.0], tp[::-1] / n_g])
    fpr = np.concatenate([[0.0], fp[::-1] / n_i])
    return fpr, tpr, np.concatenate([[np.inf], thr])


@dataclass(frozen=True)
class VerificationResult:
    """Genuine-vs-impostor separation of pair scores.

    Attributes
    ----------
    eer : equal error rate in [0, 1], lower is better (0 perfect, about 0.5 chance): the rate
        where the false accept rate FAR (= FPR) equals the false reject rate FRR (= 1 - TPR),
        on the ROC polyline (linear between its points).
    eer_threshold : score threshold of the first ROC point with FAR >= FRR (accept >= it).
    tar_at_far : {far: largest true accept rate (TPR) of a ROC point with FPR <= far}, higher
        is better; nan when there are fewer than 1/far impostor scores, too few to measure a
        false accept rate that small (the reason is in ``notes``).
    auc : area under the ROC (trapezoids), in [0, 1], higher is better (0.5 chance); equals
        scikit-learn's ``roc_auc_score``.
    n_genuine, n_impostor : numbers of scores.
    notes : {metric key: why it is nan}.
    ks : two-sample Kolmogorov-Smirnov statistic between the genuine and impostor scores,
        max |TAR - FAR| over the ROC points (the same number as ``scipy.stats.ks_2samp``),
        in [0, 1], higher is better.
    """

    eer: float
    eer_threshold: float
    tar_at_far: dict[float, float]
    auc: float
    n_genuine: int
    n_impostor: int
    notes: dict[str, str] = field(default_factory=dict)
    ks: float = NAN

    higher_is_better: ClassVar[dict[str, bool]] = {
        "eer": False,
        "tar_at_far": True,
        "roc_auc": True,
    }

    def to_dict(self) -> dict[str, float]:
        """``{"eer", "tar_at_far_1e-2", ... (one per FAR, see far_key), "roc_auc"}``."""
        out = {"eer": float(self.eer)}
        out.update({far_key(f): float(v) for f, v in self.tar_at_far.items()})
        out["roc_auc"] = float(self.auc)
        return out


def verification_metrics(
    genuine, impostor, *, fars: Iterable[float] = (1e-2, 1e-3, 1e-4)
) -> VerificationResult:
    """EER, TAR@FAR and ROC AUC of genuine (same-identity) against impostor pair scores.

    Scores: higher means more likely genuine (e.g. cosine similarity). At threshold t,
    TAR(t) = #{genuine >= t} / n_genuine and FAR(t) = #{impostor >= t} / n_impostor; the ROC
    has one point per distinct score (scikit-learn's ``roc_curve`` points).

    - EER: along the ROC polyline, the point where FAR = 1 - TAR, found on the first segment
      whose end has FAR >= 1 - TAR and linearly interpolated on it.
    - TAR@FAR(f) = max{TAR(t) : FAR(t) <= f}; nan when n_impostor < 1/f.
    - AUC = area under the ROC by trapezoids.

    Parameters
    ----------
    genuine, impostor : 1-D finite scores (tensor, array or list).
    fars : false accept rates in (0, 1).

    Returns
    -------
    VerificationResult; all nan (with notes) when either side is empty.
    """
    g, i = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    fars = _check_fars(fars)
    if len(g) == 0 or len(i) == 0:
        why = f"needs genuine and impostor scores, got {len(g)} and {len(i)}"
        notes = {"eer": why, **{far_key(f): why for f in fars}, "roc_auc": why}
        return VerificationResult(NAN, NAN, {f: NAN for f in fars}, NAN, len(g), len(i), notes)
    fpr, tpr, thr = _roc(g, i)
    d = fpr - (1.0 - tpr)  # -1 at the first point, +1 at the last, nondecreasing
    k = int(np.argmax(d >= 0))
    t = d[k - 1] / (d[k - 1] - d[k])
    eer = float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1]))
    tars, notes = {}, {}
    for far in fars:
        need = math.ceil(1 / far - 1e-9)
        if len(i) < need:
            tars[far] = NAN
            notes[far_key(far)] = (
                f"needs at least {need} impostor pairs to measure FAR {far:g}, got {len(i)}"
            )
        else:
            tars[far] = float(tpr[np.searchsorted(fpr, far, side="right") - 1])
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    ks = float(np.max(np.abs(tpr - fpr)))
    return VerificationResult(eer, float(thr[k]), tars, auc, len(g), len(i), notes, ks)


def roc_curve(genuine, impostor, *, max_points: int = 200) -> dict[str, list[float]]:
    """The ROC for plotting, ``{"fpr": [...], "tpr": [...]}``, at most ``max_points`` points.

    The points are ROC points (a subset of scikit-learn's ``roc_curve``), in order, both ends
    kept: half spread evenly along the curve, half at log-spaced FPRs from 1/n_impostor to 1
    (each the highest-TPR point at or below that FPR), so linear and log FAR axes both show it.
    """
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)):
        raise TypeError(f"max_points must be an integer >= 2, got {max_points!r}")
    if max_points < 2:
        raise ValueError(f"max_points must be an integer >= 2, got {max_points}")
    g, i = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    if len(g) == 0 or len(i) == 0:
        raise ValueError(f"roc_curve needs genuine and impostor scores, got {len(g)} and {len(i)}")
    fpr, tpr, _ = _roc(g, i)
    n = len(fpr)
    if n > max_points:
        even = np.linspace(0, n - 1, max_points // 2).round().astype(np.int64)
        targets = np.logspace(np.log10(1 / len(i)), 0, max_points - max_points // 2)
        logs = np.searchsorted(fpr, targets * (1 + 1e-12), side="right") - 1
        keep = np.unique(np.concatenate([even, logs]))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
