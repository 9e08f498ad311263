"""The installed ``diagnose`` console script, run as users run it, on models trained here."""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import pytest

from embscope.cli.main import main
from tests.cli.conftest import Digits, reference, run_diagnose

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("diagnose: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_state_dict_and_factory_file_on_an_image_folder(digits: Digits, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_diagnose(
        digits.state_dict,
        digits.images,
        "--model",
        digits.root / "digits_model.py:make_net",
        "--model-kwargs",
        '{"hidden": 16}',
        "--grayscale",
        "--out",
        out,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    report = read_report(out)
    assert report["schema"] == "embscope.report/1"
    metrics = report["metrics"]
    for key in (
        "accuracy",
        "macro_f1",
        "fisher_ratio",
        "intra_inter_ratio",
        "score_ks",
        "recall_at_1",
    ):
        assert key in metrics
    assert metrics["n"] == len(digits.y)
    assert metrics["num_classes"] == 10
    expected = reference(digits, digits.net)
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["macro_f1"] == pytest.approx(expected["macro_f1"])
    # The hook took the classifier's input as the embedding.
    assert metrics["fisher_ratio"] == pytest.approx(expected["fisher_ratio"], rel=1e-4)
    assert "classifier" in report["meta"]["source"]["embedding"]
    # Sample ids are the image paths.
    hardest = report["sections"]["hardest"]
    assert hardest and all(Path(h["id"]).suffix == ".png" for h in hardest)

    html = (out / "report.html").read_text()
    inline = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert inline, "report.html has no inline PNG"
    assert all(base64.b64decode(p).startswith(PNG_MAGIC) for p in inline)
    assert "<script src" not in html and "<link" not in html  # self-contained
    plots = sorted((out / "plots").glob("*.png"))
    assert plots and all(p.read_bytes().startswith(PNG_MAGIC) for p in plots)
    assert (out / "report.md").read_text().strip()

    assert "accuracy" in result.stdout and "recommendations:" in result.stdout
    assert str(out / "report.html") in result.stdout


def test_config_in_checkpoint_tensor_file_and_baseline(
    digits: Digits,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 0 in-process (quicker), exit 1 from the console script."""
    first, second, worse = tmp_path / "first", tmp_path / "second", tmp_path / "worse"
    common = ["--model", "digits_model:make_net"]  # a module name: the current folder is importable
    monkeypatch.chdir(digits.root)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert (
        main([str(a) for a in (digits.with_config, digits.tensors_pt, *common, "--out", first)])
        == 0
    )
    metrics = read_report(first)["metrics"]
    assert metrics["n"] == len(digits.y)
    assert metrics["accuracy"] == pytest.approx(reference(digits, digits.net)["accuracy"])

    baseline = first / "report.json"
    argv = (*common, "--out", second, "--baseline", baseline, "--fail-on", "accuracy<0.5")
    assert main([str(a) for a in (digits.with_config, digits.tensors_pt, *argv)]) == 0
    assert "no regression" in capsys.readouterr().out

    regressed = run_diagnose(
        digits.weak_with_config,
        digits.tensors_pt,
        *common,
        "--out",
        worse,
        "--baseline",
        baseline,
        cwd=digits.root,
    )
    assert regressed.returncode == 1, regressed.stdout + regressed.stderr
    weak_accuracy = reference(digits, digits.weak)["accuracy"]
    assert weak_accuracy < metrics["accuracy"] - 0.02
    assert read_report(worse)["metrics"]["accuracy"] == pytest.approx(weak_accuracy)
    section = regressed.stdout.split("regressions against", 1)[1]
    assert re.search(r"^\s+accuracy: ", section, re.M)


def test_pickled_module_is_refused_without_the_trust_flag(digits: Digits, tmp_path: Path) -> None:
    refused = run_diagnose(
        digits.pickled, digits.tensors_pt, "--out", tmp_path / "a", cwd=digits.root
    )
    assert_one_line_error(refused, str(digits.pickled), "--trust-checkpoint", "arbitrary code")
    assert refused.stdout == ""
    assert not (tmp_path / "a").exists()
