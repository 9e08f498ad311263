"""Tensor files: inputs and labels stored together in a ``.pt``, ``.npz`` or ``.npy`` file."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embscope.cli.checkpoint import check_readable_file, torch_load
from embscope.cli.errors import UsageError
from embscope.cli.input_common import Batch, _as_labels, _check_dense, _unreadable

INPUT_LABEL_KEYS = (("x", "y"), ("inputs", "labels"), ("images", "targets"))


class TensorFile:
    """Inputs and labels stored together in a ``.pt``, ``.npz`` or ``.npy`` file."""

    hint = "check that the tensor file's inputs have the shape the model expects"

    def __init__(self, path: Path, *, trust: bool = False) -> None:
        self.path = path
        check_readable_file(path, "data")
        content = _read_tensor_container(path, trust=trust)
        pair = next(((x, y) for x, y in INPUT_LABEL_KEYS if x in content and y in content), None)
        if pair is None:
            raise UsageError(
                path,
                f"holds {_keys(content)} but no inputs and labels",
                "store them under x/y, inputs/labels or images/targets",
            )
        x_key, y_key = pair
        self.inputs = _as_tensor(content[x_key], f"{path} [{x_key!r}]")
        if self.inputs.ndim < 2:
            raise UsageError(
                path,
                f"{x_key!r} has shape {list(self.inputs.shape)}; expected [N, ...] with one row per sample",
                "store the inputs with the samples along the first axis",
            )
        self.labels = _as_labels(content[y_key], f"{path} [{y_key!r}]")
        if len(self.labels) != len(self.inputs):
            raise UsageError(
                path,
                f"holds {len(self.labels)} labels ({y_key!r}) for {len(self.inputs)} inputs ({x_key!r})",
                "store one label per input",
            )

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(self), batch_size):
            inputs = _as_float(self.inputs[start : start + batch_size])
            yield Batch(inputs, torch.from_numpy(self.labels[start : start + batch_size]))


def _read_tensor_container(path: Path, *, trust: bool) -> Mapping[str, Any]:
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        content = torch_load(path, trust=trust, role="tensor file", mmap=True)
        if isinstance(content, (tuple, list)) and len(content) == 2:
            return {"x": content[0], "y": content[1]}
    elif suffix == ".npz":
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise _unreadable(path, error) from error
        content = {name: _npz_member(archive, name, path) for name in archive.files}
    else:
        content = _load_npy(path, trust=trust)
        if isinstance(content, np.ndarray):
            raise UsageError(
                path,
                f"holds a single array of shape {list(content.shape)}, not inputs and labels",
                "save both: np.savez(path, x=inputs, y=labels)",
            )
    if not isinstance(content, Mapping):
        raise UsageError(
            path,
            f"holds a {type(content).__name__}, not a dict of inputs and labels",
            "save a dict: torch.save({'x': inputs, 'y': labels}, path)",
        )
    return content


def _npz_member(archive: Any, name: str, path: Path) -> np.ndarray:
    try:
        return archive[name]
    except ValueError as error:  # object arrays need pickle
        raise UsageError(
            path, f"member {name!r} holds pickled Python objects", "store plain numeric arrays"
        ) from error


def _load_npy(path: Path, *, trust: bool) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise _unreadable(path, error) from error
        if not trust:
            raise UsageError(
                path,
                "holds a pickled Python object (np.save of a dict)",
                "save plain arrays with np.savez(path, x=inputs, y=labels), or pass "
                "--trust-checkpoint if you trust the file, since unpickling can run arbitrary code",
            ) from error
    except OSError as error:
        raise _unreadable(path, error) from error
    content = np.load(path, allow_pickle=True)
    return content.item() if content.dtype == object and content.shape == () else content


def _keys(content: Mapping[str, Any]) -> str:
    keys = [repr(k) for k in content]
    return f"keys [{', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}]"


def _as_tensor(value: Any, where: str) -> torch.Tensor:
    _check_dense(value, where)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return torch.from_numpy(value)
    raise UsageError(
        where,
        f"is a {type(value).__name__} ({_dtype(value)}), not a numeric array",
        "store a tensor",
    )


def _dtype(value: Any) -> str:
    return str(getattr(value, "dtype", type(value).__name__))


def _as_float(inputs: torch.Tensor) -> torch.Tensor:
    """uint8 -> [0, 1]; other integers and float64 -> float32; float16/bfloat16 kept."""
    if inputs.dtype == torch.uint8:
        return inputs.to(torch.float32) / 255.0
    if not inputs.is_floating_point() or inputs.dtype == torch.float64:
        return inputs.to(torch.float32)
    return inputs
