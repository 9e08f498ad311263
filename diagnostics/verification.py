"""Verification: ROC over genuine / impostor pair scores, EER and TAR at fixed FAR."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ._validation import as_tensor

NAN = float("nan")


def far_key(far: float) -> str:
    """Report key of a FAR: 1e-3 -> "tar_at_far_1e-3", 0.01 -> "tar_at_far_1e-2"."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"tar_at_far_{mantissa}e{int(exponent)}"


def _scores(x, name: str) -> np.ndarray:
    a = np.asarray(as_tensor(x, name).double().cpu().numpy(), dtype=np.float64).ravel()
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite scores, got NaN or Inf")
    return a


def _roc(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, from the strictest threshold down,
    starting at (0, 0) for threshold +inf. A pair is accepted when its score >= threshold."""
    scores = np.concatenate([genuine, impostor])
    is_gen = np.concatenate([np.ones(len(genuine)), np.zeros(len(impostor))])
    order = np.argsort(-scores, kind="stable")
    scores, is_gen = scores[order], is_gen[order]
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # last index of each score
    tp = np.cumsum(is_gen)[last]
    fp = (last + 1) - tp
    tpr = np.r_[0.0, tp / len(genuine)]
    fpr = np.r_[0.0, fp / len(impostor)]
    return fpr, tpr, np.r_[np.inf, scores[last]]


@dataclass(frozen=True)
class VerificationResult:
    """eer: equal error rate, where FAR = FRR, interpolated linearly between ROC points (lower
    is better, 0 perfect, ~0.5 chance). tar_at_far: largest TAR (TPR) with FAR (FPR) <= far
    (higher is better); nan when fewer than 1/far impostor pairs make the FAR unmeasurable.
    auc: area under the ROC (higher better, 0.5 chance)."""

    eer: float
    eer_threshold: float
    tar_at_far: dict
    auc: float
    n_genuine: int
    n_impostor: int
    notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"eer": self.eer}
        out.update({far_key(f): v for f, v in self.tar_at_far.items()})
        out["roc_auc"] = self.auc
        return out


def verification_metrics(genuine, impostor, *, fars=(1e-2, 1e-3, 1e-4)) -> VerificationResult:
    """EER, TAR@FAR and ROC AUC of genuine (same-identity) against impostor pair scores.

    Scores: higher means more likely genuine (e.g. cosine similarity). Each FAR must lie in
    (0, 1).
    """
    g, i = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    for far in fars:
        if not 0 < far < 1:
            raise ValueError(f"fars must lie in (0, 1), got {far!r}")
    if len(g) == 0 or len(i) == 0:
        why = "needs genuine and impostor pairs"
        nan_tars = {f: NAN for f in fars}
        notes = {"eer": why, **{far_key(f): why for f in fars}}
        return VerificationResult(NAN, NAN, nan_tars, NAN, len(g), len(i), notes)
    fpr, tpr, thr = _roc(g, i)
    fnr = 1 - tpr
    d = fpr - fnr  # rises from -1 to +1 as the threshold falls
    k = int(np.argmax(d >= 0))
    if k == 0:
        eer, eer_t = float(fpr[0]), float(thr[0])
    else:
        t = d[k - 1] / (d[k - 1] - d[k]) if d[k] != d[k - 1] else 0.0
        eer = float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1]))
        eer_t = float(thr[k])
    tars, notes = {}, {}
    for far in fars:
        if len(i) < math.ceil(1 / far):
            tars[far] = NAN
            notes[far_key(far)] = (
                f"needs at least {math.ceil(1 / far)} impostor pairs, got {len(i)}"
            )
        else:
            tars[far] = float(tpr[fpr <= far].max())
    auc = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))
    return VerificationResult(eer, eer_t, tars, auc, len(g), len(i), notes)


def roc_curve(genuine, impostor, *, max_points: int = 200) -> dict:
    """The ROC as {"fpr": [...], "tpr": [...]}, at most ``max_points`` points (for plotting)."""
    fpr, tpr, _ = _roc(_scores(genuine, "genuine"), _scores(impostor, "impostor"))
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
