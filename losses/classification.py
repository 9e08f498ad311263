"""Classification losses for imbalanced data: focal, soft Dice, their sum, label smoothing.

Shapes follow ``F.cross_entropy``: multi-class logits ``[N, C]`` or ``[N, C, d1, ...]``
(segmentation) with integer targets ``[N]`` or ``[N, d1, ...]``; binary logits of any shape with
targets of the same shape in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._validation import (
    check_binary_targets,
    check_choice,
    check_class_labels,
    check_float_tensor,
    check_real,
)

_REDUCTIONS = ("mean", "sum", "none")


def _compute(x: torch.Tensor) -> torch.Tensor:
    """float32 for half inputs (autocast safety), unchanged otherwise."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_multiclass(logits: object, targets: object) -> tuple[torch.Tensor, torch.Tensor]:
    logits = check_float_tensor(logits, "logits")
    if logits.dim() < 2 or logits.shape[1] < 2:
        raise ValueError(
            f"logits must have shape [N, C] or [N, C, d1, ...] with C >= 2, "
            f"got {list(logits.shape)}"
        )
    shape = (logits.shape[0], *logits.shape[2:])
    targets = check_class_labels(targets, 0, logits.shape[1], name="targets", shape=shape)
    return logits, targets.to(logits.device)


def _check_binary(logits: object, targets: object) -> tuple[torch.Tensor, torch.Tensor]:
    logits = check_float_tensor(logits, "logits")
    targets = check_binary_targets(targets, tuple(logits.shape), name="targets")
    return logits, targets.to(logits.device)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class FocalLoss(nn.Module):
    r"""Focal loss ``FL = -alpha_t (1 - p_t)^gamma log p_t``.

    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017. ``p_t`` is the predicted
    probability of the true class; ``(1 - p_t)^gamma`` down-weights easy examples.

    - ``task="binary"``: ``p = sigmoid(logit)``, ``p_t = p y + (1 - p)(1 - y)``,
      ``alpha_t = alpha y + (1 - alpha)(1 - y)`` (``alpha`` weights the positives), and
      ``-log p_t`` is the BCE with logits (soft targets allowed).
    - ``task="multiclass"``: ``p = softmax(logits)``; ``alpha`` is either a float (the same weight
      for every class) or a sequence of C per-class weights.

    With ``gamma=0`` and ``alpha=None`` this is exactly ``F.binary_cross_entropy_with_logits`` /
    ``F.cross_entropy`` (``reduction="mean"`` is the plain mean over elements).
    ``1 - p_t`` is computed without cancellation and floored at the dtype's smallest normal
    number before the power, so gradients stay finite for saturated logits and ``gamma < 1``.
    Half inputs are computed in float32.

    Parameters
    ----------
    alpha : float, sequence of float, or None
        Binary: in ``[0, 1]``. Multi-class: >= 0 (float or one per class).
    gamma : float
        >= 0.
    task : {"binary", "multiclass"}
    reduction : {"mean", "sum", "none"}
    """

    def __init__(
        self,
        alpha: float | Sequence[float] | None = 0.25,
        gamma: float = 2.0,
        task: str = "binary",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.task = check_choice(task, "task", ("binary", "multiclass"))
        self.gamma = check_real(gamma, "gamma", low=0.0)
        self.reduction = check_choice(reduction, "reduction", _REDUCTIONS)
        self.alpha: float | None = None
        self.register_buffer("class_alpha", None)
        if alpha is None:
            pass
        elif isinstance(alpha, Sequence | torch.Tensor) and not isinstance(alpha, str):
            if task == "binary":
                raise ValueError(
                    "alpha must be a float in [0, 1] or None for task='binary', got a sequence"
                )
            weights = torch.as_tensor(alpha, dtype=torch.float64)
            if weights.dim() != 1 or weights.numel() < 2:
                raise ValueError(
                    f"alpha must be a float or a 1-D sequence of C >= 2 per-class "
                    f"weights, got shape {list(weights.shape)}"
                )
            if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
                raise ValueError(
                    f"alpha per-class weights must be finite and >= 0, got {weights.tolist()}"
                )
            self.class_alpha = weights
        elif task == "binary":
            self.alpha = check_real(alpha, "alpha", low=0.0, high=1.0)
        else:
            self.alpha = check_real(alpha, "alpha", low=0.0)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Focal loss, reduced as ``reduction`` (``"none"``: one value per element)."""
        if self.task == "binary":
            logits, targets = _check_binary(logits, targets)
            x = _compute(logits)
            y = targets.to(x.dtype)
            loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
            if self.gamma != 0:
                one_minus_pt = torch.sigmoid(x) * (1 - y) + torch.sigmoid(-x) * y
                loss = loss * self._modulate(one_minus_pt)
            if self.alpha is not None:
                loss = loss * (self.alpha * y + (1 - self.alpha) * (1 - y))
            return _reduce(loss, self.reduction)

        logits, targets = _check_multiclass(logits, targets)
        logp_t = F.log_softmax(_compute(logits), dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
        loss = -logp_t
        if self.gamma != 0:
            loss = loss * self._modulate(-torch.expm1(logp_t))
        if self.class_alpha is not None:
            if self.class_alpha.numel() != logits.shape[1]:
                raise ValueError(
                    f"alpha has {self.class_alpha.numel()} per-class weights but "
                    f"logits have C={logits.shape[1]} classes"
                )
            loss = loss * self.class_alpha.to(loss.dtype)[targets]
        elif self.alpha is not None:
            loss = loss * self.alpha
        return _reduce(loss, self.reduction)

    def _modulate(self, one_minus_pt: torch.Tensor) -> torch.Tensor:
        return one_minus_pt.clamp_min(torch.finfo(one_minus_pt.dtype).tiny) ** self.gamma

    def extra_repr(self) -> str:
        alpha = self.class_alpha.tolist() if self.class_alpha is not None else self.alpha
        return (
            f"alpha={alpha}, gamma={self.gamma:g}, task={self.task!r}, reduction={self.reduction!r}"
        )


class DiceLoss(nn.Module):
    r"""Soft Dice loss ``1 - mean_c (2 sum p_c y_c + smooth) / (sum p_c + sum y_c + smooth)``.

    Milletari et al., "V-Net", 3DV 2016. Sums run over the whole batch (all samples and
    positions) per class, then the Dice coefficients are averaged over classes.
    ``task="binary"``: one class with ``p = sigmoid(logits)``; ``task="multiclass"``:
    ``p = softmax(logits, dim=1)`` against one-hot targets. Range ``[0, 1]``, 0 for a perfect
    prediction; ``smooth`` keeps it defined for empty classes.

    Parameters
    ----------
    task : {"binary", "multiclass"}
    smooth : float
        >= 0.
    """

    def __init__(self, task: str = "binary", smooth: float = 1.0) -> None:
        super().__init__()
        self.task = check_choice(task, "task", ("binary", "multiclass"))
        self.smooth = check_real(smooth, "smooth", low=0.0)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar Dice loss."""
        if self.task == "binary":
            logits, targets = _check_binary(logits, targets)
            p = torch.sigmoid(_compute(logits)).reshape(1, -1)
            y = targets.to(p.dtype).reshape(1, -1)
        else:
            logits, targets = _check_multiclass(logits, targets)
            num_classes = logits.shape[1]
            p = torch.softmax(_compute(logits), dim=1).movedim(1, 0).reshape(num_classes, -1)
            y = F.one_hot(targets, num_classes).to(p.dtype).movedim(-1, 0).reshape(num_classes, -1)
        intersection = (p * y).sum(dim=1)
        denominator = p.sum(dim=1) + y.sum(dim=1)
        dice = (2 * intersection + self.smooth) / (denominator + self.smooth)
        return 1 - dice.mean()

    def extra_repr(self) -> str:
        return f"task={self.task!r}, smooth={self.smooth:g}"


class FocalDiceLoss(nn.Module):
    r"""``focal + dice_weight * dice``, the segmentation loss of the user's focal-loss plan.

    Returns ``(total, {"focal": ..., "dice": ...})`` where the dict holds each term as it enters
    the total (the Dice term already multiplied by ``dice_weight``), so the terms sum to the total.

    Parameters
    ----------
    alpha, gamma :
        As :class:`FocalLoss` (defaults of the plan: 0.25, 2.0).
    dice_weight : float
        >= 0 (1.0 in the plan's conservative setting, 1.5 in the aggressive one).
    task : {"binary", "multiclass"}
    smooth : float
        As :class:`DiceLoss`.
    """

    def __init__(
        self,
        alpha: float | Sequence[float] | None = 0.25,
        gamma: float = 2.0,
        dice_weight: float = 1.0,
        task: str = "multiclass",
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        self.dice_weight = check_real(dice_weight, "dice_weight", low=0.0)
        self.focal = FocalLoss(alpha=alpha, gamma=gamma, task=task, reduction="mean")
        self.dice = DiceLoss(task=task, smooth=smooth)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        focal = self.focal(logits, targets)
        dice = self.dice_weight * self.dice(logits, targets)
        return focal + dice, {"focal": focal, "dice": dice}


class LabelSmoothingCrossEntropy(nn.Module):
    r"""Cross-entropy against smoothed targets ``(1 - eps) onehot(y) + eps / C``.

    ``loss = (1 - eps) (-log p_y) + eps mean_c (-log p_c)``; Szegedy et al., "Rethinking the
    Inception Architecture", CVPR 2016. The same definition as
    ``F.cross_entropy(..., label_smoothing=eps)``.

    Parameters
    ----------
    smoothing : float
        ``eps`` in ``[0, 1]``.
    reduction : {"mean", "sum", "none"}
    """

    def __init__(self, smoothing: float = 0.1, reduction: str = "mean") -> None:
        super().__init__()
        self.smoothing = check_real(smoothing, "smoothing", low=0.0, high=1.0)
        self.reduction = check_choice(reduction, "reduction", _REDUCTIONS)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _check_multiclass(logits, targets)
        logp = F.log_softmax(_compute(logits), dim=1)
        nll = -logp.gather(1, targets.unsqueeze(1)).squeeze(1)
        loss = (1 - self.smoothing) * nll - self.smoothing * logp.mean(dim=1)
        return _reduce(loss, self.reduction)

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing:g}, reduction={self.reduction!r}"
