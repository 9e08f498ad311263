"""Run the user's model in eval mode and turn its outputs into embeddings and logits.

Accepted outputs of ``forward(inputs)``:

- ``(embedding, logits)`` (``logits`` may be ``None`` for embedding-only models);
- a dict with ``embedding`` (or ``embeddings``/``features``/``emb``) and/or ``logits``;
- logits alone, ``[B]`` or ``[B, C]``: the embedding is then captured by a forward hook, from the
  output of ``--embedding-layer NAME``, or by default from the input of the final layer: the
  last-called submodule holding a 2-D ``weight`` of shape ``[C, D]`` (or ``[D, C]``) that was fed
  a ``[B, D]`` tensor, a margin head found by duck typing being preferred.

The model runs under ``torch.no_grad`` (``inference_mode`` tensors cannot re-enter exported
programs). Exported programs traced with a fixed batch size are fed in batches of that size, the
last one padded by repeating its final sample and the padding dropped from the outputs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from embscope.cli.checkpoint import LoadedModel
from embscope.cli.data import Batch
from embscope.cli.errors import UsageError, one_line

LABEL_PARAMETERS = ("labels", "label", "targets", "target", "y")
EMBEDDING_KEYS = ("embedding", "embeddings", "features", "emb")
EXPECTED_OUTPUT = (
    "expected logits [B] or [B, C], (embedding [B, D], logits), "
    "or a dict with 'embedding' and 'logits'"
)


@dataclass
class Outputs:
    """One batch of model outputs: embeddings ``[B, D]`` and logits ``[B]``/``[B, C]`` or None."""

    embeddings: torch.Tensor
    logits: torch.Tensor | None


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (or ``cuda:N``) or ``auto`` (CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            "--device",
            f"{name} requested but CUDA is not available here",
            "use --device cpu or auto",
        )
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(
            "--device", f"{name!r} is not a device", "use cpu, cuda or auto"
        ) from error
    if device.type not in ("cpu", "cuda"):  # the diagnostics run in float64: CPU or CUDA only
        raise UsageError("--device", f"{name!r} is not supported", "use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise UsageError(
                "--device", f"{name} requested but this machine has {count} GPUs", "use cuda"
            )
    return device


def labels_parameter(model: nn.Module) -> str | None:
    """The name of ``forward``'s labels parameter (``labels``, ``targets``, ``y``...), if any."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((name for name in parameters if name in LABEL_PARAMETERS), None)


def split_output(output: Any, subject: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(embedding or None, logits or None)`` from whatever ``forward`` returned."""
    if isinstance(output, torch.Tensor):
        return None, output
    if isinstance(output, (tuple, list)):
        if len(output) == 2 and all(o is None or isinstance(o, torch.Tensor) for o in output):
            if output[0] is None:
                raise UsageError(subject, "returned (None, ...) as its embedding", EXPECTED_OUTPUT)
            return output[0], output[1]
        raise UsageError(
            subject,
            f"returned a {type(output).__name__} of {len(output)} items "
            f"({', '.join(_describe(o) for o in output[:4])})",
            EXPECTED_OUTPUT,
        )
    if isinstance(output, dict):
        embedding_key = next((k for k in EMBEDDING_KEYS if k in output), None)
        embedding = output[embedding_key] if embedding_key else None
        logits = output.get("logits")
        if embedding is None and logits is None:
            raise UsageError(
                subject, f"returned a dict with keys {list(output)[:6]}", EXPECTED_OUTPUT
            )
        for key, value in ((embedding_key, embedding), ("logits", logits)):
            if value is not None and not isinstance(value, torch.Tensor):
                raise UsageError(
                    subject, f"returned {key!r} as a {type(value).__name__}", "return tensors"
                )
        return embedding, logits
    raise UsageError(subject, f"returned {_describe(output)}", EXPECTED_OUTPUT)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {list(value.shape)}"
    return type(value).__name__


class _LabelsAdapter(nn.Module):
    """``forward(inputs, labels=None) -> logits`` around any model, for the margin-leak probe."""

    def __init__(self, model: nn.Module, parameter: str, subject: str) -> None:
        super().__init__()
        self.model = model
        self.parameter = parameter
        self.subject = subject

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        output = (
            self.model(inputs) if labels is None else self.model(inputs, **{self.parameter: labels})
        )
        embedding, logits = split_output(output, self.subject)
        return logits if logits is not None else embedding


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


class ModelRunner:
    """Run a loaded model batch by batch and return validated embeddings and logits.

    Parameters
    ----------
    loaded : LoadedModel
        From `embscope.cli.checkpoint.load_model`.
    device : torch.device
        Where to run.
    embedding_layer : str, optional
        Name of the submodule whose output is the embedding (``model.named_modules()``).
    hint : str
        What to check when ``forward`` rejects the inputs (depends on the data's kind).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        device: torch.device,
        embedding_layer: str | None = None,
        hint: str = "",
    ) -> None:
        self.loaded = loaded
        self.subject = f"{loaded.path}: model output"
        self.model = loaded.module
        self.device = device
        self.hint = hint
        if not loaded.exported:
            self.model.eval()  # exported programs are frozen in the mode they were traced in
        try:
            self.model.to(device)
        except Exception as error:
            raise UsageError(
                "--device",
                f"the model cannot be moved to {device} ({one_line(str(error), 120)})",
                "use --device cpu",
            ) from error
        self.labels_parameter = None if loaded.exported else labels_parameter(self.model)
        self.modules = dict(self.model.named_modules())
        if embedding_layer is not None and embedding_layer not in self.modules:
            names = [n for n in self.modules if n][-8:]
            raise UsageError(
                "--embedding-layer",
                f"the model has no submodule {embedding_layer!r}",
                f"the last names are {names}",
            )
        self.embedding_layer = embedding_layer
        self.embedding_source: str | None = None  # how the embedding is obtained, once known
        self._hooked: str | None = None  # the module whose tensor is the embedding
        self._recorder = _Recorder()
        self._head: nn.Module | None = None
        self._head_found = False

    @property
    def head(self) -> nn.Module | None:
        """The model's margin head (duck typing), for angles, ``m`` and ``s``; None without one."""
        if not self._head_found:
            from embscope.diagnostics import find_margin_head

            self._head = None if self.loaded.exported else find_margin_head(self.model)
            self._head_found = True
        return self._head

    def probe_margin_leak(self, batch: Batch) -> bool | None:
        """Does the eval-mode output change when labels are passed? None when forward takes none."""
        if self.labels_parameter is None:
            return None
        from embscope.diagnostics import probe_margin_leak

        adapter = _LabelsAdapter(self.model, self.labels_parameter, self.subject)
        inputs, labels = batch.inputs.to(self.device), batch.labels.to(self.device)
        try:
            with torch.no_grad():
                return bool(probe_margin_leak(adapter, inputs, labels))
        except UsageError:
            raise
        except Exception as error:
            raise UsageError(
                self.loaded.path,
                f"forward(inputs, {self.labels_parameter}=labels) failed "
                f"({one_line(f'{type(error).__name__}: {error}', 200)})",
                "make the labels argument optional and accept a [B] tensor of class indices",
            ) from error

    def __call__(self, batch: Batch) -> Outputs:
        """Run one batch; check and return its embeddings and logits."""
        inputs = batch.inputs.to(self.device)
        size = inputs.shape[0]
        first = self.embedding_source is None
        if first:
            self._watch_candidates()
        try:
            output, captured = self._forward(inputs)
        finally:
            if first:
                self._recorder.remove()
        embedding, logits = split_output(output, self.subject)
        if logits is not None:
            logits = self._check_logits(logits, size, batch.labels)
        if first:
            self._choose(embedding, logits, captured)
        if self._hooked is not None:
            embedding = captured.get(self._hooked)
        embedding = self._check_embedding(embedding, size)
        return Outputs(embedding.detach(), None if logits is None else logits.detach())

    # -- running ---------------------------------------------------------------------------

    def _forward(self, inputs: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]]:
        static = self.loaded.static_batch
        if static is None or inputs.shape[0] == static:
            return self._call(inputs), self._recorder.take()
        outputs, records = [], []
        for start in range(0, inputs.shape[0], static):
            chunk = inputs[start : start + static]
            real = chunk.shape[0]
            if real < static:  # pad by repeating the last sample; the padding is dropped below
                chunk = torch.cat([chunk, chunk[-1:].expand(static - real, *chunk.shape[1:])])
            outputs.append(_trim(self._call(chunk), real))
            records.append({k: v[:real] for k, v in self._recorder.take().items()})
        captured = {
            name: torch.cat([r[name] for r in records])
            for name in records[0]
            if all(name in r for r in records)
        }
        return _concat(outputs), captured

    def _call(self, inputs: torch.Tensor) -> Any:
        try:
            with torch.no_grad():
                return self.model(inputs)
        except torch.cuda.OutOfMemoryError as error:
            raise UsageError(
                "--batch-size",
                f"the model ran out of GPU memory on {self.device}",
                "lower --batch-size",
            ) from error
        except Exception as error:
            raise UsageError(
                self.loaded.path,
                f"the model's forward failed on inputs of shape {list(inputs.shape)} "
                f"({one_line(f'{type(error).__name__}: {error}', 200)})",
                self.hint or "check that the data has the shape the model expects",
            ) from error

    # -- finding the embedding -------------------------------------------------------------

    def _watch_candidates(self) -> None:
        """Before the first batch: watch the named layer, or every module with a 2-D weight."""
        if self.embedding_layer is not None:
            self._recorder.watch_output(self.embedding_layer, self.modules[self.embedding_layer])
            return
        for name, module in self.modules.items():
            weight = getattr(module, "weight", None)
            if name and isinstance(weight, torch.Tensor) and weight.ndim == 2:
                self._recorder.watch_input(name, module)

    def _choose(
        self,
        embedding: torch.Tensor | None,
        logits: torch.Tensor | None,
        captured: dict[str, torch.Tensor],
    ) -> None:
        """After the first batch: decide where the embedding comes from, keep one hook for it."""
        if self.embedding_layer is not None:
            name = self.embedding_layer
            self.embedding_source = f"the output of {name!r} (--embedding-layer)"
            self._recorder.watch_output(name, self.modules[name])
        elif embedding is not None:
            self.embedding_source = "the model's embedding output"
            return
        else:
            name = self._final_layer(logits, captured)
            if name is None:
                raise UsageError(
                    self.subject,
                    "is logits only, and no final Linear layer or margin head was found whose "
                    "input could serve as the embedding",
                    "return (embedding, logits) from forward, or pass --embedding-layer NAME",
                )
            kind = type(self.modules[name]).__name__
            self.embedding_source = f"the input of {name!r} ({kind})"
            self._recorder.watch_input(name, self.modules[name])
        self._hooked = name

    def _final_layer(
        self, logits: torch.Tensor | None, captured: dict[str, torch.Tensor]
    ) -> str | None:
        """The margin head if it fits, else the last-called module fed ``[B, D]`` with weight [C, D]."""
        width = None if logits is None else (1 if logits.ndim == 1 else logits.shape[1])
        fitting = []
        for name, value in captured.items():
            rows, cols = self.modules[name].weight.shape
            if value.ndim != 2 or not value.is_floating_point():
                continue
            dim = value.shape[1]
            if width is None:
                fits = dim in (rows, cols)
            else:
                fits = (rows, cols) in ((width, dim), (dim, width))
            if fits:
                fitting.append(name)
        head = self.head
        for name in fitting:
            if self.modules[name] is head:
                return name
        return fitting[-1] if fitting else None  # ``captured`` is in order of last call

    # -- checking --------------------------------------------------------------------------

    def _check_logits(self, logits: torch.Tensor, size: int, labels: torch.Tensor) -> torch.Tensor:
        if logits.ndim == 2 and logits.shape[1] == 1:
            logits = logits[:, 0]
        if (
            logits.ndim not in (1, 2)
            or logits.shape[0] != size
            or 0 in logits.shape[1:]
            or not logits.is_floating_point()
        ):
            raise UsageError(
                f"{self.subject} 'logits'",
                f"has shape {list(logits.shape)} ({logits.dtype}) for a batch of {size}",
                f"expected float logits [{size}] (one binary logit) or [{size}, C] with C >= 1",
            )
        low, high = int(labels.min()), int(labels.max())
        classes = 2 if logits.ndim == 1 else logits.shape[1]
        if low < 0 or high >= classes:
            columns = "one binary logit" if logits.ndim == 1 else f"{classes} columns"
            raise UsageError(
                f"{self.subject} 'logits'",
                f"has {columns} but the data's labels run from {low} to {high}",
                "the data must hold the model's classes, labelled as in training",
            )
        return logits

    def _check_embedding(self, embedding: torch.Tensor | None, size: int) -> torch.Tensor:
        where = f"{self.subject} 'embedding'"
        if self._hooked is not None:
            where = f"{self.loaded.path}: the embedding ({self.embedding_source})"
        if embedding is None:
            raise UsageError(
                where, "was not produced: the layer was not called", "pass --embedding-layer NAME"
            )
        if (
            embedding.ndim != 2
            or embedding.shape[0] != size
            or embedding.shape[1] == 0
            or not embedding.is_floating_point()
        ):
            raise UsageError(
                where,
                f"has shape {list(embedding.shape)} ({embedding.dtype}) for a batch of {size}",
                f"expected float embeddings [{size}, D] with D >= 1; return (embedding, logits) "
                "from forward, or pass --embedding-layer naming a layer after pooling/flattening",
            )
        return embedding


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
