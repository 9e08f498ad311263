"""What a model run leaves behind besides its output: forward hooks that record the tensor
of interest per call (the embedding a model does not return), and the trimming and joining of
outputs when a model traced for a fixed batch size is fed padded batches."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class _Recorder:
    """Forward hooks that record, per call, which module ran and the tensor of interest."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, torch.Tensor]] = []
        self.handles: list[Any] = []

    def watch_input(self, name: str, module: nn.Module) -> None:
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            value = next(
                (v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None
            )
            if value is not None and value.ndim == 2:  # [B, D] only: a vector per sample
                self.calls.append((name, value.detach()))

        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def watch_output(self, name: str, module: nn.Module) -> None:
        def hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, torch.Tensor):
                self.calls.append((name, output.detach()))

        self.handles.append(module.register_forward_hook(hook))

    def take(self) -> dict[str, torch.Tensor]:
        """Each watched module's tensor from its last call, in order of those last calls."""
        last: dict[str, torch.Tensor] = {}
        for name, value in self.calls:
            last.pop(name, None)
            last[name] = value
        self.calls = []
        return last

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.calls = []


def _trim(output: Any, rows: int) -> Any:
    if isinstance(output, torch.Tensor):
        return output[:rows]
    if isinstance(output, (tuple, list)):
        return type(output)(_trim(o, rows) for o in output)
    if isinstance(output, dict):
        return {k: _trim(v, rows) for k, v in output.items()}
    return output


def _concat(outputs: list[Any]) -> Any:
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, (tuple, list)):
        return type(first)(_concat([o[i] for o in outputs]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _concat([o[k] for o in outputs]) for k in first}
    return first
