"""A report in TensorBoard: scalars under ``embscope/<metric>``, the report's plots as images, and
the reservoir sample in the embedding projector with its labels.

>>> from torch.utils.tensorboard import SummaryWriter                 # doctest: +SKIP
>>> log_report(SummaryWriter("runs/x"), report, step=epoch, diagnoser=diagnoser)  # doctest: +SKIP

Uses ``torch.utils.tensorboard`` (the ``tensorboard`` package, an optional extra), imported by
the caller's writer; this module imports nothing from it.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch

from embscope.diagnostics.registry import headline_keys

DESCRIPTIVE = ("n", "num_classes", "head.s", "head.m")  # settings and sizes, not worth a curve
PLOT_IMAGES = ("margins", "scores", "reliability", "pca")  # the key plots, when the report has them


def scalar_metrics(report: Any) -> dict[str, float]:
    """The report's headline metrics that are defined (finite), plus the trend rules' inputs
    (margin, gray zone, confident errors, ECE), keyed by metric name."""
    names = [k for k in headline_keys() if k not in DESCRIPTIVE]
    names += ["negative_margin_fraction", "confident_error_count", "ece", "nll"]
    out = {}
    for name in names:
        value = report.metrics.get(name)
        if value is not None and math.isfinite(float(value)):
            out[name] = float(value)
    return out


def log_report(
    writer: Any,
    report: Any,
    step: int,
    *,
    prefix: str = "embscope",
    scalars: bool = True,
    images: bool = True,
    sample: tuple[torch.Tensor, list[int]] | None = None,
) -> dict[str, float]:
    """Log ``report`` to a ``SummaryWriter`` at ``step``; return the scalars logged.

    Scalars: `scalar_metrics` as ``<prefix>/<metric>``. Images: the margin, score,
    reliability and PCA plots as ``<prefix>/plots/<name>``. Projector: ``sample``, the
    ``(rows, labels)`` of `reservoir_sample` (the embeddings the vector metrics used), as
    ``<prefix>/embeddings`` with the labels as metadata.
    """
    values = scalar_metrics(report)
    for name, value in values.items() if scalars else ():
        writer.add_scalar(f"{prefix}/{name}", value, step)
    if images:
        plots = report.plot_pngs()
        for name in PLOT_IMAGES:
            if name in plots:
                writer.add_image(
                    f"{prefix}/plots/{name}", _png_array(plots[name]), step, dataformats="HWC"
                )
    if sample is not None and len(sample[0]):
        rows, labels = sample
        writer.add_embedding(
            rows, metadata=[str(v) for v in labels], tag=f"{prefix}/embeddings", global_step=step
        )
    return values


def reservoir_sample(diagnoser: Any, rows: int) -> tuple[torch.Tensor, list[int]]:
    """Up to ``rows`` rows of the Diagnoser's reservoir (a uniform sample of the data it saw,
    in the order of its sampling keys, so the same samples whatever the batching) and their
    label values."""
    reservoir = diagnoser.reservoir
    if reservoir.rows is None or len(reservoir) == 0:
        return torch.zeros(0, 0), []
    order = torch.argsort(reservoir.keys)[:rows]
    values = torch.as_tensor(diagnoser._values, dtype=torch.int64)
    return reservoir.rows[order].float().cpu(), values[reservoir.labels[order]].tolist()


def _png_array(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))
