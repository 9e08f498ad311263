"""Precomputed embeddings, labels, optional logits and ids, read in chunks of rows without
loading whole arrays: ``.npy`` memory-mapped, ``.npz`` members streamed, ``.pt`` memory-mapped,
``ids.txt`` streamed."""

from __future__ import annotations

import mmap
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from embscope.cli.checkpoint import check_readable_file, path_problem, torch_load
from embscope.cli.errors import UsageError, one_line
from embscope.cli.input_common import _check_dense, _check_path, _unreadable

EMBEDDING_FILES = ("embeddings", "labels", "logits", "ids")
# Rows per chunk of precomputed embeddings are chosen so that one chunk is about this many bytes.
CHUNK_BYTES = 32 * 2**20


@dataclass
class EmbeddingChunk:
    """Rows of precomputed embeddings ``[B, D]``, labels ``[B]``, logits and ids if present."""

    embeddings: np.ndarray | torch.Tensor
    labels: np.ndarray | torch.Tensor
    logits: np.ndarray | torch.Tensor | None = None
    ids: list[str] | None = None


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
