"""A model whose ``forward`` returns named embeddings: the views report from `diagnose_model`.

A forward output is read as views when it is a dict holding two or more float tensors
``[B, D]`` besides ``logits`` and ``attention`` and the fused one (``fused``, or ``embedding``/
``embeddings``/``features``/``emb``), e.g.
``{"palm": p, "vein": v, "fused": f, "attention": w, "logits": z}``. ``attention`` ``[B, V]``
holds the per-sample weights of the views other than the fused one, in the dict's order; the
logits belong to the fused view. `diagnose_model` (and so the ``diagnose`` command) then
returns `diagnose_views`' report of every batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from itertools import chain
from typing import Any

import torch

from .errors import InputError
from .runner import compute_outputs
from .views import FUSED_NAMES, ViewsDiagnoser

RESERVED = ("logits", "attention")


def named_views(output: Any) -> dict[str, torch.Tensor] | None:
    """The named embeddings of a forward output (the fused one included), or None when the
    output is not a dict of two or more views (module docstring)."""
    if not isinstance(output, dict):
        return None
    views = {
        k: v
        for k, v in output.items()
        if k not in RESERVED
        and isinstance(k, str)
        and isinstance(v, torch.Tensor)
        and v.ndim == 2
        and v.is_floating_point()
    }
    if len([k for k in views if k not in FUSED_NAMES]) < 2:
        return None
    return views


def first_output_has_views(runner, inputs: torch.Tensor) -> bool:
    """Run one batch and tell whether the model returns named views."""
    output, _ = runner._forward(inputs.to(runner.device), None)
    return named_views(output) is not None


def views_report(runner, batches: Iterable, options: dict, model_name: str):
    """The views report of every batch (``runner`` a `ModelRunner` in eval mode), with
    ``meta["source"]`` as `diagnose_model` writes it. The margin-leak probe runs on the first
    batch when the output has logits or a fused embedding to compare."""
    from .leak import any_rank, distributed_group

    batches = iter(batches)
    first = next(batches)
    output, _ = runner._forward(first.inputs.to(runner.device), None)
    leak = None
    if output.get("logits") is not None or any(k in output for k in FUSED_NAMES):
        leak = runner.probe(first.inputs, first.labels)
        distributed, group = distributed_group(options)
        if distributed:
            leak = any_rank(leak, group)
    d = ViewsDiagnoser(head=runner.head, margin_leak=bool(leak), **options)
    for batch in chain([first], batches):
        output, _ = runner._forward(batch.inputs.to(runner.device), None)
        views = named_views(output)
        if views is None:
            raise InputError(
                "model output",
                "returned named views for the first batch but not for a later one",
                "return the same dict of embeddings for every batch",
                argument="model",
            )
        logits, attention = output.get("logits"), output.get("attention")
        try:
            d.update(
                {k: v.detach() for k, v in views.items()},
                batch.labels,
                None if logits is None else logits.detach(),
                None if attention is None else attention.detach(),
                batch.ids,
            )
        except InputError as error:
            raise InputError(
                f"model output ({error.subject})", error.what, error.fix(), argument="model"
            ) from error
        except (ValueError, TypeError) as error:
            raise InputError("data", str(error), "check the data", argument="data") from error
    report = compute_outputs(d)
    source = {
        "model": model_name,
        "embedding": f"the model's named embeddings ({', '.join(d.names)}"
        + (
            f"; the report's own metrics are those of {d.fused!r})"
            if d.fused
            else "; none of them fused)"
        ),
        "margin_leak_probed": leak is not None,
        "device": str(runner.device),
    }
    return replace(report, meta={**report.meta, "source": source})
