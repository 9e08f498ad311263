"""The command line's side of running a model: ``--device``, and the library's model errors
(`embscope.diagnostics.runner`, which finds the embedding and runs the model) as one-line
`UsageError`s naming the checkpoint, the data or the flag at fault.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from embscope.cli.checkpoint import LoadedModel
from embscope.cli.data import Batch
from embscope.cli.errors import OPTIONS, UsageError, from_library
from embscope.diagnostics.errors import InputError


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


def model_error(
    error: InputError, checkpoint: object, data: object = "DATA", hint: str = ""
) -> UsageError:
    """The `UsageError` of an `InputError` raised while running ``checkpoint``'s model on
    ``data``: about the checkpoint (its model or output), the data, or a flag; a forward pass
    that failed on the inputs gets the data's ``hint`` as its fix."""
    argument, fix = error.argument, None
    if argument in ("model", "inputs"):
        subject = checkpoint if error.subject == "model" else f"{checkpoint}: {error.subject}"
        if argument == "inputs" and hint:
            fix = hint
    elif argument == "data":
        subject = data if error.subject == "data" else f"{data}: {error.subject}"
    elif argument == "outputs":
        subject = f"{checkpoint}: {error.subject} on {data}"
        fix = "check the checkpoint's weights and that the data is scaled as in training"
    else:
        subject = OPTIONS.get(argument or "", error.subject)
    return from_library(error, subject, fix)


class ModelRunner:
    """`embscope.diagnostics.runner.ModelRunner` for a loaded checkpoint, one `Batch` at a time,
    its errors as `UsageError` (``diagnose`` itself calls ``diagnose_model``).

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
        from embscope.diagnostics.runner import ModelRunner as Runner

        self.path: Path = loaded.path
        self.hint = hint
        with self._errors():
            self.runner = Runner(loaded.module, device=device, embedding_layer=embedding_layer)

    @property
    def head(self) -> torch.nn.Module | None:
        """The model's margin head (duck typing), for angles, ``m`` and ``s``; None without one."""
        return self.runner.head

    @property
    def embedding_source(self) -> str | None:
        """How the embedding is obtained, once the first batch ran."""
        return self.runner.embedding_source

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except InputError as error:
            raise model_error(error, self.path, hint=self.hint) from error

    def probe_margin_leak(self, batch: Batch) -> bool | None:
        """Does the eval-mode output change when labels are passed? None when forward takes none."""
        with self._errors(), self.runner.evaluating():
            return self.runner.probe(batch.inputs, batch.labels)

    def __call__(self, batch: Batch) -> Outputs:
        """Run one batch; check and return its embeddings and logits."""
        with self._errors(), self.runner.evaluating():
            embeddings, logits = self.runner(batch.inputs, batch.labels)
        return Outputs(embeddings, logits)
