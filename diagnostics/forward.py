"""What a model's ``forward`` takes and returns, read one way everywhere.

- Labels: ``forward`` takes them when it has a parameter named ``labels``, ``label``,
  ``targets``, ``target`` or ``y``; they are passed by that name. A second parameter of another
  name (``mask``, ``lengths``) is not taken for labels.
- Output: logits alone (``[B]`` or ``[B, C]``), ``(embedding, logits)`` (``logits`` may be None
  for an embedding model), or a dict with ``embedding`` (or ``embeddings``/``features``/``emb``)
  and/or ``logits``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .errors import InputError

LABEL_PARAMETERS = ("labels", "label", "targets", "target", "y")
EMBEDDING_KEYS = ("embedding", "embeddings", "features", "emb")
EXPECTED_OUTPUT = (
    "expected logits [B] or [B, C], (embedding [B, D], logits), "
    "or a dict with 'embedding' and 'logits'"
)
OUTPUT = "model output"


def labels_parameter(model: nn.Module) -> str | None:
    """The name of ``model.forward``'s labels parameter (``labels``, ``targets``, ``y``...), or
    None when it takes no labels."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((name for name in parameters if name in LABEL_PARAMETERS), None)


def split_output(output: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(embedding or None, logits or None)`` from whatever ``forward`` returned.

    Raises `InputError` (subject ``"model output"``) for any other output.
    """
    if isinstance(output, torch.Tensor):
        return None, output
    if isinstance(output, (tuple, list)):
        if len(output) == 2 and all(o is None or isinstance(o, torch.Tensor) for o in output):
            if output[0] is None:
                raise InputError(
                    OUTPUT,
                    "returned (None, ...) as its embedding",
                    EXPECTED_OUTPUT,
                    argument="model",
                )
            return output[0], output[1]
        raise InputError(
            OUTPUT,
            f"returned a {type(output).__name__} of {len(output)} items "
            f"({', '.join(_describe(o) for o in output[:4])})",
            EXPECTED_OUTPUT,
            argument="model",
        )
    if isinstance(output, dict):
        embedding_key = next((k for k in EMBEDDING_KEYS if k in output), None)
        embedding = output[embedding_key] if embedding_key else None
        logits = output.get("logits")
        if embedding is None and logits is None:
            raise InputError(
                OUTPUT,
                f"returned a dict with keys {list(output)[:6]}",
                EXPECTED_OUTPUT,
                argument="model",
            )
        for key, value in ((embedding_key, embedding), ("logits", logits)):
            if value is not None and not isinstance(value, torch.Tensor):
                raise InputError(
                    OUTPUT,
                    f"returned {key!r} as a {type(value).__name__}",
                    "return tensors",
                    argument="model",
                )
        return embedding, logits
    raise InputError(OUTPUT, f"returned {_describe(output)}", EXPECTED_OUTPUT, argument="model")


def logits_or_embedding(output: Any) -> torch.Tensor:
    """The logits of ``forward``'s output, or its embedding for a model without logits."""
    embedding, logits = split_output(output)
    return logits if logits is not None else embedding


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {list(value.shape)}"
    return type(value).__name__
