"""The margin head's settings on the command line: the s and m the user states
(``--head-s``/``--head-m``), given to the head before the model runs, and where every setting
the report shows came from (stated, the head's attributes, the checkpoint's config)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from embscope.cli.checkpoint import LoadedModel
from embscope.cli.errors import UsageError, one_line

HEAD_NAMES = {"s": ("s", "scale"), "m": ("m", "margin")}  # as diagnostics.heads reads them


def set_head_values(head: nn.Module, values: Mapping[str, float]) -> None:
    """Give ``head`` the stated ``values`` (``{"s": 64.0, "m": 0.5}``) before the model runs,
    so that its logits are those of the settings it was trained with: a tensor attribute is
    filled, a number (or property) replaced. An attribute it lacks is left to the report's
    stated facts."""
    for key, value in values.items():
        name = _head_attribute(head, key)
        if name is None:
            continue
        current = getattr(head, name)
        try:
            if isinstance(current, torch.Tensor):
                with torch.no_grad():
                    current.fill_(value)
            else:
                setattr(head, name, float(value))
        except Exception as error:
            raise UsageError(
                f"--head-{key}",
                f"cannot be set on the model's head {type(head).__name__}.{name} "
                f"({one_line(f'{type(error).__name__}: {error}', 120)})",
                f"pass the value to the factory instead (--model-kwargs), or drop --head-{key}",
            ) from error


def head_provenance(loaded: LoadedModel, head: nn.Module | None) -> dict[str, str]:
    """Where the s and m of ``loaded``'s margin head came from (see
    `embscope.diagnostics.heads.PROVENANCES`): ``"pickled module"`` for a pickled model,
    ``"checkpoint state"`` for a tensor of the head in the state dict, the config's source
    (``"checkpoint config"`` or ``"user"``) when a factory argument named like it (``s``,
    ``scale``, ``head_s``, ``margin``...) holds its value, else ``"factory default"``. Empty
    without a head (an exported program has none)."""
    if head is None or loaded.exported:
        return {}
    prefix = next((f"{n}." if n else "" for n, m in loaded.module.named_modules() if m is head), "")
    out = {}
    for key in ("s", "m"):
        name = _head_attribute(head, key)
        if name is None:
            continue
        value = getattr(head, name)
        if loaded.kind == "pickled":
            out[key] = "pickled module"
        elif isinstance(value, torch.Tensor) and prefix + name in loaded.state_keys:
            out[key] = "checkpoint state"
        elif _config_holds(loaded.config, HEAD_NAMES[key], _float(value)):
            out[key] = loaded.config_source or "checkpoint config"
        else:
            out[key] = "factory default"
    return out


def _head_attribute(head: nn.Module, key: str) -> str | None:
    for name in HEAD_NAMES[key]:
        value = getattr(head, name, None)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return name
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return name
    return None


def _float(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def _config_holds(config: Mapping[str, Any], names: tuple[str, ...], value: float) -> bool:
    """Whether a config entry whose name has one of ``names`` as a word (``s``, ``head_s``,
    ``arcface.scale``) holds ``value``."""
    for key, entry in config.items():
        words = set(re.split(r"[^a-z0-9]+", str(key).lower()))
        number = isinstance(entry, (int, float)) and not isinstance(entry, bool)
        if (
            words & set(names)
            and number
            and abs(float(entry) - value) <= 1e-6 * max(1.0, abs(value))
        ):
            return True
    return False
