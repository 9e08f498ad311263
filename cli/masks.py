"""Segmentation data: images with per-pixel masks, for ``diagnose CHECKPOINT DATA``.

Two layouts:

- a folder holding ``images/`` and ``masks/``: each image ``images/<name>.<ext>`` (any
  extension Pillow reads, sub-folders allowed) has a mask ``masks/<name>.png`` (or any image
  extension) at the same relative path; masks are 8-bit index images (PNG mode ``P`` or
  ``L``; 16-bit grey accepted) whose values are class indices, ``--ignore-index`` (default
  255) marking unlabelled pixels. Images are decoded as for image folders (``--image-size``,
  ``--grayscale``, ``--mean``, ``--std``); masks are resized with nearest neighbours;
- a tensor file (``.pt`` read with ``weights_only``, or ``.npz``) holding inputs (under the
  keys tensor files use: ``x``, ``inputs``, ``images``...) and ``masks`` ``[N, H, W]``.

The model's output must be dense logits ``[B, C, H, W]``
(`embscope.diagnostics.segmentation_model`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embscope.cli.errors import UsageError
from embscope.cli.images import IMAGE_EXTENSIONS, ImageOptions, normalise, reading
from embscope.cli.input_common import Batch

MASK_KEYS = ("masks", "mask")
DEFAULT_IGNORE = 255


def open_dense(
    path: Path, *, image: ImageOptions, label_column: str | None, trust: bool
) -> Any | None:
    """The segmentation reader for ``path``, or None when it holds no masks."""
    if path.is_dir():
        if not ((path / "images").is_dir() and (path / "masks").is_dir()):
            return None
        reader: Any = MaskFolder(path, image)
    elif path.suffix.lower() in (".pt", ".pth", ".npz"):
        from embscope.cli.tensor_files import _read_tensor_container

        content = _read_tensor_container(path, trust=trust)
        if not hasattr(content, "keys") or not any(
            str(k).lower() in MASK_KEYS for k in content.keys()
        ):
            return None
        if image.given:
            raise UsageError(image.given[0], "applies only to image folders", "remove it")
        reader = MaskTensorFile(path, content)
    else:
        return None
    if label_column is not None:
        raise UsageError("--label-column", "applies only to CSV/Parquet tables", "remove it")
    return reader


def dense_options(args: argparse.Namespace, data: Any) -> dict[str, Any]:
    """``{"ignore_index": ...}`` for segmentation data; ``--ignore-index`` elsewhere is an
    error."""
    value = getattr(args, "ignore_index", None)
    if not getattr(data, "dense", False):
        if value is not None:
            raise UsageError(
                "--ignore-index",
                "applies only to segmentation data (images/ with masks/, or a file with masks)",
                "remove it",
            )
        return {}
    return {"ignore_index": DEFAULT_IGNORE if value is None else value}


class MaskFolder:
    """``images/`` and ``masks/`` with matching names."""

    dense = True
    hint = "check that --image-size, --grayscale, --mean and --std match the training transforms"

    def __init__(self, root: Path, options: ImageOptions) -> None:
        self.path = root
        self.options = options
        images = _image_files(root / "images")
        masks = {
            p.relative_to(root / "masks").with_suffix(""): p for p in _image_files(root / "masks")
        }
        if not images:
            raise UsageError(root / "images", "holds no images", "put the images in DATA/images/")
        self.files: list[tuple[Path, Path]] = []
        missing = []
        for file in images:
            stem = file.relative_to(root / "images").with_suffix("")
            if stem in masks:
                self.files.append((file, masks.pop(stem)))
            else:
                missing.append(file)
        if missing:
            raise UsageError(
                missing[0],
                f"has no mask ({len(missing)} of {len(images)} images lack one)",
                f"add masks/{missing[0].relative_to(root / 'images').with_suffix('.png')} "
                "or remove the image",
            )
        if masks:
            extra = next(iter(masks.values()))
            raise UsageError(
                extra,
                f"is a mask without an image ({len(masks)} such masks)",
                "add its image under images/ or remove the mask",
            )
        self._size: tuple[int, int] | None = options.size
        self._grey = options.grayscale

    def fit_model(self, expected: Any) -> None:
        """Read one channel for a model whose first layer takes one (unless --rgb chose)."""
        if not (self.options.grayscale or getattr(self.options, "rgb", False)):
            self._grey = getattr(expected, "channels", None) == 1

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(self.files), batch_size):
            pairs = self.files[start : start + batch_size]
            images, masks = [], []
            for image_file, mask_file in pairs:
                array = _read_image(image_file, self.options, self._grey)
                mask = _read_mask(mask_file, self.options.size)
                if mask.shape != array.shape[1:]:
                    raise UsageError(
                        mask_file,
                        f"is {mask.shape[1]}x{mask.shape[0]} pixels but its image is "
                        f"{array.shape[2]}x{array.shape[1]}",
                        "store masks of the image's size (or pass --image-size to resize both)",
                    )
                if self._size is None:
                    self._size = mask.shape
                elif mask.shape != self._size:
                    raise UsageError(
                        image_file,
                        f"is {mask.shape[1]}x{mask.shape[0]} pixels, the first image "
                        f"{self._size[1]}x{self._size[0]}",
                        "pass --image-size to resize every image and mask to one size",
                    )
                images.append(array)
                masks.append(mask)
            inputs = torch.from_numpy(normalise(np.stack(images), self.options))
            labels = torch.from_numpy(np.stack(masks).astype(np.int64))
            yield Batch(inputs, labels, [str(image) for image, _ in pairs])


class MaskTensorFile:
    """Inputs ``[N, ...]`` and ``masks`` ``[N, H, W]`` in one tensor file."""

    dense = True
    hint = "check that the inputs are scaled as in training"

    def __init__(self, path: Path, content: Any) -> None:
        from embscope.cli.tensor_files import INPUT_KEYS

        self.path = path
        keys = {str(k).lower(): k for k in content.keys()}
        x_key = next((keys[k] for k in INPUT_KEYS if k in keys), None)
        m_key = next(keys[k] for k in MASK_KEYS if k in keys)
        if x_key is None:
            raise UsageError(
                path,
                f"holds {m_key!r} but no inputs (keys: {', '.join(map(str, keys.values()))})",
                "store the images under x, inputs or images",
            )
        self.inputs = _tensor(content[x_key], path, x_key)
        self.labels = _tensor(content[m_key], path, m_key)
        if self.inputs.is_floating_point() is False and self.inputs.dtype == torch.uint8:
            self.inputs = self.inputs.float() / 255.0
        if self.labels.is_floating_point():
            if not bool((self.labels == self.labels.round()).all()):
                raise UsageError(path, f"{m_key!r} holds non-integer values", "store class indices")
        if self.labels.ndim < 2 or len(self.labels) != len(self.inputs):
            raise UsageError(
                path,
                f"{m_key!r} has shape {list(self.labels.shape)} for {len(self.inputs)} inputs",
                "store one mask [H, W] per input",
            )
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(self.inputs), batch_size):
            stop = start + batch_size
            ids = [f"{self.path.name}[{i}]" for i in range(start, min(stop, len(self.inputs)))]
            yield Batch(self.inputs[start:stop], self.labels[start:stop], ids)


def _tensor(value: Any, path: Path, key: str) -> torch.Tensor:
    try:
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as error:
        raise UsageError(path, f"{key!r} is not a numeric array", "store tensors") from error
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t


def _image_files(folder: Path) -> list[Path]:
    if not os.access(folder, os.R_OK | os.X_OK):
        raise UsageError(
            folder, "is not readable (a folder this user cannot list)", "check its permissions"
        )
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _read_image(file: Path, options: ImageOptions, grey: bool) -> np.ndarray:
    from PIL import Image

    with reading(file, "an image"), Image.open(file) as image:
        image = image.convert("L" if grey else "RGB")
        if options.size is not None:
            height, width = options.size
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
    return np.ascontiguousarray(
        array.reshape(array.shape[0], array.shape[1], -1).transpose(2, 0, 1)
    )


def _read_mask(file: Path, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    with reading(file, "a mask"):
        with Image.open(file) as mask:
            if mask.mode not in ("P", "L", "1", "I;16", "I;16L", "I;16B", "I"):
                raise UsageError(
                    file,
                    f"is a {mask.mode} image; masks are single-channel index images",
                    "save each mask as an 8-bit index PNG (mode P or L) of class indices",
                )
            if size is not None:
                height, width = size
                mask = mask.resize((width, height), Image.Resampling.NEAREST)
            return np.asarray(mask).astype(np.int64)
