"""Entry point of the ``diagnose`` console script.

::

    diagnose CHECKPOINT DATA [options]      run a model on labelled data and diagnose it
    diagnose EMBEDDINGS [options]           diagnose precomputed embeddings (and logits)
    diagnose compare A.json B.json          print the deltas of two reports and a verdict
    diagnose compare A1 A2 A3 -- B.json     B against several baselines (seeds of one recipe)
    diagnose history RUN_FOLDER             trend verdicts over a training run's epoch reports

Exit status: 0 success; 1 a regression against ``--baseline`` or a broken ``--fail-on`` rule
(the report is still written); 2 bad usage or bad input, and also any unexpected internal error
(so that CI never reads a crash as the regression verdict 1). Every failure prints exactly one
line on stderr, ``diagnose: error: <file or option>: <what> (<fix>)``; ``--debug`` adds the
traceback and shows Python warnings, which are otherwise silenced.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from embscope.cli.errors import UsageError, one_line
from embscope.cli.parser import (  # noqa: F401  (build_parser is part of the module's API)
    build_parser,
    parse_compare_args,
)
from embscope.cli.run import _diagnose_embeddings, _diagnose_model, _finish, _silence_stdout


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``diagnose`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.simplefilter("ignore")
            if argv and argv[0] == "compare":
                return run_compare(parse_compare_args(argv[1:]))
            if argv and argv[0] == "history":
                from embscope.cli.history import run_history

                return run_history(argv[1:])
            return run(build_parser().parse_args(argv))
    except UsageError as error:
        if debug:
            traceback.print_exc()
        print(f"diagnose: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return exit_.code if isinstance(exit_.code, int) else 0
    except BrokenPipeError:  # stdout closed early (diagnose compare ... | head)
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        print("diagnose: error: interrupted", file=sys.stderr)
        return 130
    except PermissionError as error:  # one not caught where the file is opened
        if debug:
            traceback.print_exc()
        where = error.filename or "a file"
        print(
            f"diagnose: error: {where}: permission denied ({one_line(error.strerror or '', 80)}) "
            "(check its permissions)",
            file=sys.stderr,
        )
        return 2
    except MemoryError:
        if debug:
            traceback.print_exc()
        print(
            "diagnose: error: out of memory (lower --batch-size or --reservoir-size)",
            file=sys.stderr,
        )
        return 2
    except Exception as error:
        if debug:
            traceback.print_exc()
        detail = one_line(f"{type(error).__name__}: {error}", 300)
        print(
            f"diagnose: error: internal error: {detail} "
            "(rerun with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 2


def run_compare(args: argparse.Namespace) -> int:
    from embscope.cli.ci import (
        compare_reports,
        load_report,
        parse_gate,
        parse_metric_names,
        tolerance_value,
    )

    if getattr(args, "many", None):  # three or more reports: one ranked table
        from embscope.cli.ci import rank_reports

        return rank_reports(args)
    metrics = parse_metric_names(args.metrics) if args.metrics is not None else None
    gate = parse_gate(args.gate) if args.gate is not None else None
    if isinstance(args.a, list):
        report_a = [load_report(a, f"A{i + 1}.json") for i, a in enumerate(args.a)]
    else:
        report_a = load_report(args.a, "A.json")
    report_b = load_report(args.b, "B.json")
    comparison = compare_reports(
        report_a,
        report_b,
        paths=(args.a, args.b),
        metrics=metrics,
        tolerance=tolerance_value(args.tolerance),
        gate=gate,
        allow_different_data=args.allow_different_data,
    )
    print(comparison.to_markdown().rstrip())
    if comparison.recommendation is not None:
        rec = comparison.recommendation
        print(f"\nrecommendation: [{rec.severity}] {rec.action}: {rec.reason}")
    return 0


def run(args: argparse.Namespace) -> int:
    """``diagnose CHECKPOINT DATA`` or ``diagnose EMBEDDINGS``: the whole command after parsing."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    if args.distributed:
        from embscope.cli.distributed import run_distributed

        return run_distributed(args, run)
    out = Path(args.out)
    if args.demo:
        return _run_demo(args, out)
    if not args.inputs or len(args.inputs) > 2:
        raise UsageError(
            "diagnose",
            f"expects CHECKPOINT DATA or EMBEDDINGS, got {len(args.inputs)} paths",
            "see diagnose --help",
        )
    from embscope.cli.ci import load_report, parse_fail_on, parse_gate, parse_metric_names
    from embscope.cli.output import check_out_dir

    # Everything that can be checked cheaply is checked before the model runs.
    check_out_dir(out, force=args.force)
    rules = parse_fail_on(args.fail_on) if args.fail_on is not None else []
    for flag, value in (
        ("--metrics", args.metrics),
        ("--gate", args.gate),
        ("--allow-different-data", args.allow_different_data or None),
    ):
        if value is not None and args.baseline is None:
            raise UsageError(
                flag, "applies only with --baseline", "add --baseline REPORT.json or remove it"
            )
    metrics = parse_metric_names(args.metrics) if args.metrics is not None else None
    args.gate_metrics = parse_gate(args.gate) if args.gate is not None else None
    baseline = (
        [load_report(path, "--baseline") for path in args.baseline]
        if args.baseline is not None
        else None
    )

    if len(args.inputs) == 1:
        report, notes = _diagnose_embeddings(args)
    else:
        report, notes = _diagnose_model(args)
    return _finish(args, out, report, notes, rules, baseline, metrics)


def _run_demo(args: argparse.Namespace, out: Path) -> int:
    if args.inputs:
        raise UsageError(
            "--demo", "takes no CHECKPOINT, DATA or EMBEDDINGS", "remove the paths or --demo"
        )
    try:
        from embscope.cli.demo import run_demo
    except ModuleNotFoundError as error:
        if error.name != "embscope.cli.demo":
            raise
        raise UsageError(
            "--demo", "is not available in this version of embscope", "upgrade embscope"
        ) from error
    code = run_demo(out, force=args.force)
    return 0 if code is None else int(code)


if __name__ == "__main__":
    sys.exit(main())
