"""What the input readers share: the batch type, path checks, unreadable-file errors, dense
tensors, integer class labels, and what the model's first layer takes (`model_input`), which
`fit_to_model` hands to a reader so that it reads images the way the model needs them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

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


@dataclass(frozen=True)
class ModelInput:
    """What a model's first layer takes, as far as its modules tell: the input channels of its
    first ``Conv2d`` (or of an exported program's ``[B, C, H, W]`` input), else the
    ``in_features`` of its first ``Linear`` (a model that flattens its images); ``source``
    says which layer, for messages."""

    channels: int | None = None
    features: int | None = None
    source: str = "the model"

    def takes(self, channels: int) -> str:
        """``"<source> takes 1 channel"`` (or N channels)."""
        return f"{self.source} takes {channels} channel{'s' if channels != 1 else ''}"


def model_input(model: Any) -> ModelInput:
    """`ModelInput` of an ``nn.Module`` or ``torch.export.ExportedProgram`` (or a loaded
    checkpoint's ``.module``). A model whose modules do not tell gives ``ModelInput()``.

    The first ``Conv2d`` registered is taken as the one the images meet first (a CNN's first
    convolution is nearly always declared first); a model without one is read by its first
    ``Linear``.
    """
    if not isinstance(model, (nn.Module, torch.export.ExportedProgram)):
        model = getattr(model, "module", model)  # a loaded checkpoint
    if isinstance(model, torch.export.ExportedProgram):
        shape = _exported_input_shape(model)
        if shape is not None and len(shape) == 4 and type(shape[1]) is int:
            return ModelInput(channels=shape[1], source="the exported program's input")
        if shape is not None and len(shape) == 2 and type(shape[1]) is int:
            return ModelInput(features=shape[1], source="the exported program's input")
        return ModelInput()
    if not isinstance(model, nn.Module):
        return ModelInput()
    modules = list(model.named_modules())
    for name, module in modules:
        if isinstance(module, nn.Conv2d) and module.in_channels > 0:  # 0: a lazy convolution
            where = f" ({name})" if name else ""
            return ModelInput(
                channels=module.in_channels, source=f"the model's first convolution{where}"
            )
    for name, module in modules:
        if isinstance(module, nn.Linear) and module.in_features > 0:
            where = f" ({name})" if name else ""
            return ModelInput(
                features=module.in_features,
                source=f"the model's first Linear layer{where}",
            )
    return ModelInput()


def _exported_input_shape(program: torch.export.ExportedProgram) -> tuple | None:
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            shape = getattr(node.meta.get("val"), "shape", None)
            return None if shape is None else tuple(shape)
    return None


def fit_to_model(data: Any, model: Any) -> Any:
    """Tell ``data`` (an `open_inputs` reader) what the model takes, so that an image folder
    reads the channels the model needs and a failed forward's hint can say what the model
    takes; readers without such a choice are left as they are. Returns ``data``."""
    fit = getattr(data, "fit_model", None)
    if fit is not None:
        fit(model_input(model))
    return data
