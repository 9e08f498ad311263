"""Logits: predictions, margins, column statistics, the confusion matrix and its scores, and
hard examples."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._validation import check_batch, check_label_range

NAN = float("nan")


# ----------------------------------------------------------------------------------------------
# Logits: column statistics, predictions, margins.
# ----------------------------------------------------------------------------------------------


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """[N] -> P(positive) by sigmoid; [N, C] -> softmax rows."""
    z = logits.double()
    return torch.sigmoid(z) if z.ndim == 1 else torch.softmax(z, dim=1)


def prediction_margins(logits, labels) -> np.ndarray:
    """Logit margin per sample: true-class logit minus the largest other logit.

    For one binary logit z: (2y - 1) z. Positive means correct; larger is more confident.
    Returns float64 [N].
    """
    b = check_batch(torch.zeros(len(labels), 1), labels, logits)
    if b.logits is None:
        raise ValueError("logits are required")
    return _margins(b.logits, b.labels).cpu().numpy()


def _margins(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if z.ndim == 1:
        check_label_range(y, 2, "two classes of a single binary logit")
        return (2 * y - 1).to(z.dtype) * z
    check_label_range(y, z.shape[1], "logit columns")
    true = z.gather(1, y[:, None])[:, 0]
    other = z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return true - other


def _margin_summary(margin: np.ndarray) -> dict[str, float]:
    mean = float(margin.mean()) if len(margin) else NAN
    return {
        "margin_mean": mean,
        "margin_median": float(np.median(margin)) if len(margin) else NAN,
        "margin_p05": float(np.percentile(margin, 5)) if len(margin) else NAN,
        "negative_margin_fraction": float((margin < 0).mean()) if len(margin) else NAN,
    }


def margin_summary(logits, labels) -> dict[str, float]:
    """Mean, median and 5th percentile of the logit margin (true-class logit minus the largest
    other; (2y - 1) z for one binary logit) and the share of negative margins (misclassified).

    Keys as in the report: ``margin_mean``, ``margin_median``, ``margin_p05`` (higher is
    better), ``negative_margin_fraction`` (lower is better).
    """
    return _margin_summary(prediction_margins(logits, labels))


def _column_stats_update(
    z: torch.Tensor, y: torch.Tensor, num_classes: int, by_class: bool = True
) -> dict:
    """Per column (and, when ``by_class``, per column per true class): count, sum, sum of
    squares, min, max. Narrow logits are reduced in float64; wide ones (``by_class=False``)
    per batch in their own dtype with one row of state."""
    z2 = z[:, None] if z.ndim == 1 else z
    if not by_class:
        return {
            "by_class": False,
            "count": torch.tensor([float(z2.shape[0])], dtype=torch.float64),
            "sum": z2.sum(0, keepdim=True).to("cpu", torch.float64),
            "sumsq": torch.linalg.vector_norm(z2, dim=0, keepdim=True).to("cpu", torch.float64)
            ** 2,
            "min": z2.amin(0, keepdim=True).to("cpu", torch.float64),
            "max": z2.amax(0, keepdim=True).to("cpu", torch.float64),
        }
    z2 = z2.double()
    c = z2.shape[1]
    cnt = torch.bincount(y, minlength=num_classes).double()
    s = torch.zeros(num_classes, c, dtype=torch.float64, device=z.device).index_add_(0, y, z2)
    ss = torch.zeros_like(s).index_add_(0, y, z2 * z2)
    index = y[:, None].expand_as(z2)
    lo = torch.full_like(s, math.inf).scatter_reduce_(0, index, z2, "amin")
    hi = torch.full_like(s, -math.inf).scatter_reduce_(0, index, z2, "amax")
    return {"count": cnt.cpu(), "sum": s.cpu(), "sumsq": ss.cpu(), "min": lo.cpu(), "max": hi.cpu()}


def _column_stats_compute(st: dict) -> dict:
    """-> {"col": [C] dicts of mean/std/min/max, "by_class": [K][C] dicts (empty when the state
    was kept without classes)}, population std."""
    cnt, s, ss, lo, hi = st["count"], st["sum"], st["sumsq"], st["min"], st["max"]

    def stats(n, s_, ss_, lo_, hi_):
        if n <= 0:
            return {"mean": NAN, "std": NAN, "min": NAN, "max": NAN}
        mean = s_ / n
        var = max(ss_ / n - mean * mean, 0.0)
        return {"mean": mean, "std": math.sqrt(var), "min": lo_, "max": hi_}

    n_all = float(cnt.sum())
    cols = [
        stats(
            n_all,
            float(s[:, j].sum()),
            float(ss[:, j].sum()),
            float(lo[:, j].min()),
            float(hi[:, j].max()),
        )
        for j in range(s.shape[1])
    ]
    by_class = (
        [
            [
                stats(
                    float(cnt[k]), float(s[k, j]), float(ss[k, j]), float(lo[k, j]), float(hi[k, j])
                )
                for j in range(s.shape[1])
            ]
            for k in range(s.shape[0])
        ]
        if st.get("by_class", True)
        else []
    )
    return {"col": cols, "by_class": by_class}


def logit_column_stats(logits, labels) -> dict[str, float]:
    """Mean, std (population), min and max of every logit column, overall and per true class.

    Keys: ``logits.col{j}.{stat}`` and ``logits.col{j}.class{k}.{stat}``. A collapse onto one
    class reads, e.g., ``logits.col0.mean = -4.06, logits.col1.mean = 0.443`` for both classes.
    """
    b = check_batch(torch.zeros(len(labels), 1), labels, logits)
    if b.logits is None:
        raise ValueError("logits are required")
    k = 2 if b.logits.ndim == 1 else b.logits.shape[1]
    check_label_range(b.labels, k, "logit columns")
    return flatten_column_stats(_column_stats_compute(_column_stats_update(b.logits, b.labels, k)))


def flatten_column_stats(cs: dict) -> dict[str, float]:
    out = {}
    for j, col in enumerate(cs["col"]):
        for stat, v in col.items():
            out[f"logits.col{j}.{stat}"] = v
        for k, row in enumerate(cs["by_class"]):
            for stat, v in row[j].items():
                out[f"logits.col{j}.class{k}.{stat}"] = v
    return out


# ----------------------------------------------------------------------------------------------
# Classification quality from a confusion matrix (fixed-size, mergeable state).
# ----------------------------------------------------------------------------------------------


def _confusion_update(pred: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bincount(y * k + pred, minlength=k * k).reshape(k, k).to("cpu", torch.float64)


def _f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2 TP / (2 TP + FP + FN); nan where the class is neither true nor predicted."""
    tp = np.diag(cm)
    denom = 2 * tp + (cm.sum(0) - tp) + (cm.sum(1) - tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), NAN)


def classification_scores(cm: np.ndarray) -> dict[str, float]:
    """accuracy, f1 (binary: class 1 positive) and macro_f1 (over classes that occur)."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum()
    f1 = _f1_from_confusion(cm)
    out = {"accuracy": float(np.trace(cm) / n) if n else NAN}
    out["macro_f1"] = float(np.nanmean(f1)) if np.isfinite(f1).any() else NAN
    if cm.shape[0] == 2:
        # F1 of the positive class; 0 (not nan) when positives exist but none is predicted
        tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]
        out["f1"] = float(2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) > 0 else NAN
    return out


# ----------------------------------------------------------------------------------------------
# Hard examples.
# ----------------------------------------------------------------------------------------------

GRAY_ZONE_BINARY = 0.1  # |P(pos) - 0.5| < 0.1
GRAY_ZONE_MULTICLASS = 0.2  # top-1 minus top-2 probability < 0.2
CONFIDENT = 0.9


def _hardness_update(z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample scalars from logits: prediction, its probability, gray-zone flag, margin.

    For [N, C] logits only the top two logits and the log-sum-exp of each row are needed
    (no softmax matrix); ``lse`` is returned for callers that want the probabilities.
    """
    if z.ndim == 1:
        p = torch.sigmoid(z.double())
        pred = (p >= 0.5).long()
        return {
            "pred": pred,
            "top_prob": torch.where(pred == 1, p, 1 - p),
            "gray": (p - 0.5).abs() < GRAY_ZONE_BINARY,
            "margin": _margins(z, y).double(),
        }
    check_label_range(y, z.shape[1], "logit columns")
    top, idx = z.topk(2, dim=1)
    if z.shape[1] == 2:  # both logits are in ``top``: skip the general (slower) reduction
        lse = top[:, 0] + torch.log1p(torch.exp(top[:, 1] - top[:, 0]))
    else:
        lse = torch.logsumexp(z, dim=1)
    p1, p2 = torch.exp(top[:, 0] - lse).double(), torch.exp(top[:, 1] - lse).double()
    pred = idx[:, 0]
    true = z.gather(1, y[:, None])[:, 0]
    other = torch.where(pred == y, top[:, 1], top[:, 0])
    return {
        "pred": pred,
        "top_prob": p1,
        "gray": (p1 - p2) < GRAY_ZONE_MULTICLASS,
        "margin": (true - other).double(),
        "lse": lse,
    }


@dataclass(frozen=True)
class HardExamples:
    """gray_zone: undecided samples; confident_error: wrong with probability >= 0.9;
    hardest: indices (or ids) of the smallest logit margins, hardest first."""

    gray_zone_count: int
    gray_zone_fraction: float
    confident_error_count: int
    hardest: list

    def to_dict(self) -> dict:
        return {
            "gray_zone_count": self.gray_zone_count,
            "gray_zone_fraction": self.gray_zone_fraction,
            "confident_error_count": self.confident_error_count,
        }


def hard_examples(logits, labels, *, ids=None, k: int = 20) -> HardExamples:
    """Gray zone (binary |P(pos) - 0.5| < 0.1; multi-class top-1 minus top-2 probability < 0.2),
    confident errors (wrong with probability >= 0.9) and the k samples with the smallest margins."""
    b = check_batch(torch.zeros(len(labels), 1), labels, logits, ids)
    if b.logits is None:
        raise ValueError("logits are required")
    h = _hardness_update(b.logits, b.labels)
    return _hard_compute(h, b.labels, b.ids, k)


def _hard_compute(h: dict, y: torch.Tensor, ids, k: int) -> HardExamples:
    n = len(y)
    wrong = h["pred"] != y
    margin = h["margin"].cpu().numpy()
    names = np.asarray(ids if ids is not None else np.arange(n)).astype(str)
    order = np.lexsort((names, margin))[:k]  # ties broken by id: independent of sample order
    pred, top_prob = h["pred"].cpu().numpy(), h["top_prob"].cpu().numpy()
    hardest = [
        {
            "id": str(names[i]),
            "label": int(y[i]),
            "margin": float(margin[i]),
            "predicted": int(pred[i]),
            # 6 decimals: the last bits of a batched softmax depend on the batching
            "top_prob": round(float(top_prob[i]), 6),
        }
        for i in order
    ]
    gray = int(h["gray"].sum())
    return HardExamples(
        gray,
        gray / n if n else NAN,
        int((wrong & (h["top_prob"] >= CONFIDENT)).sum()),
        hardest,
    )
