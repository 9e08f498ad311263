"""Write a report to ``--out`` atomically, and format the summary printed on stdout.

The whole report is rendered into a new folder next to ``--out`` and swapped in only once every
file exists: a new ``--out`` is one rename; an earlier one (``--force``) is renamed aside, the new
folder renamed in, and the old one removed. The user's own files in the old folder (anything but
report.json, report.md, report.html and plots/*.png) are moved into the new one first. A failure
at any point leaves ``--out`` as it was. Folders get the user's umask (an earlier ``--out`` keeps
its own permissions). An ``--out`` that already holds a ``report.json`` is refused unless
``force``.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

from embscope.cli.errors import UsageError, one_line
from embscope.diagnostics.render import KEY_METRICS

REPORT_FILES = ("report.json", "report.md", "report.html")
PLOTS = "plots"


def check_out_dir(out: Path, *, force: bool) -> None:
    """Refuse, before anything is computed, an ``--out`` that cannot receive the report: a file,
    a path under a file, a broken link, a report name that is not a file, an earlier report
    without ``force``, or a parent folder this user cannot write to."""
    from embscope.cli.checkpoint import path_problem

    problem = path_problem(out)
    if problem is not None:
        raise UsageError("--out", f"{out} {problem}", "choose another --out")
    if out.exists() and not out.is_dir():
        raise UsageError("--out", f"{out} is a file, not a folder", "choose another --out")
    ancestor = _existing_parent(out)
    problem = path_problem(ancestor)
    if problem is not None:
        raise UsageError("--out", f"{ancestor} {problem}", "choose another --out")
    if not ancestor.is_dir():
        raise UsageError(
            "--out", f"{ancestor} is a file, so {out} cannot be created", "choose another --out"
        )
    if out.is_dir():
        _check_earlier_report(out, force=force)
        out = _resolved(out)
    parent = _existing_parent(out.parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(
            "--out",
            f"{parent} is not writable (the report is written next to {out.name}, then moved in)",
            "choose another --out",
        )


def _check_earlier_report(out: Path, *, force: bool) -> None:
    for name in (*REPORT_FILES, PLOTS):
        entry = out / name
        wanted = "a folder" if name == PLOTS else "a file"
        if os.path.lexists(entry) and not (entry.is_dir() if name == PLOTS else entry.is_file()):
            raise UsageError(
                "--out",
                f"{entry} is not {wanted}, so it cannot be replaced by the report's {name}",
                "move it away, or choose another --out",
            )
    if (out / "report.json").exists() and not force:
        raise UsageError(
            "--out",
            f"{out} already holds a report (report.json)",
            "pass --force to replace it, or choose another --out",
        )
    if not os.access(out, os.W_OK | os.X_OK):  # its files move into the new folder
        raise UsageError("--out", f"{out} is not writable", "choose another --out")


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not os.path.lexists(path):
        path = path.parent
    return path


def _resolved(out: Path) -> Path:
    """``out`` as an absolute path, with a symbolic link to a folder followed (the report goes
    into that folder; the link stays)."""
    out = out.absolute()
    return out.resolve() if out.is_symlink() else out


def write_report(report: Any, out: Path, *, force: bool) -> list[Path]:
    """Write report.json, report.md, report.html and plots/*.png into ``out``; return the paths.

    `UsageError` for an ``out`` that cannot take the report (see `check_out_dir`) and for a
    failure to write it; ``out`` is then as it was.
    """
    check_out_dir(out, force=force)
    out = _resolved(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = _new_folder(out.parent, f".{out.name}.tmp-")
    except OSError as error:
        raise _write_error(out, error) from error
    keep = False
    try:
        (staging / "report.json").write_text(report.to_json(), encoding="utf-8")
        (staging / "report.md").write_text(report.to_markdown(), encoding="utf-8")
        pngs = report.plot_pngs()  # rendered once, for the page and for plots/
        (staging / "report.html").write_text(report.to_html(plots=pngs), encoding="utf-8")
        (staging / PLOTS).mkdir()
        for name, png in pngs.items():
            (staging / PLOTS / f"{_safe_name(name)}.png").write_bytes(png)
        _swap_in(staging, out)
    except _LeftBehind:
        keep = True
        raise
    except OSError as error:
        raise _write_error(out, error) from error
    finally:
        if not keep:  # gone already when it was swapped in
            shutil.rmtree(staging, ignore_errors=True)
    plots = sorted((out / PLOTS).glob("*.png"))
    return [out / name for name in REPORT_FILES] + plots


def _write_error(out: Path, error: OSError) -> UsageError:
    detail = one_line(error.strerror or str(error), 160)
    where = f" ({error.filename})" if error.filename else ""
    return UsageError(
        "--out",
        f"the report could not be written to {out}: {detail}{where}; nothing there was changed",
        "check the free space and permissions, or choose another --out",
    )


def _new_folder(parent: Path, prefix: str) -> Path:
    """A new, empty folder ``parent/prefix<random>`` with the user's umask (mkdir's 0o777 less
    the umask, where tempfile.mkdtemp would make it 0o700)."""
    for _ in range(100):
        folder = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"no free name {prefix}* in {parent}")


class _LeftBehind(UsageError):
    """A failure whose undoing failed too: some of the user's files are in the new folder (or
    the earlier report is set aside), so nothing may be removed."""


def _swap_in(staging: Path, out: Path) -> None:
    """Make the complete report in ``staging`` the folder ``out``.

    A new ``out`` is one rename. An existing one: the user's files move into ``staging``, the old
    folder is renamed aside, ``staging`` renamed to ``out``, and the old folder removed; on any
    failure the renames are undone in reverse order, so ``out`` is as it was. Should undoing
    fail too, `_LeftBehind` says where the files are and nothing is removed."""
    if not os.path.lexists(out):
        try:
            staging.rename(out)
            return
        except OSError:  # created meanwhile: replace it like an earlier report
            if not out.is_dir():
                raise
    cwd = _cwd_within(out)
    moved: list[tuple[Path, Path]] = []  # (where it was, where it is now)
    try:
        for entry in _kept_entries(out):
            target = staging / entry.relative_to(out)
            os.rename(entry, target)
            moved.append((entry, target))
        staging.chmod(stat.S_IMODE(out.stat().st_mode))
        aside = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
        os.rename(out, aside)
        moved.append((out, aside))
        os.rename(staging, out)
    except BaseException as error:
        left = _undo(moved)
        if left:
            raise _LeftBehind(
                "--out",
                f"replacing {out} failed ({one_line(str(error), 160)}) and so did undoing it: "
                f"{', '.join(f'{now} belongs at {was}' for was, now in left[:3])}",
                "move them back by hand; nothing was deleted",
            ) from error
        raise
    shutil.rmtree(aside, ignore_errors=True)
    if cwd is not None:  # this process worked in the replaced folder: follow the new one
        os.chdir(out / cwd if (out / cwd).is_dir() else out)


def _undo(moved: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """Rename each moved entry back, last first; return those that could not be."""
    left = []
    for was, now in reversed(moved):
        try:
            os.rename(now, was)
        except OSError:
            left.append((was, now))
    return left


def _kept_entries(out: Path) -> list[Path]:
    """What in ``out`` is not the report's: everything but its three files and plots/, and in
    plots/ everything not named *.png."""
    kept = [entry for entry in out.iterdir() if entry.name not in (*REPORT_FILES, PLOTS)]
    plots = out / PLOTS
    if plots.is_dir():
        kept += [entry for entry in plots.iterdir() if entry.suffix != ".png"]
    return kept


def _cwd_within(folder: Path) -> Path | None:
    """The current directory relative to ``folder`` when it is inside it, else None."""
    try:
        return Path.cwd().relative_to(folder)
    except (ValueError, OSError):
        return None


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "plot"


def fmt(value: float) -> str:
    """A metric value for people: integers plainly, others with 4 significant digits."""
    if (
        isinstance(value, float)
        and math.isfinite(value)
        and value == int(value)
        and abs(value) < 1e12
    ):
        return str(int(value))
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)


def _count(metrics: Any, name: str) -> int:
    value = metrics.get(name, 0)
    return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0


def dropped_rows(metrics: Any) -> str:
    """``"900 of 1000 rows were dropped: 850 with NaN/Inf, 50 all-zero"``, from a report's
    ``n``, ``nonfinite_count`` and ``zero_norm_count``."""
    from embscope.diagnostics.diagnoser import dropped_line

    nonfinite, zero = _count(metrics, "nonfinite_count"), _count(metrics, "zero_norm_count")
    total = nonfinite + zero + _count(metrics, "n")
    return dropped_line(nonfinite, zero, total) if total else "no rows were given"


def summary_text(report: Any, *, files: list[Path] | None = None, notes: list[str] = ()) -> str:
    """The stdout summary: rows dropped (a warning when most were), key metrics (with which way
    is better), recommendations, files."""
    dropped = _count(report.metrics, "nonfinite_count") + _count(report.metrics, "zero_norm_count")
    lines = []
    if dropped:
        most = dropped > _count(report.metrics, "n")  # more than half of the rows given
        lines.append(f"{'warning' if most else 'note'}: {dropped_rows(report.metrics)}")
    shown = [name for name in KEY_METRICS if name in report.metrics]
    rows = [(name, report.metrics[name]) for name in shown if not math.isnan(report.metrics[name])]
    undefined = [name for name in shown if math.isnan(report.metrics[name])]
    width = max((len(name) for name, _ in rows), default=6)
    lines.append(f"{'metric':<{width}}  {'value':>10}  better")
    for name, value in rows:
        better = report.direction(name) or ""
        lines.append(f"{name:<{width}}  {fmt(value):>10}  {better}".rstrip())
    if undefined:
        lines.append(f"undefined here (reasons in report.md): {', '.join(undefined)}")
    lines += ["", "recommendations:"]
    for rec in report.recommendations:
        value = "" if rec.value is None else f" -> {fmt(float(rec.value))}"
        lines.append(f"  [{rec.severity}] {rec.action}{value}: {rec.reason}")
    if not report.recommendations:
        lines.append("  (none)")
    for note in notes:
        lines.append(note)
    if files:
        lines += ["", f"report: {files[2]} (also {files[0].name}, {files[1].name}, plots/)"]
    return "\n".join(lines)
