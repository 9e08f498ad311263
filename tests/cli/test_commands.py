"""Whole commands in-process through ``main(argv)``: margin heads, precomputed embeddings, CI
rules, ``compare``, ``--force``, atomic writes and the ``--demo`` hook."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from embscope.cli.main import main
from embscope.diagnostics import Report, diagnose
from tests.cli.conftest import Digits, reference


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


def run(*argv: object) -> int:
    return main([str(a) for a in argv])


def read(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def actions(report: dict) -> dict[str, dict]:
    return {r["action"]: r for r in report["recommendations"]}


@pytest.fixture(scope="module")
def embeddings(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The trained net's embeddings and logits, saved the three precomputed ways."""
    root = tmp_path_factory.mktemp("embeddings")
    with torch.no_grad():
        e = digits.net.body(digits.x).numpy()
        z = digits.net.classifier(torch.from_numpy(e)).numpy()
    y = digits.y.numpy()
    ids = np.array([f"sample-{i}" for i in range(len(y))])
    folder = root / "folder"
    folder.mkdir()
    np.save(folder / "embeddings.npy", e)
    np.save(folder / "labels.npy", y)
    np.save(folder / "logits.npy", z)
    (folder / "ids.txt").write_text("\n".join(ids) + "\n")
    np.savez_compressed(root / "compressed.npz", embeddings=e, labels=y, logits=z, ids=ids)
    torch.save(
        {"embeddings": torch.from_numpy(e), "labels": digits.y, "logits": torch.from_numpy(z)},
        root / "e.pt",
    )
    return {
        "e": e,
        "z": z,
        "y": y,
        "folder": folder,
        "npz": root / "compressed.npz",
        "pt": root / "e.pt",
    }


def test_leaky_arcface_head_yields_fix_eval_margin(
    digits: Digits,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(digits.root)  # digits_model is importable from the current folder
    out = tmp_path / "leaky"
    assert (
        run(digits.leaky, digits.tensors_pt, "--model", "digits_model:make_arc", "--out", out) == 0
    )
    report = read(out)
    assert report["metrics"]["head.margin_leak"] == 1.0
    fix = actions(report)["fix_eval_margin"]
    assert fix["severity"] == "error"
    assert report["recommendations"][0]["action"] == "fix_eval_margin"
    # The head was found by duck typing: its settings are in the report.
    assert report["metrics"]["head.s"] == pytest.approx(16.0)
    assert report["metrics"]["head.m"] == pytest.approx(0.2)
    assert "fix_eval_margin" in capsys.readouterr().out


def test_two_class_arcface_with_s64_yields_decrease_scale(
    digits: Digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s = 64 on two classes: no scale advice while the saturated outputs are right (the clean
    scans, accuracy 1), decrease_scale once they are saturated beyond what the data supports
    (the same scans with pixel noise: errors at P = 1)."""
    monkeypatch.chdir(digits.root)
    out = tmp_path / "arc64"
    assert (
        run(digits.binary_s64, digits.binary_x, "--model", "digits_model:make_arc", "--out", out)
        == 0
    )
    report = read(out)
    metrics = report["metrics"]
    assert metrics["head.s"] == pytest.approx(64.0)
    assert metrics["head.num_classes"] == 2
    # The same head without the leak: the probe tells them apart.
    assert metrics["head.margin_leak"] == 0.0
    assert "fix_eval_margin" not in actions(report)
    assert metrics["saturation_fraction"] > 0.9 and metrics["accuracy"] > 0.99
    assert "decrease_scale" not in actions(report)
    data = torch.load(digits.binary_x)
    noise = torch.randn(data["x"].shape, generator=torch.Generator().manual_seed(0))
    noisy = tmp_path / "noisy.pt"
    torch.save({"x": data["x"] + 0.8 * noise, "y": data["y"]}, noisy)
    out = tmp_path / "arc64_noisy"
    assert run(digits.binary_s64, noisy, "--model", "digits_model:make_arc", "--out", out) == 0
    decrease = actions(read(out))["decrease_scale"]
    assert decrease["severity"] == "info"  # its track record: see docs/recommendations.md
    assert 0 < decrease["value"] < 64 / 2
    assert "track_record" in decrease["evidence"]


def test_collapse_of_a_model_without_labels_points_at_the_head_not_the_margin(
    digits: Digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plain classifier (forward takes no labels) whose bias sends every sample to class 1:
    # the seed's symptom, but no margin can have reached its eval logits.
    monkeypatch.chdir(digits.root)
    torch.manual_seed(4)
    net = digits.module.make_net(hidden=16, num_classes=2)
    with torch.no_grad():
        net.classifier.bias.copy_(torch.tensor([-50.0, 50.0]))
    checkpoint = tmp_path / "collapsed.pt"
    torch.save({"model": net.state_dict(), "config": {"hidden": 16, "num_classes": 2}}, checkpoint)
    out = tmp_path / "collapsed"
    assert run(checkpoint, digits.binary_x, "--model", "digits_model:make_net", "--out", out) == 0
    report = read(out)
    assert report["metrics"]["pred_positive_rate"] == 1.0
    assert report["metrics"]["head.margin_leak"] == 0.0
    assert report["meta"]["source"]["margin_leak_probed"] is False
    found = actions(report)
    assert "fix_eval_margin" not in found
    assert found["check_head"]["severity"] == "warning"
    assert "pred_positive_rate" in found["check_head"]["evidence"]


def test_precomputed_embeddings_match_the_one_shot_report(
    embeddings: dict[str, object], tmp_path: Path
) -> None:
    """Streamed from a compressed .npz in chunks of 97 rows: the one-shot numbers. (The folder
    is run in the --force test; every format's chunks are compared in test_loaders.py.)"""
    out = tmp_path / "npz"
    assert run(embeddings["npz"], "--batch-size", "97", "--out", out) == 0
    got = read(out)["metrics"]
    expected = diagnose(embeddings["e"], embeddings["y"], logits=embeddings["z"]).metrics
    assert set(got) == set(expected)
    for name, value in expected.items():
        if math.isnan(value):
            assert got[name] == "nan", name
        else:
            assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


def test_fail_on_breaks_on_a_rule_and_on_nan(
    embeddings: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rules = "accuracy>0.5,fisher_ratio<0.1,f1<0.8"
    assert run(embeddings["npz"], "--out", out, "--fail-on", rules) == 1
    printed = capsys.readouterr().out.split("--fail-on:\n", 1)[1].splitlines()
    accuracy = read(out)["metrics"]["accuracy"]
    assert accuracy > 0.5 and read(out)["metrics"]["fisher_ratio"] >= 0.1
    assert printed == [
        f"  accuracy = {accuracy:.4g} breaks --fail-on rule accuracy>0.5",
        # f1 is defined for binary models only: nan breaks the rule rather than passing silently.
        "  f1 = nan (undefined) breaks --fail-on rule f1<0.8",
    ]
    assert (out / "report.json").exists()  # the report is written either way


def test_compare_prints_deltas_and_a_verdict(
    embeddings: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = diagnose(embeddings["e"], embeddings["y"], logits=embeddings["z"])
    rng = np.random.default_rng(0)
    noisy = embeddings["e"] + rng.normal(scale=3.0, size=embeddings["e"].shape).astype(np.float32)
    worse = diagnose(
        noisy,
        embeddings["y"],
        logits=embeddings["z"]
        + rng.normal(scale=5.0, size=embeddings["z"].shape).astype(np.float32),
    )
    (tmp_path / "a.json").write_text(good.to_json())
    (tmp_path / "b.json").write_text(worse.to_json())
    assert run("compare", tmp_path / "a.json", tmp_path / "b.json") == 0
    out = capsys.readouterr().out
    assert "**Verdict: a_better**" in out
    delta = worse.metrics["accuracy"] - good.metrics["accuracy"]
    assert (
        f"| accuracy | {good.metrics['accuracy']:.4g} | {worse.metrics['accuracy']:.4g} | {delta:+.4g} | a |"
        in out
    )


def test_compare_of_a_missing_report_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("compare", tmp_path / "a.json", tmp_path / "b.json") == 2
    assert capsys.readouterr().err.splitlines() == [
        f"diagnose: error: A.json: {tmp_path / 'a.json'} does not exist (give the report.json of an earlier run)"
    ]


def test_force_replaces_the_report_and_keeps_other_files(
    embeddings: dict[str, object], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "plots").mkdir()
    (out / "plots" / "stale_plot.png").write_bytes(b"old")
    (out / "report.json").write_text("{}")
    assert run(embeddings["folder"], "--out", out, "--force") == 0
    report = Report.from_json((out / "report.json").read_text())
    assert report.metrics["n"] == len(embeddings["y"])
    hardest = report.sections["hardest"]  # ids.txt reached the report
    assert hardest and all(h["id"].startswith("sample-") for h in hardest)
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "plots" / "stale_plot.png").exists()  # belonged to the replaced report
    assert list((out / "plots").glob("*.png"))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind


def test_a_failure_while_writing_loses_nothing(
    embeddings: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("earlier")
    (out / "report.html").write_text("earlier html")

    def fail(self: Report, *args, **kwargs) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(Report, "to_html", fail)
    assert run(embeddings["folder"], "--out", out, "--force") == 2
    assert "disk full" in capsys.readouterr().err
    assert (out / "report.json").read_text() == "earlier"
    assert (out / "report.html").read_text() == "earlier html"
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_demo_flag_calls_the_demo_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    demo = types.ModuleType("embscope.cli.demo")
    demo.run_demo = lambda out, force=False: calls.append((out, force)) or 0
    monkeypatch.setitem(sys.modules, "embscope.cli.demo", demo)
    assert run("--demo", "--out", tmp_path / "demo", "--force") == 0
    assert calls == [(tmp_path / "demo", True)]


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--help") == 0
    out = capsys.readouterr().out
    for flag in (
        "--model",
        "--trust-checkpoint",
        "--baseline",
        "--fail-on",
        "--out",
        "--force",
        "--debug",
    ):
        assert flag in out


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--batch-size", "0", "must be a positive integer, got '0'"),
        ("--batch-size", "2.5", "must be a positive integer, got '2.5'"),
        ("--reservoir-size", "-1", "must be an integer >= 0, got '-1'"),
        ("--tolerance", "nan", "must be a finite number >= 0, got 'nan'"),
        ("--tolerance", "-0.1", "must be a finite number >= 0, got '-0.1'"),
        ("--tolerance", "tight", "must be a finite number >= 0, got 'tight'"),
        ("--tolerance", "inf", "must be a finite number >= 0, got 'inf'"),
        ("--seed", "abc", "must be an integer from 0 to 4294967295, got 'abc'"),
        ("--seed", "-1", "must be an integer from 0 to 4294967295, got '-1'"),
        ("--mean", "0.5,nan", "must be comma-separated finite numbers"),
        ("--std", "inf", "must be comma-separated finite numbers"),
        ("--image-size", "100000", "from 1 to 65535"),
    ],
)
def test_bad_numbers_are_one_line_exit_2(
    flag: str, value: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path / "model.pt", tmp_path, flag, value) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and flag in err[0] and expected in err[0], err


def test_exported_program_with_a_static_batch_on_npz(digits: Digits, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    # Batches of 50 are cut into the traced 32 and padded; 1797 = 35 * 50 + 47.
    assert run(digits.exported, digits.tensors_npz, "--batch-size", "50", "--out", out) == 0
    report = read(out)
    expected = reference(digits, digits.net)
    assert report["metrics"]["n"] == len(digits.y)
    assert report["metrics"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert report["metrics"]["fisher_ratio"] == pytest.approx(expected["fisher_ratio"], rel=1e-4)
    assert report["meta"]["source"]["checkpoint_kind"] == "exported"


def test_pickled_module_with_the_trust_flag(
    digits: Digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(digits.root)  # where the training code (digits_model) is importable
    out = tmp_path / "pickled"
    assert run(digits.pickled, digits.tensors_pt, "--trust-checkpoint", "--out", out) == 0
    report = read(out)
    assert report["meta"]["source"]["checkpoint_kind"] == "pickled"
    assert report["metrics"]["accuracy"] == pytest.approx(reference(digits, digits.net)["accuracy"])


def _metrics_equal(got: dict, expected: dict, rel: float = 1e-6, abs_: float = 1e-9) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        if value == "nan":
            assert got[name] == "nan", name
        else:
            assert got[name] == pytest.approx(value, rel=rel, abs=abs_), name


def test_device_moves_precomputed_chunks_and_the_report_is_the_same(
    embeddings: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path --device cuda takes (numpy chunks -> tensors on the device), run on the CPU."""
    import embscope.cli.run as cli_run

    assert run(embeddings["npz"], "--batch-size", "500", "--out", tmp_path / "plain") == 0
    monkeypatch.setattr(cli_run, "_embeddings_device", lambda name: torch.device("cpu"))
    assert run(embeddings["npz"], "--batch-size", "500", "--out", tmp_path / "moved") == 0
    moved = read(tmp_path / "moved")
    assert moved["meta"]["source"]["device"] == "cpu"
    _metrics_equal(moved["metrics"], read(tmp_path / "plain")["metrics"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_cuda_diagnoses_precomputed_embeddings_on_the_gpu(
    embeddings: dict[str, object], tmp_path: Path
) -> None:
    assert run(embeddings["folder"], "--out", tmp_path / "cpu") == 0
    assert run(embeddings["folder"], "--device", "cuda", "--out", tmp_path / "gpu") == 0
    gpu = read(tmp_path / "gpu")
    assert gpu["meta"]["source"]["device"] == "cuda"
    # the tolerance of tests/diagnostics/test_cuda.py (float32 reductions in another order)
    _metrics_equal(gpu["metrics"], read(tmp_path / "cpu")["metrics"], rel=1e-4, abs_=1e-5)
