"""Tensor files: inputs and labels stored together in a ``.pt``, ``.npz`` or ``.npy`` file.

Layouts read:

- a dict (or ``.npz``) with one inputs key (``x``, ``inputs``, ``input``, ``images``, ``image``,
  ``imgs``, ``data``, ``features``, ``samples``) and one labels key (``y``, ``labels``,
  ``label``, ``targets``, ``target``), in any combination and any letter case; two candidates
  for either are ambiguous and refused, naming the keys found;
- a pair ``(inputs [N, ...], labels [N])``;
- a list of ``(input, label)`` pairs, stacked;
- with ``--trust-checkpoint`` (they are pickled objects): a ``TensorDataset`` of inputs and
  labels, or any dataset with ``len`` and indexing that yields ``(input, label)`` pairs.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embscope.cli.checkpoint import check_readable_file, torch_load
from embscope.cli.errors import UsageError, one_line
from embscope.cli.input_common import Batch, ModelInput, _as_labels, _check_dense, _unreadable

INPUT_KEYS = ("x", "inputs", "input", "images", "image", "imgs", "data", "features", "samples")
LABEL_KEYS = ("y", "labels", "label", "targets", "target")
NAMING = "inputs under x, inputs, images or data and labels under y, labels or targets"


class TensorFile:
    """Inputs and labels stored together in a ``.pt``, ``.npz`` or ``.npy`` file."""

    def __init__(self, path: Path, *, trust: bool = False) -> None:
        self.path = path
        self.expected = ModelInput()
        check_readable_file(path, "data")
        content = _read_tensor_container(path, trust=trust)
        x_key, y_key = _input_label_keys(path, content)
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

    def fit_model(self, expected: ModelInput) -> None:
        """Remember what the model takes, for the hint (a tensor file is read as it is)."""
        self.expected = expected

    @property
    def hint(self) -> str:
        """What to check when the model rejects the inputs: their shape, what the model takes."""
        shape = ", ".join(str(d) for d in self.inputs.shape[1:])
        takes = ""
        if self.expected.channels is not None:
            takes = f" and {self.expected.takes(self.expected.channels)}"
        return (
            f"the file's inputs are [{shape}] per sample{takes}; save them in the shape the "
            "model's forward takes (--grayscale, --rgb and --image-size apply to image folders)"
        )

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(self), batch_size):
            inputs = _as_float(self.inputs[start : start + batch_size])
            yield Batch(inputs, torch.from_numpy(self.labels[start : start + batch_size]))


def _input_label_keys(path: Path, content: Mapping[Any, Any]) -> tuple[Any, Any]:
    """The one inputs key and the one labels key of ``content`` (`UsageError` otherwise)."""
    inputs = [k for k in content if str(k).lower() in INPUT_KEYS]
    labels = [k for k in content if str(k).lower() in LABEL_KEYS]
    if len(inputs) == 1 and len(labels) == 1:
        return inputs[0], labels[0]
    if not inputs and any(str(k).lower() == "embeddings" for k in content):
        raise UsageError(
            path,
            "holds precomputed embeddings ('embeddings'), not model inputs",
            f"run diagnose {path} without a checkpoint",
        )
    several = [
        (what, keys) for what, keys in (("inputs", inputs), ("labels", labels)) if len(keys) > 1
    ]
    if several:
        what, keys = several[0]
        names = " and ".join(repr(k) for k in keys)
        problem = f"several keys that could be the {what} ({names})"
        fix = f"keep one of them, or store {NAMING}"
    else:
        missing = " and ".join(
            w for w, keys in (("inputs", inputs), ("labels", labels)) if not keys
        )
        problem = f"no {missing}"
        fix = f"store {NAMING}"
    raise UsageError(path, f"holds {_keys(content)}: {problem}", fix)


def _read_tensor_container(path: Path, *, trust: bool) -> Mapping[str, Any]:
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        content = torch_load(path, trust=trust, role="tensor file", mmap=True)
        pairs = _from_sequence(path, content)
        if pairs is not None:
            return pairs
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


def _from_sequence(path: Path, content: Any) -> dict[str, Any] | None:
    """``{"x": inputs, "y": labels}`` of a pair of arrays, a list of (input, label) pairs or a
    dataset (a ``TensorDataset``, or anything with ``len`` and indexing yielding pairs); None
    for a dict or anything else."""
    from torch.utils.data import TensorDataset

    if isinstance(content, TensorDataset):
        if len(content.tensors) != 2:
            raise UsageError(
                path,
                f"holds a TensorDataset of {len(content.tensors)} tensors",
                "save one of inputs and labels: TensorDataset(inputs, labels)",
            )
        return {"x": content.tensors[0], "y": content.tensors[1]}
    if isinstance(content, (tuple, list)):
        if len(content) == 2 and all(_is_array(c) and c.ndim >= 1 for c in content):
            if len(content[0]) == len(content[1]):
                return {"x": content[0], "y": content[1]}
        if content and all(isinstance(c, (tuple, list)) for c in content):
            return _stack_pairs(path, content)
        return None
    if isinstance(content, Mapping) or isinstance(content, (torch.Tensor, np.ndarray)):
        return None
    if hasattr(content, "__len__") and hasattr(content, "__getitem__"):  # a map-style dataset
        try:
            items = [content[i] for i in range(len(content))]
        except Exception as error:
            raise UsageError(
                path,
                f"holds a {type(content).__name__} whose items cannot be read "
                f"({one_line(f'{type(error).__name__}: {error}', 120)})",
                "save a dict: torch.save({'x': inputs, 'y': labels}, path)",
            ) from error
        return _stack_pairs(path, items, what=f"a {type(content).__name__}")
    return None


def _stack_pairs(path: Path, items: Any, what: str = "a list") -> dict[str, Any]:
    """Stack ``(input, label)`` pairs into ``{"x": [N, ...], "y": [N]}``."""
    if not items:
        raise UsageError(path, f"holds {what} of no samples", "save the data set's samples")
    inputs, labels = [], []
    for index, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            size = f" of {len(item)} items" if isinstance(item, (tuple, list)) else ""
            raise UsageError(
                path,
                f"holds {what} whose item {index} is a {type(item).__name__}{size}, "
                "not an (input, label) pair",
                "save a dict: torch.save({'x': inputs, 'y': labels}, path)",
            )
        x, y = item
        try:
            inputs.append(x if isinstance(x, torch.Tensor) else torch.as_tensor(x))
        except (TypeError, ValueError, RuntimeError) as error:
            raise UsageError(
                path,
                f"holds {what} whose input {index} is a {type(x).__name__}, not numbers",
                "store tensors or numeric arrays",
            ) from error
        labels.append(_plain(y))
    shapes = {tuple(x.shape) for x in inputs}
    if len(shapes) > 1:
        first = tuple(inputs[0].shape)
        index = next(i for i, x in enumerate(inputs) if tuple(x.shape) != first)
        raise UsageError(
            path,
            f"holds {what} of inputs of different shapes (item 0 {list(first)}, "
            f"item {index} {list(inputs[index].shape)})",
            "resize them to one shape before saving",
        )
    try:
        label_array = np.asarray(labels)
    except (TypeError, ValueError) as error:
        raise UsageError(
            path, f"holds {what} of labels that are not numbers", "store class indices"
        ) from error
    return {"x": torch.stack(inputs), "y": label_array}


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


def _is_array(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))


def _plain(label: Any) -> Any:
    """A one-element tensor or array label as its Python number."""
    if _is_array(label) and int(np.prod(label.shape)) == 1:
        return label.reshape(()).item()
    return label


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
