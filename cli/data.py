"""Read the user's data: model inputs with labels, or precomputed embeddings.

Model inputs (``diagnose CHECKPOINT DATA``):

- a folder of class sub-folders of images, classes sorted by name -> label 0, 1, ...; images
  decoded by Pillow to float32 in [0, 1], shape ``[C, H, W]`` with the channels the model takes
  (`embscope.cli.images`), optionally resized and normalised with ``(x - mean) / std``; sample
  ids are the file paths;
- a tensor file: ``.pt`` (read with ``weights_only``), ``.npz`` or ``.npy`` holding inputs and
  labels under one of the usual pairs of names (``x``/``images``/``data``... and
  ``y``/``labels``/``targets``...), a pair, a list of (input, label) pairs, or with
  ``--trust-checkpoint`` a ``TensorDataset`` (`embscope.cli.tensor_files`; integer inputs are
  scaled to [0, 1] when uint8);
- a CSV or Parquet table: ``--label-column`` names the labels, every other numeric column is a
  feature.

Precomputed embeddings (``diagnose EMBEDDINGS``): a ``.npz``/``.pt`` with ``embeddings``,
``labels``, optional ``logits`` and ``ids``, or a folder of ``embeddings.npy``, ``labels.npy``,
optional ``logits.npy`` and ``ids.npy``/``ids.txt``. They are read in chunks of rows (``.npy``
memory-mapped, ``.npz`` members streamed, ``.pt`` memory-mapped), so files larger than memory
work and no float64 copy of the whole array is ever made.

The readers live by format: `embscope.cli.images`, `embscope.cli.tensor_files`,
`embscope.cli.tables` and `embscope.cli.embedding_files`; `embscope.cli.input_common` holds
what they share. Their names are importable from here as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from embscope.cli.embedding_files import EmbeddingChunk, EmbeddingFile
from embscope.cli.errors import UsageError
from embscope.cli.images import ImageFolder, ImageOptions
from embscope.cli.input_common import Batch, _check_path
from embscope.cli.masks import open_dense
from embscope.cli.tables import Table
from embscope.cli.tensor_files import TensorFile

TENSOR_SUFFIXES = (".pt", ".pth", ".npz", ".npy")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


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
    dense = open_dense(path, image=image, label_column=label_column, trust=trust)
    if dense is not None:  # images with masks (cli/masks.py)
        return dense
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
