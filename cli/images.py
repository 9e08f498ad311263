"""Image folders: class sub-folders of images, decoded by Pillow into float32 ``[C, H, W]``.

Channels: ``--grayscale`` reads one, ``--rgb`` three. Without either, the model decides once
`fit_to_model` has told the folder what it takes (`embscope.cli.input_common.model_input`): a
model whose first convolution takes one channel (or whose first Linear layer takes H x W
features) gets one channel, read from single-channel images (a colour image among them is an
error naming ``--grayscale``); a model of three channels gets every image converted to RGB.
When the model does not tell, images are read as RGB."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embscope.cli.errors import UsageError, one_line
from embscope.cli.input_common import Batch, ModelInput

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
# Pillow modes of one channel (with or without alpha): grey scans, 16-bit and float images.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;16S"})
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I")
CHANNEL_FLAGS = "--grayscale reads one channel, --rgb three"


@dataclass(frozen=True)
class ImageOptions:
    """How images become tensors: ``--image-size``, ``--grayscale``, ``--mean``, ``--std``,
    ``--rgb``."""

    size: tuple[int, int] | None = None  # (height, width)
    grayscale: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    rgb: bool = False

    @property
    def given(self) -> list[str]:
        """The options the user set, by flag name."""
        flags = {
            "--image-size": self.size is not None,
            "--grayscale": self.grayscale,
            "--rgb": self.rgb,
            "--mean": self.mean is not None,
            "--std": self.std is not None,
        }
        return [flag for flag, set_ in flags.items() if set_]


class ImageFolder:
    """A folder of class sub-folders of images."""

    def __init__(self, root: Path, options: ImageOptions) -> None:
        if options.grayscale and options.rgb:
            raise UsageError("--rgb", "not allowed with --grayscale", "pass one of them")
        self.path = root
        self.options = options
        # channels read: 1, 3, or None (RGB, the model not asked); see fit_model
        self.channels: int | None = 1 if options.grayscale else 3 if options.rgb else None
        self.why = "--grayscale" if options.grayscale else "--rgb" if options.rgb else "the default"
        self.expected = ModelInput()  # what the model takes, once fit_model was called
        self.every_grey = False  # one channel chosen for the model: every image must be grey
        names = [d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        # Folders named by integers are those classes (a folder "7" holds class 7, also when
        # only some classes are there, and "10" sorts after "9"); other names are sorted and
        # numbered 0, 1, ... as in torchvision's ImageFolder.
        self.numbered = bool(names) and all(n.isascii() and n.isdigit() for n in names)
        self.classes = sorted(names, key=int) if self.numbered else sorted(names)
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
            index = int(name) if self.numbered else index
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

    def fit_model(self, expected: ModelInput) -> None:
        """Read the channels the model takes (unless --grayscale or --rgb chose): one channel
        from grey images for a one-channel model, RGB for a three-channel one. A colour first
        image for a one-channel model is a `UsageError` naming --grayscale."""
        self.expected = expected
        if self.options.grayscale or self.options.rgb or not self.files:
            return
        first = self.files[0]
        mode, (width, height) = _peek(first)
        channels = self._wanted(self.options.size or (height, width))
        if channels == 1:
            if mode not in GREY_MODES:
                raise UsageError(
                    first,
                    f"is {_mode_name(mode)} but {self._takes(1)}",
                    "pass --grayscale to convert the images to one channel",
                )
            self.channels, self.every_grey = 1, True
            self.why = self._takes(1)
        elif channels == 3:
            self.channels = 3
            self.why = self._takes(3)

    def _wanted(self, size: tuple[int, int] | None) -> int | None:
        """The channels the model takes: its first convolution's, or those that make its first
        Linear layer's features from images of ``size`` (height, width)."""
        expected = self.expected
        if expected.channels is not None or expected.features is None or size is None:
            return expected.channels
        return {size[0] * size[1]: 1, 3 * size[0] * size[1]: 3}.get(expected.features)

    def _takes(self, channels: int) -> str:
        expected = self.expected
        if expected.channels is None and expected.features is not None:
            return f"{expected.source} takes {expected.features} features"
        return expected.takes(channels)

    @property
    def hint(self) -> str:
        """What to check when the model rejects the images: the shape the loader produced,
        why, and the flags that change it."""
        channels = 1 if self.channels == 1 else 3
        size = "H, W" if self._size is None else f"{self._size[0]}, {self._size[1]}"
        kind = "one channel" if channels == 1 else "RGB"
        read = f"the images were read as [{channels}, {size}] ({kind}, {self.why})"
        wanted = self._wanted(self._size)
        if wanted in (1, 3) and wanted != channels:
            flag = "--grayscale" if wanted == 1 else "--rgb"
            return f"{self._takes(wanted)} but {read}: pass {flag}"
        return f"{read}; {CHANNEL_FLAGS}, --image-size HxW resizes, --mean/--std normalise"

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
                inputs = torch.from_numpy(normalise(np.stack(arrays), self.options))
                labels = torch.from_numpy(self.labels[start : start + batch_size])
                yield Batch(inputs, labels, [str(f) for f in files])

    def _read(self, file: Path) -> np.ndarray:
        from PIL import Image

        options = self.options
        with reading(file, "an image"):
            with Image.open(file) as image:
                if self.every_grey and image.mode not in GREY_MODES:
                    raise UsageError(
                        file,
                        f"is {_mode_name(image.mode)} while the other images are one channel "
                        f"and {self._takes(1)}",
                        "pass --grayscale to convert every image to one channel",
                    )
                if image.mode in SIXTEEN_BIT_MODES:  # 16-bit grey
                    scale = 65535.0
                    image = image.convert("I")
                else:
                    scale = 255.0
                    image = image.convert("L" if self.channels == 1 else "RGB")
                if options.size is not None:
                    height, width = options.size
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.float32) / scale
        array = array.reshape(array.shape[0], array.shape[1], -1).transpose(2, 0, 1)
        if self.channels != 1 and array.shape[0] == 1:  # 16-bit grey read as RGB
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


def normalise(batch: np.ndarray, options: ImageOptions) -> np.ndarray:
    """``(batch - --mean) / --std`` per channel, in place; a mean or std with neither one value
    nor one per channel is a usage error naming the flag."""
    channels = batch.shape[1]
    for flag, values in (("--mean", options.mean), ("--std", options.std)):
        if values is not None and len(values) not in (1, channels):
            raise UsageError(
                flag,
                f"has {len(values)} values but the images have {channels} channels",
                f"give 1 or {channels} comma-separated values",
            )
    if options.mean is not None:
        batch -= np.asarray(options.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    if options.std is not None:
        batch /= np.asarray(options.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return batch


@contextmanager
def reading(file: Path, what: str) -> Iterator[None]:
    """Pillow's errors while reading ``file`` as ``what`` ("an image", "a mask") become one
    usage error naming the file."""
    from PIL import UnidentifiedImageError

    try:
        yield
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise UsageError(
            file,
            f"cannot be read as {what} ({one_line(str(error), 120)})",
            "replace or remove the file",
        ) from error


def _peek(file: Path) -> tuple[str, tuple[int, int]]:
    """The Pillow mode and (width, height) of an image, from its header."""
    from PIL import Image

    with reading(file, "an image"), Image.open(file) as image:
        return image.mode, image.size


def _mode_name(mode: str) -> str:
    names = {"RGB": "RGB", "RGBA": "RGBA", "P": "a palette (colour) image", "CMYK": "CMYK"}
    return names.get(mode, f"a {mode} image")
