"""Checks that a report's inputs are what they claim to be, before any rule reads them: logits
that are really probabilities (`check_outputs`), and labels that number the classes unlike the
model's outputs (`check_labels`). Facts about the inputs, not advice with a track record."""

from __future__ import annotations

import numpy as np

from .advice_evidence import _ev
from .compare import _finite, _get
from .report import Report


def _probability_outputs(report: Report) -> dict | None:
    """Evidence that the logits are probabilities: every column within [0, 1] over at least 20
    rows, and with two or more columns rows summing to 1 on average (the column means add up to
    1). Log-probabilities (log-softmax) are fine as logits and are not flagged."""
    cols = report.meta.get("logit_columns")
    n = _get(report, "n")
    if not (isinstance(cols, int) and cols >= 1 and _finite(n) and n >= 20):
        return None
    lows = [_get(report, f"logits.col{j}.min") for j in range(cols)]
    highs = [_get(report, f"logits.col{j}.max") for j in range(cols)]
    means = [_get(report, f"logits.col{j}.mean") for j in range(cols)]
    if not (_finite(*lows, *highs, *means) and min(lows) >= 0 and max(highs) <= 1):
        return None
    evidence = {
        "logits.min": {"value": min(lows), "threshold": 0.0, "op": ">="},
        "logits.max": {"value": max(highs), "threshold": 1.0, "op": "<="},
    }
    what = f" (min {min(lows):.3g}, max {max(highs):.3g} over {n:.0f} rows)"
    if cols >= 2:
        total = sum(means)
        if abs(total - 1) > 1e-3:
            return None
        evidence["column_means_sum"] = {"value": total, "threshold": 1.0, "op": "=="}
        what += " and each row sums to 1"
    evidence["_what"] = what
    return evidence


def _relabelled(report: Report) -> dict | None:
    """Evidence that labels and outputs number the classes differently: in the confusion matrix,
    every class with at least 5 samples is predicted mostly as one class, distinct classes as
    distinct classes (a renaming, not a collapse), most of them as another class than their own,
    and renaming would at least double an accuracy of 0.8 or more."""
    conf = report.sections.get("confusion")
    matrix = getattr(conf, "matrix", None)
    if matrix is None:
        return None
    m = np.asarray(matrix, dtype=float)
    labels = list(conf.labels)
    rows = m.sum(1)
    used = np.flatnonzero(rows >= 5)
    if len(used) < 2:
        return None
    top = m[used].argmax(1)
    n = rows[used].sum()
    right = float(sum(m[r, r] for r in used)) / n
    renamed = float(sum(m[r, t] for r, t in zip(used, top, strict=True))) / n
    moved = [r for r, t in zip(used, top, strict=True) if t != r]
    if not (
        len(set(top.tolist())) == len(top)
        and renamed >= 0.8
        and right <= 0.5 * renamed
        and len(moved) * 2 >= len(used)
    ):
        return None
    shown = [
        f"{labels[r]} as {labels[t]} ({m[r, t]:.0f} of {rows[r]:.0f})"
        for r, t in zip(used, top, strict=True)
        if t != r
    ][:4]
    return {
        "accuracy": _ev(report, "accuracy"),
        "accuracy_if_renamed": {"value": renamed, "threshold": 0.8, "op": ">="},
        "classes_moved": {"value": float(len(moved)), "of": float(len(used))},
        "_what": "true class " + ", ".join(shown) + (", ..." if len(moved) > 4 else ""),
    }
