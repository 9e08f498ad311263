"""Diagnoser throughput on in-memory chunks, on the CPU or a CUDA device.

Cases of the performance issue: (a) N = 470,000, D = 512, C = 2, logits [N, 2];
(b) N = 200,000, D = 512, C = 1,000, logits [N, 1000]. The data are generated on the device
in chunks of 65,536 rows (so file reading is not timed); the floor is one pass that multiplies
each chunk by the class centroids. Reported: update seconds (all chunks), compute seconds
(the report, reservoir metrics included), and the ratio of update + compute to the floor.

    python benchmarks/bench_diagnoser_device.py --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch

from embscope.diagnostics import Diagnoser

CASES = {"a": (470_000, 512, 2), "b": (200_000, 512, 1000)}
CHUNK = 65_536


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def chunks(n: int, d: int, k: int, device: str, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    centers = torch.randn(k, d, device=device, generator=g)
    for a in range(0, n, CHUNK):
        b = min(CHUNK, n - a)
        y = torch.randint(0, k, (b,), device=device, generator=g)
        x = centers[y] + 1.5 * torch.randn(b, d, device=device, generator=g)
        z = torch.randn(b, k, device=device, generator=g)
        z[torch.arange(b, device=device), y] += 2.0
        yield x, y, z


def bench(case: str, device: str, reservoir: int, scale: float = 1.0) -> dict:
    n, d, k = CASES[case]
    n = int(n * scale)
    data = list(chunks(n, d, k, device))
    sync(device)
    centroids = torch.randn(k, d, device=device)
    t = time.perf_counter()
    for x, _, _ in data:
        (x @ centroids.T).sum().item()
    sync(device)
    floor = time.perf_counter() - t
    diag = Diagnoser(reservoir_size=reservoir)
    t = time.perf_counter()
    for x, y, z in data:
        diag.update(x, y, z)
    sync(device)
    update = time.perf_counter() - t
    t = time.perf_counter()
    report = diag.compute()
    compute = time.perf_counter() - t
    return {
        "case": case,
        "floor": floor,
        "update": update,
        "compute": compute,
        "f1": report.metrics.get("f1", report.metrics.get("macro_f1")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--case", choices=["a", "b", "all"], default="all")
    ap.add_argument("--reservoir-size", type=int, default=10_000)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the rows")
    args = ap.parse_args()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"# Diagnoser on {name}, chunks of {CHUNK} rows, reservoir {args.reservoir_size}")
    print("| case | floor s | update s | compute s | (update + compute) / floor |")
    print("|---|---:|---:|---:|---:|")
    for case in ["a", "b"] if args.case == "all" else [args.case]:
        bench(case, args.device, args.reservoir_size, 0.1)  # warm-up (kernels, allocator)
        r = bench(case, args.device, args.reservoir_size, args.scale)
        ratio = (r["update"] + r["compute"]) / r["floor"]
        print(
            f"| {case} | {r['floor']:.3f} | {r['update']:.3f} | {r['compute']:.3f} | {ratio:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
