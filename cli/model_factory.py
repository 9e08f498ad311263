"""Building the user's model from ``--model FILE.py:FACTORY`` or ``--model package.module:FACTORY``
and ``--model-kwargs`` (or the checkpoint's stored config): importing the factory, choosing the
keyword arguments it accepts, and calling it, each failure a one-line error naming the flag."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from embscope.cli.errors import UsageError, one_line


def make_cwd_importable() -> None:
    """Put the current directory first on ``sys.path``, as ``python -m`` does."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def parse_model_kwargs(text: str) -> dict[str, Any]:
    """Parse ``--model-kwargs``: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(
            "--model-kwargs",
            f"is not valid JSON ({error.msg} at character {error.pos})",
            "give a JSON object, e.g. --model-kwargs '{\"num_classes\": 10}'",
        ) from error
    if not isinstance(value, dict):
        raise UsageError(
            "--model-kwargs",
            f"is a JSON {type(value).__name__}, expected an object",
            "give a JSON object, e.g. --model-kwargs '{\"num_classes\": 10}'",
        )
    return value


def load_factory(spec: str) -> Callable[..., Any]:
    """Import ``FILE.py:NAME`` or ``package.module:NAME`` (NAME may be dotted)."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise UsageError(
            "--model",
            f"{spec!r} is not FILE.py:FACTORY or package.module:FACTORY",
            "e.g. --model models/net.py:build_model or --model mypkg.models:Net",
        )
    make_cwd_importable()
    if target.endswith(".py") or "/" in target or os.sep in target:
        module = _import_file(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as error:
            raise UsageError(
                "--model",
                f"cannot import {target!r} ({one_line(str(error), 160)})",
                "run diagnose from your repository root, or give a file: --model path/to/file.py:FACTORY",
            ) from error
        except Exception as error:
            raise _import_failed(target, error) from error
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            public = [
                n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))
            ]
            raise UsageError(
                "--model", f"{target} has no {name!r}", f"callables there: {_first(public, 8)}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(
            "--model", f"{spec} is a {type(obj).__name__}, not callable", "name a function or class"
        )
    return obj


def _import_file(file: Path) -> Any:
    if not file.is_file():
        raise UsageError("--model", f"{file} does not exist", "check the path before the ':'")
    file = file.resolve()
    folder = str(file.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so that the file can import its siblings
    name = file.stem
    existing = sys.modules.get(name)
    if existing is not None:
        if Path(getattr(existing, "__file__", "") or "").resolve() == file:
            return existing
        name = f"_embscope_model_{abs(hash(str(file))):x}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise UsageError(
            "--model", f"{file} cannot be imported as a Python module", "give a .py file"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pickles and dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise _import_failed(str(file), error) from error
    return module


def _import_failed(target: str, error: BaseException) -> UsageError:
    return UsageError(
        "--model",
        f"importing {target} failed ({one_line(f'{type(error).__name__}: {error}', 200)})",
        "fix that error, or run diagnose from the directory your training code runs from",
    )


def _accepted_kwargs(factory: Callable[..., Any], config: dict[str, Any]) -> dict[str, Any]:
    """Keep the config entries the factory accepts (configs also hold lr, epochs...)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return config
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return config
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in config.items() if k in names}


def build_model(
    factory: Callable[..., Any], spec: str, kwargs: dict[str, Any], *, source: str
) -> nn.Module:
    """Call ``factory(**kwargs)`` and check that it returns an ``nn.Module``."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as error:
            raise UsageError(
                "--model",
                f"{spec}{signature} cannot be called with {source} {kwargs} ({error})",
                "pass its arguments as --model-kwargs '{\"name\": value}'",
            ) from error
    try:
        model = factory(**kwargs)
    except Exception as error:
        raise UsageError(
            "--model",
            f"{spec}(**{kwargs}) raised {type(error).__name__}: {error}",
            "check the factory and its arguments (--model-kwargs)",
        ) from error
    if not isinstance(model, nn.Module):
        raise UsageError(
            "--model",
            f"{spec} returned a {type(model).__name__}, not a torch.nn.Module",
            "return the model",
        )
    return model


def _first(items: list[Any], count: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:count])
    return f"[{shown}{', ...' if len(items) > count else ''}]"
