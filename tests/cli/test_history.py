"""``diagnose history``: a run's report folders in, verdicts, history.csv/html and exit codes out."""

import pandas as pd
import pytest

from embscope.cli.main import main
from embscope.diagnostics import History, Report
from embscope.diagnostics.history_rules import z_of

Z = z_of(0.95)
F1 = [0.70, 0.90, 0.75, 0.80]  # best at epoch 2, the last worse beyond noise
MARGIN = [1.0, 2.0, 3.0, 4.0]  # rising


def _report(f1: float, margin: float) -> Report:
    metrics = {"n": 400.0, "f1": f1, "margin_median": margin}
    intervals = {
        "f1": [f1 - Z * 0.01, f1 + Z * 0.01],
        "margin_median": [margin - 0.1, margin + 0.1],
    }
    return Report(metrics=metrics, intervals=intervals, interval_level=0.95)


def _write(report: Report, folder):
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(report.to_json())


@pytest.fixture
def run_folder(tmp_path):
    run = tmp_path / "run"
    # names whose natural order differs from their text order (epoch_10 before epoch_2)
    for epoch, (f1, margin) in zip((1, 2, 3, 10), zip(F1, MARGIN, strict=True), strict=True):
        _write(_report(f1, margin), run / f"epoch_{epoch}")
    _write(_report(0.99, 4.0), run / "epoch_10_train")
    _write(_report(0.5, 0.0), run / "last")  # a copy of a report, not an epoch: left out
    (run / "notes.txt").write_text("a user's file")
    return run


def test_a_run_folder(run_folder, capsys):
    assert main(["history", str(run_folder)]) == 0
    out = capsys.readouterr().out
    assert "4 validation reports (epochs 1-10), task metric f1" in out
    assert "margins_rising: holds" in out
    assert "best_epoch: broken" in out and "keep epoch 2's weights" in out
    assert "train_val_gap: broken" in out  # 0.99 - 0.80 > 0.1 beyond noise
    assert "left out (no epoch number in the name): last" in out
    frame = pd.read_csv(run_folder / "history.csv")
    assert list(frame["epoch"]) == [1, 2, 3, 10, 10]
    assert list(frame["split"]) == ["val", "val", "val", "val", "train"]
    assert list(frame["f1"][:4]) == pytest.approx(F1)
    assert History.load(run_folder / "history.csv").epochs() == [1, 2, 3, 10]
    assert "data:image/png;base64," in (run_folder / "history.html").read_text()
    assert (run_folder / "notes.txt").read_text() == "a user's file"


def test_reports_in_the_order_given(tmp_path, capsys):
    paths = []
    for i, (f1, margin) in enumerate(zip(F1, MARGIN, strict=True)):
        _write(_report(f1, margin), tmp_path / f"run_{'abcd'[i]}")
        paths.append(str(tmp_path / f"run_{'abcd'[i]}" / "report.json"))
    out = tmp_path / "out"
    assert main(["history", *paths, "--out", str(out)]) == 0
    frame = pd.read_csv(out / "history.csv")
    assert list(frame["epoch"]) == [1, 2, 3, 4]  # names without numbers: positions
    assert list(frame["f1"]) == pytest.approx(F1)


def test_fail_on_trend_rules(run_folder, capsys):
    assert main(["history", str(run_folder), "--fail-on", "margins_rising<1"]) == 0
    assert main(["history", str(run_folder), "--fail-on", "best_epoch<0"]) == 1
    out = capsys.readouterr().out
    assert "best_epoch = -1 breaks --fail-on rule best_epoch<0" in out
    assert main(["history", str(run_folder), "--fail-on", "best_epoch.value<3"]) == 1
    assert main(["history", str(run_folder), "--fail-on", "f1<0.7"]) == 0  # the last epoch's


@pytest.mark.parametrize(
    "args, message",
    [
        (["{run}", "--fail-on", "no_such_rule<1"], "has no metric 'no_such_rule'"),
        (["{run}", "--fail-on", "margins_rising"], "is not METRIC<OP>NUMBER"),
        (["{missing}"], "does not exist"),
        (["{empty}"], "holds neither report.json nor report folders"),
        (["{run}", "--task-metric", "nope"], "the reports have no metric 'nope'"),
        (["{run}", "--window", "1"], "--window: must be 2 or more"),
        (["{bad}"], "not an embscope report"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(run_folder, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text('{"schema": "other"}')
    names = {
        "run": run_folder,
        "missing": tmp_path / "missing",
        "empty": tmp_path / "empty",
        "bad": tmp_path / "bad",
    }
    argv = ["history", *(a.format(**names) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("diagnose: error: ") and err.count("\n") == 1
    assert message in err


def test_folders_without_epoch_numbers_and_reports_of_other_data_are_refused(tmp_path, capsys):
    run = tmp_path / "run"
    _write(_report(0.7, 1.0), run / "r_folder")
    _write(_report(0.8, 2.0), run / "r_pt")
    assert main(["history", str(run)]) == 2
    err = capsys.readouterr().err
    assert "none of its report folders has an epoch number in its name" in err
    assert not (run / "history.csv").exists()

    def on(n: int, f1: float) -> Report:
        r = _report(f1, 1.0)
        data = {"n": n, "class_counts": [n // 2, n - n // 2]}
        return Report(
            metrics={**r.metrics, "n": float(n)},
            intervals=r.intervals,
            interval_level=0.95,
            meta={**r.meta, "data": data},
        )

    other = tmp_path / "other"
    _write(on(400, 0.7), other / "epoch_1")
    _write(on(380, 0.8), other / "epoch_2")
    assert main(["history", str(other)]) == 2
    err = capsys.readouterr().err
    assert "was computed on other validation data than" in err and err.count("\n") == 1
    assert main(["history", str(other), "--allow-different-data"]) == 0
