"""TrainingMonitor: the same report as diagnose_model, the history and files, TensorBoard read
back with its own event reader, and the loss formatter."""

import math

import pytest
import torch
from torch import nn

from embscope.demo import DigitsNet, digits_binary, train
from embscope.diagnostics import Report, diagnose, diagnose_model
from embscope.integrations.monitor import TrainingMonitor, format_losses
from embscope.integrations.tensorboard import scalar_metrics
from embscope.losses import ArcFaceHead, FusionLoss

from ..diagnostics.conftest import same_metrics

OPTIONS = {"reservoir_size": 200, "pair_rows": 100, "retrieval_rows": 100}


@pytest.fixture(scope="module")
def split():
    return digits_binary(seed=0)


@pytest.fixture(scope="module")
def model(split):
    torch.manual_seed(0)
    net = DigitsNet(ArcFaceHead(16, 2, m=0.2, s=16.0))
    train(net, split, epochs=1)
    return net


def _feed(monitor, split, batch=100):
    for start in range(0, 300, batch):
        monitor.update(split.x_val[start : start + batch], split.y_val[start : start + batch])


def test_report_equals_diagnose_model(model, split):
    monitor = TrainingMonitor(model, **OPTIONS)
    model.train()
    _feed(monitor, split)
    # no hook outlives a batch: training forwards in between are not recorded
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    report = monitor.epoch_end()
    assert model.training  # its flags restored after each batch
    expected = diagnose_model(model, (split.x_val[:300], split.y_val[:300]), **OPTIONS)
    same_metrics(report.metrics, expected.metrics)
    for bound in (0, 1):  # batches of 100 here, 64 there: equal up to summation order
        same_metrics(
            {k: v[bound] for k, v in report.intervals.items()},
            {k: v[bound] for k, v in expected.intervals.items()},
        )
    assert monitor.history.epochs() == [1]
    monitor.update(split.x_val[:10], split.y_val[:10])
    with pytest.raises(ValueError, match="epoch 1 of split 'val' is already in the history"):
        monitor.epoch_end(1)


def test_outputs_fed_directly(model, split):
    monitor = TrainingMonitor(model, head=model.head, **OPTIONS)
    with torch.no_grad():
        model.eval()
        embedding, logits = model(split.x_val[:300])
        model.train()
    labels = split.y_val[:300]
    for start in range(0, 300, 64):
        part = slice(start, start + 64)
        monitor.update_outputs(embedding[part], labels[part], logits[part])
    report = monitor.epoch_end(epoch=5)
    expected = diagnose(embedding, split.y_val[:300], logits, head=model.head, **OPTIONS)
    same_metrics(report.metrics, expected.metrics)
    assert monitor.history.epochs() == [5]


def test_files_and_tensorboard(split, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(1)
    model = DigitsNet(nn.Linear(16, 2))
    monitor = TrainingMonitor(model, tmp_path / "run", tensorboard=tmp_path / "tb", **OPTIONS)

    def on_epoch(epoch, net):
        _feed(monitor, split)
        monitor.update(split.x_train[:200], split.y_train[:200], split="train")
        monitor.epoch_end()

    train(model, split, epochs=2, on_epoch=on_epoch)
    monitor.close()
    run = tmp_path / "run"
    for name in ("epoch_001", "epoch_002", "epoch_002_train"):
        assert (run / name / "report.json").exists(), name
    saved = Report.load(run / "epoch_002")
    same_metrics(saved.metrics, monitor.reports["val"][1].metrics)
    assert (run / "history.csv").exists() and (run / "history.html").exists()
    assert {t.rule for t in monitor.judge()} >= {"train_val_gap", "best_epoch"}

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for epoch, report in enumerate(monitor.reports["val"], start=1):
        for name, value in scalar_metrics(report).items():
            logged = {e.step: e.value for e in events.Scalars(f"embscope/{name}")}
            assert logged[epoch] == pytest.approx(value, rel=1e-6, abs=1e-6), name
    assert "embscope/f1" in tags["scalars"] and "embscope_train/f1" in tags["scalars"]
    assert {"embscope/plots/margins", "embscope/plots/reliability"} <= set(tags["images"])
    # the projector: the reservoir's rows with their labels
    metadata = sorted((tmp_path / "tb").glob("*/*embeddings/metadata.tsv"))
    assert metadata, list((tmp_path / "tb").rglob("*"))
    labels = metadata[-1].read_text().split()
    assert len(labels) == 200 and set(labels) == {"0", "1"}


def test_format_losses_of_a_fusion_loss():
    torch.manual_seed(0)
    loss = FusionLoss(num_classes=3, feat_dim=4, mode="full")
    logits, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    g, loc = torch.randn(8, 4), torch.randn(8, 4)
    total, terms = loss(logits, labels, g, loc, torch.rand(8, 2), torch.rand(8, 2))
    text = format_losses((total, terms))
    expected = (
        f"loss={float(total):.4f}(cls={float(terms['cls']):.4f},"
        f"cons={float(terms['cons']):.4f},attn={float(terms['attn']):.4f})"
    )
    assert text == expected  # cent (weight 0 in "full") is left out
    assert format_losses(0.82344, {"cls": 0.71231, "cent": 0.0}, drop_zero=False) == (
        "loss=0.8234(cls=0.7123,cent=0.0000)"
    )
    assert format_losses(torch.tensor(1.5)) == "loss=1.5000"
    with pytest.raises(ValueError, match="scalar"):
        format_losses(torch.ones(2))
    assert math.isclose(float(total), sum(float(v) for v in terms.values()), rel_tol=1e-6)


def test_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        TrainingMonitor("model.pt")
    with pytest.raises(ValueError, match="reservoir_size"):
        TrainingMonitor(nn.Linear(2, 2), reservoir_size=-1)
    monitor = TrainingMonitor(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="split"):
        monitor.update(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), split="test")
    assert monitor.epoch_end() is None
