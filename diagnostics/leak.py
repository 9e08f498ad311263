"""The margin leak, quantified: the scores of the eval-mode logits both ways.

When ``forward(inputs, labels=labels)`` in eval mode gives other logits than
``forward(inputs)`` (`probe_margin_leak`), the margin reaches evaluation. A validation loop that
passes labels then reports the penalised logits; the deployed model, which has no labels,
scores the plain ones (and so does the report, whose metrics are label-free).
`diagnose_model` runs each batch both ways and adds, per way, accuracy, F1 (binary: class 1
positive) and macro-F1::

    head.leak_accuracy_with_labels     head.leak_accuracy_without_labels
    head.leak_f1_with_labels           head.leak_f1_without_labels
    head.leak_macro_f1_with_labels     head.leak_macro_f1_without_labels

The state is, per way and class, the true positives, the predictions and the labels (sums:
streamed, merged and all-reduced like the Diagnoser's). The rows are those the Diagnoser
keeps: finite embeddings and logits, and non-zero embeddings in cosine space.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from . import metrics as M
from .interval_core import LEVEL, _Intervals
from .report import Report

NAN = float("nan")
WAYS = ("with", "without")  # labels passed to forward, or not
SCORES = ("accuracy", "f1", "macro_f1")


def leak_key(score: str, way: str) -> str:
    """``head.leak_{score}_{way}_labels``, e.g. ``head.leak_f1_with_labels``."""
    return f"head.leak_{score}_{way}_labels"


def _leak_update(
    with_labels: torch.Tensor,
    without_labels: torch.Tensor,
    labels: torch.Tensor,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """State of one batch: ``[2, 3, C]`` float64, per way (with labels, without) and class:
    true positives, predictions, labels.

    with_labels, without_labels : ``[B]`` (one binary logit) or ``[B, C]`` logits.
    labels : ``[B]`` class indices in [0, C) (C = 2 for one logit).
    keep : ``[B]`` bool, the rows to count (default all).
    """
    if keep is not None:
        with_labels, without_labels, labels = with_labels[keep], without_labels[keep], labels[keep]
    k = 2 if without_labels.ndim == 1 else without_labels.shape[1]
    y = labels.long()
    rows = []
    for z in (with_labels, without_labels):
        pred = M._hardness_update(z, y)["pred"]
        rows.append(
            torch.stack(
                [
                    torch.bincount(y[pred == y], minlength=k),
                    torch.bincount(pred, minlength=k),
                    torch.bincount(y, minlength=k),
                ]
            )
        )
    return torch.stack(rows).to("cpu", torch.float64)


def _leak_compute(state: torch.Tensor) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics and reasons of a summed state: per way, accuracy = sum TP / N, per-class
    F1 = 2 TP / (predictions + labels) (as `classification_scores`: macro-F1 over classes
    that occur, F1 of class 1 for two classes, nan beyond)."""
    metrics, reasons = {}, {}
    s = state.numpy()
    for way, (tp, pred, true) in zip(WAYS, s, strict=True):
        n = true.sum()
        denom = pred + true
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), NAN)
        metrics[leak_key("accuracy", way)] = float(tp.sum() / n) if n else NAN
        metrics[leak_key("macro_f1", way)] = float(np.nanmean(f1)) if np.isfinite(f1).any() else NAN
        metrics[leak_key("f1", way)] = float(f1[1]) if len(tp) == 2 else NAN
        how = (
            "forward(inputs, labels=labels) in eval mode, as a validation loop that passes "
            "labels computes it"
            if way == "with"
            else "forward(inputs) in eval mode, as the deployed model computes it"
        )
        for score in SCORES:
            reasons[leak_key(score, way)] = how
        if len(tp) != 2:
            reasons[leak_key("f1", way)] = "defined for binary models only"
    return metrics, reasons


def with_leak_scores(report: Report, state: torch.Tensor, thresholds: dict | None = None) -> Report:
    """``report`` with the scores of both ways (`_leak_compute` of ``state``) and its
    recommendations made again, so that the margin-leak advice shows them."""
    from .advice import recommend

    if not float(state[0, 2].sum()):
        return report
    metrics, reasons = _leak_compute(state)
    report = replace(
        report,
        metrics={**report.metrics, **metrics},
        reasons={**report.reasons, **reasons},
    )
    report = leak_intervals(report, state)
    return report.with_recommendations(recommend(report, thresholds=thresholds))


def kept_rows(embedding: torch.Tensor, *logits: torch.Tensor, cosine: bool) -> torch.Tensor:
    """``[B]`` bool: the rows the Diagnoser keeps (finite embedding and logits; in cosine
    space, a non-zero embedding)."""
    keep = torch.isfinite(embedding).all(dim=1)
    for z in logits:
        keep &= torch.isfinite(z) if z.ndim == 1 else torch.isfinite(z).all(dim=1)
    if cosine:
        keep &= (embedding != 0).any(dim=1)
    return keep


class LeakScores:
    """The streaming state of `_leak_update`, summed over batches (and ranks by `sync`)."""

    def __init__(self, *, cosine: bool) -> None:
        self.cosine = cosine
        self.state: torch.Tensor | None = None

    def update(
        self,
        embedding: torch.Tensor,
        with_labels: torch.Tensor,
        without_labels: torch.Tensor,
        labels: torch.Tensor,
    ) -> None:
        keep = kept_rows(embedding, with_labels, without_labels, cosine=self.cosine)
        part = _leak_update(with_labels, without_labels, labels.to(keep.device), keep)
        self.state = part if self.state is None else self.state + part

    def sync(self, group=None) -> None:
        """Sum the states of every rank of ``group`` (all ranks must call it)."""
        import torch.distributed as dist

        from .distributed import collective_device

        local = torch.zeros(0) if self.state is None else self.state
        shape = torch.tensor(list(local.shape) or [0, 0, 0], dtype=torch.float64)
        device = collective_device(group)
        shape = shape.to(device)
        dist.all_reduce(shape, op=dist.ReduceOp.MAX, group=group)
        size = tuple(int(v) for v in shape.tolist())
        full = torch.zeros(size, dtype=torch.float64, device=device)
        if self.state is not None:
            full[:, :, : self.state.shape[2]] += self.state.to(device)
        dist.all_reduce(full, group=group)
        self.state = full.cpu()


def any_rank(flag: bool | None, group=None) -> bool | None:
    """``flag`` made the same on every rank of ``group``: True when any rank's is True (None
    stays None: forward takes no labels on every rank, since they run one model)."""
    import torch.distributed as dist

    from .distributed import collective_device

    if flag is None:
        return None
    value = torch.tensor([1.0 if flag else 0.0], device=collective_device(group))
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())


def distributed_group(options: dict):
    """``(True, group)`` when the Diagnoser built from ``options`` syncs at compute (an
    initialised process group, ``sync_on_compute``), else ``(False, None)``."""
    import torch.distributed as dist

    if not options.get("sync_on_compute", True):
        return False, None
    if not (dist.is_available() and dist.is_initialized()):
        return False, None
    return True, options.get("process_group")


def leak_intervals(report, state: torch.Tensor, level: float | None = None):
    """``report`` with intervals of its ``head.leak_*`` scores from the leak state [2, 3, C]
    (per way: true positives, predictions, labels per class)."""
    from .leak import WAYS, leak_key

    out = _Intervals(report.metrics, LEVEL if level is None else level)
    st = state.double().numpy()
    for w, way in enumerate(WAYS):
        tp, pred, lab = st[w]
        n = lab.sum()
        out.wilson(
            leak_key("accuracy", way), tp.sum(), n, "Wilson (correct predictions over samples)"
        )
        fp, fn = pred - tp, lab - tp
        denom = 2 * tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)
            var = tp * (2 - 2 * f1) ** 2 + (fp + fn) * f1**2
            se = np.sqrt(var) / denom
        how = "normal (delta method of 2 TP / (2 TP + FP + FN) over the samples)"
        if len(tp) == 2 and np.isfinite(se[1]):
            out.normal(leak_key("f1", way), float(se[1]), how)
        live = np.isfinite(se)
        if live.any():
            macro_se = float(np.sqrt(np.sum(se[live] ** 2)) / live.sum())
            out.normal(leak_key("macro_f1", way), macro_se, how + ", classes as independent")
    intervals = {**(report.intervals or {}), **out.intervals}
    methods = {**(report.interval_methods or {}), **out.methods}
    return replace(report, intervals=intervals, interval_methods=methods)
