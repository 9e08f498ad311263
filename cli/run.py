"""``diagnose CHECKPOINT DATA`` and ``diagnose EMBEDDINGS`` after parsing: the Diagnoser's
options from the flags, running the model or reading the embeddings, and finishing (report,
baseline gate, ``--fail-on``)."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from embscope.cli.errors import UsageError, one_line
from embscope.cli.parser import DEFAULT_BATCH_SIZE


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
    other settings came from (`embscope.cli.head_settings.head_provenance`); the stated s and m
    are set on that head first, so that the model runs with them. Empty when there is
    nothing to say."""
    from embscope.cli.head_settings import head_provenance, set_head_values
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
        "--rgb": args.rgb or None,
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
    from embscope.cli.input_common import fit_to_model
    from embscope.cli.masks import dense_options
    from embscope.cli.model_run import model_error, resolve_device
    from embscope.diagnostics import InputError, diagnose_model
    from embscope.diagnostics.segmentation_model import diagnose_segmentation_model

    checkpoint, data_path = (Path(p) for p in args.inputs)
    ctx = active()
    device = resolve_device(args.device) if ctx is None else ctx.device
    image = ImageOptions(args.image_size, args.grayscale, args.mean, args.std, rgb=args.rgb)
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
    fit_to_model(data, loaded)  # images read with the channels the model takes
    options = {**_diagnoser_options(args), **_head_options(args, loaded)}
    options.update(dense_options(args, data))  # segmentation data (cli/masks.py)
    run = diagnose_segmentation_model if getattr(data, "dense", False) else diagnose_model
    _warm_plotting()
    with _progress(len(data), "sample") as bar:

        def batches() -> Iterator[tuple[Any, Any, Any]]:
            for batch in data.batches(args.batch_size or DEFAULT_BATCH_SIZE):
                yield batch.inputs, batch.labels, batch.ids
                bar.update(len(batch.labels))

        try:
            report = run(
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
    classes = getattr(data, "classes", None)  # image folders: named classes, sorted
    numbered = getattr(data, "numbered", True)
    columns = report.meta.get("logit_columns")
    if classes and not numbered and columns and columns > 1 and len(classes) < columns:
        notes.append(
            f"labels: the {len(classes)} class folders ({', '.join(classes[:4])}"
            f"{', ...' if len(classes) > 4 else ''}) were taken as classes 0-{len(classes) - 1} "
            f"in name order, but the model has {columns} outputs: if they are other classes, "
            "name each folder by its class index (e.g. 3/, 7/)"
        )
    if not source["margin_leak_probed"]:
        notes.append("margin leak: none possible (forward takes no labels)")
    from embscope.diagnostics.provenance import file_fingerprint

    fingerprint = {**report.meta.get("checkpoint", {}), "file": file_fingerprint(checkpoint)}
    report = replace(report, meta={**report.meta, "source": meta, "checkpoint": fingerprint})
    return report, notes


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
        from embscope.cli.ci import checkpoint_lines

        lines += checkpoint_lines(report, baseline, list(args.baseline))
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
