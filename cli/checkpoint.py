"""Load a user's checkpoint as a runnable module, without unpickling unless asked to.

Supported, in the order they are tried:

- a ``torch.export`` archive (``.pt2``, or any file that is one): needs no model code;
- a state dict, or a dict holding one under ``model``/``state_dict``/``model_state_dict``, built
  with ``--model FILE.py:FACTORY`` or ``--model package.module:FACTORY`` and loaded strictly; the
  factory's keyword arguments come from ``--model-kwargs`` or from a ``config``/``hparams``/
  ``hyper_parameters`` dict stored next to the weights;
- a pickled whole module (``torch.save(model)``), only when the user passes
  ``--trust-checkpoint``: unpickling runs whatever code the file names.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embscope.cli.errors import UsageError, one_line
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


def make_cwd_importable() -> None:
    """Put the current directory first on ``sys.path``, as ``python -m`` does."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


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


def _first(items: list[Any], count: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:count])
    return f"[{shown}{', ...' if len(items) > count else ''}]"


# ----------------------------------------------------------------------------------------------
# the margin head's settings: stated by the user, and where the others came from
# ----------------------------------------------------------------------------------------------

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
