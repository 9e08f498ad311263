"""The small data sets, model and training loop behind ``diagnose --demo`` and the examples.

- the tasks, from scikit-learn's digits (1,797 8x8 scans that ship with scikit-learn: nothing is
  downloaded): :func:`digits_binary` (odd vs even, the odd class thinned, pixel noise: a binary
  task with a gray zone) and :func:`digits_multiclass` (the ten digits);
- the model, :class:`DigitsNet`: an MLP ``64 -> 64 -> 16`` embedding and any head, returning
  ``(embedding, logits)``; :class:`LeakyMarginNet` applies its margin at evaluation too;
  :class:`TwoViewNet`, two views of each scan (its left and right columns) fused by a gate, with
  :func:`fusion_loss` to train it under a FusionLoss;
- :func:`train`: seeded Adam over the training part.

>>> from embscope.demo import DigitsNet, digits_binary, train
>>> from embscope.diagnostics import diagnose_model
>>> from embscope.losses import BCEHead
>>> split = digits_binary(seed=0)                                  # doctest: +SKIP
>>> model = DigitsNet(BCEHead(16))                                 # doctest: +SKIP
>>> train(model, split, epochs=20)                                 # doctest: +SKIP
>>> report = diagnose_model(model, (split.x_val, split.y_val), ids=split.ids_val)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embscope.diagnostics.forward import labels_parameter

EMBEDDING_DIM = 16

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """A seeded train/validation split of 8x8 digits.

    ``x_*`` are float32 ``[N, 64]`` pixels (scaled to [0, 1], plus any noise), ``y_*`` int64
    ``[N]`` labels of the task, ``digits_*`` the original digit of each sample (0-9) and
    ``ids_val`` one id per validation sample, ``"digits[i]=d"`` (index in scikit-learn's
    ``load_digits()`` and the digit), for the report's hardest-samples list.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    digits_train: torch.Tensor
    digits_val: torch.Tensor
    ids_val: list[str]

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_val]).max()) + 1


def _check_fraction(value: float, name: str, *, low_open: bool = True) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (0 < value <= 1 if low_open else 0 <= value <= 1):
        bounds = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must lie in {bounds}, got {value!r}")
    return float(value)


def _split(
    x: np.ndarray, y: np.ndarray, digit: np.ndarray, index: np.ndarray, *, val_fraction, rng
) -> Split:
    """Stratified split: ``val_fraction`` of each label goes to validation (at least one)."""
    val = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        take = max(1, round(len(members) * val_fraction))
        val[rng.choice(members, size=take, replace=False)] = True

    def t(a, dtype):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)

    return Split(
        x_train=t(x[~val], torch.float32),
        y_train=t(y[~val], torch.int64),
        x_val=t(x[val], torch.float32),
        y_val=t(y[val], torch.int64),
        digits_train=t(digit[~val], torch.int64),
        digits_val=t(digit[val], torch.int64),
        ids_val=[f"digits[{i}]={d}" for i, d in zip(index[val], digit[val], strict=True)],
    )


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data / 16.0, data.target.astype(np.int64)


def digits_binary(
    *,
    seed: int = 0,
    positive_keep: float = 1 / 3,
    noise: float = 0.35,
    val_fraction: float = 0.3,
) -> Split:
    """Odd digits (label 1) vs even digits (label 0): a binary task with a gray zone.

    Of the odd digits a seeded random ``positive_keep`` share is kept (about 300 of 900 by
    default, so 1 positive for 3 negatives), Gaussian noise of standard deviation ``noise`` is
    added to every pixel (pixels are in [0, 1]), and a stratified ``val_fraction`` of each class is
    held out. With the defaults: about 835 training and 358 validation samples, 25% positive.

    Parameters
    ----------
    seed : int
        Seeds the thinning, the noise and the split.
    positive_keep : float in (0, 1]
    noise : float >= 0
    val_fraction : float in (0, 1)
    """
    positive_keep = _check_fraction(positive_keep, "positive_keep")
    val_fraction = _check_split(val_fraction, noise)
    x, digit = _load_digits()
    rng = np.random.default_rng(seed)
    y = digit % 2
    positives = np.flatnonzero(y == 1)
    kept = rng.choice(positives, size=max(1, round(len(positives) * positive_keep)), replace=False)
    keep = y == 0
    keep[kept] = True
    index = np.flatnonzero(keep)
    x, y, digit = x[keep], y[keep], digit[keep]
    x = x + rng.normal(0.0, noise, size=x.shape) if noise > 0 else x
    return _split(x, y, digit, index, val_fraction=val_fraction, rng=rng)


def _check_split(val_fraction: float, noise: float) -> float:
    """The shared arguments of the digits tasks; returns the validated val_fraction."""
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    if val_fraction >= 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    if not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")
    return val_fraction


def digits_multiclass(
    *,
    seed: int = 0,
    noise: float = 0.0,
    class_keep: Sequence[float] | None = None,
    val_fraction: float = 0.3,
) -> Split:
    """The ten digits as ten classes (label = digit).

    Parameters
    ----------
    seed : int
        Seeds the thinning, the noise and the split.
    noise : float >= 0
        Standard deviation of Gaussian pixel noise (pixels are in [0, 1]).
    class_keep : sequence of 10 floats in (0, 1], optional
        Share of each digit's samples to keep (seeded), for imbalanced variants; e.g.
        ``[1, 1, 1, 1, 1, 1, 1, 1, 0.05, 0.05]`` leaves about 9 samples each of 8 and 9.
    val_fraction : float in (0, 1)
    """
    val_fraction = _check_split(val_fraction, noise)
    x, digit = _load_digits()
    rng = np.random.default_rng(seed)
    keep = np.ones(len(digit), dtype=bool)
    if class_keep is not None:
        shares = list(class_keep)
        if len(shares) != 10:
            raise ValueError(f"class_keep must hold 10 shares (one per digit), got {len(shares)}")
        keep[:] = False
        for d, share in enumerate(shares):
            share = _check_fraction(share, f"class_keep[{d}]")
            members = np.flatnonzero(digit == d)
            size = max(2, round(len(members) * share))
            keep[rng.choice(members, size=size, replace=False)] = True
    index = np.flatnonzero(keep)
    x, digit = x[keep], digit[keep]
    x = x + rng.normal(0.0, noise, size=x.shape) if noise > 0 else x
    return _split(x, digit.copy(), digit, index, val_fraction=val_fraction, rng=rng)


# ----------------------------------------------------------------------------------------------
# Model and training
# ----------------------------------------------------------------------------------------------


class DigitsNet(nn.Module):
    """An MLP embedding ``in_dim -> hidden -> ReLU -> embedding_dim`` followed by a head.

    ``forward(x, labels=None)`` returns ``(embedding [B, D], logits)``; the labels go to heads
    that take them (margin heads apply their margin only in training mode, see
    :class:`embscope.losses.MarginHead`), other heads (e.g. ``nn.Linear``) get the embedding only.

    Parameters
    ----------
    head : nn.Module
        e.g. ``BCEHead(16)``, ``ArcFaceHead(16, 2, m=0.2, s=16)``, ``nn.Linear(16, 10)``.
    in_dim, hidden, embedding_dim : int
    """

    def __init__(
        self, head: nn.Module, *, in_dim: int = 64, hidden: int = 64, embedding_dim: int = 16
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, embedding_dim)
        )
        self.head = head
        self._head_takes_labels = labels_parameter(head) is not None

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.body(x)
        if self._head_takes_labels:
            return embedding, self.head(embedding, labels)
        return embedding, self.head(embedding)


class LeakyMarginNet(DigitsNet):
    """:class:`DigitsNet` with a common bug: whenever labels are passed, the margin head applies its
    margin, in evaluation too (a forward that feeds the labels to the ArcFace head during
    validation). Training is unchanged; a validation loop that passes labels
    gets margin-penalised logits. Here to show what ``probe_margin_leak`` and ``fix_eval_margin``
    catch; never model code to copy.
    """

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.body(x)
        if labels is None or not self._head_takes_labels:
            return super().forward(x, labels)
        was_training = self.head.training
        self.head.train(True)
        try:
            return embedding, self.head(embedding, labels)
        finally:
            self.head.train(was_training)


# pixel indices of a flattened 8x8 scan's left four columns and right four columns: two "views"
LEFT_COLUMNS = [r * 8 + c for r in range(8) for c in range(4)]
RIGHT_COLUMNS = [r * 8 + c for r in range(8) for c in range(4, 8)]


class TwoViewNet(nn.Module):
    """Two encoders (one per half of the scan, ``32 -> 32 -> dim``), a per-sample softmax gate
    over the views (its logits times ``sharpness``), the fused embedding (the gate-weighted sum)
    and a linear classifier. ``forward`` returns the named embeddings ``left``, ``right`` and
    ``fused``, the gate's ``attention`` weights ``[B, 2]`` and the ``logits``: the outputs the
    views report reads."""

    def __init__(self, sharpness: float = 1.0, dim: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.left = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, dim))
        self.right = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, dim))
        self.gate = nn.Linear(2 * dim, 2)
        self.classifier = nn.Linear(dim, num_classes)
        self.sharpness = sharpness

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a, b = self.left(x[:, LEFT_COLUMNS]), self.right(x[:, RIGHT_COLUMNS])
        attention = torch.softmax(self.sharpness * self.gate(torch.cat([a, b], dim=1)), dim=1)
        fused = attention[:, :1] * a + attention[:, 1:] * b
        return {
            "left": a,
            "right": b,
            "fused": fused,
            "attention": attention,
            "logits": self.classifier(fused),
        }


def fusion_loss(criterion: nn.Module) -> LossFn:
    """The :func:`train` loss of a :class:`TwoViewNet` under an ``embscope.losses.FusionLoss``:
    the logits, each view's features (for the consistency term), the gate's two weights (balance
    and diversity) and the fused embedding (center loss). Optimise ``criterion.parameters()``
    too: the center term's class centres are parameters of the loss."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = model(x)
        total, _ = criterion(
            out["logits"],
            y,
            global_feat=out["left"],
            local_feat=out["right"],
            attn_a=out["attention"][:, 0],
            attn_b=out["attention"][:, 1],
            features=out["fused"],
        )
        return total

    return loss


def default_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BCE with logits for a single logit ``[B]``, cross-entropy for ``[B, C]`` logits (with a
    margin head the margin is in those logits, since the labels are passed in training)."""
    _, logits = model(x, y)
    if logits.ndim == 1:
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
    return F.cross_entropy(logits, y)


def train(
    model: nn.Module,
    split: Split,
    *,
    epochs: int = 20,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    loss: LossFn = default_loss,
    params: Sequence[nn.Parameter] | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> list[float]:
    """Train ``model`` on ``split``'s training part with Adam; return the mean loss per epoch.

    The batches are shuffled by a generator seeded with ``seed``; the model's initial weights are
    whatever it was built with (call ``torch.manual_seed`` before building it).

    Parameters
    ----------
    loss : callable ``(model, x, y) -> scalar``
        Default :func:`default_loss`.
    params : parameters to optimise (default ``model.parameters()``; pass more, e.g. a loss's
        centres).
    on_epoch : called as ``on_epoch(epoch, model)`` after each epoch (epochs count from 1), e.g. to
        diagnose the validation set; the model is back in training mode afterwards.
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(list(params) if params is not None else model.parameters(), lr=lr)
    x, y = split.x_train, split.y_train
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(y), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            value = loss(model, x[idx], y[idx])
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
            total += float(value.detach())
            batches += 1
        history.append(total / max(batches, 1))
        if on_epoch is not None:
            on_epoch(epoch, model)
            model.train()
    model.eval()
    return history
