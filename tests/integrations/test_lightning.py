"""EmbscopeCallback in a real Lightning Trainer on the CPU: two epochs on the digits with the
TensorBoard logger read back by tensorboard's event reader, and validation under 2-process DDP
(gloo) whose logged values equal one process's report of the same data."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from embscope.demo import DigitsNet, digits_binary
from embscope.diagnostics import Report, diagnose_model
from embscope.integrations.tensorboard import scalar_metrics

from ..diagnostics.conftest import same_metrics

L = pytest.importorskip("lightning")
pytest.importorskip("tensorboard")

OPTIONS = {"reservoir_size": 200, "pair_rows": 100, "retrieval_rows": 100}
N_VAL = 300  # of 358; even: the distributed sampler splits it without padding


class LitDigits(L.LightningModule):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = DigitsNet(nn.Linear(16, 2))  # two softmax columns

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x)[1], y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x)[1], y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def _loaders():
    split = digits_binary(seed=0)
    train = DataLoader(TensorDataset(split.x_train, split.y_train), batch_size=64, shuffle=True)
    val = DataLoader(
        TensorDataset(split.x_val[:N_VAL], split.y_val[:N_VAL]), batch_size=50, shuffle=False
    )
    return train, val, split


def _trainer(tmp_path, callback, **options):
    from lightning.pytorch.loggers import TensorBoardLogger

    return L.Trainer(
        accelerator="cpu",
        logger=TensorBoardLogger(str(tmp_path / "logs"), name="run"),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        **options,
    )


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_two_epochs_with_tensorboard(tmp_path):
    from embscope.integrations.lightning import EmbscopeCallback

    torch.set_num_threads(1)
    train, val, _ = _loaders()
    callback = EmbscopeCallback(tmp_path / "embscope", train_batches=3, **OPTIONS)
    trainer = _trainer(tmp_path, callback, max_epochs=2, num_sanity_val_steps=2)
    trainer.fit(LitDigits(), train, val)

    monitor = callback.monitor
    assert monitor.history.epochs() == [1, 2]  # the sanity check is not diagnosed
    assert monitor.history.epochs("train") == [1, 2]
    assert all(r.metrics["n"] == N_VAL for r in monitor.reports["val"])
    events = _events(trainer.logger.log_dir)
    steps_per_epoch = len(train)
    for epoch, report in enumerate(monitor.reports["val"], start=1):
        scalars = scalar_metrics(report)
        assert {"f1", "score_ks", "fisher_ratio", "margin_median"} <= set(scalars)
        for name, value in scalars.items():
            logged = {e.step: e.value for e in events.Scalars(f"embscope/{name}")}
            assert logged[epoch * steps_per_epoch] == pytest.approx(value, rel=1e-6, abs=1e-7)
        saved = Report.load(tmp_path / "embscope" / f"epoch_{epoch:03d}")
        same_metrics(saved.metrics, report.metrics)
    tags = events.Tags()
    assert "embscope_train/f1" in tags["scalars"]
    assert {"embscope/plots/margins", "embscope/plots/pca"} <= set(tags["images"])
    assert list((tmp_path / "logs").rglob("metadata.tsv"))
    assert (tmp_path / "embscope" / "history.csv").exists()
    assert "best_epoch" in (tmp_path / "embscope" / "history.html").read_text()


def test_ddp_gloo_equals_one_process(tmp_path):
    """trainer.validate under 2-process DDP (ddp_spawn, gloo): rank 0's report and logged
    scalars equal one process's report of the whole validation set."""
    from embscope.integrations.lightning import EmbscopeCallback

    torch.set_num_threads(1)
    _, val, split = _loaders()
    model = LitDigits(seed=3)
    callback = EmbscopeCallback(tmp_path / "embscope", projector_rows=0, **OPTIONS)
    trainer = _trainer(tmp_path, callback, strategy="ddp_spawn", devices=2)
    trainer.validate(model, val)

    expected = diagnose_model(model.net, (split.x_val[:N_VAL], split.y_val[:N_VAL]), **OPTIONS)
    report = Report.load(tmp_path / "embscope" / "epoch_001")
    assert report.metrics["n"] == N_VAL
    same_metrics(report.metrics, expected.metrics, rel=1e-5, abs_=1e-7)
    for bound in (0, 1):
        same_metrics(
            {k: v[bound] for k, v in report.intervals.items()},
            {k: v[bound] for k, v in expected.intervals.items()},
            rel=1e-5,
            abs_=1e-7,
        )
    log_dir = next((tmp_path / "logs" / "run").iterdir())
    events = _events(log_dir)
    for name, value in scalar_metrics(expected).items():
        (event,) = events.Scalars(f"embscope/{name}")
        assert event.value == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert np.isfinite(report.metrics["f1"])


def test_validating_twice_in_an_epoch_numbers_on(tmp_path):
    from embscope.integrations.lightning import EmbscopeCallback

    _, val, _ = _loaders()
    callback = EmbscopeCallback(None, save_reports=False, projector_rows=0, **OPTIONS)
    trainer = _trainer(tmp_path, callback, devices=1)
    model = LitDigits()
    trainer.validate(model, val)
    with pytest.warns(UserWarning, match="more than once in an epoch"):
        trainer.validate(model, val)
    assert callback.history.epochs() == [1, 2]
    assert (tmp_path / "embscope" / "history.csv").exists()  # out defaults under the root dir
