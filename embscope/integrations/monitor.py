"""Watching a hand-written training loop: one object, ``update`` in the loop, ``epoch_end()``.

>>> monitor = TrainingMonitor(model, out="runs/arcface")            # doctest: +SKIP
>>> for epoch in range(1, epochs + 1):                                # doctest: +SKIP
...     train_one_epoch(model)
...     for x, y in val_loader:
...         monitor.update(x, y)
...     report = monitor.epoch_end()     # report of the epoch; history, page, TensorBoard

Each ``update(inputs, labels)`` runs the model on the batch as `diagnose_model` does (eval
mode, no gradients, the same embedding discovery: the model's own embedding output, else the
input of its final Linear layer or margin head, or ``embedding_layer``; training flags restored)
and feeds a streaming `Diagnoser`. ``update_outputs(embedding, labels, logits)`` feeds outputs
the loop already has. ``epoch_end`` computes the report (under torch.distributed: of every
rank's batches, with the Diagnoser's own sync), appends it to the `History`, and on rank 0 writes
``out/epoch_NNN/`` (Report.save), ``out/history.csv`` and ``out/history.html`` and logs to
TensorBoard when a writer or log folder is given (`embscope.integrations.tensorboard`).

The same object drives the Lightning callback (`embscope.integrations.lightning`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embscope.diagnostics.diagnoser import Diagnoser
from embscope.diagnostics.history import History
from embscope.diagnostics.report import Report
from embscope.diagnostics.runner import ModelRunner

HISTORY_FILE = "history.csv"
HISTORY_PAGE = "history.html"


def _distributed() -> tuple[bool, int]:
    """(initialised with more than one rank, this rank)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1, dist.get_rank()
    return False, 0


class TrainingMonitor:
    """Per-epoch diagnostics of a training run.

    Parameters
    ----------
    model : nn.Module
        The model being trained (``forward`` as `embscope.diagnostics.forward` describes).
    out : str or path, optional
        Folder for ``epoch_NNN/`` report folders, ``history.csv`` and ``history.html``
        (written by rank 0 only); None keeps everything in memory.
    tensorboard : SummaryWriter or str, optional
        A ``torch.utils.tensorboard.SummaryWriter``, or a log folder to open one in (rank 0).
    head, embedding_layer : as for `diagnose_model`.
    task_metric : str, optional
        The history's task metric (default f1, else macro_f1, else recall_at_1).
    save_reports : bool
        Write each epoch's report folder under ``out`` (True).
    projector_rows : int
        Reservoir rows sent to TensorBoard's embedding projector (0: none).
    **diagnoser_options
        `Diagnoser` options (reservoir_size, space, thresholds, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        out: str | os.PathLike[str] | None = None,
        *,
        tensorboard: Any = None,
        head: nn.Module | None = None,
        embedding_layer: str | None = None,
        task_metric: str | None = None,
        save_reports: bool = True,
        projector_rows: int = 1000,
        **diagnoser_options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        Diagnoser(**diagnoser_options)  # options checked now, not at the first epoch's end
        self.model = model
        self.out = None if out is None else Path(out)
        self.head = head
        self.embedding_layer = embedding_layer
        self.save_reports = bool(save_reports)
        self.projector_rows = int(projector_rows)
        self.options = dict(diagnoser_options)
        self.history = History(task_metric=task_metric)
        self.reports: dict[str, list[Report]] = {"val": [], "train": []}
        self._writer = tensorboard
        self._own_writer = False
        self._phases: dict[str, _Phase] = {}
        self.last_sample = None  # (rows, labels) of the last validation reservoir, for TensorBoard

    # -- feeding ---------------------------------------------------------------------------
    def update(self, inputs: torch.Tensor, labels: torch.Tensor, *, split: str = "val") -> None:
        """Run the model on one batch (eval mode, no gradients) and feed its embeddings and
        logits to ``split``'s Diagnoser (``"val"``, or ``"train"`` for the train/validation
        gap)."""
        self._phase(split).run(inputs, labels)

    def update_outputs(
        self,
        embedding: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor | None = None,
        *,
        split: str = "val",
    ) -> None:
        """Feed outputs the loop already computed (``embedding [B, D]``, ``logits``)."""
        self._phase(split, runner=False).feed(embedding, labels, logits)

    def _phase(self, split: str, runner: bool = True) -> _Phase:
        if split not in ("val", "train"):
            raise ValueError(f"split must be 'val' or 'train', got {split!r}")
        if split not in self._phases:
            self._phases[split] = _Phase(self, runner)
        return self._phases[split]

    # -- epoch end -------------------------------------------------------------------------
    def epoch_end(self, epoch: int | None = None, *, step: int | None = None) -> Report | None:
        """Compute the epoch's reports, append them to the history, write and log them.

        ``epoch`` defaults to one after the last; ``step`` is the TensorBoard step (default the
        epoch). Returns the validation report (None when no validation batch was fed). Every
        rank must call it (the reports are synced); only rank 0 writes files and logs.
        """
        if epoch is None:
            epoch = max(self.history.epochs("val") + self.history.epochs("train"), default=0) + 1
        for split in ("val", "train"):  # the same on every rank: all raise, none hangs
            if epoch in self.history.epochs(split):
                raise ValueError(f"epoch {epoch} of split {split!r} is already in the history")
        phases, self._phases = self._phases, {}
        distributed, rank = _distributed()
        if distributed:  # every rank finishes the splits any rank fed (the syncs must pair up)
            for split in _splits_on_any_rank(phases):
                phases.setdefault(split, _Phase(self, False))
        reports: dict[str, Report] = {}
        diagnosers: dict[str, Diagnoser] = {}
        for split in ("val", "train"):
            phase = phases.get(split)
            if phase is None:
                continue
            report, diagnoser = phase.finish()
            self.history.append(report, epoch=epoch, split=split, step=step)
            self.reports[split].append(report)
            reports[split], diagnosers[split] = report, diagnoser
        if not reports:
            return None
        if "val" in diagnosers and self.projector_rows > 0:
            from .tensorboard import reservoir_sample

            self.last_sample = reservoir_sample(diagnosers["val"], self.projector_rows)
        if rank == 0:
            self._write(epoch, reports)
            self._log(epoch if step is None else step, reports)
        return reports.get("val")

    def _write(self, epoch: int, reports: dict[str, Report]) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if self.save_reports:
            for split, report in reports.items():
                name = f"epoch_{epoch:03d}" + ("" if split == "val" else "_train")
                report.save(self.out / name, force=True)
        self.history.save(self.out / HISTORY_FILE)
        (self.out / HISTORY_PAGE).write_text(self.history.to_html(), encoding="utf-8")

    def _log(self, step: int, reports: dict[str, Report]) -> None:
        writer = self.writer()
        if writer is None:
            return
        from .tensorboard import log_report

        for split, report in reports.items():
            log_report(
                writer,
                report,
                step,
                prefix="embscope" if split == "val" else "embscope_train",
                images=split == "val",
                sample=self.last_sample if split == "val" else None,
            )
        writer.flush()

    def writer(self) -> Any:
        """The TensorBoard SummaryWriter (opened on first use from a log folder), or None."""
        if isinstance(self._writer, (str, os.PathLike)):
            from torch.utils.tensorboard import SummaryWriter

            self._writer, self._own_writer = SummaryWriter(str(self._writer)), True
        return self._writer

    def judge(self, **options: Any) -> list:
        """The history's trend verdicts (`History.judge`)."""
        return self.history.judge(**options)

    def close(self) -> None:
        """Close a SummaryWriter this monitor opened."""
        if self._own_writer and self._writer is not None:
            self._writer.close()


class _Phase:
    """One split's Diagnoser for the current epoch, fed batch by batch."""

    def __init__(self, monitor: TrainingMonitor, with_runner: bool) -> None:
        self.monitor = monitor
        self.with_runner = with_runner
        self.head = monitor.head
        self.diagnoser: Diagnoser | None = None
        self.runner: ModelRunner | None = None
        self.probed = False

    def _diagnoser(self, leak: bool | None) -> Diagnoser:
        if self.diagnoser is None:
            self.diagnoser = Diagnoser(head=self.head, margin_leak=leak, **self.monitor.options)
        return self.diagnoser

    def run(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        if not self.with_runner:
            raise RuntimeError("this epoch was fed outputs: use update_outputs for all batches")
        labels = torch.as_tensor(labels)
        m = self.monitor
        # one runner for the epoch: it finds the embedding on the first batch and keeps its
        # hook only inside evaluating(), so training forwards between batches record nothing
        if self.runner is None:
            self.runner = ModelRunner(m.model, head=m.head, embedding_layer=m.embedding_layer)
        runner = self.runner
        leak = None
        with runner.evaluating():
            if not self.probed:  # once per epoch, as diagnose_model probes its first batch
                # a forward without labels cannot leak a margin: no leak, as diagnose_model
                leak = bool(runner.probe(inputs, labels))
                self.probed = True
            embedding, logits = runner(inputs, labels)
        self.head = runner.head
        self._diagnoser(leak).update(embedding, labels, logits)

    def feed(self, embedding, labels, logits) -> None:
        self._diagnoser(None).update(embedding.detach(), labels, logits)

    def finish(self) -> tuple[Report, Diagnoser]:
        diagnoser = self._diagnoser(None)
        distributed, _ = _distributed()
        if distributed and diagnoser.sync_on_compute:
            # every rank must take part, including one that saw no batch; synced in place so
            # the reservoir (for the projector) covers every rank too
            _join(diagnoser)
            diagnoser.sync(diagnoser.process_group)
        return diagnoser.compute(), diagnoser


def _splits_on_any_rank(phases: dict) -> list[str]:
    import torch.distributed as dist

    from embscope.diagnostics.distributed import collective_device

    fed = torch.tensor([float(s in phases) for s in ("val", "train")], device=collective_device())
    dist.all_reduce(fed, op=dist.ReduceOp.MAX)
    return [s for s, f in zip(("val", "train"), fed.tolist(), strict=True) if f]


def _join(diagnoser: Diagnoser) -> None:
    """Make every rank agree on the margin-leak probe: leaks if any rank's probe said so; not
    probed (None) only when no rank probed."""
    import torch.distributed as dist

    from embscope.diagnostics.distributed import collective_device

    leak = diagnoser.margin_leak
    code = torch.tensor(
        [-1.0 if leak is None else float(bool(leak))],
        device=collective_device(diagnoser.process_group),
    )
    dist.all_reduce(code, op=dist.ReduceOp.MAX, group=diagnoser.process_group)
    diagnoser.margin_leak = None if code.item() < 0 else bool(code.item())


def format_losses(
    total: Any, terms: dict[str, Any] | None = None, *, digits: int = 4, drop_zero: bool = True
) -> str:
    """``loss=0.8234(cls=0.7123,cons=0.0956,attn=0.0155)`` for a tqdm postfix.

    ``total`` is a number or a scalar tensor, or the ``(total, {name: term})`` pair a
    `FusionLoss` returns (then ``terms`` is taken from it); ``digits`` decimals. Terms that are
    exactly 0 are left out (``drop_zero``): FusionLoss reports a term whose weight is 0 as a
    zero tensor.

    >>> format_losses(0.82344, {"cls": 0.71231, "cons": 0.09561})
    'loss=0.8234(cls=0.7123,cons=0.0956)'
    """
    if terms is None and isinstance(total, (tuple, list)) and len(total) == 2:
        total, terms = total
    text = f"loss={_number(total):.{digits}f}"
    shown = {k: _number(v) for k, v in (terms or {}).items()}
    if drop_zero:
        shown = {k: v for k, v in shown.items() if v != 0.0}
    if shown:
        text += "(" + ",".join(f"{k}={v:.{digits}f}" for k, v in shown.items()) + ")"
    return text


def _number(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"a loss term must be a scalar, got a tensor of shape {list(value.shape)}"
            )
        return float(value.detach())
    return float(value)
