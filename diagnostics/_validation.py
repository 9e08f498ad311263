"""One place where every public entry point checks and converts its inputs."""

from __future__ import annotations

import math
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
    zero_rows: int = 0  # all-zero embedding rows removed (cosine space: no direction)


def check_batch(
    embeddings, labels, logits=None, ids: Sequence[str] | None = None, *, drop_zero_rows=False
) -> Batch:
    """Validate one batch and drop the rows holding NaN or Inf (and all-zero embedding rows
    when ``drop_zero_rows``: a zero vector has no direction in cosine space; they are counted
    apart in ``zero_rows``).

    Finiteness is read off one reduction per row (the norm; the sum for logits). Norms are
    computed without overflow or underflow (:func:`safe_row_norms`), so rows of finite entries
    of any magnitude are kept.

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
    y = check_labels(labels, n).to(x.device)
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
    if drop_zero_rows:
        x, norms = safe_row_norms(x, rescale=True)
    else:
        norms = safe_row_norms(x)
    finite = torch.isfinite(norms)
    if z is not None:
        zsum = z.sum(dim=1) if z.ndim == 2 else z
        zfin = torch.isfinite(zsum)
        if not bool(zfin.all()) and z.ndim == 2:  # a sum can overflow where no entry is Inf
            zfin = torch.isfinite(z).all(dim=1)
        finite &= zfin
    zero_rows = 0
    if drop_zero_rows:
        zero = finite & (norms == 0)
        zero_rows = int(zero.sum())
        finite &= ~zero
    dropped = int(n - finite.sum()) - zero_rows
    if dropped or zero_rows:
        x, y, norms = x[finite], y[finite], norms[finite]
        z = z[finite] if z is not None else None
        if ids is not None:
            keep = finite.cpu().tolist()
            ids = [i for i, k in zip(ids, keep, strict=True) if k]
    return Batch(x, y, z, ids, dropped, norms, zero_rows)


def check_label_range(labels: torch.Tensor, num_classes: int, what: str) -> None:
    """Labels index logit columns when logits are given: they must lie in [0, C)."""
    if labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) to index the {what}, got values in [{lo}, {hi}]"
        )


_INT64_FLOAT_LIMIT = 2.0**53  # beyond this, floats no longer hold every integer: classes merge


def check_labels(labels, n: int) -> torch.Tensor:
    """Labels as int64 [n]: integers, or floats holding exact integers of magnitude below
    2^53; unsigned values must fit int64. Anything else would be rounded or wrapped into
    another class, so it is refused with the offending values named."""
    if isinstance(labels, np.ndarray) and labels.dtype == np.uint64:
        big = labels[labels >= np.uint64(2**63)]
        if big.size:
            raise ValueError(
                f"labels must fit int64, got unsigned values >= 2^63 (e.g. {_some(big)})"
            )
        labels = labels.astype(np.int64)
    y = as_tensor(labels, "labels")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(
            f"labels must be 1-D with one entry per embedding row ([{n}]), got shape {tuple(y.shape)}"
        )
    if y.dtype == torch.bool:
        return y.long()
    if torch.is_floating_point(y):
        yd = y.double()
        bad = ~torch.isfinite(yd) | (yd.abs() >= _INT64_FLOAT_LIMIT)
        if bool(bad.any()):
            raise ValueError(
                "labels must be integers of magnitude below 2^53, got "
                f"{_some(yd[bad].cpu().numpy())}"
            )
        frac = yd != torch.round(yd)
        if bool(frac.any()):
            raise ValueError(
                "labels must be integers, got non-integer floating-point values "
                f"(e.g. {_some(yd[frac].cpu().numpy())})"
            )
    elif y.dtype == torch.uint64:
        big = y.cpu().numpy()
        big = big[big >= np.uint64(2**63)]
        if big.size:
            raise ValueError(
                f"labels must fit int64, got unsigned values >= 2^63 (e.g. {_some(big)})"
            )
    return y.long()


def _some(values: np.ndarray, k: int = 3) -> str:
    shown = ", ".join(repr(v.item()) for v in np.unique(values)[:k])
    return shown + (", ..." if np.unique(values).size > k else "")


def safe_row_norms(x: torch.Tensor, *, rescale: bool = False):
    """Euclidean norms of the rows of a floating-point [B, D] tensor, without overflow or
    underflow: rows whose plain norm is Inf (squares overflowed) or too small to be accurate
    (squares underflowed) while every entry is finite are recomputed as max|x| * ||x / max|x|||.
    NaN for rows holding NaN, Inf for rows holding Inf, 0 for all-zero rows.

    With ``rescale`` (cosine space, where only directions matter) those rows are also divided
    by their largest entry and get the norm of the divided row, so later products cannot
    overflow either; returns ``(x, norms)`` then (x copied only when a row changed), else norms.
    """
    norms = torch.linalg.vector_norm(x, dim=1)
    tiny = math.sqrt(torch.finfo(x.dtype).tiny) * 2.0**12
    redo = ~torch.isfinite(norms) | (norms < tiny)
    if bool(redo.any()):
        idx = torch.nonzero(redo)[:, 0]
        rows = x.index_select(0, idx)
        big = rows.abs().amax(dim=1)
        ok = torch.isfinite(rows).all(dim=1) & (big > 0)
        idx, rows, big = idx[ok], rows[ok], big[ok]
        if len(idx):
            unit = rows / big[:, None]
            inner = torch.linalg.vector_norm(unit, dim=1)
            norms = norms.clone()
            if rescale:
                x = x.clone()
                x[idx] = unit
                norms[idx] = inner
            else:
                norms[idx] = inner * big
    return (x, norms) if rescale else norms
