"""``diagnose ... --distributed``: one report from K processes launched by torchrun.

::

    torchrun --nproc-per-node K -m embscope.cli.main CHECKPOINT DATA --distributed [options]

Every rank opens the same inputs and diagnoses its own shard: a contiguous block of the
samples of DATA (images, tensor file, table), or every K-th chunk of precomputed EMBEDDINGS.
``Diagnoser.compute()`` then syncs the ranks' states (see ``embscope.diagnostics.distributed``),
so that each holds the report of the whole set, and rank 0 alone writes it and prints the
summary; the other ranks exit 0. Under torchrun a failing rank makes torchrun itself exit 1,
whatever the rank's own exit status was.

The process group is read from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): nccl when ``--device`` resolves to CUDA (rank
r on ``cuda:LOCAL_RANK``), gloo on the CPU.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch

from embscope.cli.errors import UsageError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """This process's place in the group: rank in [0, world_size), its device and backend."""

    rank: int
    world_size: int
    local_rank: int
    backend: str  # "gloo" or "nccl"
    device: torch.device  # where this rank runs the model

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_active: Context | None = None


def active() -> Context | None:
    """The context of the running ``--distributed`` command, None outside one."""
    return _active


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous block of n samples; block sizes differ by at most 1,
    and the blocks, in rank order, are 0..n-1 in order."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size = {world_size}), got {rank}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


@contextmanager
def process_group(device: str = "auto") -> Iterator[Context]:
    """Join the torchrun group for the duration of a command (and leave it afterwards).

    device: ``--device``; "auto" or "cuda*" with CUDA available selects nccl and
    ``cuda:LOCAL_RANK``, anything else gloo and the CPU.
    """
    global _active
    import torch.distributed as dist

    missing = [v for v in TORCHRUN_VARIABLES if v not in os.environ]
    if missing:
        raise UsageError(
            "--distributed",
            f"needs the environment torchrun sets up, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set",
            "launch with torchrun --nproc-per-node K -m embscope.cli.main ... --distributed, "
            "or drop --distributed",
        )
    rank, world, local = (int(os.environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    cuda = device.startswith("cuda") or device == "auto"
    if cuda and torch.cuda.is_available():
        if device not in ("auto", "cuda"):
            raise UsageError(
                "--device",
                f"{device} names one GPU, but under --distributed rank r uses cuda:LOCAL_RANK",
                "pass --device cuda (or auto)",
            )
        torch.cuda.set_device(local)
        backend, where = "nccl", torch.device("cuda", local)
    elif device.startswith("cuda"):
        raise UsageError(
            "--device", f"{device} requested but CUDA is not available here", "use cpu or auto"
        )
    else:
        backend, where = "gloo", torch.device("cpu")
    if dist.is_initialized():
        raise UsageError("--distributed", "a process group is already initialised", "call once")
    dist.init_process_group(backend, rank=rank, world_size=world)
    _active = Context(rank, world, local, backend, where)
    try:
        yield _active
    finally:
        _active = None
        dist.destroy_process_group()


def shard_inputs(data: T) -> T:
    """This rank's contiguous block of an ``open_inputs`` source (as a shallow copy).

    Image folders are cut by file list, tensor files and tables by rows, so a rank reads only
    its own samples. Outside ``--distributed`` the source is returned as it is.
    """
    ctx = active()
    if ctx is None:
        return data
    n = len(data)  # type: ignore[arg-type]
    if n < ctx.world_size:
        raise UsageError(
            getattr(data, "path", "DATA"),
            f"holds {n} samples, fewer than the {ctx.world_size} processes",
            "launch fewer processes (--nproc-per-node)",
        )
    start, stop = shard_bounds(n, ctx.rank, ctx.world_size)
    part = copy.copy(data)
    cut = False
    for name in ("files", "inputs", "labels"):
        if hasattr(part, name):
            setattr(part, name, getattr(part, name)[start:stop])
            cut = True
    if not cut:
        raise TypeError(f"cannot shard {type(data).__name__}: it has no files, inputs or labels")
    return part


def shard_chunks(chunks: Iterable[T], count: int) -> Iterator[T]:
    """This rank's contiguous block of the ``count`` chunks (all of them outside --distributed).

    Used for precomputed embeddings, whose chunks are slices of memory-mapped arrays: chunks
    before the block are not read, and iteration stops after it. A rank may get no chunk."""
    ctx = active()
    start, stop = (0, count) if ctx is None else shard_bounds(count, ctx.rank, ctx.world_size)
    for i, chunk in enumerate(chunks):
        if i >= stop:
            return
        if i >= start:
            yield chunk


def main_rank_report(report: Any) -> Any | None:
    """The report to write: on rank 0, with ``meta["distributed"]``; None on the other ranks
    (outside --distributed: the report as it is)."""
    ctx = active()
    if ctx is None:
        return report
    if not ctx.is_main:
        return None
    info = {"world_size": ctx.world_size, "backend": ctx.backend}
    return replace(report, meta={**report.meta, "distributed": info})


def run_distributed(args: Any, run: Callable[[Any], int]) -> int:
    """``run(args)`` inside the torchrun process group (``args.distributed`` is cleared)."""
    if getattr(args, "demo", False):
        raise UsageError("--distributed", "does not apply to --demo", "drop one of them")
    with process_group(args.device):
        inner = copy.copy(args)
        inner.distributed = False
        return run(inner)
