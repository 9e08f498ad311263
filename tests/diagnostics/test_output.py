"""Report folders: ``Report.save`` writes the command's files atomically, ``Report.load`` reads
them back; and ``embscope.__version__``."""

from __future__ import annotations

import importlib.metadata
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import embscope
from embscope.diagnostics import InputError, Report, diagnose

from .conftest import blobs


@pytest.fixture(scope="module")
def report() -> Report:
    x, y = blobs(n=120, d=6, k=3)
    logits = np.random.default_rng(1).normal(size=(120, 3)).astype(np.float32) + np.eye(3)[y] * 2
    return diagnose(x, y, logits, ids=[f"row{i}" for i in range(120)], reservoir_size=100)


def snapshot(path: Path) -> dict[str, bytes | None]:
    """Every entry under ``path``: file bytes, None for folders."""
    return {
        str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(path.rglob("*"))
    }


def test_save_writes_the_commands_files_and_load_reads_them_back(
    report: Report, tmp_path: Path
) -> None:
    out = tmp_path / "reports" / "run1"  # the parent is created too
    files = report.save(out)
    assert [p.name for p in files[:3]] == ["report.json", "report.md", "report.html"]
    assert files[3:] and all(p.parent == out / "plots" and p.suffix == ".png" for p in files[3:])
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in files[3:])
    assert (out / "report.md").read_text().count("|") > 8
    for source in (out, out / "report.json", str(out)):
        loaded = Report.load(source)
        assert loaded.to_dict() == report.to_dict()
        assert loaded.metrics["fisher_ratio"] == pytest.approx(report.metrics["fisher_ratio"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["run1"]  # nothing left beside it


def test_save_refuses_an_earlier_report_without_force(report: Report, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report.save(out)
    before = snapshot(out)
    with pytest.raises(
        InputError,
        match=r"^folder: .*out already holds a report \(report.json\) "
        r"\(pass force=True to replace it, or choose another folder\)$",
    ) as caught:
        report.save(out)
    assert caught.value.argument == "folder"
    assert snapshot(out) == before


def test_force_replaces_the_report_whole_and_keeps_the_users_files(
    report: Report, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (out / "plots").mkdir(parents=True)
    (out / "report.json").write_text('{"earlier": true}')
    (out / "plots" / "old_plot.png").write_bytes(b"old png")
    (out / "plots" / "README.txt").write_text("the user's note")
    (out / "notes.txt").write_text("the user's notes")
    out.chmod(0o750)
    report.save(out, force=True)
    assert Report.load(out).to_dict() == report.to_dict()
    assert not (out / "plots" / "old_plot.png").exists()
    assert (out / "plots" / "README.txt").read_text() == "the user's note"
    assert (out / "notes.txt").read_text() == "the user's notes"
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or old folder left


def test_a_failed_write_leaves_the_earlier_report_as_it_was(
    report: Report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    report.save(out)
    (out / "notes.txt").write_text("the user's notes")
    before = snapshot(out)

    def full_disk(self: Report) -> dict[str, bytes]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Report, "plot_pngs", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        report.save(out, force=True)
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_save_refuses_a_file_and_names_it(report: Report, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a folder")
    with pytest.raises(InputError, match=r"file is a file, not a folder \(choose another folder\)"):
        report.save(target)
    with pytest.raises(InputError, match=r"file is a file, so .*cannot be created"):
        report.save(target / "below")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match=r"locked is not writable"):
            report.save(locked / "out")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, r"does not exist"),
        ("{not json", r"is not JSON \(Expecting property name"),
        ('{"metrics": []}', r"is not an embscope report \(its 'metrics' is a list"),
        ('{"schema": "other/1", "metrics": {}}', r"is not an embscope report \(not an embscope"),
    ],
)
def test_load_names_the_file_and_what_is_wrong(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=rf"^{path}: {problem}") as caught:
        Report.load(path)
    assert caught.value.argument == "path"


def test_the_package_has_a_version() -> None:
    assert embscope.__version__ == importlib.metadata.version("embscope")
