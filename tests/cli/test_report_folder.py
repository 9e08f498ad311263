"""The report folder: ``--force`` swaps a complete new folder in or leaves the old one as it was,
and folders get the user's umask. In-process through ``main(argv)`` on small precomputed
embeddings."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embscope.cli.main import main


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("embeddings") / "e.npz"
    np.savez(
        path,
        embeddings=rng.normal(size=(60, 4)).astype(np.float32),
        labels=rng.integers(0, 3, size=60),
        logits=rng.normal(size=(60, 3)).astype(np.float32),
    )
    return path


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process's umask after a test that sets it."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def snapshot(path: Path) -> dict[str, bytes | None]:
    """Every entry under ``path``: file bytes, None for folders."""
    return {
        str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(path.rglob("*"))
    }


def earlier_report(out: Path) -> None:
    """An earlier report with the user's own files next to and inside it."""
    (out / "plots").mkdir(parents=True)
    (out / "report.json").write_text('{"earlier": true}')
    (out / "report.md").write_text("earlier md")
    (out / "plots" / "old_plot.png").write_bytes(b"old png")
    (out / "plots" / "README.txt").write_text("the user's note on the plots")
    (out / "notes.txt").write_text("the user's notes")
    (out / "runs").mkdir()
    (out / "runs" / "log.txt").write_text("the user's log")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_force_with_report_html_turned_into_a_folder_leaves_the_old_report(
    embeddings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    earlier_report(out)
    (out / "report.html").mkdir()
    (out / "report.html" / "index.html").write_text("the user's page")
    before = snapshot(out)
    assert main([str(embeddings), "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"diagnose: error: --out: {out / 'report.html'} is not a file, so it cannot be replaced "
        "by the report's report.html (move it away, or choose another --out)"
    ]
    assert snapshot(out) == before  # no new report.md or plots next to the old report.json
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failure_at_the_swap_leaves_the_old_folder_as_it_was(
    embeddings: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The complete report is ready, and moving it to --out fails: nothing in --out changes
    (the user's files went into the new folder and come back)."""
    out = tmp_path / "out"
    earlier_report(out)
    before = snapshot(out)
    rename, replace = os.rename, os.replace
    refused = []

    def refuse_into_out(move):
        """The first move of the report into --out fails; undoing what was done works."""

        def moved(src, dst, *args, **kwargs):
            dst = Path(dst)
            if not refused and (dst == out or dst.parent in (out, out / "plots")):
                refused.append(dst)
                raise OSError(28, "No space left on device", str(dst))
            return move(src, dst, *args, **kwargs)

        return moved

    monkeypatch.setattr(os, "rename", refuse_into_out(rename))
    monkeypatch.setattr(os, "replace", refuse_into_out(replace))
    assert main([str(embeddings), "--out", str(out), "--force"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"diagnose: error: --out: the report could not be written to {out}: No space left on device"
    ), lines
    assert "nothing there was changed" in lines[0]
    assert refused and snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_force_swaps_in_the_new_report_and_keeps_the_users_files(
    embeddings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    earlier_report(out)
    out.chmod(0o750)
    assert main([str(embeddings), "--out", str(out), "--force"]) == 0
    assert '"earlier"' not in (out / "report.json").read_text()
    assert (out / "report.md").read_text() != "earlier md"
    assert (out / "report.html").is_file()
    assert not (out / "plots" / "old_plot.png").exists()  # the replaced report's plot
    assert list((out / "plots").glob("*.png"))
    assert (out / "plots" / "README.txt").read_text() == "the user's note on the plots"
    assert (out / "notes.txt").read_text() == "the user's notes"
    assert (out / "runs" / "log.txt").read_text() == "the user's log"
    assert mode(out) == 0o750  # the earlier folder's permissions are kept
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or old folder left
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out


@pytest.mark.parametrize(("mask", "folder", "file"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_report_folders_get_the_users_umask(
    embeddings: Path, tmp_path: Path, umask: None, mask: int, folder: int, file: int
) -> None:
    os.umask(mask)
    out = tmp_path / "reports" / "run1"  # the parent is created too
    assert main([str(embeddings), "--out", str(out)]) == 0
    assert mode(tmp_path / "reports") == folder
    assert mode(out) == folder  # tempfile.mkdtemp's 0o700 used to carry over
    assert mode(out / "plots") == folder
    assert mode(out / "report.json") == file
    assert {mode(png) for png in (out / "plots").glob("*.png")} == {file}


def test_force_on_the_current_folder_keeps_the_process_in_it(
    embeddings: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    earlier_report(out)
    monkeypatch.chdir(out)
    assert main([str(embeddings), "--out", ".", "--force"]) == 0
    assert Path.cwd() == out and (Path.cwd() / "notes.txt").read_text() == "the user's notes"
    assert '"earlier"' not in (out / "report.json").read_text()


def test_force_through_a_symbolic_link_writes_into_its_folder(
    embeddings: Path, tmp_path: Path
) -> None:
    real = tmp_path / "real"
    earlier_report(real)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    assert main([str(embeddings), "--out", str(link), "--force"]) == 0
    assert link.is_symlink()
    assert '"earlier"' not in (real / "report.json").read_text()
    assert (real / "notes.txt").read_text() == "the user's notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_when_undoing_fails_too_nothing_is_deleted(
    embeddings: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    earlier_report(out)
    rename = os.rename

    def failing(src, dst, *args, **kwargs):
        src, dst = Path(src), Path(dst)
        if dst == out and src.name.startswith(".out.tmp-"):  # the swap
            raise OSError(5, "Input/output error", str(dst))
        if dst == out / "notes.txt":  # and moving the user's notes back
            raise OSError(5, "Input/output error", str(dst))
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", failing)
    assert main([str(embeddings), "--out", str(out), "--force"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "nothing was deleted" in lines[0], lines
    (staging,) = tmp_path.glob(".out.tmp-*")
    assert f"{staging / 'notes.txt'} belongs at {out / 'notes.txt'}" in lines[0]
    assert (staging / "notes.txt").read_text() == "the user's notes"  # not removed
    assert (out / "report.json").read_text() == '{"earlier": true}'
    assert (out / "runs" / "log.txt").read_text() == "the user's log"
