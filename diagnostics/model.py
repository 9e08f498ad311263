"""From a model and labelled data to embeddings, logits and a report.

>>> report = diagnose_model(model, val_loader)                       # doctest: +SKIP
>>> for embedding, logits, labels in embed(model, (x_val, y_val)):   # doctest: +SKIP
...     ...

The model runs in eval mode under ``torch.no_grad``, batch by batch (its training flags are
restored afterwards). Its output is read as `embscope.diagnostics.forward` describes, and the
embedding found as `embscope.diagnostics.runner` describes (the model's own embedding output,
else the input of its final Linear layer or margin head, or ``embedding_layer``).

The ``diagnose CHECKPOINT DATA`` command calls :func:`diagnose_model`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any

import torch
from torch import nn

from .diagnoser import Diagnoser
from .errors import InputError
from .leak import LeakScores, any_rank, distributed_group, with_leak_scores
from .provenance import state_dict_fingerprint
from .report import Report
from .runner import ModelRunner, compute_outputs
from .thumbnails import THUMBNAIL_COUNT, HardestInputs, with_thumbnails
from .views_model import first_output_has_views, views_report

DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class _Batch:
    inputs: torch.Tensor
    labels: torch.Tensor
    ids: list[str] | None = None


def diagnose_model(
    model: nn.Module | torch.export.ExportedProgram,
    data: Any,
    *,
    head: nn.Module | None = None,
    embedding_layer: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ids: Sequence[str] | None = None,
    eval_with_labels: bool = False,
    thumbnails: int = THUMBNAIL_COUNT,
    image_shape: Sequence[int] | None = None,
    image_range: tuple[float, float] | None = None,
    **diagnoser_options: Any,
) -> Report:
    """Run ``model`` on labelled ``data`` and diagnose its embeddings and logits.

    Finds the margin head (unless ``head`` is given), probes once, on the first batch, whether
    the eval-mode logits change when labels are passed (`probe_margin_leak`; not probed, and
    reported as no leak, when ``forward`` takes no labels), runs every batch and returns
    ``Diagnoser(head=..., margin_leak=..., **diagnoser_options)``'s report. When the margin
    leaks, every batch runs both ways, and the report adds the accuracy, F1 and macro-F1 of
    each (``head.leak_*_with_labels`` / ``_without_labels``, `embscope.diagnostics.leak`);
    its own metrics stay those of ``forward(inputs)``, as deployed (unless ``eval_with_labels``).
    ``report.meta["source"]`` says where the embedding came from, whether the leak was probed
    and the device.

    Parameters
    ----------
    model : nn.Module or torch.export.ExportedProgram
        ``forward(inputs)`` returns logits ``[B]``/``[B, C]``, ``(embedding, logits)`` or a dict
        (see `embscope.diagnostics.forward`).
    data : DataLoader, iterable of batches, or (inputs, labels)
        Batches are ``(inputs, labels)`` or ``(inputs, labels, ids)`` with inputs ``[B, ...]``,
        integer labels ``[B]`` (class indices when the model has logits) and ids ``B``
        strings. A pair of tensors ``(inputs [N, ...], labels [N])`` is cut into batches of
        ``batch_size``.
    head : nn.Module, optional
        The margin head (weight ``[C, D]``, ``m``, ``s``); default: found by duck typing
        (`find_margin_head`).
    embedding_layer : str, optional
        Take the embedding from this submodule's output.
    device : str or torch.device, optional
        Move the model there and run on it; default: where its parameters are.
    batch_size : int
        Rows per forward pass for a pair of tensors (a DataLoader keeps its own).
    ids : sequence of N str, optional
        Sample ids for a pair of tensors (the report's hardest samples name them).
    eval_with_labels : bool
        Call ``forward(inputs, labels=labels)`` as a validation loop that passes the labels
        does: with a margin that leaks into evaluation, those are the logits it reports.
    thumbnails : int
        When the inputs are images, the report keeps thumbnails of this many of its hardest
        samples (``sections["thumbnails"]``, id -> base64 PNG; only their inputs are held while
        the data stream, `embscope.diagnostics.thumbnails`); 0 keeps none.
    image_shape : (H, W) or (C, H, W), optional
        View flat inputs as images of this shape for the thumbnails (``[B, 1 or 3, H, W]``
        inputs are images without it).
    image_range : (low, high), optional
        The input values the thumbnails show black and white, clipped (default: [0, 1] for
        inputs within it, else each image's minimum and maximum).
    **diagnoser_options
        `Diagnoser` options: space, reservoir_size, seed, thresholds...

    Returns
    -------
    Report

    Raises
    ------
    InputError (a ValueError)
        For a model, output or data that cannot be diagnosed: ``argument`` says which
        (``"model"``, ``"inputs"``, ``"data"``, ``"outputs"``, ``"embedding_layer"``,
        ``"device"``, ``"batch_size"``, ``"eval_with_labels"``).
    """
    runner = ModelRunner(model, head=head, device=device, embedding_layer=embedding_layer)
    batches = _batches(data, batch_size, ids)
    first = next(batches, None)
    if first is None:
        raise InputError("data", "holds no samples", "pass labelled data", argument="data")
    with runner.evaluating():
        if first_output_has_views(runner, first.inputs):  # named embeddings: views_model.py
            name = type(model).__name__
            return views_report(runner, chain([first], batches), diagnoser_options, name)
        leak = runner.probe(first.inputs, first.labels)
        distributed, group = distributed_group(diagnoser_options)
        if distributed:  # every rank runs the second forward, or none
            leak = any_rank(leak, group)
        # labels that never reach the model cannot put a margin into its logits
        diagnoser = Diagnoser(head=runner.head, margin_leak=bool(leak), **diagnoser_options)
        # with a leak, every batch also runs the other way, to score both (diagnostics.leak)
        both = LeakScores(cosine=diagnoser.space == "cosine") if leak else None
        keeper = HardestInputs(
            thumbnails,
            image_shape=image_shape,
            image_range=image_range,
            cosine=diagnoser.space == "cosine",
            positional_ids=not distributed,  # positions across processes are not the report's
        )
        for batch in chain([first], batches):
            embedding, logits = runner(batch.inputs, batch.labels, with_labels=eval_with_labels)
            if both is not None and logits is not None:
                _, other = runner(batch.inputs, batch.labels, with_labels=not eval_with_labels)
                ways = (logits, other) if eval_with_labels else (other, logits)
                both.update(embedding, *ways, batch.labels)
            try:
                diagnoser.update(embedding, batch.labels, logits=logits, ids=batch.ids)
            except (ValueError, TypeError) as error:
                raise InputError("data", str(error), "check the data", argument="data") from error
            keeper.update(batch.inputs, embedding, batch.labels, logits, batch.ids)
    if both is not None and distributed:
        both.sync(group)
    if distributed:  # every rank's hardest inputs, as one process that saw every shard
        keeper.sync(group)
    report = compute_outputs(diagnoser)
    if both is not None and both.state is not None:
        report = with_leak_scores(report, both.state, diagnoser.thresholds)
    report = with_thumbnails(report, keeper)
    source = {
        "model": type(model).__name__,  # what the report's title names when nothing else does
        "embedding": runner.embedding_source,
        "margin_leak_probed": leak is not None,
        "device": str(runner.device),
    }
    fingerprint = {"state_dict": state_dict_fingerprint(model)}  # provenance.py
    return replace(report, meta={**report.meta, "source": source, "checkpoint": fingerprint})


def embed(
    model: nn.Module | torch.export.ExportedProgram,
    data: Any,
    *,
    embedding_layer: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    eval_with_labels: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """Yield ``(embedding [B, D], logits [B] / [B, C] or None, labels [B])`` for each batch.

    The embedding is found and the model run exactly as by :func:`diagnose_model` (same
    arguments); the tensors are detached and on the device the model ran on. The model is in
    eval mode while the iteration runs and gets its training flags back when it ends (or the
    generator is closed).
    """
    runner = ModelRunner(model, device=device, embedding_layer=embedding_layer)
    with runner.evaluating():
        for batch in _batches(data, batch_size, None):
            embedding, logits = runner(batch.inputs, batch.labels, with_labels=eval_with_labels)
            yield embedding, logits, batch.labels


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def _batches(data: Any, batch_size: int, ids: Sequence[str] | None) -> Iterator[_Batch]:
    """Non-empty batches of ``data``; a pair of tensors is cut into ``batch_size`` rows."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(
            "batch_size", f"must be a positive integer, got {batch_size!r}", argument="batch_size"
        )
    if _is_pair(data):
        inputs, labels = _tensor(data[0], "inputs"), _tensor(data[1], "labels")
        n = len(labels)
        if inputs.ndim == 0 or len(inputs) != n:
            raise InputError(
                "data",
                f"holds inputs of shape {list(inputs.shape)} and {n} labels",
                "pass (inputs [N, ...], labels [N])",
                argument="data",
            )
        if ids is not None and len(ids) != n:
            raise InputError(
                "ids",
                f"holds {len(ids)} ids for {n} samples",
                "pass one id per sample",
                argument="ids",
            )
        for start in range(0, n, batch_size):
            stop = start + batch_size
            part = None if ids is None else [str(i) for i in ids[start:stop]]
            yield _Batch(inputs[start:stop], labels[start:stop], part)
        return
    if ids is not None:
        raise InputError(
            "ids",
            "applies to a pair of tensors only",
            "yield (inputs, labels, ids) batches instead",
            argument="ids",
        )
    if not isinstance(data, Iterable) or isinstance(data, (torch.Tensor, str, bytes)):
        raise InputError(
            "data",
            f"is a {type(data).__name__}",
            "pass a DataLoader, an iterable of (inputs, labels) batches or a pair of tensors",
            argument="data",
        )
    for index, batch in enumerate(data):
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            what = type(batch).__name__
            if isinstance(batch, (tuple, list)):
                what = f"{what} of {len(batch)} items"
            raise InputError(
                "data",
                f"batch {index} is a {what}",
                "yield (inputs, labels) or (inputs, labels, ids) batches",
                argument="data",
            )
        inputs, labels = _tensor(batch[0], "inputs"), _tensor(batch[1], "labels")
        part = None if len(batch) == 2 or batch[2] is None else [str(i) for i in batch[2]]
        if len(labels):
            yield _Batch(inputs, labels, part)


def _is_pair(data: Any) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(v, torch.Tensor) or hasattr(v, "__array__") for v in data)
        and not any(isinstance(v, (tuple, list)) for v in data)
    )


def _tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InputError(
            "data",
            f"holds {name} of type {type(value).__name__}",
            "pass tensors",
            argument="data",
        ) from error
