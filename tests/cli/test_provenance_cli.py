"""The command line records the checkpoint's fingerprint (the file's size and SHA-256, the
weights' state_dict hash) and the gate says whether the run and its baseline share weights."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from embscope.cli.main import main

from .conftest import Digits


def test_checkpoint_fingerprint_and_the_gate_line(
    digits: Digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(digits.root)
    monkeypatch.setattr(sys, "path", list(sys.path))
    common = ["--model", "digits_model:make_net"]
    first = tmp_path / "first"
    assert (
        main([str(digits.with_config), str(digits.tensors_pt), *common, "--out", str(first)]) == 0
    )
    meta = json.loads((first / "report.json").read_text())["meta"]["checkpoint"]
    data = digits.with_config.read_bytes()
    assert meta["file"] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert len(meta["state_dict"]["sha256"]) == 64
    capsys.readouterr()
    argv = [str(digits.with_config), str(digits.tensors_pt), *common, "--out", str(tmp_path / "b")]
    assert main([*argv, "--baseline", str(first)]) == 0
    out = capsys.readouterr().out
    assert "checkpoints: the same (state_dict sha256 " in out
