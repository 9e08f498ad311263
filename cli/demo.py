"""``diagnose --demo``: train, diagnose and compare two small models on a gray-zone task.

The demo trains two models on a binary task with a gray zone made from real data,
scikit-learn's digits (1,797 8x8 scans that ship with scikit-learn: nothing is downloaded),
diagnoses both and compares them, in a few seconds on a CPU:

- the task (`embscope.demo.digits_binary`): odd digits (positive) vs even, the positive class
  thinned to a third and Gaussian pixel noise added: an imbalanced binary task whose classes
  overlap, as eye open/closed classification is;
- the models (`embscope.demo.DigitsNet`): an MLP ``64 -> 64 -> 16`` embedding with a BCE head
  (the baseline) or an ArcFace head (m = 0.2, s = 16, a common first ArcFace setting).

The data sets, model and training loop live in `embscope.demo` (the examples use them too);
their names here, and ``diagnose_model(model, x, y)``, are kept for code that imports them
from this module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embscope.demo import (
    EMBEDDING_DIM,
    DigitsNet,
    LeakyMarginNet,
    LossFn,
    Split,
    default_loss,
    digits_binary,
    digits_multiclass,
    train,
)
from embscope.diagnostics.metrics import one_thread

__all__ = [
    "DEMO_ARCFACE",
    "DEMO_EPOCHS",
    "EMBEDDING_DIM",
    "DigitsNet",
    "LeakyMarginNet",
    "LossFn",
    "Split",
    "default_loss",
    "demo_models",
    "diagnose_model",
    "digits_binary",
    "digits_multiclass",
    "embed",
    "run_demo",
    "train",
]

DEMO_EPOCHS = 20
DEMO_ARCFACE = {"m": 0.2, "s": 16.0}


@torch.no_grad()
def embed(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeddings, logits)`` of ``model`` in eval mode (its training flag is restored), in
    one forward pass (`embscope.diagnostics.embed` runs batches and finds the embedding).

    ``labels`` are passed to the model when given, as a validation loop that hands labels to
    ``forward`` does (with a correct margin head that changes nothing)."""
    was_training = model.training
    model.eval()
    try:
        return model(x) if labels is None else model(x, labels)
    finally:
        model.train(was_training)


def diagnose_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    ids: Sequence[str] | None = None,
    eval_with_labels: bool = False,
    **options: Any,
):
    """`embscope.diagnostics.diagnose_model` on the tensors ``(x, y)`` (the form this module
    offered first): ``diagnose_model(model, x, y, ...)`` is
    ``embscope.diagnostics.diagnose_model(model, (x, y), ...)``."""
    from embscope.diagnostics import diagnose_model as diagnose

    return diagnose(model, (x, y), ids=ids, eval_with_labels=eval_with_labels, **options)


# ----------------------------------------------------------------------------------------------
# diagnose --demo
# ----------------------------------------------------------------------------------------------


def demo_models(seed: int = 0) -> dict[str, DigitsNet]:
    """The demo's two untrained models, built from ``seed``: ``"bce"`` and ``"arcface"``."""
    from embscope.losses import ArcFaceHead, BCEHead

    torch.manual_seed(seed)
    bce = DigitsNet(BCEHead(EMBEDDING_DIM))
    torch.manual_seed(seed)
    arcface = DigitsNet(ArcFaceHead(EMBEDDING_DIM, 2, **DEMO_ARCFACE))
    return {"bce": bce, "arcface": arcface}


def run_demo(
    out: str | Path, *, force: bool = False, epochs: int = DEMO_EPOCHS, seed: int = 0
) -> int:
    """Train, diagnose and compare the demo's BCE and ArcFace models; write and print the results.

    Writes ``OUT/bce/`` and ``OUT/arcface/`` (report.json, report.md, report.html, plots/*.png,
    through the CLI's report writer) and ``OUT/comparison.md`` / ``OUT/comparison.json``
    (``compare(bce, arcface)``). Refuses, before training, to replace an earlier demo in ``out``
    unless ``force`` (a :class:`~embscope.cli.errors.UsageError`, exit status 2). Returns 0.
    """
    from embscope.cli.errors import UsageError
    from embscope.cli.output import check_out_dir

    out = Path(out)
    check_out_dir(out, force=True)  # a file, or not writable
    for name in ("bce", "arcface"):
        check_out_dir(out / name, force=force)
    if not force and any((out / f).exists() for f in ("comparison.md", "comparison.json")):
        raise UsageError(
            "--out",
            f"{out} already holds a demo comparison (comparison.json)",
            "pass --force to replace it, or choose another --out",
        )

    with one_thread():  # small models train fastest on one thread
        return _train_diagnose_write(out, force=force, epochs=epochs, seed=seed)


def _train_diagnose_write(out: Path, *, force: bool, epochs: int, seed: int) -> int:
    from embscope.cli.output import summary_text, write_report
    from embscope.diagnostics import compare, recommend

    started = time.perf_counter()
    names = ("bce", "arcface")
    comparison_files = [out / "comparison.md", out / "comparison.json"]
    split = digits_binary(seed=seed)
    print(
        f"embscope demo: odd vs even digits (scikit-learn's 8x8 scans), positives thinned to a "
        f"third, pixel noise 0.35: {len(split.y_train)} training / {len(split.y_val)} validation "
        f"samples, {float(split.y_val.float().mean()):.0%} positive"
    )
    models = demo_models(seed)
    reports, files = {}, {}
    for name, model in models.items():
        train(model, split, epochs=epochs, seed=seed)
        # thumbnails: rows of 64 pixels are 8x8 scans in [0, 1] plus noise
        reports[name] = diagnose_model(
            model,
            split.x_val,
            split.y_val,
            ids=split.ids_val,
            image_shape=(8, 8),
            image_range=(0, 1),
        )
    # the ArcFace report carries the measured verdict against the BCE baseline
    reports["arcface"] = reports["arcface"].with_recommendations(
        recommend(reports["arcface"], baseline=reports["bce"])
    )
    titles = {
        "bce": "BCE baseline (one logit, BCEWithLogits)",
        "arcface": f"ArcFace (m = {DEMO_ARCFACE['m']:g}, s = {DEMO_ARCFACE['s']:g}, two classes)",
    }
    dataset = f"scikit-learn digits, odd vs even: the {len(split.y_val)} validation scans"
    for name in names:  # the report's title names the model and its data
        meta = {**reports[name].meta, "model": titles[name], "dataset": dataset}
        reports[name] = replace(reports[name], meta=meta)
        files[name] = write_report(reports[name], out / name, force=force)
    comparison = compare(reports["bce"], reports["arcface"])
    out.mkdir(parents=True, exist_ok=True)
    comparison_files[0].write_text(
        "# BCE (A) vs ArcFace (B) on the demo's validation set\n\n" + comparison.to_markdown(),
        encoding="utf-8",
    )
    comparison_files[1].write_text(
        json.dumps(comparison.to_dict(), indent=1, allow_nan=False) + "\n", encoding="utf-8"
    )

    for name in names:
        print(f"\n== {titles[name]} ==")
        print(summary_text(reports[name], files=files[name]))
    print("\n== BCE (A) vs ArcFace (B) ==")
    print(f"verdict: {comparison.verdict}: {comparison.reason}")
    print(f"comparison: {comparison_files[0]} (also {comparison_files[1].name})")
    print(f"\ndone in {time.perf_counter() - started:.1f} s")
    return 0
