"""Running a model batch by batch: finding its embedding, reading and checking its output.

The embedding is, in this order of preference:

1. the output of ``embedding_layer``, when given (a name from ``model.named_modules()``);
2. the embedding the model returns (``(embedding, logits)`` or a dict, see `forward`);
3. the input of the final layer: the margin head when its shape fits the logits, else the
   last-called submodule with a 2-D ``weight`` ``[C, D]`` (or ``[D, C]``) fed a ``[B, D]``
   tensor, captured by a forward hook.

A ``torch.export.ExportedProgram`` runs through its unflattened module (submodules keep their
names, so the hooks work); one traced with a fixed batch size is fed batches of exactly that
size, the last one padded by repeating its final sample and the padding dropped again. The
model runs under ``torch.no_grad`` (``inference_mode`` tensors cannot re-enter exported
programs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from itertools import chain
from typing import Any

import torch
from torch import nn

from .errors import InputError
from .forward import labels_parameter, split_output
from .heads import find_margin_head, probe_margin_leak
from .recorder import _concat, _Recorder, _trim


def exported_module(program: torch.export.ExportedProgram) -> tuple[nn.Module, int | None]:
    """The runnable module of an exported program (unflattened when it can be, so submodules
    keep their names) and the batch size it was traced with when that is fixed, else None."""
    try:
        module = torch.export.unflatten(program)
    except Exception:  # some programs cannot be unflattened; they still run, without hooks
        module = program.module()
    return module, traced_batch(program)


def traced_batch(program: torch.export.ExportedProgram) -> int | None:
    """The traced batch size of the program's first user input when it is a plain integer."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            shape = getattr(node.meta.get("val"), "shape", None)
            if shape is not None and len(shape) > 0 and type(shape[0]) is int:
                return shape[0]
            return None
    return None


class ModelRunner:
    """Runs a model batch by batch and returns checked embeddings and logits.

    The embedding's source is decided on the first batch (see the module's docstring) and kept
    in ``embedding_source``. Errors are `InputError`.

    Parameters
    ----------
    model : nn.Module or torch.export.ExportedProgram
    head : nn.Module, optional
        The margin head; default found by duck typing (never in an exported program).
    device : str or torch.device, optional
        Where to move the model and run it; default where its parameters are.
    embedding_layer : str, optional
        The submodule whose output is the embedding.
    """

    def __init__(
        self,
        model: nn.Module | torch.export.ExportedProgram,
        *,
        head: nn.Module | None = None,
        device: str | torch.device | None = None,
        embedding_layer: str | None = None,
    ) -> None:
        if isinstance(model, torch.export.ExportedProgram):
            self.model, self.fixed_batch = exported_module(model)
            self.frozen = True  # exported programs keep the mode they were traced in
        elif isinstance(model, nn.Module):
            self.model, self.fixed_batch, self.frozen = model, None, False
        else:
            raise TypeError(
                "model must be a torch.nn.Module or a torch.export.ExportedProgram, "
                f"got {type(model).__name__}"
            )
        self.device = self._place(device)
        self.labels_parameter = None if self.frozen else labels_parameter(self.model)
        self.modules = dict(self.model.named_modules())
        if embedding_layer is not None and embedding_layer not in self.modules:
            names = [n for n in self.modules if n][-8:]
            raise InputError(
                "embedding_layer",
                f"the model has no submodule {embedding_layer!r}",
                f"the last names are {names}",
                argument="embedding_layer",
            )
        self.embedding_layer = embedding_layer
        self.head = head if head is not None or self.frozen else find_margin_head(self.model)
        self.embedding_source: str | None = None  # how the embedding is obtained, once known
        self._hooked: str | None = None  # the module whose tensor is the embedding
        self._hook_output = False  # whether that tensor is the module's output (else its input)
        self._recorder = _Recorder()

    def _place(self, device: str | torch.device | None) -> torch.device:
        if device is None:
            tensor = next(chain(self.model.parameters(), self.model.buffers()), None)
            return torch.device("cpu") if tensor is None else tensor.device
        try:
            device = torch.device(device)
            self.model.to(device)
        except Exception as error:
            raise InputError(
                "device",
                f"the model cannot be moved to {device} ({_one_line(error, 120)})",
                "use {device_cpu}",
                argument="device",
            ) from error
        return device

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode for the duration; every module's training flag restored afterwards. The
        embedding hook lives only inside: it is removed on the way out (so the model's own
        forwards, e.g. training between two diagnoses, record nothing) and put back on the
        way in."""
        if self.frozen:
            yield
            return
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        self._rehook()
        try:
            yield
        finally:
            self._recorder.remove()
            for module, mode in modes.items():
                module.training = mode

    def _rehook(self) -> None:
        if self._hooked is None or self._recorder.handles:
            return
        module = self.modules[self._hooked]
        if self._hook_output:
            self._recorder.watch_output(self._hooked, module)
        else:
            self._recorder.watch_input(self._hooked, module)

    def probe(self, inputs: torch.Tensor, labels: torch.Tensor) -> bool | None:
        """Does the eval-mode output change when labels are passed? None when forward takes
        none (`probe_margin_leak`)."""
        if self.labels_parameter is None:
            return None
        try:
            return bool(
                probe_margin_leak(self.model, inputs.to(self.device), labels.to(self.device))
            )
        except InputError:
            raise
        except Exception as error:
            # a forward that fails without labels too is about the inputs (their shape), not
            # the labels: that error, with the data's hint, is the one to report
            self._call(inputs.to(self.device), None)
            raise InputError(
                "model",
                f"forward(inputs, {self.labels_parameter}=labels) failed ({_one_line(error)})",
                "make the labels argument optional and accept a [B] tensor of class indices",
                argument="model",
            ) from error

    def __call__(
        self, inputs: torch.Tensor, labels: torch.Tensor, *, with_labels: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run one batch; check and return its embeddings ``[B, D]`` and logits (or None)."""
        if with_labels and self.labels_parameter is None:
            raise InputError(
                "eval_with_labels",
                "the model's forward takes no labels (a parameter named labels, targets or y)",
                "leave eval_with_labels off",
                argument="eval_with_labels",
            )
        inputs = inputs.to(self.device)
        size = inputs.shape[0]
        first = self.embedding_source is None
        if first:
            self._watch_candidates()
        try:
            output, captured = self._forward(
                inputs, labels.to(self.device) if with_labels else None
            )
        finally:
            if first:
                self._recorder.remove()
        embedding, logits = split_output(output)
        if logits is not None:
            logits = self._check_logits(logits, size, labels)
        if first:
            self._choose(embedding, logits, captured)
        if self._hooked is not None:
            embedding = captured.get(self._hooked)
        embedding = self._check_embedding(embedding, size)
        return embedding.detach(), None if logits is None else logits.detach()

    # -- running ---------------------------------------------------------------------------

    def _forward(
        self, inputs: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        fixed = self.fixed_batch
        if fixed is None or inputs.shape[0] == fixed:
            return self._call(inputs, labels), self._recorder.take()
        outputs, records = [], []
        for start in range(0, inputs.shape[0], fixed):
            chunk = inputs[start : start + fixed]
            real = chunk.shape[0]
            if real < fixed:  # pad by repeating the last sample; the padding is dropped below
                chunk = torch.cat([chunk, chunk[-1:].expand(fixed - real, *chunk.shape[1:])])
            outputs.append(_trim(self._call(chunk, None), real))
            records.append({k: v[:real] for k, v in self._recorder.take().items()})
        captured = {
            name: torch.cat([r[name] for r in records])
            for name in records[0]
            if all(name in r for r in records)
        }
        return _concat(outputs), captured

    def _call(self, inputs: torch.Tensor, labels: torch.Tensor | None) -> Any:
        try:
            with torch.no_grad():
                if labels is None:
                    return self.model(inputs)
                return self.model(inputs, **{self.labels_parameter: labels})
        except torch.cuda.OutOfMemoryError as error:
            raise InputError(
                "batch_size",
                f"the model ran out of GPU memory on {self.device}",
                "lower {batch_size}",
                argument="batch_size",
            ) from error
        except Exception as error:
            raise InputError(
                "model",
                f"forward failed on inputs of shape {list(inputs.shape)} ({_one_line(error)})",
                "check that the data has the shape the model expects",
                argument="inputs",
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
            self.embedding_source = f"the output of {name!r} (the embedding layer named)"
            self._recorder.watch_output(name, self.modules[name])
            self._hook_output = True
        elif embedding is not None:
            self.embedding_source = "the model's embedding output"
            return
        else:
            name = self._final_layer(logits, captured)
            if name is None:
                raise InputError(
                    "model output",
                    "is logits only, and no final Linear layer or margin head was found whose "
                    "input could serve as the embedding",
                    "return (embedding, logits) from forward, or pass {embedding_layer}",
                    argument="model",
                )
            kind = type(self.modules[name]).__name__
            self.embedding_source = f"the input of {name!r} ({kind})"
            self._recorder.watch_input(name, self.modules[name])
        self._hooked = name

    def _final_layer(
        self, logits: torch.Tensor | None, captured: dict[str, torch.Tensor]
    ) -> str | None:
        """The margin head if it fits, else the last-called module fed ``[B, D]`` with weight
        ``[C, D]``."""
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
        for name in fitting:
            if self.modules[name] is self.head:
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
            raise InputError(
                "model output 'logits'",
                f"has shape {list(logits.shape)} ({logits.dtype}) for a batch of {size}",
                f"expected float logits [{size}] (one binary logit) or [{size}, C] with C >= 1",
                argument="model",
            )
        low, high = int(labels.min()), int(labels.max())
        classes = 2 if logits.ndim == 1 else logits.shape[1]
        if low < 0 or high >= classes:
            columns = "one binary logit" if logits.ndim == 1 else f"{classes} columns"
            raise InputError(
                "model output 'logits'",
                f"has {columns} but the data's labels run from {low} to {high}",
                "the data must hold the model's classes, labelled as in training",
                argument="model",
            )
        return logits

    def _check_embedding(self, embedding: torch.Tensor | None, size: int) -> torch.Tensor:
        where = "model output 'embedding'"
        if self._hooked is not None:
            where = f"the embedding ({self.embedding_source})"
        if embedding is None:
            raise InputError(
                where,
                "was not produced: the layer was not called",
                "pass {embedding_layer}",
                argument="model",
            )
        if (
            embedding.ndim != 2
            or embedding.shape[0] != size
            or embedding.shape[1] == 0
            or not embedding.is_floating_point()
        ):
            raise InputError(
                where,
                f"has shape {list(embedding.shape)} ({embedding.dtype}) for a batch of {size}",
                f"expected float embeddings [{size}, D] with D >= 1; return (embedding, logits) "
                "from forward, or pass {embedding_layer} naming a layer after "
                "pooling/flattening",
                argument="model",
            )
        return embedding


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compute_outputs(diagnoser: Any) -> Any:
    """``diagnoser.compute()`` on what a model's outputs filled it with (a `Diagnoser` or a
    `ViewsDiagnoser`); no usable row (every output NaN/Inf, or all-zero) is an InputError that
    names the model's outputs."""
    try:
        return diagnoser.compute()
    except ValueError as error:
        raise InputError(
            "the model's outputs",
            str(error),
            "check the model's weights and that the data is scaled as in training",
            argument="outputs",
        ) from error
