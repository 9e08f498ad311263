"""Build a head from a config dict and read a head's config back.

>>> head = build_head({"type": "arcface", "m": 0.2, "s": 8}, embedding_dim=128, num_classes=2)
>>> head_config(head)["m"]
0.2
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

_HEADS: dict[str, type[nn.Module]] = {}

T = TypeVar("T", bound=type[nn.Module])


def register_head(name: str) -> Callable[[T], T]:
    """Class decorator: make a head buildable as ``build_head({"type": name, ...})``.

    Every ``__init__`` parameter must be readable back as an attribute of the same name, so that
    :func:`head_config` can invert :func:`build_head`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    key = name.lower()

    def decorate(cls: T) -> T:
        if key in _HEADS and _HEADS[key] is not cls:
            raise ValueError(f"head type {key!r} is already registered to {_HEADS[key].__name__}")
        _HEADS[key] = cls
        cls.head_type = key
        return cls

    return decorate


def known_heads() -> list[str]:
    """The registered head types, sorted."""
    return sorted(_HEADS)


def _init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self", None)
    return params


def build_head(config: Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Build a registered head from ``config`` (``{"type": ..., **init_kwargs}``).

    Parameters
    ----------
    config : mapping
        ``"type"`` (case-insensitive, one of :func:`known_heads`) and constructor arguments.
    **overrides
        Constructor arguments that fill in or replace those of ``config`` (e.g. the
        ``embedding_dim`` and ``num_classes`` of the model at hand).

    Returns
    -------
    nn.Module
        A new head with freshly initialised weights.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    if "type" not in config:
        raise ValueError(
            f"config must have a 'type' key (one of {known_heads()}), got keys {sorted(config)}"
        )
    kind = config["type"]
    key = kind.lower() if isinstance(kind, str) else kind
    if key not in _HEADS:
        raise ValueError(f"config['type'] must be one of {known_heads()}, got {kind!r}")
    cls = _HEADS[key]
    kwargs = {k: v for k, v in config.items() if k != "type"}
    kwargs.update(overrides)
    params = _init_parameters(cls)
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(
            f"config has unknown keys {unknown} for type {key!r}; expected some of {sorted(params)}"
        )
    missing = sorted(
        name
        for name, p in params.items()
        if p.default is inspect.Parameter.empty and name not in kwargs
    )
    if missing:
        raise ValueError(
            f"config for type {key!r} is missing {missing} "
            f"(pass them in config or as keyword arguments)"
        )
    return cls(**kwargs)


def head_config(head: nn.Module) -> dict[str, Any]:
    """The config dict that rebuilds ``head`` with :func:`build_head` (weights not included)."""
    key = getattr(type(head), "head_type", None)
    if key is None or _HEADS.get(key) is not type(head):
        raise ValueError(
            f"head must be an instance of a registered head type "
            f"({known_heads()}), got {type(head).__name__}"
        )
    config: dict[str, Any] = {"type": key}
    for name in _init_parameters(type(head)):
        config[name] = getattr(head, name)
    return config
