"""A DistributedDataParallel validation loop with a Diagnoser: one report over K processes.

What it shows: an ArcFace digit classifier (scikit-learn's 8x8 digits, 10 classes) trained with
DDP; after each epoch every rank feeds its shard of the validation set to its own ``Diagnoser``
and ``compute()`` returns, on every rank, the report of the whole validation set (the ranks'
states are synced with torch.distributed). Rank 0 prints each epoch's key metrics and, at the
end, checks the synced report against one process that diagnoses the whole validation set by
itself: the metrics agree to float32 rounding (the model and the per-batch sums see batches of
other sizes: 1e-6 to 1e-5 relative, the most in ``score_fisher``, a difference of sums of
squares) and the reservoir-based ones (retrieval, pairs, NC1) use the same sample.

Two details the loop gets right:

- the validation shard is a contiguous block per rank (``np.array_split``), not a
  ``DistributedSampler``, which pads the last ranks with repeated samples and so would count
  some samples twice;
- ``compute()`` syncs by itself (a collective: every rank must call it, also those that print
  nothing).

Run::

    torchrun --nproc-per-node 2 examples/ddp_validation.py     # any K; nccl when CUDA is there
    python examples/ddp_validation.py --world 3                # spawns K gloo processes itself

Options: ``--epochs`` (default 8), ``--world`` (spawn mode, default 2), ``--out DIR`` (rank 0
writes the last report there as report.json/report.md/report.html).
"""

from __future__ import annotations

import argparse
import math
import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from embscope.diagnostics import Diagnoser
from embscope.losses import ArcFaceHead

KEYS = ("accuracy", "macro_f1", "fisher_ratio", "recall_at_1", "margin_median", "gray_zone_count")


class DigitNet(nn.Module):
    """forward(x, labels=None) -> (embedding [B, 16], logits [B, 10]); ArcFace margin in training."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))
        self.head = ArcFaceHead(16, 10, m=0.3, s=16.0)

    def forward(self, x, labels=None):
        embedding = self.body(x)
        return embedding, self.head(embedding, labels)


def digits():
    """Train/validation split of the digits (fixed seed), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.7 * len(y))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def validate(model: DigitNet, x, y, rank, world, device) -> Diagnoser:
    """This rank's Diagnoser fed its contiguous block of the validation set (the plain module,
    not the DDP wrapper: evaluation needs no gradient sync)."""
    block = np.array_split(np.arange(len(y)), world)[rank]
    diagnoser = Diagnoser(head=model.head, reservoir_size=2000)
    model.eval()
    with torch.no_grad():
        for batch in np.array_split(block, max(1, math.ceil(len(block) / 128))):
            if len(batch) == 0:
                continue
            embedding, logits = model(x[batch].to(device))  # eval: no margin, labels or not
            diagnoser.update(embedding, y[batch], logits, ids=[f"val-{i}" for i in batch])
    model.train()
    return diagnoser


def run(rank: int, world: int, args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts them)
    (xt, yt), (xv, yv) = digits()
    net = DistributedDataParallel(
        DigitNet().to(device), device_ids=[device.index] if device.type == "cuda" else None
    )
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    sampler = torch.utils.data.DistributedSampler(
        torch.utils.data.TensorDataset(xt, yt), num_replicas=world, rank=rank, seed=0
    )
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        index = torch.tensor(list(sampler))
        for batch in index.split(64):
            embedding, logits = net(xt[batch].to(device), yt[batch].to(device))
            loss = nn.functional.cross_entropy(logits, yt[batch].to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        report = validate(net.module, xv, yv, rank, world, device).compute()  # every rank calls it
        if rank == 0:
            shown = "  ".join(f"{k} {report.metrics[k]:.4g}" for k in KEYS)
            print(f"epoch {epoch + 1}: n {report.metrics['n']:.0f}  {shown}", flush=True)

    if rank == 0:
        # the same model diagnosing the whole validation set in this one process
        alone = validate(net.module, xv, yv, 0, 1, device)
        alone.sync_on_compute = False
        single = alone.compute()
        worst, name = max(
            (abs(report.metrics[k] - v) / max(1.0, abs(v)), k)
            for k, v in single.metrics.items()
            if math.isfinite(v)
        )
        same_nan = all(
            math.isnan(report.metrics[k]) == math.isnan(v) for k, v in single.metrics.items()
        )
        print(
            f"\n{world} ranks vs one process: {len(single.metrics)} metrics, largest relative "
            f"difference {worst:.1e} (in {name}), nan in the same places: {same_nan}; "
            "reservoir-based metrics on "
            f"{single.sampled['recall_at_1']['sample_size']} of "
            f"{single.sampled['recall_at_1']['population']} samples in both"
        )
        for rec in report.recommendations[:3]:
            print(f"  [{rec.severity}] {rec.action}: {rec.reason}")
        if args.out:
            out = Path(args.out)
            report.save(out, force=True)  # this script's own folder
            print(f"report: {out / 'report.html'}")


def spawned(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        run(rank, world, args, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--world", type=int, default=2, help="processes to spawn without torchrun")
    parser.add_argument("--out", help="folder for the last report (rank 0)")
    args = parser.parse_args()
    if "RANK" in os.environ:  # under torchrun
        local = int(os.environ["LOCAL_RANK"])
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            backend, device = "nccl", torch.device("cuda", local)
        else:
            backend, device = "gloo", torch.device("cpu")
            torch.set_num_threads(1)
        dist.init_process_group(backend)
        try:
            run(dist.get_rank(), dist.get_world_size(), args, device)
        finally:
            dist.destroy_process_group()
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(
        spawned, args=(args.world, port, args), nprocs=args.world, start_method="spawn"
    )


if __name__ == "__main__":
    main()
