"""Image folders: class sub-folders of images, decoded by Pillow into float32 ``[C, H, W]``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embscope.cli.errors import UsageError, one_line
from embscope.cli.input_common import Batch

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
