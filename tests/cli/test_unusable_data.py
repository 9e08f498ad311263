"""Data that cannot be used: no usable row is exit 2 with one line saying how many rows were
dropped and why (never an empty report, never a '--fail-on' complaint about a missing metric);
most rows dropped is said at the top of the summary."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from embscope.cli.main import main
from tests.cli.conftest import Digits


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


def embeddings(tmp: Path, rows: np.ndarray, name: str = "e.npz") -> Path:
    labels = np.arange(len(rows)) % 3
    np.savez(tmp / name, embeddings=rows.astype(np.float32), labels=labels)
    return tmp / name


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("diagnose: error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("fill", "why"),
    [(np.nan, "100 with NaN/Inf"), (np.inf, "100 with NaN/Inf"), (0.0, "100 all-zero")],
)
def test_no_usable_row_is_exit_2_before_any_fail_on_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fill: float, why: str
) -> None:
    path = embeddings(tmp_path, np.full((100, 4), fill))
    out = tmp_path / "out"
    assert main([str(path), "--fail-on", "macro_f1<0.5", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"diagnose: error: {path}: no usable rows: all 100 rows were dropped")
    assert why in line
    assert "has no metric" not in line
    assert not out.exists()


def test_most_rows_dropped_is_a_warning_at_the_top_of_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = np.random.default_rng(0).normal(size=(1000, 4))
    rows[:850] = np.nan
    rows[850:900] = 0.0
    out = tmp_path / "out"
    assert main([str(embeddings(tmp_path, rows)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "warning: 900 of 1000 rows were dropped: 850 with NaN/Inf, 50 all-zero"
    assert (out / "report.json").exists()


def test_a_few_rows_dropped_is_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = np.random.default_rng(0).normal(size=(100, 4))
    rows[:3] = np.inf
    assert main([str(embeddings(tmp_path, rows)), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "note: 3 of 100 rows were dropped: 3 with NaN/Inf"
    )


def test_nothing_dropped_says_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = np.random.default_rng(0).normal(size=(100, 4))
    assert main([str(embeddings(tmp_path, rows)), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.startswith("metric ")


NAN_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn


    class NaNNet(nn.Module):
        '''A model whose weights went NaN in training: (embedding, logits) are NaN.'''

        def __init__(self):
            super().__init__()
            self.body = nn.Linear(64, 8)
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            embedding = self.body(x.flatten(1))
            return embedding, self.head(embedding)


    def build():
        return NaNNet()
    """
)


def test_a_model_that_emits_nan_is_exit_2_naming_checkpoint_and_data(
    digits: Digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "nan_model.py").write_text(NAN_MODEL)
    sys.path.insert(0, str(tmp_path))
    try:
        import nan_model
    finally:
        sys.path.remove(str(tmp_path))
    net = nan_model.build()
    with torch.no_grad():
        net.body.weight.fill_(float("nan"))
    checkpoint = tmp_path / "nan.pt"
    torch.save(net.state_dict(), checkpoint)
    out = tmp_path / "out"
    argv = [checkpoint, digits.tensors_pt, "--model", f"{tmp_path / 'nan_model.py'}:build"]
    assert main([*map(str, argv), "--fail-on", "accuracy<0.5", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    n = len(digits.y)
    assert line.startswith(
        f"diagnose: error: {checkpoint}: the model's outputs on {digits.tensors_pt}: no usable "
        f"rows: all {n} rows were dropped ({n} with NaN/Inf"
    )
    assert line.endswith(
        "(check the checkpoint's weights and that the data is scaled as in training)"
    )
    assert not out.exists()
