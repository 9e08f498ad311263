"""Run a segmentation model on images with masks and diagnose its dense output.

>>> report = diagnose_segmentation_model(model, [(images, masks)])   # doctest: +SKIP

``forward(images)`` returns logits ``[B, C, h, w]`` (or ``(embedding, logits)``, or a dict
with ``logits`` and an embedding key, as `embscope.diagnostics.forward` reads). Logits and
feature maps of another spatial size than the masks are resized to it (bilinear), as
evaluation code does before scoring. The embedding is the model's own embedding output when it
gives one, else the input of the last convolution (any kernel) producing exactly
the C logit channels (the per-pixel classifier), else ``embedding_layer``'s output; without
any, the logits stand in (the report says so).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .diagnoser import Diagnoser
from .errors import InputError
from .forward import labels_parameter, split_output
from .report import Report


def diagnose_segmentation_model(
    model: nn.Module,
    data: Any,
    *,
    device: str | torch.device | None = None,
    embedding_layer: str | None = None,
    **diagnoser_options: Any,
) -> Report:
    """Run ``model`` over ``data`` (batches ``(images, masks)`` or ``(images, masks, ids)``)
    and return ``Diagnoser(**diagnoser_options)``'s report of its dense output (options
    include ``ignore_index``, default 255). Raises `InputError` (``argument`` "model",
    "inputs" or "data") for outputs or data that cannot be diagnosed."""
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    modes = {m: m.training for m in model.modules()}
    model.to(device).eval()
    # labels that never reach the model cannot put a margin into its logits; a forward that
    # takes labels is not probed here (margin_leak stays unknown unless the caller states it)
    if labels_parameter(model) is None:
        diagnoser_options.setdefault("margin_leak", False)
    diagnoser = Diagnoser(**diagnoser_options)
    finder = _FeatureFinder(model, embedding_layer)
    source = None
    try:
        for index, batch in enumerate(data):
            images, masks = batch[0], batch[1]
            ids = batch[2] if len(batch) > 2 else None
            images = torch.as_tensor(images).to(device)
            with torch.no_grad():
                try:
                    output = model(images)
                except Exception as error:
                    raise InputError(
                        "model",
                        f"forward failed on inputs of shape {list(images.shape)} "
                        f"({type(error).__name__}: {error})",
                        "check that the images have the shape the model expects",
                        argument="inputs",
                    ) from error
            embedding, logits = split_output(output)
            masks = torch.as_tensor(masks)
            logits = _dense_logits(logits, masks)
            if embedding is None or embedding.ndim < 3:
                embedding = finder.take(logits.shape[1])
                source = source or finder.source
            else:
                source = source or "the model's embedding output"
            if embedding is not None:
                embedding = _resize(embedding, masks.shape[1:])
            try:
                diagnoser.update(embedding, masks.to(logits.device), logits, ids=ids)
            except (ValueError, TypeError) as error:
                raise InputError(
                    "data", f"batch {index}: {error}", "check the masks", argument="data"
                ) from error
    finally:
        finder.remove()
        for module, mode in modes.items():
            module.training = mode
    try:
        report = diagnoser.compute()
    except ValueError as error:
        raise InputError("data", str(error), "check the masks", argument="data") from error
    meta_source = {
        "embedding": source or "the logits (no feature map feeding the classifier was found)",
        "margin_leak_probed": diagnoser.margin_leak is not None,
        "device": str(device),
    }
    from dataclasses import replace

    return replace(report, meta={**report.meta, "source": meta_source})


def _dense_logits(logits, masks: torch.Tensor) -> torch.Tensor:
    if logits is None or logits.ndim != masks.ndim + 1 or logits.shape[0] != masks.shape[0]:
        shape = None if logits is None else list(logits.shape)
        raise InputError(
            "model output 'logits'",
            f"has shape {shape} for masks of shape {list(masks.shape)}",
            f"expected dense logits [B, C, {', '.join(map(str, masks.shape[1:]))}] (one "
            "column per class at each position)",
            argument="model",
        )
    return _resize(logits, masks.shape[1:])


def _resize(t: torch.Tensor, size) -> torch.Tensor:
    if tuple(t.shape[2:]) == tuple(size):
        return t
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(len(size))
    if mode is None or t.ndim != len(size) + 2:
        return t  # the Diagnoser names the mismatch
    return F.interpolate(t.float(), size=tuple(size), mode=mode, align_corners=False)


class _FeatureFinder:
    """Forward pre-hooks on every convolution (or the named layer's output): after a
    batch, the input of the last layer called that produced ``C`` channels."""

    def __init__(self, model: nn.Module, name: str | None) -> None:
        self.calls: list[tuple[str, torch.Tensor]] = []
        self.handles = []
        self.source: str | None = None
        modules = dict(model.named_modules())
        if name is not None:
            if name not in modules:
                raise InputError(
                    "embedding_layer",
                    f"{name!r} is not a submodule of the model",
                    "name one of model.named_modules()",
                    argument="embedding_layer",
                )
            self.handles.append(
                modules[name].register_forward_hook(
                    lambda _m, _a, out: self.calls.append((name, out, -1))
                )
            )
            self.named = name
            return
        self.named = None
        for key, module in modules.items():
            if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                continue
            channels = module.out_channels
            self.handles.append(
                module.register_forward_pre_hook(
                    lambda _m, args, key=key, c=channels: self.calls.append((key, args[0], c))
                )
            )

    def take(self, classes: int) -> torch.Tensor | None:
        calls, self.calls = self.calls, []
        if self.named is not None:
            if calls:
                self.source = f"the output of {self.named!r} (the embedding layer named)"
                return calls[-1][1].detach()
            return None
        for key, value, channels in reversed(calls):
            if channels == classes and isinstance(value, torch.Tensor) and value.ndim >= 3:
                self.source = f"the input of {key!r} (the per-pixel classifier)"
                return value.detach()
        return None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
