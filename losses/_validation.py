"""Input checks shared by every head and loss: one place, exact messages that tests match."""

from __future__ import annotations

import math
from numbers import Real

import torch


def check_real(
    value: object,
    name: str,
    *,
    low: float | None = None,
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = False,
    hint: str = "",
) -> float:
    """Return ``value`` as a float after checking that it is a finite real number in range.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        expected = " and ".join(part for part in (lo, hi) if part)
        raise ValueError(f"{name} must be {expected}, got {value!r}{hint}")
    return value


def check_positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` as an int after checking that it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` after checking that it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value  # type: ignore[return-value]


def check_tensor(value: object, name: str) -> torch.Tensor:
    """Check that ``value`` is a tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_float_tensor(value: object, name: str) -> torch.Tensor:
    """Check that ``value`` is a floating-point tensor."""
    value = check_tensor(value, name)
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def check_embedding(embedding: object, dim: int | None, name: str = "embedding") -> torch.Tensor:
    """Check a batch of embeddings: a floating tensor of shape ``[B, dim]`` with ``B >= 1``."""
    embedding = check_float_tensor(embedding, name)
    expected = f"[B, {dim}]" if dim is not None else "[B, D]"
    if embedding.dim() != 2 or (dim is not None and embedding.shape[1] != dim):
        raise ValueError(f"{name} must have shape {expected}, got {list(embedding.shape)}")
    if embedding.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one row, got shape {list(embedding.shape)}")
    return embedding


def check_class_labels(
    labels: object,
    n: int,
    num_classes: int | None,
    name: str = "labels",
    shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Check integer class labels of shape ``shape`` (default ``[n]``) in ``[0, num_classes)``."""
    labels = check_tensor(labels, name)
    expected_shape = (n,) if shape is None else tuple(shape)
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"{name} must be an integer tensor of class indices, got dtype {labels.dtype}"
        )
    if tuple(labels.shape) != expected_shape:
        raise ValueError(f"{name} must have shape {list(expected_shape)}, got {list(labels.shape)}")
    if num_classes is not None and labels.numel() > 0:
        low, high = torch.stack(torch.aminmax(labels)).tolist()  # one device sync
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"{name} must be in [0, {num_classes - 1}] (num_classes={num_classes}), got {bad}"
            )
    return labels


def check_binary_targets(
    targets: object, shape: tuple[int, ...], name: str = "labels"
) -> torch.Tensor:
    """Check binary (or soft) targets: numeric or bool, of ``shape``, with values in ``[0, 1]``."""
    targets = check_tensor(targets, name)
    if targets.is_complex():
        raise ValueError(f"{name} must be real, got dtype {targets.dtype}")
    if tuple(targets.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(targets.shape)}")
    if targets.dtype != torch.bool and targets.numel() > 0:
        low, high = (float(v) for v in torch.aminmax(targets.detach()))
        if not (low >= 0 and high <= 1):  # also catches nan
            bad = low if not low >= 0 else high
            raise ValueError(f"{name} must be in [0, 1] (binary or soft targets), got {bad:g}")
    return targets
