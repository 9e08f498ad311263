"""The gate on the command line: --gate, per-metric --tolerance, --fail-on on interval bounds,
repeated --baseline, --allow-different-data, and `diagnose compare A1 A2 -- B` deciding as the
gate does."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from embscope.cli.main import main


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


def write_npz(
    path: Path, seed: int, flip: float = 0.0, n: int = 600, rows: int | None = None
) -> Path:
    """Binary embeddings and one logit (the same samples and ids for every seed); ``flip`` turns
    that share of the right answers wrong."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    x = (rng.normal(size=(n, 8)) + y[:, None]).astype(np.float32)
    z = ((2 * y - 1) * (1.0 + rng.random(n) * 2)).astype(np.float32)
    z[rng.random(n) < 0.15] *= -1
    noise = np.random.default_rng(seed).normal(scale=0.05, size=n).astype(np.float32)
    z = z + noise
    if flip:
        right = np.flatnonzero((z > 0) == (y == 1))
        chosen = np.random.default_rng(seed).choice(right, int(flip * n), replace=False)
        z[chosen] *= -1
    ids = np.array([f"img{i:04d}.png" for i in range(n)])
    keep = slice(None) if rows is None else slice(0, rows)
    np.savez(path, embeddings=x[keep], labels=y[keep], logits=z[keep], ids=ids[keep])
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate")
    out = {}
    for name, seed, flip in (("a1", 1, 0.0), ("a2", 2, 0.0), ("a3", 3, 0.0), ("worse", 4, 0.08)):
        data = write_npz(root / f"{name}.npz", seed, flip)
        out[name] = root / name
        assert main([str(data), "--out", str(out[name])]) == 0
        out[f"{name}_npz"] = data
    out["fewer_npz"] = write_npz(root / "fewer.npz", 1, rows=500)
    out["root"] = root
    return out


def run(*argv: object) -> int:
    return main([str(a) for a in argv])


def test_the_same_recipe_passes_and_a_worse_model_fails(runs, tmp_path: Path, capsys) -> None:
    assert run(runs["a2_npz"], "--baseline", runs["a1"], "--out", tmp_path / "same") == 0
    assert "no regression against" in capsys.readouterr().out
    assert run(runs["worse_npz"], "--baseline", runs["a1"], "--out", tmp_path / "worse") == 1
    out = capsys.readouterr().out
    section = out.split("regressions against", 1)[1]
    assert "  accuracy: " in section and "paired by id" in section


def test_gate_and_per_metric_tolerance(runs, tmp_path: Path, capsys) -> None:
    argv = [runs["worse_npz"], "--baseline", runs["a1"], "--gate", "accuracy,fisher_ratio"]
    assert run(*argv, "--out", tmp_path / "o") == 1
    section = capsys.readouterr().out.split("regressions against", 1)[1]
    assert [line.split(":")[0].strip() for line in section.splitlines()[1:] if line] == ["accuracy"]
    assert (
        run(*argv, "--tolerance", "0.02", "--tolerance", "accuracy=0.5", "--out", tmp_path / "p")
        == 0
    )
    assert "(tolerance 0.02, accuracy=0.5)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--tolerance", "f1=abc", "must be a finite number >= 0, got 'f1=abc'"),
        ("--tolerance", "f2=0.1", "'f2' is not a metric with a better direction"),
        ("--gate", "n", "'n' is not a metric with a better direction"),
        ("--gate", "f1,,bad name", "is not a metric name"),
    ],
)
def test_bad_gate_options_are_exit_2(runs, tmp_path: Path, capsys, flag, value, expected) -> None:
    argv = [runs["a1_npz"], "--baseline", runs["a1"], flag, value, "--out", tmp_path / "o"]
    assert run(*argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and flag in err[0] and expected in err[0], err


def test_fail_on_interval_bounds(runs, tmp_path: Path, capsys) -> None:
    report = json.loads((runs["a1"] / "report.json").read_text())
    low = report["intervals"]["accuracy"][0]
    assert (
        run(runs["a1_npz"], "--fail-on", f"accuracy.low<{low + 0.001}", "--out", tmp_path / "a")
        == 1
    )
    assert "accuracy.low = " in capsys.readouterr().out
    assert run(runs["a1_npz"], "--fail-on", f"accuracy.high<{low}", "--out", tmp_path / "b") == 0
    # n has an exact interval [n, n]; a bound that no metric has is an error
    assert run(runs["a1_npz"], "--fail-on", "n.low<5", "--out", tmp_path / "c") == 0
    assert run(runs["a1_npz"], "--fail-on", "accuracy.lo<5", "--out", tmp_path / "d") == 2
    assert "no metric 'accuracy.lo'" in capsys.readouterr().err


def test_several_baselines(runs, tmp_path: Path, capsys) -> None:
    seeds = [a for name in ("a1", "a2", "a3") for a in ("--baseline", runs[name])]
    assert run(runs["a2_npz"], *seeds, "--out", tmp_path / "same") == 0
    assert "no regression against 3 baselines" in capsys.readouterr().out
    assert run(runs["worse_npz"], *seeds, "--out", tmp_path / "worse") == 1
    assert "spread of 3 baselines" in capsys.readouterr().out


def test_a_baseline_of_other_data_is_refused_unless_allowed(runs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    assert run(runs["fewer_npz"], "--baseline", runs["a1"], "--out", out) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"diagnose: error: --baseline: {runs['a1']} was computed on other data")
    assert "samples: report has 500, baseline has 600" in line
    assert line.endswith("(give a report of the same data, or pass --allow-different-data)")
    assert not out.exists()
    assert run(
        runs["fewer_npz"], "--baseline", runs["a1"], "--allow-different-data", "--out", out
    ) in (0, 1)


def test_compare_decides_as_the_gate_does(runs, capsys) -> None:
    a, worse = runs["a1"] / "report.json", runs["worse"] / "report.json"
    assert run("compare", a, worse) == 0
    out = capsys.readouterr().out
    assert out.startswith("**Verdict: a_better**")
    row = next(line for line in out.splitlines() if line.startswith("| accuracy |"))
    assert "worse: tolerance 0.02" in row
    assert "[" in row  # the intervals
    assert out.index("| accuracy |") < out.index("Other metrics (not in the verdict)")
    # several baselines, then --, then B
    seeds = [runs[n] / "report.json" for n in ("a1", "a2", "a3")]
    assert run("compare", *seeds, "--", runs["a2"] / "report.json") == 0
    assert "**Verdict: no_difference**" in capsys.readouterr().out
    # without --, three reports or more are ranked (diagnostics/ranking.py)
    assert run("compare", *seeds, runs["worse"] / "report.json") == 0
    assert "| 4 | worse |" in capsys.readouterr().out
    assert run("compare", a, a, worse) == 2
    assert "given twice" in capsys.readouterr().err
