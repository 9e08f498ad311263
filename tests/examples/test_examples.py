"""Every script in examples/ runs (with its quick flag) and writes what its header promises.

Each script runs in a fresh interpreter, as a user runs it, from the repository root. The CI
example is run the way its workflow runs it: the commands are read from embscope-ci.yml.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from embscope.diagnostics import Report, check_regression

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CI = EXAMPLES / "ci_regression"
REPORT = ("report.json", "report.md", "report.html")


def run(*args: object, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [str(a) for a in args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_script(path: Path, *args: object) -> subprocess.CompletedProcess[str]:
    result = run(sys.executable, path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def reports(*names: str) -> list[str]:
    return [f"{name}/{part}" for name in names for part in REPORT]


# script -> files its header promises under --out
PROMISES = {
    "eye_state_arcface.py": [
        *reports("bce", "arcface_s8", "arcface_leak_s16", "arcface_s64"),
        "comparison_arcface_s8.md",
        "comparison_arcface_leak_s16.md",
        "comparison_arcface_s64.md",
    ],
    "multiclass_margin_sweep.py": ["sweep.csv", "sweep.md", "sweep.png"],
    "fusion_two_views.py": [
        *reports("simple", "standard", "full", "advanced"),
        "presets.md",
    ],
    "focal_imbalanced.py": [
        *reports("bce", "focal_a25", "focal_a75"),
        "comparison_focal_a25.md",
        "comparison_focal_a75.md",
    ],
    "triplet_hard_mining.py": [*reports("random", "hard", "warmup_hard"), "comparison.md"],
    "segmentation_focal.py": [
        *reports("ce", "focal", "focal_alpha", "ce_weighted"),
        "per_class.md",
        "comparison_focal.md",
        "comparison_focal_alpha.md",
        "comparison_ce_weighted.md",
    ],
    "training_monitor.py": [
        "history.csv",
        "trends.png",
        "first_vs_last.md",
        *reports("last"),
    ],
}


def test_every_example_script_is_covered() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")} - {"ddp_validation.py"}
    assert scripts == set(PROMISES)


@pytest.mark.parametrize("script", sorted(PROMISES))
def test_example_writes_what_its_header_promises(script: str, tmp_path: Path) -> None:
    path = EXAMPLES / script
    header = path.read_text().split('"""')[1]
    assert "--out" in header and "--quick" in header and "Writes" in header
    out = tmp_path / "out"
    run_script(path, "--quick", "--out", out)
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    missing = set(PROMISES[script]) - written
    assert not missing, f"{script} did not write {sorted(missing)}"
    for name in written:
        if name.endswith("report.json"):
            report = Report.from_json((out / name).read_text())
            assert report.metrics["n"] > 0 and report.recommendations
        elif name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        elif name.endswith(".md"):
            assert (out / name).read_text().count("|") > 8  # a table


def workflow_commands() -> dict[str, str]:
    """name -> shell command of each ``run`` step in the workflow (folded ``>`` blocks joined)."""
    steps, name, lines, folded = {}, None, [], False
    for line in (CI / "embscope-ci.yml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("- name:"):
            name, folded = stripped.split(":", 1)[1].strip(), False
        elif stripped.startswith("run:") and name:
            value = stripped.split(":", 1)[1].strip()
            folded = value in (">", "|")
            lines = [] if folded else [value]
            steps[name] = " ".join(lines)
        elif folded and stripped and not stripped.startswith("#"):
            lines.append(stripped)
            steps[name] = " ".join(lines)
    return steps


def test_ci_example_baseline_workflow_and_pytest(tmp_path: Path) -> None:
    # make_baseline.py reproduces the committed baseline (same seeds, one thread)
    fresh = tmp_path / "baseline.json"
    run_script(CI / "make_baseline.py", "--work", tmp_path / "work", "--baseline", fresh)
    committed = Report.from_json((CI / "baseline.json").read_text())
    regenerated = Report.from_json(fresh.read_text())
    assert check_regression(regenerated, committed, tolerance=0.02) == []
    assert check_regression(committed, regenerated, tolerance=0.02) == []
    assert json.loads(fresh.read_text())["meta"]["source"]["checkpoint_kind"] == "state_dict"

    # the workflow's own commands, with build/ moved into tmp_path
    steps = workflow_commands()
    build = tmp_path / "build"

    def step(name: str) -> list[str]:
        # the build/ folder, not the factory name in digits_model.py:build
        return shlex.split(re.sub(r"(?<![:\w])build(?=/|\s|$)", str(build), steps[name]))

    train, check = step("Train the model"), step("Diagnose against the baseline")
    assert check[0] == "diagnose" and "--baseline" in check
    assert run(sys.executable, *train[1:]).returncode == 0
    diagnose = [str(Path(sys.executable).with_name("diagnose")), *check[1:]]
    result = run(*diagnose)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert re.search(r"no regression against .*baseline.json", result.stdout)
    assert (build / "report" / "report.html").is_file()

    # a worse model (1 epoch) fails the same check with exit status 1 and names the metrics
    worse = tmp_path / "worse"
    run_script(CI / "train_model.py", "--quick", "--out", worse)
    result = run(*[a.replace(str(build), str(worse)) for a in diagnose])
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr
    assert "regressions against" in result.stdout and "macro_f1" in result.stdout

    # the pytest step
    tests = step("The same check as a test")
    result = run(sys.executable, *tests[1:])
    assert result.returncode == 0, result.stdout[-3000:]
