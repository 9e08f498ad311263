"""``diagnose compare A B C D``: one ranked table; two reports keep the pairwise comparison
and ``A1 A2 -- B`` its meaning; bad input is exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from embscope.cli.ci import model_names
from embscope.cli.main import main

from .test_gate import write_npz


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


def _save(npz: Path, folder: Path) -> Path:
    """report.json and samples.npz of the embeddings file, as the command writes them (the
    plots and pages are not needed to compare)."""
    from embscope.diagnostics import diagnose
    from embscope.diagnostics.output import SAMPLES_FILE, write_samples

    data = np.load(npz)
    report = diagnose(data["embeddings"], data["labels"], data["logits"], ids=list(data["ids"]))
    folder.mkdir()
    (folder / "report.json").write_text(report.to_json())
    write_samples(report.samples, folder / SAMPLES_FILE)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nway")
    out = {}
    models = (("bce", 1, 0.0), ("arc", 2, 0.0), ("focal", 3, 0.0), ("fusion", 4, 0.08))
    for name, seed, flip in models:
        out[name] = _save(write_npz(root / f"{name}.npz", seed, flip), root / name)
    out["fewer"] = _save(write_npz(root / "fewer.npz", 1, rows=500), root / "fewer")
    return out


def test_four_reports_give_one_ranked_table(folders, capsys) -> None:
    paths = [folders[k] / "report.json" for k in ("bce", "arc", "focal", "fusion")]
    assert main(["compare", *map(str, paths)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("**Best by f1: ")
    assert "| 4 | fusion |" in out
    assert "worse: fusion" in out
    assert out.count("| ") > 4 and "Bonferroni over the 3 comparisons" in out


def test_two_reports_and_baseline_groups_keep_their_meaning(folders, capsys) -> None:
    a, b = folders["bce"] / "report.json", folders["fusion"] / "report.json"
    assert main(["compare", str(a), str(b)]) == 0
    assert capsys.readouterr().out.startswith("**Verdict: a_better**")
    a2 = folders["arc"] / "report.json"
    assert main(["compare", str(a), str(a2), "--", str(b)]) == 0
    assert "spread of 2 baselines" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--rank-by", "head.s"], "--rank-by"),
        (["--metrics", "nonsense"], "--metrics"),
    ],
)
def test_bad_options_are_exit_2(folders, capsys, argv, expected) -> None:
    paths = [str(folders[k]) for k in ("bce", "arc", "focal")]
    assert main(["compare", *paths, *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_other_data_is_refused_naming_the_report(folders, capsys) -> None:
    paths = [str(folders[k]) for k in ("bce", "arc", "fewer")]
    assert main(["compare", *paths]) == 2
    err = capsys.readouterr().err
    assert "other data" in err and "fewer" in err
    assert main(["compare", *paths, "--allow-different-data"]) == 0


def test_rank_by_with_two_reports_is_exit_2(folders, capsys) -> None:
    a, b = (str(folders[k]) for k in ("bce", "arc"))
    assert main(["compare", a, b, "--rank-by", "f1"]) == 2
    assert "--rank-by" in capsys.readouterr().err


def test_model_names_are_the_folders() -> None:
    assert model_names(["runs/bce/report.json", "runs/arc"]) == ["bce", "arc"]
    assert model_names(["a/x/report.json", "b/x/report.json"]) == [
        "a/x/report.json",
        "b/x/report.json",
    ]
