"""pair_similarities: exact path against a double loop, counts, and the seeded uniform sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from embscope.diagnostics.pairs import PairSample, pair_similarities


def double_loop(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    genuine, impostor = [], []
    for i in range(len(y)):
        for j in range(i + 1, len(y)):
            (genuine if y[i] == y[j] else impostor).append(float(x[i] @ x[j]))
    return np.sort(genuine), np.sort(impostor)


def data(sizes, d=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(y)
    x = rng.normal(size=(len(y), d)) + 2.0 * rng.normal(size=(len(sizes), d))[y]
    return x.astype(np.float32), y


@pytest.mark.parametrize(
    "sizes",
    [
        [30, 20, 10, 1, 1, 2],  # small classes of several widths, singletons
        [270, 12, 3],  # one class above the batched size: the tiled path
        [5] * 40,
    ],
)
@pytest.mark.parametrize("chunk_size", [7, 64, 4096])
def test_exact_matches_double_loop(sizes, chunk_size):
    x, y = data(sizes)
    got = pair_similarities(x, y, chunk_size=chunk_size)
    genuine, impostor = double_loop(x, y)
    assert got.exact and got.genuine_exact and got.impostor_exact
    assert got.genuine.dtype == np.float32 and got.impostor.dtype == np.float32
    assert np.sort(got.genuine) == pytest.approx(genuine, abs=1e-6)
    assert np.sort(got.impostor) == pytest.approx(impostor, abs=1e-6)
    assert got.n_genuine_total == len(genuine)
    assert got.n_impostor_total == len(impostor)


def test_counts_from_class_sizes():
    sizes = [1000, 700, 3, 1]
    x, y = data(sizes, d=3, seed=1)
    got = pair_similarities(x, y, max_pairs=1000)
    n = sum(sizes)
    assert got.n_genuine_total == 1000 * 999 // 2 + 700 * 699 // 2 + 3
    assert got.n_impostor_total == n * (n - 1) // 2 - got.n_genuine_total
    assert not got.exact and not got.genuine_exact and not got.impostor_exact
    assert len(got.genuine) == len(got.impostor) == 1000


def test_cap_applies_per_kind():
    x, y = data([3, 3, 3], seed=2)  # 9 genuine, 27 impostor pairs
    got = pair_similarities(x, y, max_pairs=9)
    assert got.genuine_exact and not got.impostor_exact and not got.exact
    assert np.sort(got.genuine) == pytest.approx(double_loop(x, y)[0], abs=1e-6)
    assert len(got.impostor) == 9


def test_exact_path_is_order_and_label_invariant():
    x, y = data([40, 25, 7, 1])
    perm = np.random.default_rng(3).permutation(len(y))
    a = pair_similarities(x, y, chunk_size=16)
    b = pair_similarities(x[perm], 5 - 3 * y[perm], chunk_size=16)
    assert np.sort(b.genuine) == pytest.approx(np.sort(a.genuine), abs=1e-6)
    assert np.sort(b.impostor) == pytest.approx(np.sort(a.impostor), abs=1e-6)


def test_sample_is_reproducible_and_close_to_the_population():
    x, y = data([300, 200, 150, 50], seed=4)
    exact = pair_similarities(x, y)
    s1 = pair_similarities(x, y, max_pairs=20_000, seed=7)
    s2 = pair_similarities(torch.from_numpy(x), torch.from_numpy(y), max_pairs=20_000, seed=7)
    s3 = pair_similarities(x, y, max_pairs=20_000, seed=8)
    assert np.array_equal(s1.genuine, s2.genuine) and np.array_equal(s1.impostor, s2.impostor)
    assert not np.array_equal(s1.genuine, s3.genuine)
    for kind in ("genuine", "impostor"):
        sample, population = getattr(s1, kind), getattr(exact, kind)
        # Two-sample KS at the 99.9% level: c(0.001) = 1.95.
        bound = 1.95 * np.sqrt(1 / len(sample) + 1 / len(population))
        assert stats.ks_2samp(sample, population).statistic < bound


def ring(class_angles, sizes, spread):
    """2-D unit vectors; class c sits at angle class_angles[c] (+ spread[c] for half of it)."""
    rows, labels = [], []
    for c, (angle, n) in enumerate(zip(class_angles, sizes, strict=True)):
        offsets = np.where(np.arange(n) % 2 == 0, 0.0, spread[c])
        rows.append(np.stack([np.cos(angle + offsets), np.sin(angle + offsets)], 1))
        labels += [c] * n
    return np.concatenate(rows).astype(np.float32), np.array(labels)


def test_genuine_sample_picks_classes_by_pair_count():
    # Within class c, pairs across its two halves have similarity cos(spread[c]), a value
    # unique to c; the expected share of each value follows from the class sizes.
    sizes = [400, 200, 100, 60]
    spread = [0.3, 0.6, 0.9, 1.2]
    x, y = ring([0.0, 1.5, 3.0, 4.5], sizes, spread)
    got = pair_similarities(x, y, max_pairs=30_000, seed=11)
    assert not got.genuine_exact
    n_gen = sum(n * (n - 1) // 2 for n in sizes)
    expected, observed = [], []
    for c, n in enumerate(sizes):
        cross = ((n + 1) // 2) * (n // 2)
        expected.append(cross / n_gen)
        observed.append(np.sum(np.abs(got.genuine - np.cos(spread[c])) < 1e-4))
    expected.append(1 - sum(expected))  # similarity 1: pairs within a half
    observed.append(np.sum(got.genuine > 1 - 1e-4))
    assert sum(observed) == len(got.genuine)
    p = stats.chisquare(observed, np.array(expected) * len(got.genuine)).pvalue
    assert p > 1e-3


def test_impostor_sample_picks_class_pairs_by_size_product():
    sizes = [50, 30, 15, 5]
    angles = [0.0, 0.7, 1.9, 3.4]  # every class pair has its own cosine
    x, y = ring(angles, sizes, [0.0] * 4)
    got = pair_similarities(x, y, max_pairs=3000, seed=12)  # of 3175
    assert not got.impostor_exact
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    total = sum(sizes[a] * sizes[b] for a, b in pairs)
    observed = [
        np.sum(np.abs(got.impostor - np.cos(angles[a] - angles[b])) < 1e-4) for a, b in pairs
    ]
    assert sum(observed) == len(got.impostor)
    expected = [sizes[a] * sizes[b] / total * len(got.impostor) for a, b in pairs]
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_one_class_or_all_singletons():
    x, _ = data([10])
    one = pair_similarities(x, np.zeros(10, int))
    assert (len(one.genuine), len(one.impostor)) == (45, 0)
    assert (one.n_genuine_total, one.n_impostor_total) == (45, 0)
    alone = pair_similarities(x, np.arange(10))
    assert (len(alone.genuine), len(alone.impostor)) == (0, 45)
    assert isinstance(alone, PairSample) and alone.exact


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_pairs": 0}, ValueError, "max_pairs must be a positive integer, got 0"),
        ({"max_pairs": 1.5}, TypeError, "max_pairs must be a positive integer, got 1.5"),
        ({"chunk_size": -1}, ValueError, "chunk_size must be a positive integer, got -1"),
        ({"seed": "a"}, TypeError, "seed must be an integer, got 'a'"),
        (
            {"labels": np.zeros(3, int)},
            ValueError,
            r"labels must be 1-D .*\(\[4\]\), got shape \(3,\)",
        ),
        ({"embeddings": np.zeros((4,))}, ValueError, r"embeddings must be 2-D \[N, D\]"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = {"embeddings": np.ones((4, 2), np.float32), "labels": np.array([0, 0, 1, 1])}
    args.update(kwargs)
    embeddings, labels = args.pop("embeddings"), args.pop("labels")
    with pytest.raises(error, match=match):
        pair_similarities(embeddings, labels, **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x, y = data([300, 40, 9, 1], seed=5)
    cpu = pair_similarities(x, y, chunk_size=64)
    gpu = pair_similarities(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), chunk_size=64)
    assert np.sort(gpu.genuine) == pytest.approx(np.sort(cpu.genuine), abs=1e-5)
    assert np.sort(gpu.impostor) == pytest.approx(np.sort(cpu.impostor), abs=1e-5)
    s_cpu = pair_similarities(x, y, max_pairs=5000, seed=3)
    s_gpu = pair_similarities(
        torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), max_pairs=5000, seed=3
    )
    assert s_gpu.genuine == pytest.approx(s_cpu.genuine, abs=1e-5)
    assert s_gpu.impostor == pytest.approx(s_cpu.impostor, abs=1e-5)
