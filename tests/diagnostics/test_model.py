"""The model path: ``diagnose_model`` and ``embed`` on models written here (a small CNN with
embscope's ArcFace head, and the same CNN with a plain Linear classifier), the same report as
the ``diagnose CHECKPOINT DATA`` command on the same checkpoint and data, and the summary
``repr(report)``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from embscope.diagnostics import InputError, Report, diagnose_model, embed
from embscope.losses import ArcFaceHead
from tests.diagnostics.conftest import same_metrics  # absolute: the CLI imports this file by path

CLASSES = 3
DIM = 8


class Body(nn.Module):
    """[N, 1, 8, 8] images -> [N, DIM] embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten())
        self.project = nn.Sequential(nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(x))


class ArcNet(nn.Module):
    """``forward(x, labels=None) -> (embedding, logits)``; with ``leak`` the head applies its
    margin whenever labels are passed, in evaluation too."""

    def __init__(self, m: float = 0.3, s: float = 10.0, leak: bool = False) -> None:
        super().__init__()
        self.body = Body()
        self.head = ArcFaceHead(DIM, CLASSES, m=m, s=s)
        self.leak = leak

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        embedding = self.body(x)
        if labels is not None and self.leak and not self.head.training:
            self.head.train(True)
            try:
                return embedding, self.head(embedding, labels)
            finally:
                self.head.train(False)
        return embedding, self.head(embedding, labels)


class LinearNet(nn.Module):
    """``forward(x) -> logits``: the embedding is the classifier's input."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body()
        self.classifier = nn.Linear(DIM, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


def make_arc(**config):
    return ArcNet(**config)


def make_linear():
    return LinearNet()


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    keep = data.target < CLASSES
    x = torch.from_numpy((data.images[keep] / 16.0).astype(np.float32))[:, None]
    return x, torch.from_numpy(data.target[keep].astype(np.int64))


def trained(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 40) -> nn.Module:
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        out = model(x, y) if isinstance(model, ArcNet) else model(x)
        logits = out[1] if isinstance(out, tuple) else out
        nn.functional.cross_entropy(logits, y).backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return digits()


@pytest.fixture(scope="module")
def models(data) -> dict[str, nn.Module]:
    x, y = data
    torch.manual_seed(1)
    arc = trained(ArcNet(), x, y)
    torch.manual_seed(2)
    linear = trained(LinearNet(), x, y)
    return {"arc": arc, "linear": linear}


# --------------------------------------------------------------------------- same as the CLI


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``diagnose ARGV`` in this process; the --model import's sys.path entry and module are
    undone afterwards."""
    from embscope.cli.main import main

    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        return main(argv)
    finally:
        sys.modules.pop(Path(__file__).stem, None)


@pytest.mark.parametrize(
    ("name", "factory", "config"),
    [("arc", "make_arc", {"m": 0.3, "s": 10.0}), ("linear", "make_linear", {})],
)
def test_diagnose_model_gives_the_metrics_of_the_diagnose_command(
    name: str,
    factory: str,
    config: dict,
    models: dict[str, nn.Module],
    data,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = models[name]
    x, y = data
    checkpoint, tensors, out = tmp_path / "ckpt.pt", tmp_path / "val.pt", tmp_path / "report"
    torch.save({"model": model.state_dict(), "config": config}, checkpoint)
    torch.save({"x": x, "y": y}, tensors)
    argv = [str(checkpoint), str(tensors), "--model", f"{__file__}:{factory}", "--out", str(out)]
    assert run_cli(argv, monkeypatch) == 0, capsys.readouterr().err
    cli = Report.load(out)

    report = diagnose_model(model, DataLoader(TensorDataset(x, y), batch_size=64))
    same_metrics(report.metrics, cli.metrics)
    assert [r.action for r in report.recommendations] == [r.action for r in cli.recommendations]
    source = cli.meta["source"]
    for key in ("embedding", "margin_leak_probed", "device"):
        assert report.meta["source"][key] == source[key]
    if name == "arc":
        assert source["embedding"] == "the model's embedding output"
        assert source["margin_leak_probed"] is True
        assert report.metrics["head.s"] == pytest.approx(10.0)
    else:
        assert source["embedding"] == "the input of 'classifier' (Linear)"
        assert source["margin_leak_probed"] is False


# --------------------------------------------------------------------------- forms of data


def test_a_loader_an_iterable_of_batches_and_a_pair_of_tensors_give_one_report(
    models: dict[str, nn.Module], data
) -> None:
    x, y = data
    model = models["arc"]
    ids = [f"sample{i}" for i in range(len(y))]
    pair = diagnose_model(model, (x, y), ids=ids, batch_size=50)
    loader = diagnose_model(model, DataLoader(TensorDataset(x, y), batch_size=64))
    batches = [(x[i : i + 100], y[i : i + 100], ids[i : i + 100]) for i in range(0, len(y), 100)]
    iterable = diagnose_model(model, iter(batches))
    listed = diagnose_model(model, [(x[i : i + 33], y[i : i + 33]) for i in range(0, len(y), 33)])
    for other in (loader, iterable, listed):
        same_metrics(pair.metrics, other.metrics, rel=1e-5, abs_=1e-7)
    assert all(row["id"].startswith("sample") for row in pair.sections["hardest"])
    assert [row["id"] for row in iterable.sections["hardest"]] == [
        row["id"] for row in pair.sections["hardest"]
    ]
    assert pair.meta["source"]["margin_leak_probed"] is True


def test_the_report_does_not_depend_on_the_batch_size(models: dict[str, nn.Module], data) -> None:
    x, y = data
    one = diagnose_model(models["linear"], (x, y), batch_size=len(y))
    many = diagnose_model(models["linear"], (x, y), batch_size=7)
    same_metrics(one.metrics, many.metrics, rel=1e-5, abs_=1e-7)


# --------------------------------------------------------------------------- embed


@pytest.mark.parametrize("name", ["arc", "linear"])
def test_embed_yields_embeddings_logits_and_labels(
    name: str, models: dict[str, nn.Module], data
) -> None:
    x, y = data
    model = models[name].train()  # embed switches to eval mode and back
    batches = list(embed(model, (x, y), batch_size=100))
    assert model.training and all(m.training for m in model.modules())
    assert [len(labels) for _, _, labels in batches] == [
        min(100, len(y) - i) for i in range(0, len(y), 100)
    ]
    for embedding, logits, labels in batches:
        assert embedding.shape == (len(labels), DIM)
        assert logits.shape == (len(labels), CLASSES)
        assert labels.dtype == torch.int64
    embedding = torch.cat([e for e, _, _ in batches])
    logits = torch.cat([z for _, z, _ in batches])
    model.eval()
    with torch.no_grad():
        expected_embedding = model.body(x)
        out = model(x)
    expected_logits = out[1] if isinstance(out, tuple) else out
    assert torch.allclose(embedding, expected_embedding, atol=1e-6)
    assert torch.allclose(logits, expected_logits, atol=1e-5)
    assert torch.equal(torch.cat([labels for _, _, labels in batches]), y)


def test_embedding_layer_names_the_submodule_whose_output_is_the_embedding(
    models: dict[str, nn.Module], data
) -> None:
    x, y = data
    model = models["linear"]
    (embedding, _, _), *_ = embed(model, (x, y), embedding_layer="body.features")
    with torch.no_grad():
        expected = model.body.features(x[:64])
    assert torch.equal(embedding, expected)
    report = diagnose_model(model, (x, y), embedding_layer="body.features", reservoir_size=0)
    assert report.meta["source"]["embedding"].startswith("the output of 'body.features'")
    assert report.meta["dim"] == 4 * 6 * 6


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("layer", [None, "body.features"])
def test_no_hook_is_left_on_the_model(models: dict[str, nn.Module], data, layer) -> None:
    """The embedding hook lives only while embscope runs the model: a model diagnosed every
    epoch must not record its training forwards (a leak) nor gather one hook per call."""
    x, y = data
    model = models["linear"]
    before = _hooks(model)
    first = torch.cat([e for e, _, _ in embed(model, (x, y), embedding_layer=layer)])
    assert _hooks(model) == before
    diagnose_model(model, (x, y), embedding_layer=layer, reservoir_size=0)
    assert _hooks(model) == before
    second = torch.cat([e for e, _, _ in embed(model, (x, y), embedding_layer=layer)])
    assert _hooks(model) == before and torch.equal(first, second)


# --------------------------------------------------------------------------- the leak probe


def test_the_margin_leak_is_probed_once_and_reported(data) -> None:
    x, y = data
    torch.manual_seed(3)
    leaky = trained(ArcNet(leak=True), x, y, steps=10)
    report = diagnose_model(leaky, (x, y), reservoir_size=0)
    assert report.metrics["head.margin_leak"] == 1
    assert report.recommendations[0].action == "fix_eval_margin"
    # a validation loop that passes labels gets the penalised logits
    with_labels = diagnose_model(leaky, (x, y), eval_with_labels=True, reservoir_size=0)
    assert with_labels.metrics["margin_mean"] < report.metrics["margin_mean"]
    assert not leaky.training and not leaky.head.training


# --------------------------------------------------------------------------- errors


def test_errors_name_the_argument_at_fault(models: dict[str, nn.Module], data) -> None:
    x, y = data
    with pytest.raises(InputError, match=r"^data: holds no samples") as caught:
        diagnose_model(models["arc"], [])
    assert caught.value.argument == "data"
    with pytest.raises(InputError, match=r"batch 0 is a Tensor"):
        diagnose_model(models["arc"], [x[:4]])
    with pytest.raises(
        InputError, match=r"^embedding_layer: the model has no submodule 'neck'"
    ) as caught:
        diagnose_model(models["linear"], (x, y), embedding_layer="neck")
    assert caught.value.argument == "embedding_layer"
    with pytest.raises(InputError, match=r"eval_with_labels: the model's forward takes no labels"):
        diagnose_model(models["linear"], (x, y), eval_with_labels=True)
    with pytest.raises(InputError, match=r"forward failed on inputs of shape \[64, 64\]") as caught:
        diagnose_model(models["linear"], (x.flatten(1), y))
    assert caught.value.argument == "inputs"
    with pytest.raises(InputError, match=r"has 3 columns but the data's labels run from 3 to 5"):
        diagnose_model(models["linear"], (x, y + 3))
    with pytest.raises(InputError, match=r"holds inputs of shape \[\d+, 1, 8, 8\] and 10 labels"):
        diagnose_model(models["linear"], (x, y[:10]))
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module"):
        diagnose_model(lambda v: v, (x, y))


def test_a_model_without_usable_outputs_is_an_error_about_its_outputs(data) -> None:
    x, y = data
    model = LinearNet()
    with torch.no_grad():
        model.body.project[2].weight.fill_(float("nan"))
    with pytest.raises(InputError, match=r"^the model's outputs: no usable rows") as caught:
        diagnose_model(model, (x, y))
    assert caught.value.argument == "outputs"


# --------------------------------------------------------------------------- the summary


def test_repr_is_a_short_summary_with_headline_metrics_and_recommendations(
    models: dict[str, nn.Module], data
) -> None:
    x, y = data
    report = diagnose_model(models["arc"], (x, y))
    text = repr(report)
    assert text == str(report)
    assert len(text) < 2000 and len(report.to_json()) > 10 * len(text)
    assert text.startswith(f"<embscope Report: n = {len(y)}, {CLASSES} classes, cosine space>")
    for name in ("accuracy", "macro_f1", "score_ks", "fisher_ratio", "recall_at_1", "eer"):
        line = next(line for line in text.splitlines() if line.split()[:1] == [name])
        assert f"{report.metrics[name]:.4g}" in line
    assert "(higher is better)" in text and "(lower is better)" in text
    for rec in report.recommendations[:6]:
        assert f"[{rec.severity}] {rec.action}" in text
    assert report._repr_html_() == report.to_html()
