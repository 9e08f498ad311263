"""What the input readers share: the batch type, path checks, unreadable-file errors, dense
tensors and integer class labels."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embscope.cli.checkpoint import path_problem
from embscope.cli.errors import UsageError, one_line


@dataclass
class Batch:
    """Model inputs ``[B, ...]``, integer labels ``[B]`` and optional sample ids."""

    inputs: torch.Tensor
    labels: torch.Tensor
    ids: list[str] | None = None


def _check_path(path: Path, role: str) -> None:
    """`UsageError` for a path that is missing, a symlink loop or broken link, or a folder this
    user cannot list."""
    problem = path_problem(path)
    if problem is not None:
        raise UsageError(path, problem, "check the path and its permissions")
    if not path.exists():
        raise UsageError(path, f"no such {role}", "check the path")
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise UsageError(
            path, "is not readable (a folder this user cannot list)", "check its permissions"
        )


def _unreadable(path: Path, error: BaseException) -> UsageError:
    return UsageError(
        path,
        f"cannot be read ({one_line(f'{type(error).__name__}: {error}', 120)})",
        "pass a file written by torch.save, np.save or np.savez",
    )


def _check_dense(value: Any, where: str) -> None:
    """Sparse (and other non-strided) tensors cannot be sliced into rows: refuse them."""
    if isinstance(value, torch.Tensor) and value.layout != torch.strided:
        layout = str(value.layout).removeprefix("torch.")
        raise UsageError(where, f"is a {layout} tensor, not a dense one", "store tensor.to_dense()")


def _as_labels(value: Any, where: str) -> np.ndarray:
    """Integer class labels ``[N]`` as int64 (integral floats accepted)."""
    _check_dense(value, where)
    array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise UsageError(
            where,
            f"has shape {list(array.shape)}; expected [N] class labels",
            "store one integer label per sample",
        )
    if array.dtype.kind == "b":
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise UsageError(where, "holds non-integer labels", "store integer class indices")
        return array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise UsageError(
            where, f"has dtype {array.dtype}; expected integer class labels", "store class indices"
        )
    return array.astype(np.int64)
