"""A Lightning callback: per-epoch reports, ``embscope/<metric>`` in the trainer's loggers, and
the run's history with its trend verdicts.

>>> from embscope.integrations.lightning import EmbscopeCallback             # doctest: +SKIP
>>> trainer = lightning.Trainer(callbacks=[EmbscopeCallback(out="runs/arcface")])  # doctest: +SKIP

During validation each batch is run through the LightningModule as `diagnose_model` runs a
model (eval mode, no gradients, the same embedding discovery); at the validation epoch's end
the Diagnoser is synced across DDP ranks with its own sync, the headline metrics are logged to
every logger of the trainer as ``embscope/<metric>`` (at the trainer's global step), a
TensorBoard logger also gets the key plots and the embedding projector, and rank 0 writes
``out/epoch_NNN/`` and ``out/history.csv`` / ``history.html`` (out defaults to
``<trainer.default_root_dir>/embscope``). The sanity-check validation is not diagnosed.

``lightning`` is imported when the callback is built (the ``lightning`` extra; the
``pytorch_lightning`` package works too).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .monitor import TrainingMonitor, _distributed
from .tensorboard import log_report, scalar_metrics


def _callback_base() -> type:
    try:
        from lightning.pytorch.callbacks import Callback
    except ImportError:
        try:
            from pytorch_lightning.callbacks import Callback
        except ImportError as error:
            raise ImportError(
                "EmbscopeCallback needs Lightning: pip install 'embscope[lightning]'"
            ) from error
    return Callback


def default_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, labels)`` of a batch ``(inputs, labels, ...)`` or a dict with ``inputs``/``x``
    and ``labels``/``y``/``target``."""
    if isinstance(batch, dict):
        inputs = next(
            (batch[k] for k in ("inputs", "input", "x", "image", "images") if k in batch), None
        )
        labels = next(
            (batch[k] for k in ("labels", "label", "y", "target", "targets") if k in batch), None
        )
        if inputs is None or labels is None:
            raise ValueError(
                f"cannot find inputs and labels among the batch's keys {sorted(batch)[:8]}; "
                "pass batch_to_xy=lambda batch: (inputs, labels)"
            )
        return inputs, labels
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        f"a batch is a {type(batch).__name__}; pass batch_to_xy=lambda batch: (inputs, labels)"
    )


class _EmbscopeHooks:
    """The callback (a ``lightning.pytorch.callbacks.Callback``).

    Parameters
    ----------
    out : folder for the reports and the history (default ``<default_root_dir>/embscope``).
    batch_to_xy : ``batch -> (inputs, labels)`` (default: the first two items, or dict keys).
    train_batches : also diagnose the first this many training batches of each epoch (in eval
        mode, after their optimiser step), so the history has a training report and the
        train/validation gap can be judged; 0 (default) diagnoses validation only.
    head, embedding_layer, task_metric, save_reports, projector_rows, **diagnoser_options :
        as for `TrainingMonitor`.
    images : send the key plots to a TensorBoard logger.
    """

    def __init__(
        self,
        out: str | os.PathLike[str] | None = None,
        *,
        batch_to_xy: Callable[[Any], tuple[Any, Any]] = default_batch,
        train_batches: int = 0,
        head: Any = None,
        embedding_layer: str | None = None,
        task_metric: str | None = None,
        images: bool = True,
        projector_rows: int = 1000,
        save_reports: bool = True,
        **diagnoser_options: Any,
    ) -> None:
        super().__init__()
        if not isinstance(train_batches, int) or train_batches < 0:
            raise ValueError(f"train_batches must be an integer >= 0, got {train_batches!r}")
        self.out = None if out is None else Path(out)
        self.batch_to_xy = batch_to_xy
        self.train_batches = train_batches
        self.images = bool(images)
        self.options = {
            "head": head,
            "embedding_layer": embedding_layer,
            "task_metric": task_metric,
            "save_reports": save_reports,
            "projector_rows": projector_rows,
            **diagnoser_options,
        }
        self.monitor: TrainingMonitor | None = None
        self.logged: list[dict[str, float]] = []  # what was logged, per epoch (all ranks)
        self._warned = False

    @property
    def history(self):
        return None if self.monitor is None else self.monitor.history

    def _monitor(self, trainer, pl_module) -> TrainingMonitor:
        if self.monitor is None:
            out = self.out or Path(trainer.default_root_dir) / "embscope"
            self.monitor = TrainingMonitor(pl_module, out, **self.options)
        return self.monitor

    # -- training batches (optional, for the train/validation gap) --------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx < self.train_batches:
            inputs, labels = self.batch_to_xy(batch)
            self._monitor(trainer, pl_module).update(inputs, labels, split="train")

    # -- validation ------------------------------------------------------------------------
    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if trainer.sanity_checking or dataloader_idx != 0:
            return
        inputs, labels = self.batch_to_xy(batch)
        self._monitor(trainer, pl_module).update(inputs, labels)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.monitor is None:
            return
        monitor = self.monitor
        before = len(monitor.reports["train"])
        epoch = trainer.current_epoch + 1
        taken = monitor.history.epochs()
        if epoch in taken:  # validation more than once per epoch (val_check_interval < 1)
            epoch = max(taken) + 1
            if not self._warned:
                self._warned = True
                warnings.warn(
                    "validation ran more than once in an epoch: the history numbers its "
                    "validations past the epoch (the step column holds the global step)",
                    stacklevel=2,
                )
        report = monitor.epoch_end(epoch, step=trainer.global_step)
        if report is None:
            return
        scalars = {f"embscope/{k}": v for k, v in scalar_metrics(report).items()}
        if len(monitor.reports["train"]) > before:
            train = monitor.reports["train"][-1]
            scalars.update({f"embscope_train/{k}": v for k, v in scalar_metrics(train).items()})
        self.logged.append(scalars)
        for logger in trainer.loggers:  # loggers write on rank 0 only
            logger.log_metrics(scalars, step=trainer.global_step)
        _, rank = _distributed()
        writer = _tensorboard_writer(trainer)
        if rank == 0 and writer is not None:
            # the scalars went through the loggers above; the plots and the projector here
            log_report(
                writer,
                report,
                trainer.global_step,
                scalars=False,
                images=self.images,
                sample=monitor.last_sample,
            )


def _tensorboard_writer(trainer) -> Any:
    """The SummaryWriter of the trainer's TensorBoard logger, if it has one."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "TensorBoardLogger":
            return logger.experiment
    return None


_CLASS = None


def __getattr__(name: str) -> Any:
    """``EmbscopeCallback`` is built on first use over Lightning's ``Callback``, so importing
    ``embscope.integrations`` never imports Lightning."""
    global _CLASS
    if name == "EmbscopeCallback":
        if _CLASS is None:
            _CLASS = type(
                "EmbscopeCallback",
                (_EmbscopeHooks, _callback_base()),
                {"__doc__": _EmbscopeHooks.__doc__, "__module__": __name__},
            )
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
