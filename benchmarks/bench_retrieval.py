"""Exact retrieval (recall@1, MAP@R) time of embscope against pytorch-metric-learning.

Data: N samples of dimension D in C classes (labels uniform), rows = unit class centre +
sigma * Gaussian noise / sqrt(D), L2-normalised, seeded. Every sample queries all the others.

- embscope: ``knn_retrieval(x, y, ks=(1,))`` (blocked, each symmetric block product once);
- PML: ``AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"),
  k="max_bin_count").get_accuracy(x, y)``; on CPU with its default faiss ``IndexFlatL2`` as it
  ships (faiss-cpu), on CUDA with PML's own ``CustomKNN(CosineSimilarity(), batch_size)``
  (faiss-cpu cannot use the GPU).

Each run is a fresh process (so its peak RSS is its own): first one run of each to check that
recall@1 and MAP@R agree (the script stops if not), then ``--repeats`` timed runs of each,
alternating embscope and PML so that a noisy shared machine slows both alike. A time is the
call alone (data already built, on the device); a cell is the median of the runs. Wall time
is the goal's measure; the process CPU time (all threads) is printed beside it because it
moves less when other processes share the cores.

Usage::

    python benchmarks/bench_retrieval.py                    # N = 50,000, D = 512, C = 1,000
    python benchmarks/bench_retrieval.py --n 10000          # smaller
    python benchmarks/bench_retrieval.py --device cuda
    python benchmarks/bench_retrieval.py --device cuda --warm   # CUDA start-up not timed

Goal (performance issue): embscope / PML time <= 0.6 on CPU at N = 50,000, same values.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

GOAL = 0.6


def make_data(n: int, d: int, classes: int, sigma: float, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, d, generator=g), dim=1)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.empty(n, d)
    for s in range(0, n, 4096):  # in chunks: no N x D temporaries in the peak RSS
        rows = centres[y[s : s + 4096]]
        rows += sigma * torch.randn(rows.shape, generator=g) / math.sqrt(d)
        x[s : s + 4096] = torch.nn.functional.normalize(rows, dim=1)
    return x, y


def run_once(args) -> dict:
    """One call of one method in this process: values, seconds, peak RSS."""
    import torch

    logging.disable(logging.WARNING)  # PML logs its k-nn settings
    device = torch.device(args.device)
    x, y = make_data(args.n, args.d, args.classes, args.sigma, args.seed)
    x, y = x.to(device), y.to(device)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.child == "embscope":
        from embscope.diagnostics.retrieval import knn_retrieval

        def call():
            r = knn_retrieval(x, y, ks=(1,), chunk_size=args.chunk_size)
            return r.recall_at_k[1], r.map_at_r
    else:
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        kwargs = {}
        if device.type == "cuda":
            from pytorch_metric_learning.distances import CosineSimilarity
            from pytorch_metric_learning.utils.inference import CustomKNN

            kwargs["knn_func"] = CustomKNN(CosineSimilarity(), batch_size=4096)
        calc = AccuracyCalculator(
            include=("precision_at_1", "mean_average_precision_at_r"),
            k="max_bin_count",
            device=device,
            **kwargs,
        )

        def call():
            r = calc.get_accuracy(x, y)
            return r["precision_at_1"], r["mean_average_precision_at_r"]

    if args.warm:  # one untimed call first: CUDA context, cuBLAS handles, allocator pools
        call()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    recall, mapr = call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {
        "recall_at_1": recall,
        "map_at_r": mapr,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_with_data_mb": rss_data,
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def child(method: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method]
    for name in ("n", "d", "classes", "sigma", "seed", "device"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    if args.warm:
        cmd.append("--warm")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{method} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--classes", type=int, default=1_000)
    p.add_argument("--sigma", type=float, default=2.5, help="noise level (2.5: MAP@R ~0.35)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each method")
    p.add_argument("--max-seconds", type=float, default=600, help="stop repeating past this")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument(
        "--warm", action="store_true", help="time a second call in each process (GPU start-up out)"
    )
    p.add_argument("--child", choices=("embscope", "pml"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_once(args)))
        return

    import numpy as np
    import torch

    print(
        f"# N = {args.n}, D = {args.d}, C = {args.classes}, sigma = {args.sigma}, "
        f"device = {args.device}{', warm calls' if args.warm else ''}; torch {torch.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        flush=True,
    )
    ours, ref = child("embscope", args), child("pml", args)
    for key in ("recall_at_1", "map_at_r"):
        if not math.isclose(ours[key], ref[key], rel_tol=1e-6, abs_tol=1e-9):
            sys.exit(f"{key}: embscope {ours[key]!r} != PML {ref[key]!r}")
    print(
        f"# values agree: recall_at_1 {ours['recall_at_1']:.6f} (PML {ref['recall_at_1']:.6f}), "
        f"map_at_r {ours['map_at_r']:.6f} (PML {ref['map_at_r']:.6f})",
        flush=True,
    )

    runs: dict[str, list[dict]] = {"embscope": [], "pml": []}
    started = time.perf_counter()
    for _ in range(args.repeats):
        for method in ("embscope", "pml"):
            runs[method].append(child(method, args))
        if time.perf_counter() - started > args.max_seconds:
            break

    median = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
    cpu = {m: statistics.median(r["cpu_seconds"] for r in rs) for m, rs in runs.items()}
    gpu = args.device.startswith("cuda")
    head = (
        "| method | device | median s | runs (s) | ratio to PML | median CPU s | CPU ratio "
        "| peak RSS MB | RSS with data MB |"
    )
    if gpu:
        head += " peak GPU MB |"
    print()
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    names = {
        "embscope": "embscope knn_retrieval",
        "pml": "PML AccuracyCalculator (" + ("CustomKNN)" if gpu else "faiss IndexFlatL2)"),
    }
    for m, rs in runs.items():
        row = (
            f"| {names[m]} | {args.device} | {median[m]:.2f} | "
            + ", ".join(f"{r['seconds']:.2f}" for r in rs)
            + f" | {median[m] / median['pml']:.2f} | {cpu[m]:.2f} | {cpu[m] / cpu['pml']:.2f}"
            + f" | {max(r['peak_rss_mb'] for r in rs):.0f} | "
            + f"{max(r['rss_with_data_mb'] for r in rs):.0f} |"
        )
        if gpu:
            row += f" {max(r['peak_gpu_mb'] for r in rs):.0f} |"
        print(row)
    ratio = median["embscope"] / median["pml"]
    verdict = "met" if ratio <= GOAL else "NOT met"
    cpu_ratio = cpu["embscope"] / cpu["pml"]
    print(f"\nratio embscope / PML = {ratio:.2f} (goal <= {GOAL}: {verdict})")
    print(f"CPU-time ratio = {cpu_ratio:.2f} (moves less with other processes on the machine)")


if __name__ == "__main__":
    main()
