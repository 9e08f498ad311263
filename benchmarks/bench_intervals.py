"""What the intervals cost: `diagnose` on case (a) of bench_diagnose.py (N = 470,000, D = 512,
logits [N, 2]) with and without the interval step, as fresh processes, interleaved so both
see the same machine load; medians of --runs runs after one warm-up each, wall and CPU time.

"Without" is the same command with ``assembly.with_intervals`` replaced by the identity (no
intervals, no samples.npz), so the difference is the interval step and the sidecar file.

    python benchmarks/bench_intervals.py --runs 3 [--scale 0.1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_diagnose import CASES, make_data, scratch  # noqa: E402

RUN = r"""
import sys
if sys.argv[1] == "off":
    import embscope.diagnostics.assembly as assembly
    assembly.with_intervals = lambda report, d, **options: report
from embscope.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one child process, by GNU time."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %U %S", *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    wall, user, system = proc.stderr.strip().splitlines()[-1].split()
    return float(wall), float(user) + float(system)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the rows to use")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the generated data here")
    args = ap.parse_args()
    with scratch(args.workdir) as workdir:
        n, d, k = CASES["a"]
        n = int(n * args.scale)
        folder = workdir / "case_a"
        folder.mkdir(exist_ok=True)
        if not (folder / "labels.npy").exists():
            make_data(folder, n, d, k)
        cmds = {
            mode: [
                sys.executable,
                "-c",
                RUN,
                mode,
                str(folder),
                "--out",
                str(workdir / mode),
                "--force",
            ]
            for mode in ("off", "on")
        }
        for cmd in cmds.values():  # warm-up: page cache, imports
            timed(cmd)
        times: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
        for _ in range(args.runs):
            for mode, cmd in cmds.items():
                times[mode].append(timed(cmd))
        print(
            f"# diagnose case a ({n:,} x {d}, logits [N, {k}]), {os.cpu_count()} CPUs, medians of {args.runs}"
        )
        print("| intervals | wall s | CPU s |")
        print("|---|---:|---:|")
        med = {}
        for mode in ("off", "on"):
            wall = statistics.median(t for t, _ in times[mode])
            cpu = statistics.median(c for _, c in times[mode])
            med[mode] = (wall, cpu)
            print(f"| {mode} | {wall:.2f} | {cpu:.2f} |")
        print(
            f"| cost | {100 * (med['on'][0] / med['off'][0] - 1):+.1f}% | "
            f"{100 * (med['on'][1] / med['off'][1] - 1):+.1f}% |"
        )
        print(
            "all runs (wall, CPU):",
            {m: [(round(w, 2), round(c, 2)) for w, c in t] for m, t in times.items()},
        )


if __name__ == "__main__":
    main()
