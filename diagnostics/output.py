"""A report folder on disk: written whole or not at all, and read back.

:func:`save_report` (``Report.save``) renders the whole report into a new folder next to the
target and swaps it in only once every file exists: a new target is one rename; an earlier
report (``force=True``) is renamed aside, the new folder renamed in, and the old one removed.
The user's own files in the old folder (anything but report.json, report.md, report.html and
plots/*.png) are moved into the new one first. A failure at any point leaves the target as it
was. Folders get the user's umask (an earlier folder keeps its own permissions). A target that
already holds a report.json is refused unless ``force``. :func:`read_report`
(``Report.load``) reads a report.json, or the one in a folder.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError, ReplaceError

if TYPE_CHECKING:
    from .report import Report

REPORT_FILES = ("report.json", "report.md", "report.html")
SAMPLES_FILE = "samples.npz"  # per-sample values for paired comparisons (Report.samples)
PLOTS = "plots"


def path_problem(path: str | os.PathLike[str]) -> str | None:
    """What keeps ``path`` from being opened, when ``exists()`` cannot tell: "is a symlink loop",
    "is a broken symbolic link (to TARGET)" or "is not readable (permission denied on a folder
    above it)"; None when it is there, or simply missing."""
    try:
        os.stat(path)
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "is a symlink loop"
        if error.errno in (errno.EACCES, errno.EPERM):
            return "is not readable (permission denied on a folder above it)"
        if os.path.islink(path):
            return f"is a broken symbolic link (to {os.readlink(path)})"
        return None


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------


def _refuse(what: str, fix: str) -> InputError:
    return InputError("folder", what, fix, argument="folder")


def check_report_folder(folder: str | os.PathLike[str], *, force: bool = False) -> None:
    """Refuse, before anything is computed, a folder that cannot receive a report: a file, a
    path under a file, a broken link, a report name that is not a file, an earlier report
    without ``force``, or a parent folder this user cannot write to (`InputError`)."""
    out = Path(folder)
    problem = path_problem(out)
    if problem is not None:
        raise _refuse(f"{out} {problem}", "choose another {folder}")
    if out.exists() and not out.is_dir():
        raise _refuse(f"{out} is a file, not a folder", "choose another {folder}")
    ancestor = _existing_parent(out)
    problem = path_problem(ancestor)
    if problem is not None:
        raise _refuse(f"{ancestor} {problem}", "choose another {folder}")
    if not ancestor.is_dir():
        raise _refuse(
            f"{ancestor} is a file, so {out} cannot be created", "choose another {folder}"
        )
    if out.is_dir():
        _check_earlier_report(out, force=force)
        out = report_folder(out)
    parent = _existing_parent(out.parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _refuse(
            f"{parent} is not writable (the report is written next to {out.name}, then moved in)",
            "choose another {folder}",
        )


def _check_earlier_report(out: Path, *, force: bool) -> None:
    for name in (*REPORT_FILES, PLOTS):
        entry = out / name
        wanted = "a folder" if name == PLOTS else "a file"
        if os.path.lexists(entry) and not (entry.is_dir() if name == PLOTS else entry.is_file()):
            raise _refuse(
                f"{entry} is not {wanted}, so it cannot be replaced by the report's {name}",
                "move it away, or choose another {folder}",
            )
    if (out / "report.json").exists() and not force:
        raise _refuse(
            f"{out} already holds a report (report.json)",
            "pass {force} to replace it, or choose another {folder}",
        )
    if not os.access(out, os.W_OK | os.X_OK):  # its files move into the new folder
        raise _refuse(f"{out} is not writable", "choose another {folder}")


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not os.path.lexists(path):
        path = path.parent
    return path


def report_folder(folder: str | os.PathLike[str]) -> Path:
    """Where a report for ``folder`` goes: the absolute path, with a symbolic link to a folder
    followed (the report goes into that folder; the link stays)."""
    out = Path(folder).absolute()
    return out.resolve() if out.is_symlink() else out


def save_report(
    report: Report, folder: str | os.PathLike[str], *, force: bool = False
) -> list[Path]:
    """Write report.json, report.md, report.html and plots/*.png into ``folder`` atomically;
    return the paths (the three files, then the plots). A report that keeps per-sample values
    (``report.samples``) also writes them to samples.npz, which `read_report` reads back.

    Raises `InputError` for a folder that cannot take the report (see `check_report_folder`),
    the `OSError` of a failed write (``folder`` is then as it was), and `ReplaceError` when
    replacing an earlier report failed and so did undoing it (it says where the files are).
    When the current directory lies inside the replaced folder, the process follows it into
    the new one.
    """
    check_report_folder(folder, force=force)
    out = report_folder(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _new_folder(out.parent, f".{out.name}.tmp-")
    keep = False
    try:
        (staging / "report.json").write_text(report.to_json(), encoding="utf-8")
        if report.samples:
            write_samples(report.samples, staging / SAMPLES_FILE)
        (staging / "report.md").write_text(report.to_markdown(), encoding="utf-8")
        pngs = report.plot_pngs()  # rendered once, for the page and for plots/
        (staging / "report.html").write_text(report.to_html(plots=pngs), encoding="utf-8")
        (staging / PLOTS).mkdir()
        for name, png in pngs.items():
            (staging / PLOTS / f"{_safe_name(name)}.png").write_bytes(png)
        _swap_in(staging, out)
    except ReplaceError:
        keep = True
        raise
    finally:
        if not keep:  # gone already when it was swapped in
            shutil.rmtree(staging, ignore_errors=True)
    plots = sorted((out / PLOTS).glob("*.png"))
    return [out / name for name in REPORT_FILES] + plots


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


def _swap_in(staging: Path, out: Path) -> None:
    """Make the complete report in ``staging`` the folder ``out``.

    A new ``out`` is one rename. An existing one: the user's files move into ``staging``, the old
    folder is renamed aside, ``staging`` renamed to ``out``, and the old folder removed; on any
    failure the renames are undone in reverse order, so ``out`` is as it was. Should undoing
    fail too, `ReplaceError` says where the files are and nothing is removed."""
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
            detail = " ".join(str(error).split())[:160]
            raise ReplaceError(
                "folder",
                f"replacing {out} failed ({detail}) and so did undoing it: "
                f"{', '.join(f'{now} belongs at {was}' for was, now in left[:3])}",
                "move them back by hand; nothing was deleted",
                argument="folder",
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
    kept = [
        entry for entry in out.iterdir() if entry.name not in (*REPORT_FILES, SAMPLES_FILE, PLOTS)
    ]
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


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------


def read_report(source: str | os.PathLike[str], build: Callable[[dict], Report]) -> Report:
    """The report in a report.json file, or in the report.json of a report folder, built from
    its JSON by ``build`` (`Report.from_dict`; passed in so that this module needs no import
    of report.py, which imports it), with its samples.npz when there is one.

    Raises `InputError` (subject: the path) naming what is wrong: missing, unreadable, not
    JSON, or not a report.
    """
    path = Path(source)
    if path.is_dir() and (path / "report.json").is_file():
        path = path / "report.json"
    fix = "give the report.json of an earlier run"
    problem = path_problem(path)
    if problem is not None:
        raise InputError(path, problem, fix, argument="path")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise InputError(path, "does not exist", fix, argument="path") from error
    except PermissionError as error:
        raise InputError(
            path, "is not readable", "check its permissions", argument="path"
        ) from error
    except IsADirectoryError as error:
        raise InputError(path, "is a folder without a report.json", fix, argument="path") from error
    except UnicodeDecodeError as error:
        raise InputError(path, "is not text (not UTF-8)", fix, argument="path") from error
    except OSError as error:
        raise InputError(path, f"cannot be read ({error})", fix, argument="path") from error
    fix = "give a report.json written by diagnose or Report.save"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(
            path, f"is not JSON ({error.msg}, line {error.lineno})", fix, argument="path"
        ) from error
    except RecursionError as error:
        raise InputError(
            path, "is not a report (JSON nested too deeply)", fix, argument="path"
        ) from error
    problem = _report_shape(data)
    if problem is not None:
        raise InputError(path, f"is not an embscope report ({problem})", fix, argument="path")
    try:
        report = build(data)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        detail = " ".join(str(error).split())[:200]
        raise InputError(
            path, f"is not an embscope report ({detail})", fix, argument="path"
        ) from error
    samples = read_samples(path.parent / SAMPLES_FILE, int(report.metrics.get("n", -1)))
    return replace(report, samples=samples) if samples is not None else report


_SAMPLE_KEYS = ("label", "pred", "margin", "top_prob", "gray", "id_hash")


def write_samples(samples: dict, path: Path) -> None:
    """Per-sample values as an uncompressed .npz (narrow dtypes: at most 25 bytes a sample)."""
    with open(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in samples.items() if k in _SAMPLE_KEYS})


def read_samples(path: Path, n: int) -> dict | None:
    """The per-sample values next to a report.json, or None when the file is missing, cannot be
    read, or does not fit the report (another n): a report is still usable without them, and
    comparisons then fall back on the intervals."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            samples = {k: data[k] for k in data.files if k in _SAMPLE_KEYS}
    except (OSError, ValueError, KeyError):
        return None
    sizes = {len(v) for v in samples.values() if np.ndim(v) == 1}
    if "label" not in samples or sizes != {n}:
        return None
    return samples


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), "a number")


def _report_shape(data: Any) -> str | None:
    """What is wrong with the structure of a parsed report.json; None when it has the shape
    ``Report.from_dict`` reads (the schema itself is checked there)."""
    if not isinstance(data, dict):
        return f"it holds {_json_type(data)}, not an object"
    if "metrics" not in data:
        return "it has no 'metrics'"
    metrics = data["metrics"]
    if not isinstance(metrics, dict):
        return f"its 'metrics' is {_json_type(metrics)}, not an object of name -> number"
    for name, value in metrics.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number and value not in ("nan", "inf", "-inf"):
            return f"metric {name!r} is {_json_type(value)}, not a number"
    for key in ("reasons", "sampled", "sections", "meta"):
        if key in data and not isinstance(data[key], dict):
            return f"its {key!r} is {_json_type(data[key])}, not an object"
    recs = data.get("recommendations", [])
    if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
        return "its 'recommendations' is not a list of objects"
    return None
