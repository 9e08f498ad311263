"""One place where every public entry point checks and converts its inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

SPACES = ("cosine", "euclidean")


def as_tensor(x, name: str) -> torch.Tensor:
    """Convert an array-like of numbers to a tensor without copying where possible."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (np.ndarray, list, tuple)):
        arr = np.ascontiguousarray(x)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold numbers, got {arr.dtype} values")
        return torch.from_numpy(arr)
    raise TypeError(f"{name} must be a torch.Tensor, numpy array or list, got {type(x).__name__}")


def check_space(space: str) -> str:
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    return space


@dataclass(frozen=True)
class Batch:
    """A validated batch: finite rows only, float embeddings, int64 labels."""

    embeddings: torch.Tensor  # [B, D] float32/float64, finite rows only
    labels: torch.Tensor  # [B] int64 (raw label values)
    logits: torch.Tensor | None  # [B] or [B, C], float32, same rows
    ids: list[str] | None
    dropped: int  # rows removed because of NaN/Inf in embeddings or logits
    norms: torch.Tensor  # [B] Euclidean norms of the kept embedding rows


def check_batch(
    embeddings, labels, logits=None, ids: Sequence[str] | None = None, *, drop_zero_rows=False
) -> Batch:
    """Validate one batch and drop the rows holding NaN or Inf (and all-zero embedding rows
    when ``drop_zero_rows``: a zero vector has no direction in cosine space).

    Finiteness is read off one reduction per row (the norm; the sum for logits), so a row whose
    squared norm overflows float32 (entries beyond ~1e19) counts as non-finite too.

    Raises ValueError/TypeError naming the argument, its shape and what was expected.
    """
    x = as_tensor(embeddings, "embeddings")
    if x.ndim == 1:
        raise ValueError(
            f"embeddings must be 2-D [N, D], got shape {tuple(x.shape)} "
            "(for D = 1 pass embeddings[:, None])"
        )
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [N, D], got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        x = x.float()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    n = x.shape[0]
    y = as_tensor(labels, "labels")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(
            f"labels must be 1-D with one entry per embedding row ([{n}]), got shape {tuple(y.shape)}"
        )
    if torch.is_floating_point(y):
        if not bool(torch.all(y == torch.round(y))):
            raise ValueError("labels must be integers, got non-integer floating-point values")
    y = y.long()
    y = y.to(x.device)
    z = None
    if logits is not None:
        z = as_tensor(logits, "logits")
        if z.ndim not in (1, 2) or z.shape[0] != n:
            raise ValueError(
                f"logits must be [N] (one binary logit) or [N, C] with N = {n}, "
                f"got shape {tuple(z.shape)}"
            )
        if z.ndim == 2 and z.shape[1] < 2:
            if z.shape[1] == 1:
                z = z[:, 0]
            else:
                raise ValueError(
                    f"logits must have at least one column, got shape {tuple(z.shape)}"
                )
        z = (z if z.dtype == torch.float64 else z.float()).to(x.device)
    if ids is not None:
        ids = [str(i) for i in ids]
        if len(ids) != n:
            raise ValueError(f"ids must have one entry per embedding row ({n}), got {len(ids)}")
    norms = torch.linalg.vector_norm(x, dim=1)
    finite = torch.isfinite(norms)
    if z is not None:
        finite &= torch.isfinite(z.sum(dim=1) if z.ndim == 2 else z)
    if drop_zero_rows:
        finite &= norms > 0
    dropped = int(n - finite.sum())
    if dropped:
        x, y, norms = x[finite], y[finite], norms[finite]
        z = z[finite] if z is not None else None
        if ids is not None:
            keep = finite.cpu().tolist()
            ids = [i for i, k in zip(ids, keep, strict=True) if k]
    return Batch(x, y, z, ids, dropped, norms)


def check_label_range(labels: torch.Tensor, num_classes: int, what: str) -> None:
    """Labels index logit columns when logits are given: they must lie in [0, C)."""
    if labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) to index the {what}, got values in [{lo}, {hi}]"
        )
