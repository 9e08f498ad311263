"""Cost of ``Diagnoser.sync`` across K gloo processes on one machine, against the updates.

Each rank feeds N / K samples (D columns, C classes, logits [N, C], string ids) in batches of
4096, then times ``sync()`` on fresh copies of its state. Printed: the update time per rank (the
work being parallelised) and the sync time (median of --runs).

    python benchmarks/bench_sync.py                          # N = 200,000, D = 128, C = 10, K = 2
    python benchmarks/bench_sync.py --n 470000 --d 512 --c 2 --world 2
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from embscope.diagnostics import Diagnoser


def worker(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.world
    )
    g = np.random.default_rng(rank)
    n = args.n // args.world
    d = Diagnoser(reservoir_size=args.reservoir)
    start = time.perf_counter()
    for a in range(0, n, 4096):
        b = min(n, a + 4096)
        y = g.integers(0, args.c, b - a)
        x = g.normal(size=(b - a, args.d)).astype(np.float32)
        z = g.normal(size=(b - a, args.c)).astype(np.float32)
        d.update(x, y, z, ids=[f"r{rank}/img_{i:08d}.png" for i in range(a, b)])
    update_s = time.perf_counter() - start
    times = []
    for _ in range(args.runs):
        c = copy.deepcopy(d)
        dist.barrier()
        start = time.perf_counter()
        c.sync()
        times.append(time.perf_counter() - start)
    if rank == 0:
        with open(os.path.join(out, "result.txt"), "w") as f:
            f.write(
                f"N={args.n} D={args.d} C={args.c} K={args.world} reservoir={args.reservoir}: "
                f"update {update_s:.2f} s per rank ({n} samples), "
                f"sync median {statistics.median(times):.3f} s "
                f"(min {min(times):.3f}, {args.runs} runs)\n"
            )
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--c", type=int, default=10)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--reservoir", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(worker, args=(args, port, out), nprocs=args.world, start_method="spawn")
        with open(os.path.join(out, "result.txt")) as f:
            print(f.read(), end="")


if __name__ == "__main__":
    main()
