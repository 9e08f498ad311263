"""Write a report to ``--out`` atomically, and format the summary printed on stdout.

The files are rendered into a temporary folder next to ``--out`` and moved into place only once
all of them exist, so a failure at any point leaves ``--out`` as it was. An ``--out`` that already
holds a ``report.json`` is refused unless ``force``; files in it that are not ours are kept.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from embscope.cli.errors import UsageError
from embscope.diagnostics.render import KEY_METRICS

REPORT_FILES = ("report.json", "report.md", "report.html")
PLOTS = "plots"


def check_out_dir(out: Path, *, force: bool) -> None:
    """Refuse an ``--out`` that is a file, or that holds an earlier report without ``force``."""
    if out.exists() and not out.is_dir():
        raise UsageError("--out", f"{out} is a file, not a folder", "choose another --out")
    if (out / "report.json").exists() and not force:
        raise UsageError(
            "--out",
            f"{out} already holds a report (report.json)",
            "pass --force to replace it, or choose another --out",
        )
    parent = _existing_parent(out)
    if not os.access(parent, os.W_OK):
        raise UsageError("--out", f"{parent} is not writable", "choose another --out")


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def write_report(report: Any, out: Path, *, force: bool) -> list[Path]:
    """Write report.json, report.md, report.html and plots/*.png into ``out``; return the paths."""
    check_out_dir(out, force=force)
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (staging / "report.json").write_text(report.to_json(), encoding="utf-8")
        (staging / "report.md").write_text(report.to_markdown(), encoding="utf-8")
        pngs = report.plot_pngs()  # rendered once, for the page and for plots/
        (staging / "report.html").write_text(report.to_html(plots=pngs), encoding="utf-8")
        (staging / PLOTS).mkdir()
        for name, png in pngs.items():
            (staging / PLOTS / f"{_safe_name(name)}.png").write_bytes(png)
        _commit(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    plots = sorted((out / PLOTS).glob("*.png"))
    return [out / name for name in REPORT_FILES] + plots


def _commit(staging: Path, out: Path) -> None:
    """Move the staged files into ``out``: one rename when ``out`` is new, else file by file."""
    if not out.exists():
        try:
            staging.rename(out)
            return
        except OSError:  # created meanwhile: fall through to the file-by-file move
            pass
    out.mkdir(parents=True, exist_ok=True)
    plots = out / PLOTS
    plots.mkdir(exist_ok=True)
    new_plots = {p.name for p in (staging / PLOTS).iterdir()}
    for png in (staging / PLOTS).iterdir():
        os.replace(png, plots / png.name)
    for stale in plots.glob("*.png"):  # the replaced report's plots that the new one lacks
        if stale.name not in new_plots:
            stale.unlink()
    # report.json last: its presence marks a complete report.
    for name in ("report.md", "report.html", "report.json"):
        os.replace(staging / name, out / name)


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


def summary_text(report: Any, *, files: list[Path] | None = None, notes: list[str] = ()) -> str:
    """The stdout summary: key metrics (with which way is better), recommendations, files."""
    shown = [name for name in KEY_METRICS if name in report.metrics]
    rows = [(name, report.metrics[name]) for name in shown if not math.isnan(report.metrics[name])]
    undefined = [name for name in shown if math.isnan(report.metrics[name])]
    width = max((len(name) for name, _ in rows), default=6)
    lines = [f"{'metric':<{width}}  {'value':>10}  better"]
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
