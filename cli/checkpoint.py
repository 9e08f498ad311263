"""Load a user's checkpoint as a runnable module, without unpickling unless asked to.

Supported, in the order they are tried:

- a ``torch.export`` archive (``.pt2``, or any file that is one): needs no model code;
- a state dict, or a dict holding one under ``model``/``state_dict``/``model_state_dict``, built
  with ``--model FILE.py:FACTORY`` or ``--model package.module:FACTORY`` and loaded strictly; the
  factory's keyword arguments come from ``--model-kwargs`` or from a ``config``/``hparams``/
  ``hyper_parameters`` dict stored next to the weights;
- a pickled whole module (``torch.save(model)``), only when the user passes
  ``--trust-checkpoint``: unpickling runs whatever code the file names.

Building the model from ``--model`` is in model_factory.py; the head's stated settings and
their provenance in head_settings.py.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embscope.cli.errors import UsageError, one_line
from embscope.cli.model_factory import (
    _accepted_kwargs,
    _first,
    build_model,
    load_factory,
    make_cwd_importable,
    parse_model_kwargs,
)
from embscope.diagnostics.output import path_problem

STATE_KEYS = ("state_dict", "model_state_dict", "model")
CONFIG_KEYS = ("config", "hparams", "hyper_parameters")
# Prefixes that wrappers add to every key (DataParallel, Lightning's ``self.model``, torch.compile).
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")

TRUST_FIX = (
    "pass --trust-checkpoint only if you trust its source, since unpickling can run arbitrary code;"
    " or save model.state_dict() and pass --model FILE.py:FACTORY"
)
# A data file (a saved TensorDataset, a list of samples) gets no advice about state dicts.
DATA_TRUST_FIX = (
    "pass --trust-checkpoint only if you trust its source, since unpickling can run arbitrary code;"
    " or save plain tensors: torch.save({'x': inputs, 'y': labels}, path)"
)


@dataclass
class LoadedModel:
    """A model ready to run, and how it was obtained.

    Attributes
    ----------
    module : nn.Module or torch.export.ExportedProgram
        The model, as `embscope.diagnostics.diagnose_model` takes it (an exported program is run
        through its unflattened module, in the mode it was traced in).
    kind : str
        ``"state_dict"``, ``"exported"`` or ``"pickled"``.
    path : Path
        The checkpoint file.
    static_batch : int or None
        The batch size an exported program was traced with when it is not dynamic; inputs must
        be fed in batches of exactly this size.
    config : dict
        The factory keyword arguments actually used (empty when none).
    config_source : str or None
        Where ``config`` came from: ``"checkpoint config"`` (the dict stored next to the
        weights), ``"user"`` (``--model-kwargs``), None without a factory.
    state_keys : frozenset of str
        The keys of the state dict loaded into the model (after stripping a wrapper prefix).
    """

    module: nn.Module | torch.export.ExportedProgram
    kind: str
    path: Path
    static_batch: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    config_source: str | None = None
    state_keys: frozenset[str] = frozenset()

    @property
    def exported(self) -> bool:
        return self.kind == "exported"


def check_readable_file(path: Path, role: str) -> None:
    """Raise `UsageError` unless ``path`` is an existing, non-empty, readable file."""
    problem = path_problem(path)
    if problem is not None:
        raise UsageError(path, problem, "check the path and its permissions")
    if not path.exists():
        raise UsageError(path, f"no such {role} file", "check the path")
    if path.is_dir():
        raise UsageError(path, f"is a folder, expected a {role} file", "pass the file itself")
    if not os.access(path, os.R_OK):
        raise UsageError(path, "is not readable", "check its permissions")
    if path.stat().st_size == 0:
        raise UsageError(
            path, f"is empty (0 bytes), not a {role} file", "pass the file written by torch.save"
        )


def is_export_archive(path: Path) -> bool:
    """True when ``path`` is a zip written by ``torch.export.save``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("archive_format") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def torch_load(path: Path, *, trust: bool, role: str, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``; unpickle arbitrary objects only when ``trust``.

    Raises `UsageError` for files torch cannot read and for pickled objects without ``trust``.
    """
    try:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):
                    raise
                # Files in the legacy (pre-zip) format cannot be memory-mapped.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        if not _refused_by_weights_only(message):
            raise _not_a_torch_file(path, role, error) from error
        if not trust:
            found = re.search(r"GLOBAL ([\w.]+)", message)
            what = found.group(1) if found else "a Python object"
            fix = DATA_TRUST_FIX if role == "tensor file" else TRUST_FIX
            if role == "embeddings file":  # read with weights_only always: no flag unpickles it
                fix = "save only tensors: torch.save({'embeddings': E, 'labels': y}, path)"
            raise UsageError(
                path, f"holds pickled Python objects ({what}), not only tensors", fix
            ) from error
    except UsageError:
        raise
    except Exception as error:  # torch raises EOFError, KeyError, RuntimeError... on foreign bytes
        raise _not_a_torch_file(path, role, error) from error
    return _unpickle(path, role)


# What torch's weights-only unpickler says when it refuses a Python object (a class, a function,
# a module it blocks), as opposed to bytes that are no pickle at all.
_WEIGHTS_ONLY_REFUSALS = (
    "GLOBAL",  # Unsupported global / unsupported GLOBAL ... whose module ... is blocked
    "allowed global",
    "allowlisted",
    "unrecognized function",
    "must be imported to load",
)


def _refused_by_weights_only(message: str) -> bool:
    return "Weights only load failed" in message and any(
        marker in message for marker in _WEIGHTS_ONLY_REFUSALS
    )


def _not_a_torch_file(path: Path, role: str, error: BaseException) -> UsageError:
    message = str(error)
    if "WeightsUnpickler error:" in message:  # skip torch's paragraph about weights_only
        tail = message.split("WeightsUnpickler error:", 1)[1].strip()
        message = tail.splitlines()[0] if tail else message
    detail = one_line(f"{type(error).__name__}: {message}", limit=120)
    return UsageError(
        path,
        f"is not a PyTorch {role} that torch.load can read ({detail})",
        "pass a file written by torch.save, or a .pt2 written by torch.export.save",
    )


def _unpickle(path: Path, role: str = "checkpoint") -> Any:
    make_cwd_importable()
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as error:
        if "__main__" in str(error):
            what = (
                "names a class defined in the training script (__main__), which cannot be imported"
            )
        else:
            what = f"names code that cannot be imported ({one_line(str(error), limit=160)})"
        save = (
            "plain tensors: torch.save({'x': inputs, 'y': labels}, path)"
            if role == "tensor file"
            else "model.state_dict() and pass --model FILE.py:FACTORY"
        )
        raise UsageError(
            path,
            what,
            f"run diagnose from the directory your training code runs from, or save {save}",
        ) from error


def load_model(
    path: str | os.PathLike[str],
    *,
    model_spec: str | None = None,
    model_kwargs: str | None = None,
    trust: bool = False,
) -> LoadedModel:
    """Load the checkpoint at ``path`` as a module.

    Parameters
    ----------
    path : path-like
        The checkpoint: a state dict, a dict wrapping one, a ``.pt2`` export or a pickled module.
    model_spec : str, optional
        ``FILE.py:FACTORY`` or ``package.module:FACTORY``; required for state dicts.
    model_kwargs : str, optional
        JSON object of keyword arguments for the factory (overrides the checkpoint's config).
    trust : bool
        Allow unpickling arbitrary Python objects.

    Returns
    -------
    LoadedModel
    """
    path = Path(path)
    check_readable_file(path, "checkpoint")
    kwargs = parse_model_kwargs(model_kwargs) if model_kwargs is not None else None
    if path.suffix == ".pt2" or is_export_archive(path):
        for option, value in (("--model", model_spec), ("--model-kwargs", model_kwargs)):
            if value is not None:
                raise UsageError(
                    option, f"is not used with a torch.export archive ({path})", f"remove {option}"
                )
        return load_exported(path)

    loaded = torch_load(path, trust=trust, role="checkpoint")
    if isinstance(loaded, nn.Module):
        return _pickled(loaded, path, model_spec)
    if not isinstance(loaded, Mapping) or not loaded:
        raise UsageError(
            path,
            f"holds {_describe(loaded)}, not a model or a state dict",
            "save model.state_dict(), or a dict holding it under 'model' or 'state_dict'",
        )
    config: Mapping[str, Any] | None = None
    if _is_state_dict(loaded):
        state = loaded
    else:
        key = next((k for k in STATE_KEYS if k in loaded), None)
        if key is None:
            raise UsageError(
                path,
                f"is a dict with keys {_first(list(loaded))} but holds no state dict under "
                f"{' / '.join(repr(k) for k in STATE_KEYS)}",
                "save model.state_dict(), or a dict holding it under 'model' or 'state_dict'",
            )
        inner = loaded[key]
        if isinstance(inner, nn.Module):
            return _pickled(inner, path, model_spec)
        if not _is_state_dict(inner):
            raise UsageError(
                path,
                f"holds {_describe(inner)} under {key!r}, not a state dict",
                "save model.state_dict()",
            )
        state = inner
        config = next((loaded[k] for k in CONFIG_KEYS if isinstance(loaded.get(k), Mapping)), None)

    if model_spec is None:
        raise UsageError(
            path,
            "holds only weights (a state dict), so the model code is needed to build the model",
            "pass --model path/to/model.py:FACTORY or --model package.module:FACTORY",
        )
    factory = load_factory(model_spec)
    if kwargs is not None:
        used, origin = kwargs, "user"
        model = build_model(factory, model_spec, used, source="--model-kwargs")
    else:
        used, origin = _accepted_kwargs(factory, dict(config or {})), "checkpoint config"
        model = build_model(factory, model_spec, used, source="the checkpoint's config")
    load_state_dict_strict(model, state, path=path, model_spec=model_spec)
    return LoadedModel(
        module=model,
        kind="state_dict",
        path=path,
        config=used,
        config_source=origin,
        state_keys=frozenset(model.state_dict()),
    )


def _pickled(module: nn.Module, path: Path, model_spec: str | None) -> LoadedModel:
    if model_spec is not None:
        raise UsageError(
            "--model", f"is not used: {path} holds a whole pickled module", "remove --model"
        )
    return LoadedModel(module=module, kind="pickled", path=path)


def load_exported(path: Path) -> LoadedModel:
    """Load a ``torch.export`` archive; `embscope.diagnostics.diagnose_model` runs it."""
    from embscope.diagnostics.runner import traced_batch

    try:
        program = torch.export.load(path)
    except Exception as error:
        raise UsageError(
            path,
            f"cannot be loaded by torch.export.load ({one_line(f'{type(error).__name__}: {error}', 160)})",
            "write it with torch.export.save from the same or an older torch version",
        ) from error
    return LoadedModel(
        module=program, kind="exported", path=path, static_batch=traced_batch(program)
    )


def load_state_dict_strict(
    model: nn.Module, state: Mapping[str, Any], *, path: Path, model_spec: str
) -> None:
    """Load ``state`` into ``model`` strictly; on mismatch list the keys and shapes that differ."""
    expected = model.state_dict()
    state = _strip_wrapper_prefix(dict(state), expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys {_first(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches {_first(mismatched)}")
    if problems:
        raise UsageError(
            path,
            f"does not fit the model built by {model_spec}: " + "; ".join(problems),
            "pass the factory and the arguments (--model-kwargs) the model was trained with",
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise UsageError(
            path,
            f"cannot be loaded into the model built by {model_spec} ({one_line(str(error), 200)})",
            "pass the factory and the arguments the model was trained with",
        ) from error


def _strip_wrapper_prefix(state: dict[str, Any], expected: Mapping[str, Any]) -> dict[str, Any]:
    if set(state) == set(expected):
        return state
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix) :]: v for k, v in state.items()}
            if set(stripped) == set(expected):
                return stripped
    return state


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return "an empty dict" if not obj else f"a dict with keys {_first(list(obj))}"
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {list(obj.shape)}"
    return f"a {type(obj).__name__}"
