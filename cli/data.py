"""Read the user's data: model inputs with labels, or precomputed embeddings.

Model inputs (``diagnose CHECKPOINT DATA``):

- a folder of class sub-folders of images, classes sorted by name -> label 0, 1, ...; images
  decoded by Pillow to float32 in [0, 1], shape ``[C, H, W]``, optionally resized, converted to
  one channel and normalised with ``(x - mean) / std``; sample ids are the file paths;
- a tensor file: ``.pt`` (read with ``weights_only``), ``.npz`` or ``.npy`` holding inputs and
  labels under ``x``/``y``, ``inputs``/``labels`` or ``images``/``targets`` (integer inputs are
  scaled to [0, 1] when uint8);
- a CSV or Parquet table: ``--label-column`` names the labels, every other numeric column is a
  feature.

Precomputed embeddings (``diagnose EMBEDDINGS``): a ``.npz``/``.pt`` with ``embeddings``,
``labels``, optional ``logits`` and ``ids``, or a folder of ``embeddings.npy``, ``labels.npy``,
optional ``logits.npy`` and ``ids.npy``/``ids.txt``. They are read in chunks of rows (``.npy``
memory-mapped, ``.npz`` members streamed, ``.pt`` memory-mapped), so files larger than memory
work and no float64 copy of the whole array is ever made.
"""

from __future__ import annotations

import mmap
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from embscope.cli.checkpoint import check_readable_file, path_problem, torch_load
from embscope.cli.errors import UsageError, one_line

IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
TENSOR_SUFFIXES = (".pt", ".pth", ".npz", ".npy")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
INPUT_LABEL_KEYS = (("x", "y"), ("inputs", "labels"), ("images", "targets"))
EMBEDDING_FILES = ("embeddings", "labels", "logits", "ids")
# Rows per chunk of precomputed embeddings are chosen so that one chunk is about this many bytes.
CHUNK_BYTES = 32 * 2**20


@dataclass(frozen=True)
class ImageOptions:
    """How images become tensors: ``--image-size``, ``--grayscale``, ``--mean``, ``--std``."""

    size: tuple[int, int] | None = None  # (height, width)
    grayscale: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def given(self) -> list[str]:
        """The options the user set, by flag name."""
        flags = {
            "--image-size": self.size is not None,
            "--grayscale": self.grayscale,
            "--mean": self.mean is not None,
            "--std": self.std is not None,
        }
        return [flag for flag, set_ in flags.items() if set_]


@dataclass
class Batch:
    """Model inputs ``[B, ...]``, integer labels ``[B]`` and optional sample ids."""

    inputs: torch.Tensor
    labels: torch.Tensor
    ids: list[str] | None = None


@dataclass
class EmbeddingChunk:
    """Rows of precomputed embeddings ``[B, D]``, labels ``[B]``, logits and ids if present."""

    embeddings: np.ndarray | torch.Tensor
    labels: np.ndarray | torch.Tensor
    logits: np.ndarray | torch.Tensor | None = None
    ids: list[str] | None = None


class InputData(Protocol):
    """Labelled model inputs that can be iterated in batches."""

    path: Path
    hint: str  # what to check when the model rejects these inputs

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[Batch]: ...


def open_inputs(
    path: str | os.PathLike[str],
    *,
    image: ImageOptions | None = None,
    label_column: str | None = None,
    trust: bool = False,
) -> InputData:
    """Open the model inputs at ``path`` (image folder, tensor file or table)."""
    path = Path(path)
    image = image or ImageOptions()
    _check_path(path, "data file or folder")
    if path.is_dir():
        if (path / "embeddings.npy").exists():
            raise UsageError(
                path,
                "holds precomputed embeddings (embeddings.npy), not model inputs",
                f"run diagnose {path} without a checkpoint",
            )
        _reject_options(label_column=label_column, allowed="tables")
        return ImageFolder(path, image)
    suffix = path.suffix.lower()
    if suffix in TENSOR_SUFFIXES:
        _reject_options(image=image, label_column=label_column, allowed="tensor files")
        return TensorFile(path, trust=trust)
    if suffix in TABLE_SUFFIXES:
        _reject_options(image=image, allowed="tables")
        return Table(path, label_column)
    raise UsageError(
        path,
        f"has an unknown data format ({suffix or 'no suffix'})",
        "pass a folder of class folders of images, a .pt/.npz/.npy tensor file or a .csv/.parquet table",
    )


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


def _reject_options(
    *, image: ImageOptions | None = None, label_column: str | None = None, allowed: str
) -> None:
    """Options that do not apply to this kind of data are errors, not silently ignored."""
    if image is not None and image.given:
        flag = image.given[0]
        raise UsageError(
            flag,
            f"applies only to image folders, not to {allowed}",
            f"remove {flag}, or prepare the data beforehand",
        )
    if label_column is not None:
        raise UsageError(
            "--label-column", f"applies only to CSV/Parquet tables, not to {allowed}", "remove it"
        )


# --------------------------------------------------------------------------- image folders


class ImageFolder:
    """A folder of class sub-folders of images."""

    hint = "check that --image-size, --grayscale, --mean and --std match the training transforms"

    def __init__(self, root: Path, options: ImageOptions) -> None:
        self.path = root
        self.options = options
        self.classes = sorted(
            d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if not self.classes:
            loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
            what = (
                "holds images but no class sub-folders" if loose else "holds no class sub-folders"
            )
            raise UsageError(
                root, what, "put each class's images in its own folder: DATA/<class>/<image>"
            )
        self.files: list[Path] = []
        labels: list[int] = []
        for index, name in enumerate(self.classes):
            folder = root / name
            if not os.access(folder, os.R_OK | os.X_OK):
                raise UsageError(
                    folder,
                    "is not readable (a folder this user cannot list)",
                    "check its permissions",
                )
            files = sorted(
                p
                for p in folder.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(folder).parts)
            )
            if not files:
                raise UsageError(
                    folder,
                    f"class folder holds no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...)",
                    "add its images or remove the folder",
                )
            self.files += files
            labels += [index] * len(files)
        self.labels = np.asarray(labels, dtype=np.int64)
        # (height, width) every image must have, and the file that set it (None: --image-size).
        self._size: tuple[int, int] | None = options.size
        self._size_from: Path | None = None

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        workers = max(1, min(8, os.cpu_count() or 1))
        starts = range(0, len(self.files), batch_size)
        with ThreadPoolExecutor(max_workers=workers) as pool:

            def submit(start: int) -> list:
                return [pool.submit(self._read, f) for f in self.files[start : start + batch_size]]

            pending = submit(0) if len(starts) else []
            for start in starts:
                files = self.files[start : start + batch_size]
                arrays = [future.result() for future in pending]
                # decode the next batch while the caller runs the model on this one
                pending = submit(start + batch_size) if start + batch_size < len(self.files) else []
                for file, array in zip(files, arrays, strict=True):
                    self._check_size(file, array)
                inputs = torch.from_numpy(self._normalise(np.stack(arrays)))
                labels = torch.from_numpy(self.labels[start : start + batch_size])
                yield Batch(inputs, labels, [str(f) for f in files])

    def _read(self, file: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        options = self.options
        try:
            with Image.open(file) as image:
                if image.mode in ("I;16", "I;16L", "I;16B", "I"):  # 16-bit grey
                    scale = 65535.0
                    image = image.convert("I")
                else:
                    scale = 255.0
                    image = image.convert("L" if options.grayscale else "RGB")
                if options.size is not None:
                    height, width = options.size
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.float32) / scale
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
            raise UsageError(
                file,
                f"cannot be read as an image ({one_line(str(error), 120)})",
                "replace or remove the file",
            ) from error
        array = array.reshape(array.shape[0], array.shape[1], -1).transpose(2, 0, 1)
        if not options.grayscale and array.shape[0] == 1:  # 16-bit grey read as RGB
            array = np.repeat(array, 3, axis=0)
        return np.ascontiguousarray(array)

    def _check_size(self, file: Path, array: np.ndarray) -> None:
        size = (array.shape[1], array.shape[2])
        if self._size is None:
            self._size, self._size_from = size, file
        elif size != self._size:
            first = self._size_from
            than = f" but {first} is {self._size[1]}x{self._size[0]}" if first else ""
            raise UsageError(
                file,
                f"is {size[1]}x{size[0]} pixels{than}",
                "pass --image-size to resize every image to the size the model expects",
            )

    def _normalise(self, batch: np.ndarray) -> np.ndarray:
        channels = batch.shape[1]
        for flag, values in (("--mean", self.options.mean), ("--std", self.options.std)):
            if values is not None and len(values) not in (1, channels):
                raise UsageError(
                    flag,
                    f"has {len(values)} values but the images have {channels} channels",
                    f"give 1 or {channels} comma-separated values",
                )
        if self.options.mean is not None:
            batch -= np.asarray(self.options.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        if self.options.std is not None:
            batch /= np.asarray(self.options.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return batch


# --------------------------------------------------------------------------- tensor files


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


def _unreadable(path: Path, error: BaseException) -> UsageError:
    return UsageError(
        path,
        f"cannot be read ({one_line(f'{type(error).__name__}: {error}', 120)})",
        "pass a file written by torch.save, np.save or np.savez",
    )


def _keys(content: Mapping[str, Any]) -> str:
    keys = [repr(k) for k in content]
    return f"keys [{', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}]"


def _check_dense(value: Any, where: str) -> None:
    """Sparse (and other non-strided) tensors cannot be sliced into rows: refuse them."""
    if isinstance(value, torch.Tensor) and value.layout != torch.strided:
        layout = str(value.layout).removeprefix("torch.")
        raise UsageError(where, f"is a {layout} tensor, not a dense one", "store tensor.to_dense()")


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


# --------------------------------------------------------------------------- tables


class Table:
    """A CSV/Parquet table: ``label_column`` holds labels, other numeric columns are features."""

    hint = "check that the table's numeric columns are the features the model expects, in order"

    def __init__(self, path: Path, label_column: str | None) -> None:
        import pandas as pd

        self.path = path
        check_readable_file(path, "table")
        if label_column is None:
            raise UsageError(
                "--label-column",
                f"is required for a table ({path})",
                "name the column that holds the labels",
            )
        try:
            if path.suffix.lower() in (".parquet", ".pq"):
                frame = pd.read_parquet(path)
            else:
                frame = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
        except Exception as error:  # pandas/pyarrow raise many types for malformed files
            raise _unreadable(path, error) from error
        if label_column not in frame.columns:
            raise UsageError(
                "--label-column",
                f"{label_column!r} is not a column of {path}",
                f"columns are {[str(c) for c in frame.columns[:8]]}",
            )
        labels = frame[label_column]
        if labels.isna().any():
            raise UsageError(
                path, f"column {label_column!r} has empty labels", "fill or drop those rows"
            )
        if labels.dtype.kind in "biuf":
            self.labels = _as_labels(labels.to_numpy(), f"{path} [{label_column!r}]")
            self.classes = None
        else:  # names: sorted, then indexed, as for image folders
            self.classes = sorted(labels.astype(str).unique())
            index = {name: i for i, name in enumerate(self.classes)}
            self.labels = np.array(labels.astype(str).map(index), dtype=np.int64)
        features = frame.drop(columns=[label_column]).select_dtypes(include="number")
        if features.shape[1] == 0:
            raise UsageError(
                path, "has no numeric feature columns besides the labels", "add the features"
            )
        empty = features.columns[features.isna().any()].tolist()
        if empty:
            raise UsageError(
                path, f"feature columns {empty[:3]} have empty cells", "fill or drop those rows"
            )
        self.feature_names = [str(c) for c in features.columns]
        self.inputs = torch.from_numpy(features.to_numpy(dtype=np.float32))

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(self), batch_size):
            yield Batch(
                self.inputs[start : start + batch_size],
                torch.from_numpy(self.labels[start : start + batch_size]),
            )


# --------------------------------------------------------------------------- precomputed embeddings


class _Column(Protocol):
    name: str  # how the user knows this array: a file, or a file and a key
    shape: tuple[int, ...]

    def chunks(self, rows: int) -> Iterator[Any]: ...


class _SlicedColumn:
    """An array that supports slicing without loading it: np.memmap or mmap'ed tensor."""

    def __init__(self, name: str, array: Any) -> None:
        self.name = name
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype

    def chunks(self, rows: int) -> Iterator[Any]:
        for start in range(0, self.shape[0], rows):
            part = self.array[start : start + rows]
            # A private copy of the chunk only, in the stored dtype (memmap slices are read-only).
            block = part.clone() if isinstance(part, torch.Tensor) else np.array(part)
            self._release(start, start + len(block))
            yield block

    def _release(self, start: int, stop: int) -> None:
        """Drop the pages of rows [start, stop) from this process's memory once copied, so a
        streamed file never becomes resident as a whole (peak RSS stays one chunk)."""
        mm = getattr(self.array, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise") or not self.array.flags.c_contiguous:
            return
        row_bytes = self.array.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        first = self.array.offset % mmap.ALLOCATIONGRANULARITY + start * row_bytes
        last = first + (stop - start) * row_bytes
        first -= first % mmap.PAGESIZE
        try:
            mm.madvise(mmap.MADV_DONTNEED, first, last - first)
        except (OSError, ValueError):  # advice only: never fail a read over it
            pass


class _ZipNpyColumn:
    """A ``.npy`` member of a ``.npz``, streamed row block by row block (compressed or not)."""

    def __init__(self, path: Path, member: str) -> None:
        self.path = path
        self.member = member
        self.name = f"{path} [{member.removesuffix('.npy')!r}]"
        with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
            self.shape, self.dtype, fortran = _npy_header(stream, self.name)
        if fortran and len(self.shape) > 1:
            raise UsageError(
                self.name, "is stored in Fortran order", "save it with np.ascontiguousarray"
            )

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        row_shape = self.shape[1:]
        with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as stream:
            _npy_header(stream, self.name)
            for start in range(0, self.shape[0], rows):
                block = np.empty((min(rows, self.shape[0] - start), *row_shape), dtype=self.dtype)
                view = memoryview(block).cast("B")
                filled = 0
                while filled < len(view):
                    got = stream.readinto(view[filled:])
                    if not got:
                        raise UsageError(self.name, "is truncated", "write the file again")
                    filled += got
                yield block


class _TextIdsColumn:
    """``ids.txt``: one id per line, streamed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        fix = "write one id per line as UTF-8 text, or save the ids with np.save as ids.npy"
        count = 0
        try:
            with open(path, "rb") as handle:
                for count, line in enumerate(handle, start=1):
                    if b"\x00" in line:
                        raise UsageError(path, f"holds NUL bytes (line {count}): not text", fix)
                    line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise UsageError(path, f"is not UTF-8 text (line {count})", fix) from error
        except PermissionError as error:
            raise UsageError(path, "is not readable", "check its permissions") from error
        self.shape = (count,)
        self.dtype = np.dtype(str)

    def chunks(self, rows: int) -> Iterator[list[str]]:
        with open(self.path, "rb") as handle:  # lines end at \n only, as counted above
            block: list[str] = []
            for line in handle:
                block.append(line.decode("utf-8").rstrip("\r\n"))
                if len(block) == rows:
                    yield block
                    block = []
            if block:
                yield block


class _ListColumn:
    def __init__(self, name: str, values: Sequence[Any]) -> None:
        self.name = name
        self.values = values
        self.shape = (len(values),)
        self.dtype = np.dtype(str)

    def chunks(self, rows: int) -> Iterator[list[str]]:
        for start in range(0, len(self.values), rows):
            yield [str(v) for v in self.values[start : start + rows]]


def _npy_header(stream: Any, name: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    try:
        version = np.lib.format.read_magic(stream)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(stream)
    except ValueError as error:
        raise UsageError(
            name, f"is not a .npy array ({one_line(str(error), 100)})", "save it with np.save"
        ) from error
    if dtype.hasobject:
        raise UsageError(
            name,
            "holds pickled Python objects",
            "store plain numeric (or fixed-width string) arrays",
        )
    return tuple(shape), dtype, fortran


class EmbeddingFile:
    """Precomputed embeddings, labels, optional logits and ids, read in chunks of rows."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path = Path(path)
        _check_path(path, "embeddings file or folder")
        columns = self._open_folder(path) if path.is_dir() else self._open_file(path)
        for required in ("embeddings", "labels"):
            if required not in columns:
                raise UsageError(
                    path,
                    f"holds no {required!r}",
                    "store 'embeddings' [N, D] and 'labels' [N] (and optional 'logits'); "
                    "to diagnose a checkpoint, pass the data too: diagnose CHECKPOINT DATA",
                )
        self.columns = columns
        self._validate()

    def _open_folder(self, path: Path) -> dict[str, _Column]:
        for name in (*(f"{key}.npy" for key in EMBEDDING_FILES), "ids.txt"):
            problem = path_problem(path / name)
            if problem is not None:
                raise UsageError(path / name, problem, "check the path and its permissions")
        if not (path / "embeddings.npy").exists():
            fix = (
                "it looks like an image folder: pass the checkpoint too, diagnose CHECKPOINT DATA"
                if any(p.is_dir() for p in path.iterdir())
                else "write embeddings.npy and labels.npy (and optional logits.npy) into it"
            )
            raise UsageError(path, "holds no embeddings.npy", fix)
        columns: dict[str, _Column] = {}
        for key in EMBEDDING_FILES:
            file = path / f"{key}.npy"
            if file.exists():
                check_readable_file(file, "array")
                try:
                    array = np.load(file, mmap_mode="r", allow_pickle=False)
                except ValueError as error:
                    raise UsageError(
                        file,
                        f"cannot be memory-mapped ({one_line(str(error), 100)})",
                        "save a numeric array with np.save",
                    ) from error
                columns[key] = _SlicedColumn(str(file), array)
        if "ids" not in columns and (path / "ids.txt").exists():
            columns["ids"] = _TextIdsColumn(path / "ids.txt")
        return columns

    def _open_file(self, path: Path) -> dict[str, _Column]:
        check_readable_file(path, "embeddings")
        suffix = path.suffix.lower()
        if suffix == ".npz":
            try:
                with zipfile.ZipFile(path) as archive:
                    members = archive.namelist()
            except zipfile.BadZipFile as error:
                raise _unreadable(path, error) from error
            return {
                key: _ZipNpyColumn(path, f"{key}.npy")
                for key in EMBEDDING_FILES
                if f"{key}.npy" in members
            }
        if suffix in (".pt", ".pth"):
            content = torch_load(path, trust=False, role="embeddings file", mmap=True)
            if not isinstance(content, Mapping):
                raise UsageError(
                    path,
                    f"holds a {type(content).__name__}, not a dict with 'embeddings' and 'labels'",
                    "save torch.save({'embeddings': E, 'labels': y}, path)",
                )
            if "embeddings" not in content and all(
                isinstance(v, torch.Tensor) for v in content.values()
            ):
                raise UsageError(
                    path,
                    "holds a model's weights (a state dict), not embeddings",
                    "to diagnose a checkpoint, pass the data too: diagnose CHECKPOINT DATA",
                )
            columns: dict[str, _Column] = {}
            for key in EMBEDDING_FILES:
                if key not in content:
                    continue
                value, name = content[key], f"{path} [{key!r}]"
                if key == "ids" and isinstance(value, (list, tuple)):
                    columns[key] = _ListColumn(name, value)
                elif isinstance(value, (torch.Tensor, np.ndarray)):
                    _check_dense(value, name)
                    columns[key] = _SlicedColumn(name, value)
                else:
                    raise UsageError(
                        name, f"is a {type(value).__name__}, expected a tensor", "store a tensor"
                    )
            return columns
        raise UsageError(
            path,
            f"has an unknown format for precomputed embeddings ({suffix or 'no suffix'})",
            "pass a .npz or .pt file, or a folder of embeddings.npy and labels.npy; "
            "to diagnose a checkpoint, pass the data too: diagnose CHECKPOINT DATA",
        )

    def _validate(self) -> None:
        embeddings = self.columns["embeddings"]
        if len(embeddings.shape) != 2 or min(embeddings.shape) == 0:
            raise UsageError(
                embeddings.name,
                f"has shape {list(embeddings.shape)}; expected [N, D] with N >= 1 and D >= 1",
                "store one row of at least one number per sample",
            )
        if not _is_float(embeddings.dtype):
            raise UsageError(
                embeddings.name,
                f"has dtype {embeddings.dtype}; expected floats",
                "store float embeddings",
            )
        count = embeddings.shape[0]
        labels = self.columns["labels"]
        if len(labels.shape) != 1:
            raise UsageError(
                labels.name,
                f"has shape {list(labels.shape)}; expected [N]",
                "store one label per row",
            )
        for key in ("labels", "logits", "ids"):
            column = self.columns.get(key)
            if column is not None and column.shape[0] != count:
                raise UsageError(
                    column.name,
                    f"holds {column.shape[0]} rows but {embeddings.name} holds {count} embeddings",
                    f"write one {key[:-1]} per embedding row, in the same order",
                )
        logits = self.columns.get("logits")
        if logits is not None and (len(logits.shape) not in (1, 2) or 0 in logits.shape[1:]):
            raise UsageError(
                logits.name,
                f"has shape {list(logits.shape)}; expected [N] or [N, C] with C >= 1",
                "store one logit row per sample, or leave the logits out",
            )

    def __len__(self) -> int:
        return self.columns["embeddings"].shape[0]

    def chunk_rows(self, batch_size: int | None = None) -> int:
        """Rows per chunk: ``batch_size`` if given, else about `CHUNK_BYTES` of embeddings."""
        if batch_size:
            return batch_size
        embeddings = self.columns["embeddings"]
        row_bytes = embeddings.shape[1] * np.dtype(_numpy_dtype(embeddings.dtype)).itemsize
        return max(1, CHUNK_BYTES // max(1, row_bytes))

    def chunks(self, rows: int) -> Iterator[EmbeddingChunk]:
        """Aligned chunks of ``rows`` rows from every column."""
        keys = [k for k in EMBEDDING_FILES if k in self.columns]
        streams = [self.columns[k].chunks(rows) for k in keys]
        for parts in zip(*streams, strict=True):
            values = dict(zip(keys, parts, strict=True))
            ids = values.get("ids")
            if ids is not None and not isinstance(ids, list):
                ids = [str(v) for v in ids]
            yield EmbeddingChunk(values["embeddings"], values["labels"], values.get("logits"), ids)


def _numpy_dtype(dtype: Any) -> Any:
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).numpy().dtype if dtype != torch.bfloat16 else np.float16
    return dtype


def _is_float(dtype: Any) -> bool:
    if isinstance(dtype, torch.dtype):
        return dtype.is_floating_point
    return np.dtype(dtype).kind == "f"


__all__ = [
    "Batch",
    "EmbeddingChunk",
    "EmbeddingFile",
    "ImageFolder",
    "ImageOptions",
    "InputData",
    "Table",
    "TensorFile",
    "open_inputs",
]
