"""Thumbnails of the hardest samples' inputs, kept in memory bounded by their count.

The report's hardest samples are those of smallest logit margin, ties broken by id
(`embscope.diagnostics.logits._hard_compute`, ``report.sections["hardest"]``). While the batches
stream, `HardestInputs` keeps the inputs of the ``k`` samples that are hardest so far by that same
key (margin, then id), never more than ``k`` of them whatever the number of samples, so after the
last batch it holds the inputs of the report's ``k`` hardest samples. It validates each batch as
the Diagnoser does (rows with NaN/Inf, and all-zero embeddings in cosine space, are dropped), so
positional ids (the row's index among the kept rows, when the data have no ids) are the report's.

Inputs are images when they are ``[B, 1 or 3, H, W]``, or when ``image_shape`` says how to view a
flat row (the demo's 8 x 8 digits are 64 pixels). A thumbnail is a PNG of at most
``MAX_SIDE`` pixels a side, base64-encoded: with ``image_range`` (low, high) values are shown
from black at low to white at high, clipped (the demo's noisy [0, 1] pixels); without it,
values in [0, 1] are shown as they are and others (normalised inputs) stretched from each
image's minimum to its maximum. Small images are enlarged by a whole factor (each pixel a
block), large ones shrunk. ``report.sections["thumbnails"]`` maps
each of the hardest ids to its PNG.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from ._validation import check_batch
from .errors import InputError
from .logits import _hardness_update
from .report import Report

THUMBNAIL_COUNT = 16  # the hardest samples whose inputs are kept
MAX_SIDE = 64  # pixels a side of a thumbnail (a report holds at most 16 of them)


def image_view(
    inputs: torch.Tensor, image_shape: Sequence[int] | None = None
) -> torch.Tensor | None:
    """``inputs`` as images ``[B, C, H, W]`` (C 1 or 3), or None when they are not images.

    ``image_shape`` ``(H, W)`` or ``(C, H, W)`` views each row as an image when its number of
    values fits; otherwise only ``[B, 1 or 3, H, W]`` inputs are images.
    """
    if not isinstance(inputs, torch.Tensor) or inputs.ndim == 0:
        return None
    if inputs.dtype == torch.bool or inputs.is_complex():
        return None
    if image_shape is not None:
        shape = tuple(int(s) for s in image_shape)
        shape = (1, *shape) if len(shape) == 2 else shape
        if len(shape) != 3 or shape[0] not in (1, 3) or inputs[0].numel() != int(np.prod(shape)):
            return None
        return inputs.reshape(inputs.shape[0], *shape)
    if inputs.ndim == 4 and inputs.shape[1] in (1, 3) and min(inputs.shape[2:]) >= 2:
        return inputs
    return None


class HardestInputs:
    """The inputs of the ``k`` hardest samples seen so far (smallest margin, then id).

    Parameters
    ----------
    k : int
        How many inputs to keep (at most).
    image_shape : (H, W) or (C, H, W), optional
        How to view flat inputs as images.
    image_range : (low, high), optional
        The values shown black and white (default: see the module's docstring).
    cosine : bool
        Whether all-zero embeddings are dropped (the Diagnoser's cosine space).
    positional_ids : bool
        Whether rows without ids may be named by their position (not across processes, whose
        positions are not the report's).
    """

    def __init__(
        self,
        k: int = THUMBNAIL_COUNT,
        *,
        image_shape: Sequence[int] | None = None,
        image_range: tuple[float, float] | None = None,
        cosine: bool = True,
        positional_ids: bool = True,
    ) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise InputError(
                "thumbnails", f"must be an integer >= 0, got {k!r}", argument="thumbnails"
            )
        if image_range is not None and not (
            len(image_range) == 2 and float(image_range[0]) < float(image_range[1])
        ):
            raise InputError(
                "image_range",
                f"must be (low, high) with low < high, got {image_range!r}",
                argument="image_range",
            )
        self.k = k
        self.image_range = image_range
        self.image_shape = image_shape
        self.cosine = cosine
        self.positional_ids = positional_ids
        self.active = self.k > 0  # off once a batch shows the inputs are not images
        self.seen = 0  # kept rows so far (the next positional id)
        self._kept: list[tuple[float, str, torch.Tensor]] = []  # sorted hardest first

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def ids(self) -> list[str]:
        """The ids kept, hardest first."""
        return [name for _, name, _ in self._kept]

    def update(
        self,
        inputs: torch.Tensor,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor | None,
        ids: Sequence[str] | None = None,
    ) -> None:
        """Fold one batch in: the inputs of rows harder than the k-th kept replace it."""
        if not self.active or logits is None:
            return
        images = image_view(inputs, self.image_shape)
        if images is None or (ids is None and not self.positional_ids):
            self.active, self._kept = False, []
            return
        rows = [str(i) for i in range(len(labels))]
        b = check_batch(embeddings, labels, logits, rows, drop_zero_rows=self.cosine)
        kept_rows = [int(i) for i in b.ids]
        if ids is None:
            names = [str(self.seen + j) for j in range(len(kept_rows))]
        else:
            names = [str(ids[i]) for i in kept_rows]
        self.seen += len(kept_rows)
        if not kept_rows:
            return
        margin = _hardness_update(b.logits, b.labels)["margin"].cpu().numpy()
        candidates = [(float(margin[j]), names[j], j) for j in range(len(kept_rows))]
        if len(self._kept) == self.k:  # only rows harder than the k-th kept can enter
            worst = self._kept[-1][:2]
            candidates = [c for c in candidates if c[:2] < worst]
        if not candidates:
            return
        merged = sorted([*self._kept, *candidates], key=lambda entry: entry[:2])[: self.k]
        self._kept = [
            (m, name, _copy(images[kept_rows[entry]]) if isinstance(entry, int) else entry)
            for m, name, entry in merged
        ]

    def sync(self, group=None) -> None:
        """Gather every rank's kept inputs and keep the k hardest of them, on every rank of
        ``group`` (all ranks must call it): the same as one process that saw every shard."""
        import torch.distributed as dist

        gathered: list = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, self._kept if self.active else [], group=group)
        self.active = self.active or any(gathered)
        merged = [entry for part in gathered for entry in part or []]
        self._kept = sorted(merged, key=lambda entry: entry[:2])[: self.k]

    def thumbnails(self, hardest: Sequence[dict]) -> dict[str, str]:
        """``{id: base64 PNG}`` for the first ``k`` of the report's hardest samples."""
        kept = {name: image for _, name, image in self._kept}
        wanted = [str(h["id"]) for h in list(hardest)[: self.k]]
        return {
            name: png_base64(kept[name], value_range=self.image_range)
            for name in wanted
            if name in kept
        }


def with_thumbnails(report: Report, keeper: HardestInputs | None) -> Report:
    """``report`` with ``sections["thumbnails"]`` from ``keeper`` (unchanged when it has none)."""
    if keeper is None or not len(keeper):
        return report
    pictures = keeper.thumbnails(report.sections.get("hardest") or [])
    if not pictures:
        return report
    return replace(report, sections={**report.sections, "thumbnails": pictures})


def _copy(image: torch.Tensor) -> torch.Tensor:
    """A CPU copy, so the batch it came from can be freed."""
    image = image.detach()
    if image.is_floating_point() and image.dtype != torch.float64:
        image = image.float()
    return image.to("cpu", copy=True)


def png_base64(
    image: torch.Tensor,
    max_side: int = MAX_SIDE,
    value_range: tuple[float, float] | None = None,
) -> str:
    """A ``[C, H, W]`` image (C 1 or 3) as a base64 PNG at most ``max_side`` pixels a side."""
    from PIL import Image

    pixels = _to_uint8(image, value_range)
    picture = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    height, width = pixels.shape[1:]
    side = max(height, width)
    if side > max_side:
        scale = max_side / side
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    elif side * 2 <= max_side:  # small: each pixel a block, so the scan stays readable
        factor = max_side // side
        picture = picture.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _to_uint8(image: torch.Tensor, value_range: tuple[float, float] | None) -> np.ndarray:
    """uint8 as it is; with ``value_range`` low..high clipped; else values in [0, 1] times 255,
    others stretched from min to max."""
    if image.dtype == torch.uint8 and value_range is None:
        return image.numpy()
    values = image.double().numpy()
    values = np.where(np.isfinite(values), values, 0.0)
    if value_range is not None:
        low, high = float(value_range[0]), float(value_range[1])
        values = np.clip((values - low) / (high - low), 0.0, 1.0)
        return np.round(values * 255).astype(np.uint8)
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.round(values * 255).astype(np.uint8)
