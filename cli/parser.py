"""The ``diagnose`` command line: its arguments, their checks and its help text.

`build_parser` defines ``diagnose CHECKPOINT DATA`` / ``diagnose EMBEDDINGS``,
`parse_compare_args` ``diagnose compare``; main.py dispatches to them.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Any

from embscope.cli.errors import UsageError

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
    channels = data.add_mutually_exclusive_group()
    channels.add_argument(
        "--grayscale",
        action="store_true",
        help="read images as one channel (default: the channels the model's first layer takes, "
        "else RGB)",
    )
    channels.add_argument("--rgb", action="store_true", help="read images as three channels (RGB)")
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
    data.add_argument(
        "--ignore-index",
        type=int,
        metavar="K",
        help="segmentation masks: the value of unlabelled pixels (default 255)",
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


COMPARE_USAGE = (
    "diagnose compare A.json B.json | diagnose compare A1.json A2.json ... -- B.json | "
    "diagnose compare A.json B.json C.json ..."
)


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
        "baselines, then --, then B; three or more reports without --: one ranked table, each "
        "model judged against the best",
    )
    parser.add_argument(
        "--rank-by",
        metavar="NAME",
        help="three or more reports: the metric that ranks them (default f1, macro_f1, miou, "
        "map_at_r, recall_at_1 or fisher_ratio, the first every report holds)",
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
        if args.rank_by is not None:
            raise UsageError(
                "--rank-by", "applies to three or more reports without --", "remove it"
            )
        args.a, args.b = list(args.reports), after[0]
        return args
    args = build_compare_parser().parse_args(argv)
    if len(args.reports) < 2:
        raise UsageError(
            "diagnose compare",
            f"expects two reports or more, got {len(args.reports)}",
            f"write {COMPARE_USAGE}",
        )
    if len(args.reports) > 2:  # N-way: cli/ci.py rank_reports
        args.many, args.a, args.b = list(args.reports), None, None
        return args
    if args.rank_by is not None:
        raise UsageError("--rank-by", "applies to three or more reports", "remove --rank-by")
    args.a, args.b = args.reports
    return args
