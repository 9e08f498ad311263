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
import math
import os
import re
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from embscope.cli.errors import UsageError, one_line

DEFAULT_OUT = "embscope-report"
DEFAULT_BATCH_SIZE = 64
MAX_SEED = 2**32 - 1
EXAMPLES = """\
examples:
  diagnose model.pt val/ --model models/net.py:build_net --grayscale --image-size 64
  diagnose ckpt.pt val.npz --model mypkg.models:Net --model-kwargs '{"num_classes": 2}'
  diagnose model.pt2 val.pt --out reports/epoch20 --baseline reports/epoch10/report.json
  diagnose embeddings/ --fail-on "score_ks<0.5,f1<0.8"
  diagnose compare reports/bce/report.json reports/arcface/report.json

exit status: 0 ok, 1 regression or broken --fail-on rule, 2 bad usage/input or internal error
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors through `UsageError` (one line, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        match = re.match(r"argument ([^:]+): (.*)", message)
        if match:
            raise UsageError(
                match.group(1).split("/")[-1], match.group(2), f"see {self.prog} --help"
            )
        raise UsageError(self.prog, message, f"see {self.prog} --help")


def _number(
    kind: type, minimum: float, what: str, maximum: float = math.inf
) -> Callable[[str], float]:
    """An argparse type: ``kind(text)`` (int or float) in [``minimum``, ``maximum``]."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            value = float("nan")
        if not minimum <= value <= maximum:  # also nan
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, 1, "a positive integer")
_non_negative_int = _number(int, 0, "an integer >= 0")
_seed = _number(int, 0, f"an integer from 0 to {MAX_SEED}", maximum=MAX_SEED)
_head_s = _number(float, 1e-300, "a finite number > 0", maximum=1e300)
# radians: ArcFace's 28.6 degrees is 0.5; a value in degrees would be refused, not converted
_head_m = _number(float, 0.0, "a margin in radians from 0 to pi (e.g. 0.5)", maximum=math.pi)


MAX_IMAGE_SIZE = 2**16 - 1


def _image_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or not 1 <= min(sizes) <= max(sizes) <= MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be N or HxW in pixels from 1 to {MAX_IMAGE_SIZE} (e.g. 224 or 64x128), "
            f"got {text!r}"
        )
    return (sizes[0], sizes[-1])


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(
            f"must be comma-separated finite numbers (e.g. 0.5,0.5,0.5), got {text!r}"
        )
    return values


def build_parser() -> argparse.ArgumentParser:
    """The ``diagnose CHECKPOINT DATA`` / ``diagnose EMBEDDINGS`` parser."""
    parser = _Parser(
        prog="diagnose",
        usage="diagnose CHECKPOINT DATA [options] | diagnose EMBEDDINGS [options] | "
        "diagnose compare A.json B.json",
        description="Diagnose the embedding space and logits of a PyTorch model: write a report "
        "(JSON, Markdown, HTML with plots) and print its key metrics and recommendations.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="PATH",
        help="CHECKPOINT DATA (a model and labelled data), or EMBEDDINGS (precomputed: .npz/.pt "
        "with embeddings, labels, optional logits and ids, or a folder of embeddings.npy, "
        "labels.npy, optional logits.npy)",
    )
    model = parser.add_argument_group("model (with CHECKPOINT DATA)")
    model.add_argument(
        "--model",
        metavar="FILE.py:FACTORY",
        help="code that builds the model for a state dict: FILE.py:FACTORY or package.module:FACTORY "
        "(the current directory is importable)",
    )
    model.add_argument(
        "--model-kwargs",
        metavar="JSON",
        help="keyword arguments of the factory as a JSON object (default: the checkpoint's "
        "config/hparams/hyper_parameters dict)",
    )
    model.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow unpickling Python objects (a whole pickled module, a .npy dict): this runs code "
        "named by the file, so only for files from a trusted source",
    )
    model.add_argument(
        "--embedding-layer",
        metavar="NAME",
        help="take the embedding from this submodule's output (default: the model's embedding "
        "output, else the input of its final Linear layer or margin head)",
    )
    model.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N or auto (default: auto, CUDA when available for a model; the CPU "
        "for EMBEDDINGS, which --device cuda moves to the GPU chunk by chunk)",
    )
    model.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        help=f"samples per forward pass (default {DEFAULT_BATCH_SIZE}); rows per chunk for EMBEDDINGS",
    )
    head = parser.add_argument_group(
        "margin head (with CHECKPOINT DATA or EMBEDDINGS)",
        "the s, m and kind the model was trained with: set on a checkpoint's head before it "
        "runs (overriding the factory's defaults or the config); for EMBEDDINGS, the head whose "
        "logits are s * cos(theta). The report says where each value came from "
        "(meta.head_provenance).",
    )
    head.add_argument("--head-s", type=_head_s, metavar="S", help="the scale s")
    head.add_argument("--head-m", type=_head_m, metavar="M", help="the margin m, in radians")
    head.add_argument(
        "--head-kind",
        choices=("arcface", "cosface"),
        help="arcface: angular margin cos(theta + m); cosface: cosine margin cos(theta) - m",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--image-size", type=_image_size, metavar="N|HxW", help="resize images to N x N or H x W"
    )
    data.add_argument(
        "--grayscale", action="store_true", help="read images as one channel (default: RGB)"
    )
    data.add_argument(
        "--mean",
        type=_floats,
        metavar="M[,M,M]",
        help="subtract per channel, after scaling to [0, 1]",
    )
    data.add_argument("--std", type=_floats, metavar="S[,S,S]", help="then divide per channel")
    data.add_argument(
        "--label-column", metavar="NAME", help="the labels' column of a CSV/Parquet table"
    )
    diag = parser.add_argument_group("diagnostics")
    diag.add_argument(
        "--space",
        choices=("cosine", "euclidean"),
        default="cosine",
        help="geometry (default: cosine)",
    )
    diag.add_argument(
        "--reservoir-size",
        type=_non_negative_int,
        metavar="N",
        help="embeddings kept for retrieval and pair metrics (exact up to N samples; 0 turns them off)",
    )
    diag.add_argument(
        "--seed",
        type=_seed,
        default=0,
        metavar="N",
        help=f"seed of the sampling beyond the reservoir (0 to {MAX_SEED}; default 0)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"report folder (default: {DEFAULT_OUT}/)"
    )
    out.add_argument("--force", action="store_true", help="replace an earlier report in --out")
    ci = parser.add_argument_group("CI")
    ci.add_argument(
        "--baseline",
        action="append",
        metavar="REPORT.json",
        help="exit 1 when a gated metric is worse than in this report, beyond the tolerance and "
        "the noise; repeat it for several baselines (the same recipe with other seeds: judged "
        "against their spread)",
    )
    _ci_options(ci)
    ci.add_argument(
        "--metrics",
        metavar="NAME[,NAME]",
        help="with --baseline: check only these metrics (needed when the baseline has other "
        "classes, logits or space)",
    )
    ci.add_argument(
        "--fail-on",
        metavar="RULES",
        help="exit 1 when a rule holds, e.g. 'score_ks<0.5,f1<0.8,f1.low<0.75' (METRIC.low and "
        "METRIC.high: its interval's bounds; a nan metric breaks its rule)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and Python warnings")
    parser.add_argument("--demo", action="store_true", help="diagnose a small built-in example")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="under torchrun: each process diagnoses its shard, rank 0 writes the report "
        "(torchrun --nproc-per-node K -m embscope.cli.main ... --distributed)",
    )
    return parser


def _tolerance(text: str) -> list[tuple[str | None, float]]:
    from embscope.cli.ci import tolerance_items

    try:
        return tolerance_items(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _ci_options(group: Any) -> None:
    """The options the gate and ``diagnose compare`` share: they decide alike."""
    group.add_argument(
        "--tolerance",
        type=_tolerance,
        action="append",
        metavar="X|METRIC=X[,...]",
        help="allowed worsening: absolute for metrics in [-1, 1], relative beyond (default: "
        "0.02, and wider for metrics whose seeds spread wider, e.g. score_ks 0.05; see docs/cli.md); "
        "per metric with METRIC=X, e.g. --tolerance f1=0.01,ece=0.03",
    )
    group.add_argument(
        "--gate",
        metavar="METRIC[,METRIC]",
        help="the metrics judged (default: the task, score separation, fisher_ratio, "
        "verification, retrieval and calibration metrics; counts are judged as rates)",
    )
    group.add_argument(
        "--allow-different-data",
        action="store_true",
        help="judge against a report computed on other data (refused otherwise: other samples, "
        "ids or labels)",
    )


COMPARE_USAGE = "diagnose compare A.json B.json | diagnose compare A1.json A2.json ... -- B.json"


def build_compare_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="diagnose compare",
        usage=f"{COMPARE_USAGE} [options]",
        description="Compare B with A (or with several baselines A1 A2 ..., the same recipe with "
        "other seeds): the judged metrics first, with their intervals and the decision for each "
        "(the same decision as the --baseline gate), then the other metrics, and a verdict.",
    )
    parser.add_argument(
        "reports",
        nargs="+",
        metavar="REPORT.json",
        help="A.json B.json (A the baseline, e.g. the BCE model; B the candidate), or the "
        "baselines, then --, then B",
    )
    parser.add_argument(
        "--metrics",
        metavar="NAME[,NAME]",
        help="compare only these metrics (needed when the reports have other classes, logits or "
        "space)",
    )
    _ci_options(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def parse_compare_args(argv: list[str]) -> argparse.Namespace:
    """``A B`` or ``A1 A2 ... -- B`` (options anywhere before B)."""
    if "--" in argv:
        i = argv.index("--")
        after = argv[i + 1 :]
        if not after or after[0].startswith("-"):
            raise UsageError("diagnose compare", "expects B.json after --", COMPARE_USAGE)
        args = build_compare_parser().parse_args(argv[:i] + after[1:])
        args.a, args.b = list(args.reports), after[0]
        return args
    args = build_compare_parser().parse_args(argv)
    if len(args.reports) != 2:
        raise UsageError(
            "diagnose compare",
            f"expects two reports, got {len(args.reports)}",
            f"for several baselines write {COMPARE_USAGE.split(' | ')[1]}",
        )
    args.a, args.b = args.reports
    return args


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


def _diagnoser_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Diagnoser's options from the flags, checked by building one (`UsageError` naming
    the flag of an option it refuses)."""
    from embscope.diagnostics import Diagnoser

    options: dict[str, Any] = {"space": args.space, "seed": args.seed}
    if args.reservoir_size is not None:
        options["reservoir_size"] = args.reservoir_size
    try:
        Diagnoser(**options)
    except (ValueError, TypeError, OverflowError) as error:  # an option the Diagnoser refuses
        message = str(error)
        flags = {"reservoir_size": "--reservoir-size", "seed": "--seed", "space": "--space"}
        flag = next((f for name, f in flags.items() if name in message), "diagnose")
        raise UsageError(flag, one_line(message, 300), "see diagnose --help") from error
    return options


def _head_options(args: argparse.Namespace, loaded: Any = None) -> dict[str, Any]:
    """``{"head_info": ...}`` for the Diagnoser: the head's s, m and kind stated by
    ``--head-s``/``--head-m``/``--head-kind`` and, for a checkpoint's margin head, where its
    other settings came from (`embscope.cli.checkpoint.head_provenance`); the stated s and m
    are set on that head first, so that the model runs with them. Empty when there is
    nothing to say."""
    from embscope.cli.checkpoint import head_provenance, set_head_values
    from embscope.diagnostics.heads import KIND_NAMES, find_margin_head

    given = (("s", args.head_s), ("m", args.head_m))
    stated = {key: value for key, value in given if value is not None}
    info: dict[str, Any] = dict(stated)
    if args.head_kind is not None:
        info["kind"] = KIND_NAMES[args.head_kind]
    if loaded is not None and not loaded.exported:
        head = find_margin_head(loaded.module)
        if head is not None:
            provenance = head_provenance(loaded, head)
            set_head_values(head, stated)
            provenance.update(dict.fromkeys(stated, "user"))
            if provenance:
                info["provenance"] = provenance
    return {"head_info": info} if info else {}


def _update(diagnoser: Any, subject: object, *values: Any, **named: Any) -> None:
    """``Diagnoser.update``; its ValueError/TypeError (bad input) become `UsageError`."""
    try:
        diagnoser.update(*values, **named)
    except (ValueError, TypeError) as error:
        raise UsageError(subject, one_line(str(error), 300), "check the data") from error


def _progress(total: int, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, unit=unit, disable=not sys.stderr.isatty(), leave=False, file=sys.stderr
    )


def _diagnose_embeddings(args: argparse.Namespace) -> tuple[Any, list[str]]:
    from embscope.cli.data import EmbeddingFile
    from embscope.cli.distributed import shard_chunks
    from embscope.diagnostics import Diagnoser

    path = Path(args.inputs[0])
    model_only = {
        "--model": args.model,
        "--model-kwargs": args.model_kwargs,
        "--embedding-layer": args.embedding_layer,
        "--image-size": args.image_size,
        "--grayscale": args.grayscale or None,
        "--mean": args.mean,
        "--std": args.std,
        "--label-column": args.label_column,
    }
    for flag, value in model_only.items():
        if value is not None:
            raise UsageError(
                flag,
                f"applies to diagnose CHECKPOINT DATA, but only {path} was given",
                f"remove {flag}, or pass the data too",
            )
    device = _embeddings_device(args.device)
    source = EmbeddingFile(path)
    diagnoser = Diagnoser(**_diagnoser_options(args), **_head_options(args))
    rows = source.chunk_rows(args.batch_size)
    with _progress(len(source), "row") as bar:
        for chunk in shard_chunks(source.chunks(rows), -(-len(source) // rows)):
            embeddings, labels, logits = chunk.embeddings, chunk.labels, chunk.logits
            if device is not None:
                embeddings, logits = _to_device(embeddings, device), _to_device(logits, device)
            _update(diagnoser, path, embeddings, labels, logits=logits, ids=chunk.ids)
            bar.update(len(chunk.labels))
    report = _compute(diagnoser, path, "check the embeddings (and logits) file")
    meta = {"embeddings": str(path), "columns": sorted(source.columns)}
    if device is not None:
        meta["device"] = str(device)
    return replace(report, meta={**report.meta, "source": meta}), []


def _embeddings_device(name: str) -> Any:
    """Where precomputed embeddings are diagnosed: None (the CPU, as read) for ``auto`` and
    ``cpu``, else the CUDA device named (`UsageError` when there is none). Under --distributed
    the rank's chunks stay as read."""
    from embscope.cli.distributed import active
    from embscope.cli.model_run import resolve_device

    device = resolve_device(name)  # also refuses cuda without CUDA, and unknown names
    if name == "auto" or device.type == "cpu" or active() is not None:
        return None
    return device


def _to_device(values: Any, device: Any) -> Any:
    import numpy as np
    import torch

    if values is None:
        return None
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(values)
    return values.to(device)


def _warm_plotting() -> None:
    """Import the plotting backend on a thread while the model runs (about 0.5 s that the
    report would otherwise spend at the end); any failure surfaces later, where it is used."""

    def load() -> None:
        try:
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.figure  # noqa: F401
        except Exception:  # the report's own import reports it
            pass

    threading.Thread(target=load, name="embscope-warm-plotting", daemon=True).start()


def _diagnose_model(args: argparse.Namespace) -> tuple[Any, list[str]]:
    from embscope.cli.checkpoint import load_model
    from embscope.cli.data import ImageOptions, open_inputs
    from embscope.cli.distributed import active, shard_inputs
    from embscope.cli.model_run import model_error, resolve_device
    from embscope.diagnostics import InputError, diagnose_model

    checkpoint, data_path = (Path(p) for p in args.inputs)
    ctx = active()
    device = resolve_device(args.device) if ctx is None else ctx.device
    image = ImageOptions(args.image_size, args.grayscale, args.mean, args.std)
    if args.std is not None and min(args.std) <= 0:
        raise UsageError(
            "--std", f"must be positive, got {args.std}", "give standard deviations > 0"
        )
    data = open_inputs(
        data_path, image=image, label_column=args.label_column, trust=args.trust_checkpoint
    )
    data = shard_inputs(data)  # this rank's block under --distributed
    loaded = load_model(
        checkpoint,
        model_spec=args.model,
        model_kwargs=args.model_kwargs,
        trust=args.trust_checkpoint,
    )
    options = {**_diagnoser_options(args), **_head_options(args, loaded)}
    _warm_plotting()
    with _progress(len(data), "sample") as bar:

        def batches() -> Iterator[tuple[Any, Any, Any]]:
            for batch in data.batches(args.batch_size or DEFAULT_BATCH_SIZE):
                yield batch.inputs, batch.labels, batch.ids
                bar.update(len(batch.labels))

        try:
            report = diagnose_model(
                loaded.module,
                batches(),
                device=device,
                embedding_layer=args.embedding_layer,
                **options,
            )
        except InputError as error:
            raise model_error(error, checkpoint, data_path, data.hint) from error
    source = report.meta["source"]
    meta = {
        "checkpoint": str(checkpoint),
        "checkpoint_kind": loaded.kind,
        "data": str(data_path),
        **source,
    }
    notes = [f"\nembedding: {source['embedding']}"]
    if not source["margin_leak_probed"]:
        notes.append("margin leak: none possible (forward takes no labels)")
    return replace(report, meta={**report.meta, "source": meta}), notes


def _compute(diagnoser: Any, subject: object, fix: str) -> Any:
    """``Diagnoser.compute``; its ValueError (no usable row, ...) becomes a `UsageError`, and so
    does a report of no rows: nothing is written for data that could not be used."""
    try:
        report = diagnoser.compute()
    except ValueError as error:
        raise UsageError(subject, one_line(str(error), 300), fix) from error
    if report.metrics.get("n", 1) == 0:
        from embscope.cli.output import dropped_rows

        raise UsageError(subject, f"no usable rows: {dropped_rows(report.metrics)}", fix)
    return report


def _finish(
    args: argparse.Namespace,
    out: Path,
    report: Any,
    notes: list[str],
    rules: list[Any],
    baseline: Any,
    metrics: list[str] | None,
) -> int:
    from embscope.cli.ci import broken_rules, rule_values, tolerance_text, tolerance_value
    from embscope.cli.distributed import main_rank_report
    from embscope.cli.output import summary_text, write_report

    report = main_rank_report(report)
    if report is None:  # --distributed: rank 0 writes and prints
        return 0
    regressions = []
    tolerance = tolerance_value(args.tolerance)
    if baseline is not None:
        from embscope.cli.ci import regressions as find_regressions

        regressions = find_regressions(
            report,
            baseline,
            baseline_path=list(args.baseline),
            tolerance=tolerance,
            metrics=metrics,
            gate=getattr(args, "gate_metrics", None),
            allow_different_data=args.allow_different_data,
        )
    failures = broken_rules(rules, rule_values(report)) if rules else []
    files = write_report(report, out, force=args.force)
    lines = [summary_text(report, files=files, notes=notes)]
    if baseline is not None:
        against = (
            args.baseline[0]
            if len(args.baseline) == 1
            else f"{len(args.baseline)} baselines ({', '.join(args.baseline)})"
        )
        tol = tolerance_text(tolerance)
        if regressions:
            lines.append(f"\nregressions against {against} (tolerance {tol}):")
            lines += [f"  {regression}" for regression in regressions]
        else:
            lines.append(f"\nno regression against {against} (tolerance {tol})")
    if failures:
        lines.append("\n--fail-on:")
        lines += [f"  {line}" for line in failures]
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # diagnose ... | head: the report is written, the verdict stands
        _silence_stdout()
    return 1 if regressions or failures else 0


def _silence_stdout() -> None:
    """After a broken pipe, send what is left of stdout to /dev/null (Python's recipe)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
