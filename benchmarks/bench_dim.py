"""How `diagnose` scales with the embedding dimension D, against a streaming floor.

Cases (issue 11, "Cost that does not grow like the data"): N x D class-clustered float32
embeddings (C classes, optional [N, C] logits) for (N, D) in

    (300, 1024), (300, 4096), (300, 8192), (10000, 1024), (10000, 4096), (4, 100000)

Each case is written once to .npy files; then two fresh processes run alternately, after one
warm-up of each (files in the page cache), and each reports its own peak RSS:

- diagnose: imports embscope, loads the arrays, calls
  ``embscope.diagnostics.diagnose(x, y, logits)`` with default options;
- floor: imports torch, streams the same files in 32 MB chunks once (row norms and a float64
  sum of the rows by class, the logits' column sums), as ``bench_diagnose.py``'s floor reads
  its files once.

Cells are medians of --runs runs: the whole process (what the user waits for, as in
``bench_diagnose.py``) and, inside it, the diagnose() call and the floor's pass alone.
Goals: 300 x 8192 under 2 s, 10,000 x 4096 within 3x of the floor, memory linear in D.

    python benchmarks/bench_dim.py                      # every case, with logits
    python benchmarks/bench_dim.py --no-logits --runs 1
    python benchmarks/bench_dim.py --case 10000x4096 --profile   # cProfile of diagnose()
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_diagnose import scratch  # noqa: E402

CASES = [(300, 1024), (300, 4096), (300, 8192), (10_000, 1024), (10_000, 4096), (4, 100_000)]

# both children print one JSON line: seconds of the timed part and peak RSS (GB)
DIAGNOSE = r"""
import json, os, resource, sys, time
import numpy as np
from embscope.diagnostics import diagnose
d = sys.argv[1]
x = np.load(d + "/embeddings.npy")
y = np.load(d + "/labels.npy")
z = np.load(d + "/logits.npy") if os.path.exists(d + "/logits.npy") else None
if len(sys.argv) > 2:
    import cProfile, pstats
    cProfile.run("diagnose(x, y, z)", sys.argv[2])
    pstats.Stats(sys.argv[2]).sort_stats("cumulative").print_stats(25)
t = time.perf_counter()
report = diagnose(x, y, z)
s = time.perf_counter() - t
assert 0 < len(report.sections["pca"]["x"]) <= min(len(y), 2000)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"s": s, "rss": rss}))
"""

FLOOR = r"""
import json, os, resource, sys, time
import numpy as np, torch
d = sys.argv[1]
t = time.perf_counter()
emb = np.load(d + "/embeddings.npy", mmap_mode="r")
lab = np.load(d + "/labels.npy")
path = d + "/logits.npy"
logits = np.load(path, mmap_mode="r") if os.path.exists(path) else None
k = int(lab.max()) + 1
sums = torch.zeros(k, emb.shape[1], dtype=torch.float64)
norms = []
cols = 0.0
rows = max(1, (32 << 20) // (emb.shape[1] * 4))
for a in range(0, emb.shape[0], rows):
    x = torch.from_numpy(np.array(emb[a:a + rows]))
    y = torch.from_numpy(lab[a:a + rows])
    norms.append(torch.linalg.vector_norm(x, dim=1))
    sums.index_add_(0, y, x.double())
    if logits is not None:
        cols += float(torch.from_numpy(np.array(logits[a:a + rows])).sum())
total = float(sums.sum()) + float(torch.cat(norms).sum()) + cols
s = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"s": s, "rss": rss, "total": total}))
"""


def make_data(folder: Path, n: int, d: int, k: int, logits: bool, seed: int = 0) -> None:
    """Class-clustered float32 embeddings (class means of norm about sqrt(D), noise 1.5 per
    coordinate) and, when asked, logits with the true class raised by 2."""
    g = np.random.default_rng(seed)
    centers = g.normal(size=(k, d)).astype(np.float32)
    labels = np.arange(n) % k
    g.shuffle(labels)
    emb = np.lib.format.open_memmap(folder / "embeddings.npy", "w+", np.float32, (n, d))
    step = max(1, (64 << 20) // (d * 4))
    for a in range(0, n, step):
        y = labels[a : a + step]
        emb[a : a + step] = centers[y] + 1.5 * g.normal(size=(len(y), d)).astype(np.float32)
    emb.flush()
    del emb
    np.save(folder / "labels.npy", labels.astype(np.int64))
    if logits:
        z = g.normal(size=(n, k)).astype(np.float32)
        z[np.arange(n), labels] += 2.0
        np.save(folder / "logits.npy", z)


def run(code: str, *args: str) -> dict:
    """One fresh process: its wall seconds plus what it printed (timed part, peak RSS)."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall"] = wall
    return out


def bench(n: int, d: int, k: int, logits: bool, runs: int, workdir: Path) -> dict:
    folder = workdir / f"n{n}_d{d}_k{k}_{'z' if logits else 'noz'}"
    folder.mkdir(exist_ok=True)
    if not (folder / "labels.npy").exists():
        make_data(folder, n, d, k, logits)
    run(FLOOR, str(folder))  # warm the page cache and the imports
    run(DIAGNOSE, str(folder))
    floor, diag = [], []
    for _ in range(runs):  # interleaved, so both see the same machine load
        floor.append(run(FLOOR, str(folder)))
        diag.append(run(DIAGNOSE, str(folder)))

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    return {
        "n": n,
        "d": d,
        "k": k,
        "call_s": med(diag, "s"),
        "pass_s": med(floor, "s"),
        "diag_wall": med(diag, "wall"),
        "floor_wall": med(floor, "wall"),
        "diag_rss": max(r["rss"] for r in diag),
        "floor_rss": max(r["rss"] for r in floor),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", action="append", help="NxD, e.g. 10000x4096 (default: all)")
    ap.add_argument("--classes", type=int, default=10, help="C (at most N / 2 per case)")
    ap.add_argument("--no-logits", dest="logits", action="store_false")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile diagnose() and exit")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the generated data here")
    args = ap.parse_args()
    cases = [tuple(int(v) for v in c.lower().split("x")) for c in args.case] if args.case else CASES
    with scratch(args.workdir, prefix="embscope-bench-dim-") as workdir:
        if args.profile:
            for n, d in cases:
                k = max(2, min(args.classes, n // 2))
                folder = workdir / f"n{n}_d{d}_k{k}_{'z' if args.logits else 'noz'}"
                folder.mkdir(exist_ok=True)
                if not (folder / "labels.npy").exists():
                    make_data(folder, n, d, k, args.logits)
                proc = subprocess.run(
                    [sys.executable, "-c", DIAGNOSE, str(folder), str(workdir / "prof")],
                    capture_output=True,
                    text=True,
                )
                print(proc.stdout or proc.stderr[-3000:])
            return
        print(
            f"# diagnose by D ({os.cpu_count()} CPUs), logits {'[N, C]' if args.logits else 'none'}"
            f", medians of {args.runs}; seconds"
        )
        print(
            "| N | D | C | diagnose() | floor pass | process: diagnose | process: floor "
            "| ratio (processes) | ratio (calls) | RSS diagnose GB | RSS floor GB |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n, d in cases:
            r = bench(n, d, max(2, min(args.classes, n // 2)), args.logits, args.runs, workdir)
            print(
                f"| {r['n']:,} | {r['d']:,} | {r['k']} | {r['call_s']:.2f} | {r['pass_s']:.3f} | "
                f"{r['diag_wall']:.2f} | {r['floor_wall']:.2f} | "
                f"{r['diag_wall'] / r['floor_wall']:.2f} | {r['call_s'] / r['pass_s']:.0f} | "
                f"{r['diag_rss']:.2f} | {r['floor_rss']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
