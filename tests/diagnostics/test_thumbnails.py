"""Thumbnails of the hardest samples (issue 15, What to build 3): only the inputs of the k
hardest samples are kept, whatever N, and they are the report's hardest samples."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from embscope.diagnostics import InputError, Report, diagnose_model
from embscope.diagnostics.thumbnails import HardestInputs, image_view, png_base64


def brute_force_hardest(logits: np.ndarray, labels: np.ndarray, names: list[str], k: int):
    """The k smallest (margin, id): margin = true-class logit minus the largest other."""
    other = logits.copy()
    other[np.arange(len(labels)), labels] = -np.inf
    margin = logits[np.arange(len(labels)), labels] - other.max(axis=1)
    order = sorted(range(len(labels)), key=lambda i: (margin[i], names[i]))
    return [names[i] for i in order[:k]]


def decode(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def stream(keeper, images, logits, labels, ids, sizes):
    start = 0
    for size in sizes:
        stop = start + size
        keeper.update(
            images[start:stop],
            torch.ones(stop - start, 2, dtype=torch.float64),  # embeddings: any non-zero rows
            labels[start:stop],
            logits[start:stop],
            None if ids is None else ids[start:stop],
        )
        yield len(keeper)
        start = stop


def test_kept_count_never_exceeds_k_and_kept_ids_are_the_k_hardest() -> None:
    rng = np.random.default_rng(0)
    n, k = 3000, 16
    # logits on a coarse grid: many equal margins, so ties are broken by id as in the report
    logits = np.round(rng.normal(size=(n, 5)) * 4) / 4
    labels = rng.integers(0, 5, size=n)
    ids = [f"s{i:05d}" for i in rng.permutation(n)]
    images = torch.from_numpy(rng.random((n, 1, 6, 6)))
    keeper = HardestInputs(k)
    sizes = rng.integers(1, 200, size=n).tolist()
    sizes = [s for s in np.diff(np.unique(np.r_[0, np.cumsum(sizes), n].clip(0, n)))]
    counts = list(
        stream(keeper, images, torch.from_numpy(logits), torch.from_numpy(labels), ids, sizes)
    )
    assert max(counts) <= k and counts[-1] == k
    assert keeper.ids == brute_force_hardest(logits, labels, ids, k)
    by_id = {name: i for i, name in enumerate(ids)}
    for _, name, image in keeper._kept:  # the kept inputs are those rows' inputs
        assert torch.equal(image, images[by_id[name]])


@settings(max_examples=30, deadline=None)
@given(
    st.integers(min_value=1, max_value=60),
    st.integers(min_value=0, max_value=10_000),
    st.lists(st.integers(min_value=1, max_value=25), min_size=1, max_size=10),
    st.integers(min_value=1, max_value=12),
)
def test_batching_and_order_do_not_change_what_is_kept(n, seed, sizes, k) -> None:
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(np.round(rng.normal(size=(n, 3)) * 2) / 2)
    labels = torch.from_numpy(rng.integers(0, 3, size=n))
    ids = [f"id{i}" for i in range(n)]
    images = torch.from_numpy(rng.random((n, 3, 4, 4)))
    whole = HardestInputs(k)
    list(stream(whole, images, logits, labels, ids, [n]))
    perm = rng.permutation(n)
    cuts = np.cumsum(sizes)
    parts = np.diff(np.r_[0, cuts[cuts < n], n]).tolist()
    shuffled = HardestInputs(k)
    list(stream(shuffled, images[perm], logits[perm], labels[perm], [ids[i] for i in perm], parts))
    assert shuffled.ids == whole.ids
    assert all(torch.equal(a[2], b[2]) for a, b in zip(shuffled._kept, whole._kept, strict=True))


class SmallCNN(nn.Module):
    """[B, 1, 8, 8] -> (embedding [B, 8], logits [B, 10]); NaN inputs give NaN outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.embed = nn.Linear(4 * 8 * 8, 8)
        self.classifier = nn.Linear(8, 10)

    def forward(self, x):
        embedding = self.embed(torch.relu(self.conv(x)).flatten(1))
        return embedding, self.classifier(embedding)


@pytest.fixture(scope="module")
def scans() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(np.round(digits.images[:300] / 16 * 255) / 255).float()[:, None]
    return x, torch.from_numpy(digits.target[:300])


def test_report_thumbnails_are_its_hardest_samples(scans) -> None:
    x, y = scans
    torch.manual_seed(0)
    model = SmallCNN()
    x = x.clone()
    x[[3, 50, 51]] = float("nan")  # dropped rows: positions among the kept rows are the ids
    report = diagnose_model(model, (x, y), batch_size=32)
    hardest = [h["id"] for h in report.sections["hardest"]]
    thumbnails = report.sections["thumbnails"]
    assert list(thumbnails) == hardest[:16]
    kept_rows = [i for i in range(len(y)) if i not in (3, 50, 51)]
    for name, text in thumbnails.items():
        pixels = decode(text)
        assert pixels.shape == (64, 64)  # 8x8 enlarged 8 times, each pixel a block
        original = x[kept_rows[int(name)], 0].numpy()
        assert np.array_equal(pixels[::8, ::8], np.round(original * 255).astype(np.uint8))
    text = report.to_json()  # what report.save writes as report.json
    assert json.loads(text)["sections"]["thumbnails"] == thumbnails
    assert Report.from_json(text).sections["thumbnails"] == thumbnails
    assert len(json.dumps(thumbnails)) < 16 * 1000  # a few hundred bytes each


def test_diagnose_model_holds_at_most_k_inputs_while_streaming(scans, monkeypatch) -> None:
    x, y = scans
    held = []
    update = HardestInputs.update

    def spy(self, *args, **kwargs):
        update(self, *args, **kwargs)
        held.append(len(self))

    monkeypatch.setattr(HardestInputs, "update", spy)
    torch.manual_seed(3)
    report = diagnose_model(SmallCNN(), (x, y), batch_size=8, thumbnails=4)
    assert len(held) == -(-len(y) // 8) and max(held) == 4
    assert list(report.sections["thumbnails"]) == [h["id"] for h in report.sections["hardest"][:4]]


def test_ids_name_the_thumbnails_and_k_follows_the_option(scans) -> None:
    x, y = scans
    torch.manual_seed(1)
    ids = [f"scan_{i}.png" for i in range(len(y))]
    report = diagnose_model(SmallCNN(), (x, y), ids=ids, thumbnails=5, batch_size=50)
    hardest = [h["id"] for h in report.sections["hardest"]]
    assert list(report.sections["thumbnails"]) == hardest[:5]
    assert "thumbnails" not in diagnose_model(SmallCNN(), (x, y), thumbnails=0).sections


def test_no_thumbnails_for_inputs_that_are_not_images_or_without_logits(scans) -> None:
    x, y = scans
    flat = x.reshape(len(x), 64)
    mlp = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    assert "thumbnails" not in diagnose_model(mlp, (flat, y)).sections
    viewed = diagnose_model(mlp, (flat, y), image_shape=(8, 8)).sections
    assert list(viewed["thumbnails"]) == [h["id"] for h in viewed["hardest"][:16]]

    class Embedder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 8)

        def forward(self, x):
            return self.fc(x.flatten(1)), None

    assert "thumbnails" not in diagnose_model(Embedder(), (x, y)).sections
    with pytest.raises(InputError, match="thumbnails: must be an integer >= 0"):
        diagnose_model(mlp, (flat, y), thumbnails=-1)
    with pytest.raises(InputError, match="image_range: must be"):
        diagnose_model(mlp, (flat, y), image_shape=(8, 8), image_range=(1, 0))


def test_image_view() -> None:
    assert image_view(torch.zeros(2, 3, 5, 5)).shape == (2, 3, 5, 5)
    assert image_view(torch.zeros(2, 4, 5, 5)) is None  # four channels: not shown
    assert image_view(torch.zeros(2, 64)) is None
    assert image_view(torch.zeros(2, 64), (8, 8)).shape == (2, 1, 8, 8)
    assert image_view(torch.zeros(2, 48), (3, 4, 4)).shape == (2, 3, 4, 4)
    assert image_view(torch.zeros(2, 63), (8, 8)) is None


def test_png_values_and_sizes() -> None:
    # values in [0, 1] as they are
    grey = torch.tensor([[[0.0, 0.5], [1.0, 0.2]]])
    assert decode(png_base64(grey))[::32, ::32].tolist() == [[0, 128], [255, 51]]
    # normalised values stretched from the image's minimum to its maximum
    assert decode(png_base64(grey * 4 - 2))[::32, ::32].tolist() == [[0, 128], [255, 51]]
    # a stated range is clipped
    clipped = decode(png_base64(grey * 2 - 0.5, value_range=(0, 1)))[::32, ::32]
    assert clipped.tolist() == [[0, 128], [255, 0]]
    # RGB, and a large image shrunk to at most 64 pixels a side, keeping its aspect
    rgb = decode(png_base64(torch.rand(3, 200, 100)))
    assert rgb.shape == (64, 32, 3)
    # 40 pixels: more than half of 64, so kept as it is
    assert decode(png_base64(torch.rand(1, 40, 30))).shape == (40, 30)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_thumbnails_of_a_model_on_cuda(scans) -> None:
    # the model and its outputs on the GPU, the inputs kept on the CPU
    x, y = scans
    torch.manual_seed(2)
    sections = diagnose_model(SmallCNN(), (x, y), device="cuda").sections
    assert list(sections["thumbnails"]) == [h["id"] for h in sections["hardest"][:16]]
    for name, text in sections["thumbnails"].items():
        expected = np.round(x[int(name), 0].numpy() * 255).astype(np.uint8)
        assert np.array_equal(decode(text)[::8, ::8], expected)
