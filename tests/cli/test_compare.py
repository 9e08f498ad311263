"""Reports that do not measure the same thing are not compared: other class sets, logit widths or
metric spaces are refused by ``compare``/``check_regression`` (one check, `differences`) and by
``diagnose compare`` / ``--baseline`` (exit 2, one line), unless the metrics are named.

The API cases live here next to the CLI ones (tests/diagnostics is another engineer's tree)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from embscope.cli.main import main
from embscope.diagnostics import Report, check_regression, compare, diagnose, recommend
from embscope.diagnostics.advice import IncomparableReports, differences


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


def data(classes: int, n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [n, 8] around one centre per class, labels 0..classes-1."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(size=(classes, 8)) * 3
    return (centres[y] + rng.normal(size=(n, 8))).astype(np.float32), y


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Reports of a 10-class and of binary tasks (one BCE logit; two softmax columns), cosine
    and euclidean; the binary embeddings are saved for the --baseline runs."""
    root = tmp_path_factory.mktemp("reports")
    x10, y10 = data(10)
    x2, y2 = data(2, seed=1)
    rng = np.random.default_rng(2)
    bce_logit = (x2[:, 0] + rng.normal(size=len(y2))).astype(np.float32)
    two_columns = np.stack([-bce_logit, bce_logit], axis=1)
    built = {
        "tenclass": diagnose(x10, y10, logits=rng.normal(size=(len(y10), 10)).astype(np.float32)),
        "binary": diagnose(x2, y2, logits=bce_logit),
        "binary_2col": diagnose(x2, y2, logits=two_columns),
        "binary_euclidean": diagnose(x2, y2, logits=bce_logit, space="euclidean"),
        "binary_nologits": diagnose(x2, y2),
    }
    paths = {}
    for name, report in built.items():
        paths[name] = root / f"{name}.json"
        paths[name].write_text(report.to_json())
    np.savez(root / "binary.npz", embeddings=x2, labels=y2, logits=bce_logit)
    noisy = (x2 + rng.normal(scale=4.0, size=x2.shape)).astype(np.float32)
    np.savez(root / "noisy.npz", embeddings=noisy, labels=y2, logits=bce_logit)
    return {
        "report": built,
        "path": paths,
        "binary_npz": root / "binary.npz",
        "noisy_npz": root / "noisy.npz",
    }


def run(*argv: object) -> int:
    return main([str(a) for a in argv])


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("diagnose: error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------ the API


def test_differences_name_the_class_set_the_logits_and_the_space(reports) -> None:
    r = reports["report"]
    assert differences(r["binary"], r["tenclass"]) == [
        "classes: A has 2 (0, 1), B has 10 (0..9)",
        "logits: A has one binary logit [N], B has logits [N, 10]",
    ]
    assert differences(r["binary"], r["binary_euclidean"]) == [
        "metric space: A is cosine, B is euclidean"
    ]
    assert differences(r["binary"], r["binary_nologits"], ("report", "baseline")) == [
        "logits: report has one binary logit [N], baseline has no logits"
    ]


def test_one_binary_logit_and_two_columns_are_comparable(reports) -> None:
    """BCE's logit [N] and a two-class head's [N, 2] score the same two classes: the A/B the
    demo and recommend(baseline=) exist for."""
    r = reports["report"]
    assert differences(r["binary"], r["binary_2col"]) == []
    assert compare(r["binary"], r["binary_2col"]).deltas
    assert check_regression(r["binary_2col"], r["binary"], tolerance=10.0) == []


def test_compare_and_check_regression_refuse_unless_metrics_are_named(reports) -> None:
    r = reports["report"]
    with pytest.raises(IncomparableReports, match=r"classes: A has 2 \(0, 1\), B has 10") as error:
        compare(r["binary"], r["tenclass"])
    assert error.value.differences[0].startswith("classes:")
    with pytest.raises(IncomparableReports, match="classes: report has 2"):
        check_regression(r["binary"], r["tenclass"])
    with pytest.raises(IncomparableReports, match="logits"):
        recommend(r["binary"], baseline=r["tenclass"])

    chosen = compare(r["binary"], r["tenclass"], metrics=["fisher_ratio", "recall_at_1"])
    assert list(chosen.deltas) == ["fisher_ratio", "recall_at_1"]
    assert set(chosen.wins + chosen.losses) <= {"fisher_ratio", "recall_at_1"}
    regressions = check_regression(r["tenclass"], r["binary"], metrics=["fisher_ratio"])
    assert {reg.name for reg in regressions} <= {"fisher_ratio"}
    with pytest.raises(ValueError, match="report A has no metric 'fisher'; did you mean"):
        compare(r["binary"], r["tenclass"], metrics=["fisher"])
    with pytest.raises(ValueError, match="no better direction"):
        check_regression(r["binary"], r["tenclass"], metrics=["n"])


def test_hand_built_reports_without_meta_are_still_compared() -> None:
    a = Report(metrics={"f1": 0.8, "fisher_ratio": 1.0})
    b = Report(metrics={"f1": 0.9, "fisher_ratio": 1.5})
    assert differences(a, b) == []
    assert compare(a, b).verdict == "b_better"


# ------------------------------------------------------------------------------------ the CLI


def test_diagnose_compare_of_a_binary_and_a_ten_class_report_is_exit_2(
    reports, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = reports["path"]["binary"], reports["path"]["tenclass"]
    assert run("compare", a, b) == 2
    assert one_error_line(capsys) == (
        f"diagnose: error: {b}: cannot be compared with {a}: classes: A has 2 (0, 1), B has 10 "
        "(0..9); logits: A has one binary logit [N], B has logits [N, 10] "
        "(compare chosen metrics with --metrics NAME,NAME)"
    )
    assert capsys.readouterr().out == ""


def test_diagnose_compare_of_other_spaces_is_exit_2(
    reports, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = reports["path"]["binary"], reports["path"]["binary_euclidean"]
    assert run("compare", a, b) == 2
    assert "metric space: A is cosine, B is euclidean" in one_error_line(capsys)


def test_diagnose_compare_with_named_metrics(reports, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = reports["path"]["binary"], reports["path"]["tenclass"]
    assert run("compare", a, b, "--metrics", "fisher_ratio, recall_at_1") == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| fisher_ratio", "| recall_at_1"]


def test_diagnose_compare_with_a_metric_a_report_lacks(
    reports, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = reports["path"]["binary"], reports["path"]["tenclass"]
    assert run("compare", a, b, "--metrics", "fisher_ratio,fisher") == 2
    line = one_error_line(capsys)
    assert line.startswith("diagnose: error: --metrics: report A has no metric 'fisher'; did ")
    assert "fisher_ratio" in line and line.endswith(" (name metrics both reports hold)")


def test_a_named_metric_undefined_in_one_report_is_shown_not_dropped(
    reports, capsys: pytest.CaptureFixture[str]
) -> None:
    # f1 is defined for the binary run only (nan for ten classes)
    a, b = reports["path"]["binary"], reports["path"]["tenclass"]
    assert run("compare", a, b, "--metrics", "f1") == 0
    out = capsys.readouterr().out
    f1 = reports["report"]["binary"].metrics["f1"]
    assert f"| f1 | {f1:.4g} | nan | nan | undefined |" in out


def test_baseline_of_ten_classes_for_a_binary_run_is_exit_2_and_writes_nothing(
    reports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    baseline = reports["path"]["tenclass"]
    assert run(reports["binary_npz"], "--baseline", baseline, "--out", out) == 2
    assert one_error_line(capsys) == (
        f"diagnose: error: --baseline: {baseline} cannot be compared with this run: classes: "
        "report has 2 (0, 1), baseline has 10 (0..9); logits: report has one binary logit [N], "
        "baseline has logits [N, 10] (check chosen metrics with --metrics NAME,NAME, or give a "
        "baseline of the same classes, logits and space)"
    )
    assert not out.exists()


def test_baseline_with_named_metrics_checks_only_those(
    reports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    baseline = reports["path"]["tenclass"]
    argv = [reports["noisy_npz"], "--baseline", baseline, "--metrics", "recall_at_1,f1"]
    code = run(*argv, "--out", out)
    printed = capsys.readouterr().out
    current = json.loads((out / "report.json").read_text())["metrics"]
    # the ten-class baseline's f1 is undefined, so only recall_at_1 can regress
    assert reports["report"]["tenclass"].metrics["recall_at_1"] > current["recall_at_1"] + 0.02
    assert code == 1
    assert printed.split(f"regressions against {baseline} (tolerance 0.02):\n", 1)[1].startswith(
        "  recall_at_1: "
    )
    assert printed.rstrip().endswith("is better, tolerance 0.02)")


def test_baseline_of_the_same_task_still_gates(
    reports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run(reports["binary_npz"], "--baseline", reports["path"]["binary"], "--out", out) == 0
    assert "no regression against" in capsys.readouterr().out
