"""Write a report to ``--out`` and format the summary printed on stdout.

The folder is written by the library (`embscope.diagnostics.output`, ``Report.save``):
atomically, keeping the user's own files, with the user's umask, and refusing an earlier report
unless ``--force``. Here its refusals and failures become one-line `UsageError`s about ``--out``.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

from embscope.cli.errors import UsageError, from_library, one_line
from embscope.diagnostics.errors import InputError, ReplaceError
from embscope.diagnostics.output import check_report_folder, report_folder
from embscope.diagnostics.render import KEY_METRICS


def _out_error(error: InputError | ReplaceError) -> UsageError:
    return from_library(error, "--out")


def check_out_dir(out: Path, *, force: bool) -> None:
    """Refuse, before anything is computed, an ``--out`` that cannot receive the report: a file,
    a path under a file, a broken link, a report name that is not a file, an earlier report
    without ``force``, or a parent folder this user cannot write to."""
    try:
        check_report_folder(out, force=force)
    except InputError as error:
        raise _out_error(error) from error


def write_report(report: Any, out: Path, *, force: bool) -> list[Path]:
    """Write report.json, report.md, report.html and plots/*.png into ``out``; return the paths.

    `UsageError` for an ``out`` that cannot take the report (see `check_out_dir`) and for a
    failure to write it; ``out`` is then as it was.
    """
    try:
        return report.save(out, force=force)
    except (InputError, ReplaceError) as error:
        raise _out_error(error) from error
    except OSError as error:
        detail = one_line(error.strerror or str(error), 160)
        where = f" ({error.filename})" if error.filename else ""
        raise UsageError(
            "--out",
            f"the report could not be written to {report_folder(out)}: {detail}{where}; "
            "nothing there was changed",
            "check the free space and permissions, or choose another --out",
        ) from error


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
    """The stdout summary: rows dropped (a warning when most were), a head whose s or m are
    the factory's defaults, key metrics (with which way is better), recommendations, what to run
    to settle ArcFace vs BCE for two classes, notes, where the head's settings came from,
    files."""
    dropped = _count(report.metrics, "nonfinite_count") + _count(report.metrics, "zero_norm_count")
    lines = []
    if dropped:
        most = dropped > _count(report.metrics, "n")  # more than half of the rows given
        lines.append(f"{'warning' if most else 'note'}: {dropped_rows(report.metrics)}")
    lines += factory_default_warning(report)
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
    lines += margin_head_vs_bce(report, files)
    for note in notes:
        lines.append(note)
    lines += head_line(report)
    if files:
        lines += ["", f"report: {files[2]} (also {files[0].name}, {files[1].name}, plots/)"]
    return "\n".join(lines)


def _head_value(report: Any, key: str) -> float:
    value = report.metrics.get(f"head.{key}", math.nan)
    return float(value) if isinstance(value, (int, float)) else math.nan


def factory_default_warning(report: Any) -> list[str]:
    """A warning when the head's s or m are the model factory's defaults (the checkpoint said
    nothing about them): the values the model was trained with may differ."""
    provenance = report.meta.get("head_provenance") or {}
    defaults = [k for k in ("s", "m") if provenance.get(k) == "factory default"]
    if not defaults:
        return []
    values = " and ".join(f"{k} = {fmt(_head_value(report, k))}" for k in defaults)
    flags = "/".join(f"--head-{k}" for k in defaults)
    verb, noun = ("is", "default") if len(defaults) == 1 else ("are", "defaults")
    return [
        f"warning: the head's {values} {verb} the model factory's {noun} (the checkpoint holds "
        f"no config entry or tensor for {' or '.join(defaults)}); if the model was trained "
        f"with other values, the head's metrics and the scale advice are off: pass {flags} "
        "(or --model-kwargs)"
    ]


def head_line(report: Any) -> list[str]:
    """``head: s = 16 (checkpoint config), m = 0.2 (factory default), kind angular (declared)``."""
    provenance = report.meta.get("head_provenance")
    if not provenance:
        return []
    parts = []
    for key in ("s", "m"):
        value = _head_value(report, key)
        if not math.isnan(value):
            parts.append(f"{key} = {fmt(value)} ({provenance.get(key) or 'unknown'})")
    kind = report.meta.get("head_kind")
    if kind:
        parts.append(f"kind {kind} ({provenance.get('kind') or 'not stated'})")
    return [f"head: {', '.join(parts)}"] if parts else []


def margin_head_vs_bce(report: Any, files: list[Path] | None = None) -> list[str]:
    """For a two-class margin head with no verdict against a baseline yet: the commands that
    settle ArcFace vs BCE (one report cannot; `compare` of two reports can)."""
    two_classes = report.metrics.get("head.num_classes") == 2
    margin = _head_value(report, "m")
    judged = any(r.action in ("enable_arcface", "disable_arcface") for r in report.recommendations)
    if not two_classes or math.isnan(margin) or judged:
        return []
    source = report.meta.get("source") or {}
    mine = next((f for f in files or [] if f.name == "report.json"), None)
    mine = shlex.quote(str(mine)) if mine is not None else "THIS/report.json"
    if "embeddings" in source:
        run = "diagnose BCE_EMBEDDINGS --out bce-report"
    else:
        data = shlex.quote(str(source.get("data", "DATA")))
        run = f"diagnose BCE_CHECKPOINT {data} --model FILE.py:FACTORY --out bce-report"
    return [
        "",
        "ArcFace vs BCE (two classes): this report alone cannot tell whether the margin head "
        "beats one logit with BCE; a measured comparison can. Train the same model with one "
        "logit and BCE, diagnose it on the same data, and compare (the BCE report first):",
        f"  {run}",
        f"  diagnose compare bce-report/report.json {mine}",
        '  (in Python: recommend(report, baseline=Report.load("bce-report/report.json")))',
    ]
