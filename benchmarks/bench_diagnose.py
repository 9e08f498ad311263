"""`diagnose` on precomputed embeddings against the floor of reading the same files.

Cases (issue: performance):
  a) N = 470,000, D = 512, C = 2, logits [N, 2]   (the user's eye-state validation set)
  b) N = 200,000, D = 512, C = 1,000, logits [N, 1000]

The floor is a process that imports torch, reads the same .npy files in chunks and multiplies
the embeddings by the class centroids once. Both run as fresh processes (wall time, peak RSS of
the child), medians of --runs runs, after one warm-up run of each that puts the files in the page
cache. Goal: diagnose <= 3x the floor, peak RSS <= 1.0 GB for case (a).

    python benchmarks/bench_diagnose.py                 # both cases
    python benchmarks/bench_diagnose.py --case a --runs 3 --scale 0.1   # a tenth of the rows
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CASES = {"a": (470_000, 512, 2), "b": (200_000, 512, 1000)}

FLOOR = r"""
import sys, numpy as np, torch
d = sys.argv[1]
emb = np.load(d + "/embeddings.npy", mmap_mode="r")
lab = np.load(d + "/labels.npy", mmap_mode="r")
logits = np.load(d + "/logits.npy", mmap_mode="r")
k = int(sys.argv[2])
centroids = torch.randn(k, emb.shape[1])
rows = max(1, (32 << 20) // (emb.shape[1] * 4))
total = 0.0
for a in range(0, emb.shape[0], rows):
    x = torch.from_numpy(np.array(emb[a:a + rows]))
    z = torch.from_numpy(np.array(logits[a:a + rows]))
    y = torch.from_numpy(np.array(lab[a:a + rows]))
    total += float((x @ centroids.T).sum()) + float(z[:, 0].sum()) + float(y.sum())
print(total)
"""


def make_data(folder: Path, n: int, d: int, k: int, seed: int = 0) -> None:
    """Class-clustered float32 embeddings with logits, written in chunks (never all in RAM)."""
    g = np.random.default_rng(seed)
    centers = g.normal(size=(k, d)).astype(np.float32)
    emb = np.lib.format.open_memmap(folder / "embeddings.npy", "w+", np.float32, (n, d))
    logits = np.lib.format.open_memmap(folder / "logits.npy", "w+", np.float32, (n, k))
    labels = g.integers(0, k, n).astype(np.int64)
    np.save(folder / "labels.npy", labels)
    step = 50_000
    for a in range(0, n, step):
        y = labels[a : a + step]
        emb[a : a + step] = centers[y] + 1.5 * g.normal(size=(len(y), d)).astype(np.float32)
        z = g.normal(size=(len(y), k)).astype(np.float32)
        z[np.arange(len(y)), y] += 2.0
        logits[a : a + step] = z
    emb.flush()
    logits.flush()
    del emb, logits


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one child process, by GNU time."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    wall, kb = proc.stderr.strip().splitlines()[-1].split()
    return float(wall), int(kb) / 2**20


def bench(case: str, runs: int, scale: float, workdir: Path) -> dict:
    n, d, k = CASES[case]
    n = int(n * scale)
    folder = workdir / f"case_{case}"
    folder.mkdir(exist_ok=True)
    if not (folder / "labels.npy").exists():
        make_data(folder, n, d, k)
    floor_cmd = [sys.executable, "-c", FLOOR, str(folder), str(k)]
    out = workdir / f"report_{case}"
    diag_cmd = [shutil.which("diagnose") or "diagnose", str(folder), "--out", str(out), "--force"]
    subprocess.run(floor_cmd, capture_output=True)  # warm the page cache
    subprocess.run(diag_cmd, capture_output=True)
    floor, diag = [], []
    for _ in range(runs):  # interleaved, so both see the same machine load
        floor.append(run(floor_cmd))
        diag.append(run(diag_cmd))
    return {
        "case": case,
        "n": n,
        "d": d,
        "c": k,
        "floor_s": statistics.median(t for t, _ in floor),
        "diagnose_s": statistics.median(t for t, _ in diag),
        "floor_rss_gb": max(r for _, r in floor),
        "diagnose_rss_gb": max(r for _, r in diag),
    }


@contextmanager
def scratch(kept: Path | None, prefix: str = "embscope-bench-") -> Iterator[Path]:
    """The folder for the generated data: ``kept`` (--workdir), left in place afterwards, or a
    temporary one, removed afterwards."""
    workdir = kept or Path(tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield workdir
    finally:
        if kept is None:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=["a", "b", "all"], default="all")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the rows to use")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the generated data here")
    args = ap.parse_args()
    cases = ["a", "b"] if args.case == "all" else [args.case]
    print(f"# diagnose on precomputed .npy files ({os.cpu_count()} CPUs), medians of {args.runs}")
    print(
        "| case | N | D | C | floor s | diagnose s | ratio (goal <= 3) | floor RSS GB | diagnose RSS GB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with scratch(args.workdir) as workdir:
        for case in cases:
            r = bench(case, args.runs, args.scale, workdir)
            print(
                f"| {r['case']} | {r['n']:,} | {r['d']} | {r['c']} | {r['floor_s']:.2f} | "
                f"{r['diagnose_s']:.2f} | {r['diagnose_s'] / r['floor_s']:.2f} | "
                f"{r['floor_rss_gb']:.2f} | {r['diagnose_rss_gb']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
