"""The margin leak, quantified (diagnostics/leak.py): the scores of the eval-mode logits with
labels passed to forward and without, against scikit-learn; diagnose_model adds them when the
probe finds a leak, the fix_eval_margin advice shows both, and they survive batching and a
two-process sync."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from embscope.diagnostics import diagnose_model
from embscope.diagnostics.leak import _leak_compute, _leak_update, leak_key
from embscope.losses import ArcFaceHead

DIM_IN = 6


class LeakyNet(nn.Module):
    """``forward(x, labels=None) -> (embedding, logits)``: a linear body and embscope's ArcFace
    head; with ``leak`` the margin is applied whenever labels are passed, in eval mode too."""

    def __init__(self, classes: int = 2, leak: bool = True, m: float = 0.5, s: float = 16.0):
        super().__init__()
        self.body = nn.Linear(DIM_IN, 4)
        self.head = ArcFaceHead(4, classes, m=m, s=s)
        self.leak = leak

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        embedding = self.body(x)
        if labels is not None and self.leak and not self.training:
            self.head.train(True)
            try:
                return embedding, self.head(embedding, labels)
            finally:
                self.head.train(False)
        return embedding, self.head(embedding, labels)


def overlapping(n: int = 400, classes: int = 2, seed: int = 0):
    """Two (or more) Gaussian classes that overlap: a gray zone the margin pushes over."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, DIM_IN, generator=g)
    x = centres[y] + 1.2 * torch.randn(n, DIM_IN, generator=g)
    return x, y


def leaky_model(classes: int = 2, leak: bool = True, steps: int = 30) -> LeakyNet:
    x, y = overlapping(classes=classes)
    torch.manual_seed(0)
    model = LeakyNet(classes, leak=leak)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x, y)[1], y).backward()
        optimiser.step()
    return model.eval()


def both_ways(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    with torch.no_grad():
        return model(x, labels=y)[1], model(x)[1]


def reference(logits: torch.Tensor, y: torch.Tensor, binary: bool) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    pred = logits.argmax(1).numpy() if logits.ndim == 2 else (logits >= 0).long().numpy()
    out = {
        "accuracy": accuracy_score(y.numpy(), pred),
        "macro_f1": f1_score(y.numpy(), pred, average="macro"),
    }
    if binary:
        out["f1"] = f1_score(y.numpy(), pred)
    return out


# --------------------------------------------------------------------------- the functions


@pytest.mark.parametrize("columns", [1, 2, 4])
def test_scores_both_ways_equal_scikit_learn(columns: int) -> None:
    g = torch.Generator().manual_seed(columns)
    n, classes = 300, max(2, columns)
    y = torch.randint(0, classes, (n,), generator=g)
    shape = (n,) if columns == 1 else (n, columns)
    plain = torch.randn(shape, generator=g) + (2 * y - 1 if columns == 1 else 0.0)
    penalised = plain - 1.5 * (2 * y - 1 if columns == 1 else nn.functional.one_hot(y, columns))
    metrics, reasons = _leak_compute(_leak_update(penalised, plain, y))
    for way, logits in (("with", penalised), ("without", plain)):
        expected = reference(logits, y, binary=classes == 2)
        for score, value in expected.items():
            assert metrics[leak_key(score, way)] == pytest.approx(value)
        if classes > 2:
            assert np.isnan(metrics[leak_key("f1", way)])
            assert reasons[leak_key("f1", way)] == "defined for binary models only"


def test_scores_do_not_depend_on_batching_or_the_order_of_samples() -> None:
    g = torch.Generator().manual_seed(7)
    y = torch.randint(0, 3, (200,), generator=g)
    plain = torch.randn(200, 3, generator=g)
    penalised = plain - nn.functional.one_hot(y, 3)
    whole = _leak_update(penalised, plain, y)
    parts = sum(
        _leak_update(penalised[i : i + 33], plain[i : i + 33], y[i : i + 33])
        for i in range(0, 200, 33)
    )
    order = torch.randperm(200, generator=g)
    shuffled = _leak_update(penalised[order], plain[order], y[order])
    assert torch.equal(whole, parts) and torch.equal(whole, shuffled)


# --------------------------------------------------------------------------- diagnose_model


@pytest.mark.parametrize("classes", [2, 3])
def test_a_leaky_forward_gets_both_numbers_in_the_report_and_the_advice(classes: int) -> None:
    model = leaky_model(classes)
    x, y = overlapping(classes=classes, seed=1)
    report = diagnose_model(model, (x, y), batch_size=64, reservoir_size=0)
    assert report.metrics["head.margin_leak"] == 1
    with_labels, plain = both_ways(model, x, y)
    score = "f1" if classes == 2 else "macro_f1"
    for way, logits in (("with", with_labels), ("without", plain)):
        for name, value in reference(logits, y, binary=classes == 2).items():
            assert report.metrics[leak_key(name, way)] == pytest.approx(value)
    # the report's own metrics are label-free: those of the deployed model
    assert report.metrics[score] == pytest.approx(report.metrics[leak_key(score, "without")])
    assert report.metrics["accuracy"] == pytest.approx(
        report.metrics[leak_key("accuracy", "without")]
    )
    # and the margin costs the labelled loop a visible share
    assert report.metrics[leak_key(score, "with")] < report.metrics[score] - 0.05

    fix = report.recommendations[0]
    assert (fix.action, fix.severity) == ("fix_eval_margin", "error")
    for name in (score, "accuracy"):
        for way in ("with", "without"):
            key = leak_key(name, way)
            assert fix.evidence[key]["value"] == pytest.approx(report.metrics[key])
    label = "F1" if classes == 2 else "macro-F1"
    assert f"reports {label} {report.metrics[leak_key(score, 'with')]:.3f}" in fix.reason
    assert f"deployed model scores {label} {report.metrics[score]:.3f}" in fix.reason
    assert "nobody deploys" not in fix.reason


def test_eval_with_labels_swaps_the_roles_but_not_the_numbers() -> None:
    model = leaky_model()
    x, y = overlapping(seed=1)
    plain = diagnose_model(model, (x, y), reservoir_size=0)
    labelled = diagnose_model(model, (x, y), reservoir_size=0, eval_with_labels=True)
    assert labelled.metrics["f1"] == pytest.approx(plain.metrics[leak_key("f1", "with")])
    for key in plain.metrics:
        if key.startswith("head.leak_"):
            assert labelled.metrics[key] == pytest.approx(plain.metrics[key], nan_ok=True)


def test_without_a_leak_there_is_no_second_forward_and_no_leak_scores() -> None:
    model = leaky_model(leak=False)
    calls = []
    model.body.register_forward_hook(lambda *_: calls.append(1))
    x, y = overlapping(seed=1)
    report = diagnose_model(model, (x, y), batch_size=100, reservoir_size=0)
    assert report.metrics["head.margin_leak"] == 0
    assert not [k for k in report.metrics if k.startswith("head.leak_")]
    # the probe's two calls, one to see whether forward returns named views, then one per batch
    assert len(calls) == 2 + 1 + 4


# --------------------------------------------------------------------------- distributed


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        model = leaky_model()
        x, y = overlapping(seed=1)
        part = np.array_split(np.arange(len(y)), world)[rank]
        report = diagnose_model(model, (x[part], y[part]), batch_size=50, reservoir_size=0)
        with open(os.path.join(out, f"{rank}.json"), "w") as f:
            json.dump({k: v for k, v in report.metrics.items() if "leak" in k}, f)
    finally:
        dist.destroy_process_group()


def test_ranks_sum_their_scores_into_the_single_process_numbers() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_worker, args=(2, port, out), nprocs=2, start_method="spawn")
        ranks = [json.loads(Path(out, f"{r}.json").read_text()) for r in range(2)]
    x, y = overlapping(seed=1)
    single = diagnose_model(leaky_model(), (x, y), batch_size=50, reservoir_size=0)
    assert ranks[0] == ranks[1]
    for key, value in ranks[0].items():
        assert value == pytest.approx(single.metrics[key])
