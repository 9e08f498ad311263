"""The loading layers on their own: data, checkpoints, the model runner and the report writer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from embscope.cli.checkpoint import load_model
from embscope.cli.data import EmbeddingFile, ImageOptions, open_inputs
from embscope.cli.errors import UsageError
from embscope.cli.model_run import ModelRunner
from tests.cli.conftest import Digits


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


def collect(data, batch_size: int = 7) -> tuple[torch.Tensor, torch.Tensor, list]:
    xs, ys, ids = [], [], []
    for batch in data.batches(batch_size):
        xs.append(batch.inputs)
        ys.append(batch.labels)
        ids += batch.ids or []
    return torch.cat(xs), torch.cat(ys), ids


# ------------------------------------------------------------------------------- images


def test_image_folder_reads_classes_sorted_by_name_in_0_1(digits: Digits) -> None:
    data = open_inputs(digits.images, image=ImageOptions(grayscale=True))
    x, y, ids = collect(data, batch_size=100)
    order = np.argsort(digits.y.numpy(), kind="stable")  # class folders, then file names
    assert data.classes == [f"digit_{i}" for i in range(10)]
    assert torch.equal(y, digits.y[order])
    assert x.dtype == torch.float32 and x.shape == (len(order), 1, 8, 8)
    assert torch.equal(x, digits.x[order])  # PNG bytes / 255, exactly
    assert ids[0] == str(digits.images / "digit_0" / "0000.png")


def test_folders_named_by_integers_are_those_classes(tmp_path: Path, digits: Digits) -> None:
    """A folder "7" holds class 7 even when classes 0-6 are absent, and "10" sorts after "9":
    numbering only the folders present would relabel every sample (accuracy 0 for a good
    model, reported with confidence)."""
    keep = [3, 7, 10]
    for name in keep:
        (tmp_path / str(name)).mkdir()
        Image.fromarray((digits.x[0, 0].numpy() * 255).astype(np.uint8), mode="L").save(
            tmp_path / str(name) / "a.png"
        )
    data = open_inputs(tmp_path, image=ImageOptions(grayscale=True))
    _, labels, ids = collect(data)
    assert labels.tolist() == keep
    assert [Path(i).parent.name for i in ids] == ["3", "7", "10"]
    (tmp_path / "x").mkdir()  # one name that is not a number: all are sorted by name
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L").save(tmp_path / "x" / "a.png")
    _, labels, ids = collect(open_inputs(tmp_path, image=ImageOptions(grayscale=True)))
    assert labels.tolist() == [0, 1, 2, 3]
    assert [Path(i).parent.name for i in ids] == ["10", "3", "7", "x"]


def test_a_subset_of_numbered_class_folders_is_diagnosed_as_those_classes(
    tmp_path: Path, digits: Digits
) -> None:
    from embscope.cli.main import main

    sub = tmp_path / "sub"
    for name in ("3", "7"):
        (sub / name).mkdir(parents=True)
        for f in sorted((digits.images / f"digit_{name}").glob("*.png"))[:30]:
            (sub / name / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    code = main(
        [
            str(digits.state_dict),
            str(sub),
            "--model",
            f"{digits.root / 'digits_model.py'}:make_net",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    import json

    metrics = json.loads((out / "report.json").read_text())["metrics"]
    x = torch.cat([digits.x[digits.y == c][:30] for c in (3, 7)])
    y = torch.tensor([3] * 30 + [7] * 30)
    with torch.no_grad():
        out_ = digits.net(x)
    pred = (out_[-1] if isinstance(out_, tuple) else out_).argmax(1)
    assert metrics["accuracy"] == pytest.approx(float((pred == y).float().mean()))
    assert metrics["accuracy"] > 0.5


def test_image_options_rgb_resize_and_normalise(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    for label, image in zip(("b", "a"), pixels, strict=True):
        (tmp_path / label).mkdir()
        Image.fromarray(image, mode="RGB").save(tmp_path / label / "x.png")
    (tmp_path / ".cache").mkdir()  # hidden folders are not classes
    plain, labels, _ = collect(open_inputs(tmp_path))
    assert labels.tolist() == [0, 1]  # "a" before "b"
    assert torch.equal(plain[0], torch.from_numpy(pixels[1].transpose(2, 0, 1) / 255.0).float())
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    normed, _, _ = collect(open_inputs(tmp_path, image=ImageOptions(mean=mean, std=std)))
    expected = (plain - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(normed, expected, atol=1e-6)
    resized, _, _ = collect(open_inputs(tmp_path, image=ImageOptions(size=(4, 6), grayscale=True)))
    assert resized.shape == (2, 1, 4, 6)
    with pytest.raises(UsageError, match=r"--mean: has 2 values but the images have 3 channels"):
        collect(open_inputs(tmp_path, image=ImageOptions(mean=(0.1, 0.2))))


def test_images_of_different_sizes_need_image_size(tmp_path: Path) -> None:
    for label, size in (("a", (8, 8)), ("b", (9, 8))):
        (tmp_path / label).mkdir()
        Image.new("L", size).save(tmp_path / label / "x.png")
    with pytest.raises(
        UsageError, match=r"b/x.png: is 9x8 pixels but .*a/x.png is 8x8 .*--image-size"
    ):
        collect(open_inputs(tmp_path))
    x, _, _ = collect(open_inputs(tmp_path, image=ImageOptions(size=(8, 8))))
    assert x.shape == (2, 3, 8, 8)


# ------------------------------------------------------------------------------- tensors and tables


@pytest.mark.parametrize(
    ("x_key", "y_key"), [("x", "y"), ("inputs", "labels"), ("images", "targets")]
)
@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_tensor_files_with_each_key_pair(
    tmp_path: Path, x_key: str, y_key: str, suffix: str
) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 3)).astype(np.float32), rng.integers(0, 4, size=10)
    path = tmp_path / f"data{suffix}"
    if suffix == ".pt":
        torch.save({x_key: torch.from_numpy(x), y_key: torch.from_numpy(y)}, path)
    else:
        np.savez(path, **{x_key: x, y_key: y})
    got_x, got_y, _ = collect(open_inputs(path), batch_size=4)
    assert torch.equal(got_x, torch.from_numpy(x))
    assert got_y.tolist() == y.tolist()


def test_uint8_inputs_are_scaled_and_float64_made_float32(tmp_path: Path) -> None:
    torch.save(
        {"x": torch.tensor([[0, 255], [51, 102]], dtype=torch.uint8), "y": torch.tensor([0, 1])},
        tmp_path / "u8.pt",
    )
    x, _, _ = collect(open_inputs(tmp_path / "u8.pt"))
    assert torch.equal(x, torch.tensor([[0.0, 1.0], [0.2, 0.4]]))
    np.savez(tmp_path / "f64.npz", x=np.ones((2, 2)), y=np.array([0.0, 1.0]))
    x, y, _ = collect(open_inputs(tmp_path / "f64.npz"))
    assert x.dtype == torch.float32 and y.tolist() == [0, 1]


def test_tensor_file_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "short.npz", x=np.zeros((5, 2)), y=np.zeros(4, dtype=int))
    with pytest.raises(UsageError, match=r"short.npz: holds 4 labels \('y'\) for 5 inputs \('x'\)"):
        open_inputs(tmp_path / "short.npz")
    np.savez(tmp_path / "keys.npz", a=np.zeros((5, 2)), b=np.zeros(5))
    with pytest.raises(
        UsageError, match=r"holds keys \['a', 'b'\]: no inputs and labels .*under x"
    ):
        open_inputs(tmp_path / "keys.npz")
    np.save(tmp_path / "dict.npy", {"x": np.zeros((2, 2)), "y": np.zeros(2)})
    with pytest.raises(UsageError, match=r"pickled Python object .*--trust-checkpoint"):
        open_inputs(tmp_path / "dict.npy")
    assert len(open_inputs(tmp_path / "dict.npy", trust=True)) == 2


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_features_are_the_other_numeric_columns(tmp_path: Path, suffix: str) -> None:
    frame = pd.DataFrame(
        {
            "f1": [0.5, 1.5, 2.5],
            "name": ["u", "v", "w"],
            "state": ["open", "closed", "open"],
            "f2": [1, 2, 3],
        }
    )
    path = tmp_path / f"table{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    table = open_inputs(path, label_column="state")
    x, y, _ = collect(table)
    assert table.feature_names == ["f1", "f2"]
    assert torch.equal(x, torch.tensor([[0.5, 1.0], [1.5, 2.0], [2.5, 3.0]]))
    assert table.classes == ["closed", "open"] and y.tolist() == [1, 0, 1]
    with pytest.raises(UsageError, match=r"--label-column: 'label' is not a column .*'state'"):
        open_inputs(path, label_column="label")
    with pytest.raises(UsageError, match=r"--label-column: is required for a table"):
        open_inputs(path)


# ------------------------------------------------------------------------------- precomputed


def test_compressed_npz_is_streamed_in_the_stored_dtype(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(103, 5)).astype(np.float16)
    y = rng.integers(0, 3, size=103)
    np.savez_compressed(tmp_path / "e.npz", embeddings=e, labels=y)
    source = EmbeddingFile(tmp_path / "e.npz")
    chunks = list(source.chunks(10))
    assert len(chunks) == 11
    assert all(c.embeddings.dtype == np.float16 for c in chunks)  # no float64 copy
    assert np.array_equal(np.concatenate([c.embeddings for c in chunks]), e)
    assert np.array_equal(np.concatenate([c.labels for c in chunks]), y)
    assert all(c.logits is None and c.ids is None for c in chunks)


def test_embedding_folder_is_memory_mapped(tmp_path: Path) -> None:
    e = np.arange(40, dtype=np.float32).reshape(20, 2)
    np.save(tmp_path / "embeddings.npy", e)
    np.save(tmp_path / "labels.npy", np.arange(20) % 2)
    np.save(tmp_path / "logits.npy", np.zeros((20, 3), dtype=np.float32))
    np.save(tmp_path / "ids.npy", np.array([f"id{i}" for i in range(20)]))
    source = EmbeddingFile(tmp_path)
    assert isinstance(source.columns["embeddings"].array, np.memmap)
    chunks = list(source.chunks(8))
    assert [len(c.labels) for c in chunks] == [8, 8, 4]
    assert np.array_equal(chunks[1].embeddings, e[8:16]) and chunks[1].embeddings.flags.writeable
    assert chunks[2].ids == ["id16", "id17", "id18", "id19"]
    assert source.chunk_rows() == 32 * 2**20 // 8


def test_pt_embeddings_are_memory_mapped_and_sliced(tmp_path: Path) -> None:
    e = torch.randn(30, 3, dtype=torch.bfloat16)
    y = torch.arange(30) % 3
    torch.save(
        {"embeddings": e, "labels": y, "ids": [f"x{i}" for i in range(30)]}, tmp_path / "e.pt"
    )
    chunks = list(EmbeddingFile(tmp_path / "e.pt").chunks(16))
    assert [len(c.labels) for c in chunks] == [16, 14]
    assert chunks[0].embeddings.dtype == torch.bfloat16
    assert torch.equal(torch.cat([c.embeddings for c in chunks]), e)
    assert torch.equal(torch.cat([c.labels for c in chunks]), y)
    assert chunks[1].ids == [f"x{i}" for i in range(16, 30)]


def test_embeddings_that_are_not_embeddings(tmp_path: Path) -> None:
    np.save(tmp_path / "embeddings.npy", np.zeros(5, dtype=np.float32))
    np.save(tmp_path / "labels.npy", np.zeros(5))
    with pytest.raises(UsageError, match=r"embeddings.npy: has shape \[5\]; expected \[N, D\]"):
        EmbeddingFile(tmp_path)
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(
        UsageError, match=r"weights.pt: holds a model's weights .*diagnose CHECKPOINT DATA"
    ):
        EmbeddingFile(tmp_path / "weights.pt")


# ------------------------------------------------------------------------------- checkpoints


def test_wrapped_state_dicts_and_hyper_parameters(digits: Digits, tmp_path: Path) -> None:
    spec = f"{digits.root / 'digits_model.py'}:make_net"
    wrapped = {f"module.{k}": v for k, v in digits.net.state_dict().items()}  # DataParallel
    torch.save(
        {"model_state_dict": wrapped, "hyper_parameters": {"hidden": 16, "lr": 1e-3}},
        tmp_path / "c.pt",
    )
    loaded = load_model(tmp_path / "c.pt", model_spec=spec)
    assert loaded.kind == "state_dict" and loaded.config == {
        "hidden": 16
    }  # lr is not the factory's
    for name, value in digits.net.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], value)


def test_config_of_python_objects_needs_trust(digits: Digits, tmp_path: Path) -> None:
    torch.save(
        {"model": digits.net.state_dict(), "config": argparse.Namespace(hidden=16)},
        tmp_path / "ns.pt",
    )
    with pytest.raises(
        UsageError,
        match=r"ns.pt: holds pickled Python objects \(argparse.Namespace\).*--trust-checkpoint",
    ):
        load_model(tmp_path / "ns.pt", model_spec=f"{digits.root / 'digits_model.py'}:make_net")


def test_export_archives_know_their_static_batch(digits: Digits, tmp_path: Path) -> None:
    assert load_model(digits.exported).static_batch == 32
    batch = torch.export.Dim("batch")
    program = torch.export.export(digits.net, (digits.x[:4],), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "dynamic.pt2")
    assert load_model(tmp_path / "dynamic.pt2").static_batch is None
    with pytest.raises(UsageError, match=r"--model: is not used with a torch.export archive"):
        load_model(digits.exported, model_spec="x:y")


# ------------------------------------------------------------------------------- the runner


def runner_for(model: nn.Module, **options: object) -> ModelRunner:
    from embscope.cli.checkpoint import LoadedModel

    return ModelRunner(
        LoadedModel(model, "pickled", Path("model.pt")), device=torch.device("cpu"), **options
    )


def batch_of(x: torch.Tensor, y: torch.Tensor):
    from embscope.cli.data import Batch

    return Batch(x, y)


def test_exported_static_batch_is_padded_and_trimmed(digits: Digits) -> None:
    runner = ModelRunner(load_model(digits.exported), device=torch.device("cpu"))
    outputs = runner(batch_of(digits.x[:50], digits.y[:50]))
    with torch.no_grad():
        embedding = digits.net.body(digits.x[:50])
        logits = digits.net.classifier(embedding)
    assert torch.allclose(outputs.logits, logits, atol=1e-5)
    assert torch.allclose(outputs.embeddings, embedding, atol=1e-5)
    assert runner.embedding_source == "the input of 'classifier' (InterpreterModule)"


class Head(nn.Module):
    """Duck-typed margin head."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 4))
        self.m, self.s = 0.3, 10.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.s * nn.functional.linear(
            nn.functional.normalize(x), nn.functional.normalize(self.weight)
        )


class LogitsOnly(nn.Module):
    """The margin head is not the last module with a fitting 2-D weight that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 4)
        self.head = Head()
        self.calibration = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.body(x))
        self.calibration(logits)  # called last, output unused
        return logits


class DictOutput(nn.Module):
    def __init__(self, with_logits: bool) -> None:
        super().__init__()
        self.body = nn.Linear(5, 4)
        self.with_logits = with_logits

    def forward(self, x: torch.Tensor):
        e = self.body(x)
        return {"features": e, "logits": e[:, :3]} if self.with_logits else (e, None)


def test_default_embedding_is_the_margin_heads_input() -> None:
    torch.manual_seed(0)
    model = LogitsOnly()
    x = torch.randn(6, 5)
    outputs = runner_for(model)(batch_of(x, torch.tensor([0, 1, 2, 0, 1, 2])))
    assert torch.equal(outputs.embeddings, model.body(x).detach())
    assert outputs.logits.shape == (6, 3)


@pytest.mark.parametrize("with_logits", [True, False])
def test_dict_and_embedding_only_outputs(with_logits: bool) -> None:
    torch.manual_seed(0)
    model = DictOutput(with_logits)
    x = torch.randn(6, 5)
    outputs = runner_for(model)(batch_of(x, torch.tensor([0, 1, 2, 0, 1, 2])))
    assert torch.equal(outputs.embeddings, model.body(x).detach())
    assert (outputs.logits is None) is not with_logits


def test_embedding_layer_must_give_vectors() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    with pytest.raises(
        UsageError, match=r"the embedding \(the output of '0'.*has shape \[4, 2, 6, 6\].*\[4, D\]"
    ):
        runner_for(model, embedding_layer="0")(batch_of(x, y))
    outputs = runner_for(model, embedding_layer="1")(batch_of(x, y))
    assert outputs.embeddings.shape == (4, 72)
