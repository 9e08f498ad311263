"""``diagnose history``: judge a training run from its per-epoch reports.

::

    diagnose history runs/arcface                      # a folder of epoch report folders
    diagnose history e1/report.json e2/report.json ... # reports in epoch order
    diagnose history runs/arcface --fail-on "margins_rising<1,best_epoch<0"

Prints each trend verdict and writes ``history.csv`` and ``history.html`` (into ``--out``;
default the run's folder, or ``embscope-history/`` for a list of reports). Exit status 0, 1
when a ``--fail-on`` rule is broken, 2 for bad usage or input.

Epochs: a report's folder name (``epoch_007``, ``7``, ``e7``) gives its epoch when every
folder's name holds a number and no two the same; otherwise the reports are epochs 1, 2, ... in
the order given (a folder's subfolders in natural order). A folder named ``..._train`` holds a
training-set report of that epoch (the train/validation gap).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from embscope.cli.errors import UsageError

USAGE = "diagnose history REPORT.json... | FOLDER [options]"
DEFAULT_OUT = "embscope-history"
REPORT_FILE = "report.json"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are `UsageError`s (one line, exit 2), as the main parser's."""

    def error(self, message: str) -> None:  # type: ignore[override]
        match = re.match(r"argument ([^:]+): (.*)", message)
        if match:
            raise UsageError(match.group(1).split("/")[-1], match.group(2), f"see {USAGE}")
        raise UsageError(self.prog, message, f"usage: {USAGE}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="diagnose history",
        usage=USAGE,
        description="Judge a training run from its per-epoch reports: margins rising, the gray "
        "zone and confident errors falling, KS and Fisher above their thresholds, the "
        "train/validation gap, oscillation of the task metric and the best epoch.",
    )
    parser.add_argument(
        "reports",
        nargs="+",
        metavar="REPORT",
        help="report.json files or report folders in epoch order, or one folder of them",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where history.csv and history.html go (default: the run's folder, or "
        f"{DEFAULT_OUT}/ for a list of reports)",
    )
    parser.add_argument(
        "--fail-on",
        metavar="RULES",
        help="exit 1 when a rule holds, e.g. 'margins_rising<1' (1 holds, 0 inconclusive, "
        "-1 broken), 'best_epoch<0', 'train_val_gap.value>0.1', 'macro_f1<0.9' (last epoch)",
    )
    parser.add_argument(
        "--task-metric", metavar="NAME", help="the task metric (default f1, else macro_f1)"
    )
    parser.add_argument(
        "--window",
        type=int,
        metavar="K",
        help="read the run's trends over its last K epochs (default: all)",
    )
    parser.add_argument(
        "--allow-different-data",
        action="store_true",
        help="judge validation reports computed on different data (refused by default: a trend "
        "across different validation sets is not the model's)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def run_history(argv: list[str]) -> int:
    from embscope.cli.ci import broken_rules, load_report, parse_fail_on
    from embscope.diagnostics.compare import data_differences
    from embscope.diagnostics.history import History
    from embscope.diagnostics.history_rules import values_for_fail_on

    args = build_parser().parse_args(argv)
    rules = parse_fail_on(args.fail_on) if args.fail_on is not None else None
    if args.window is not None and args.window < 2:
        raise UsageError("--window", f"must be 2 or more, got {args.window}", "e.g. --window 5")
    skipped: list[str] = []
    entries, folder = _entries([Path(p) for p in args.reports], skipped)
    history = History(task_metric=args.task_metric)
    first_val = None
    for path, epoch, split in entries:
        report = load_report(path, str(path))
        if split == "val" and not args.allow_different_data:
            if first_val is None:
                first_val = (path, report)
            else:
                found = data_differences(first_val[1], report, ("the first", "this one"))
                if found:
                    raise UsageError(
                        path,
                        f"was computed on other validation data than {first_val[0]} ({found[0]})",
                        "give the reports of one run on one validation set, or pass "
                        "--allow-different-data",
                    )
        history.append(report, epoch=epoch, split=split)
    if not history.epochs("val"):
        raise UsageError(
            args.reports[0], "holds no validation report", "give the validation report folders"
        )
    if args.task_metric is not None and args.task_metric not in history.metrics():
        raise UsageError("--task-metric", f"the reports have no metric {args.task_metric!r}")
    trends = history.judge(**({"window": args.window} if args.window else {}))
    out = args.out or (folder if folder is not None else Path(DEFAULT_OUT))
    try:
        out.mkdir(parents=True, exist_ok=True)
        history.save(out / "history.csv")
        (out / "history.html").write_text(history.to_html(trends), encoding="utf-8")
    except OSError as error:
        raise UsageError(
            "--out",
            f"cannot write into {out} ({error.strerror or error})",
            "choose a writable --out",
        ) from error
    val = history.epochs("val")
    print(
        f"{len(val)} validation reports (epochs {val[0]}-{val[-1]}), "
        f"task metric {history.task_metric}:"
    )
    for trend in trends:
        print(f"  {trend}")
    if skipped:
        print(f"left out (no epoch number in the name): {', '.join(skipped)}")
    print(f"wrote {out / 'history.csv'} and {out / 'history.html'}")
    if rules:
        broken = broken_rules(rules, values_for_fail_on(trends, history))
        for line in broken:
            print(line)
        return 1 if broken else 0
    return 0


def _entries(
    paths: list[Path], skipped: list[str]
) -> tuple[list[tuple[Path, int, str]], Path | None]:
    """(report path, epoch, split) per report, and the run's folder when one was given; the
    names of a folder's report folders left out are added to ``skipped``."""
    folder = None
    if len(paths) == 1 and paths[0].is_dir() and not (paths[0] / REPORT_FILE).exists():
        folder = paths[0]
        paths = sorted(
            (p for p in folder.iterdir() if p.is_dir() and (p / REPORT_FILE).exists()),
            key=lambda p: _natural(p.name),
        )
        if not paths:
            raise UsageError(
                folder,
                f"holds neither {REPORT_FILE} nor report folders",
                "give a folder of per-epoch report folders (epoch_001/report.json, ...)",
            )
        # epoch folders hold a number in their name; others (a copy of the last report, say)
        # are left out when some do
        numbered = [p for p in paths if _number(_strip_train(p.name)) is not None]
        if numbered:
            skipped += [p.name for p in paths if p not in numbered]
            paths = numbered
        elif len(paths) > 1:
            shown = ", ".join(p.name for p in paths[:4]) + (", ..." if len(paths) > 4 else "")
            raise UsageError(
                folder,
                f"none of its report folders has an epoch number in its name ({shown})",
                "name them by epoch (epoch_001, epoch_002, ...) or give the reports in epoch order",
            )
    for path in paths:
        if not path.exists():
            raise UsageError(path, "does not exist", "give report.json files or report folders")
    names = [(p.parent if p.name == REPORT_FILE or p.is_file() else p).name for p in paths]
    splits = ["train" if _strip_train(n) != n else "val" for n in names]
    numbers = [_number(_strip_train(n)) for n in names]
    keys = list(zip(numbers, splits, strict=True))
    if all(n is not None for n in numbers) and len(set(keys)) == len(keys):
        return [(p, n, s) for p, (n, s) in zip(paths, keys, strict=True)], folder
    # positions: a training report shares the epoch of the validation report before it
    entries, epoch = [], 0
    for path, split in zip(paths, splits, strict=True):
        if split == "val" or epoch == 0:
            epoch += 1
        entries.append((path, epoch, split))
    return entries, folder


def _strip_train(name: str) -> str:
    return re.sub(r"[_\-.]train$", "", name)


def _number(name: str) -> int | None:
    found = re.findall(r"\d+", name)
    return int(found[-1]) if found else None


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
