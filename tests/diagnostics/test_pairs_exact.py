import numpy as np
import pytest
import torch

from embscope.diagnostics import ks_distance
from embscope.diagnostics.pairs import pair_similarities

from .conftest import blobs


def _brute(x, y):
    xs = x / np.linalg.norm(x, axis=1, keepdims=True)
    gen, imp = [], []
    for i in range(len(y)):
        for j in range(i + 1, len(y)):
            (gen if y[i] == y[j] else imp).append(xs[i] @ xs[j])
    return np.sort(gen), np.sort(imp)


def test_exact_pairs_match_brute_force():
    x, y = blobs(n=70, d=5, k=3, seed=1)
    p = pair_similarities(x, y, chunk_size=16)
    gen, imp = _brute(x.astype(np.float64), y)
    assert p.exact
    assert np.sort(p.genuine) == pytest.approx(gen, abs=1e-5)
    assert np.sort(p.impostor) == pytest.approx(imp, abs=1e-5)
    counts = np.bincount(y)
    assert p.n_genuine_total == sum(c * (c - 1) // 2 for c in counts)
    assert p.n_impostor_total == (70 * 69) // 2 - p.n_genuine_total


def test_exact_pairs_do_not_depend_on_order():
    x, y = blobs(n=50, d=4, k=2, seed=2)
    perm = np.random.default_rng(0).permutation(50)
    a, b = pair_similarities(x, y), pair_similarities(x[perm], y[perm] + 10)
    assert np.sort(a.genuine) == pytest.approx(np.sort(b.genuine), abs=1e-6)
    assert np.sort(a.impostor) == pytest.approx(np.sort(b.impostor), abs=1e-6)


def test_sampled_pairs_are_reproducible_and_close_to_exact():
    x, y = blobs(n=600, d=6, k=3, seed=3)
    exact = pair_similarities(x, y)
    s1 = pair_similarities(x, y, max_pairs=20_000, seed=5)
    s2 = pair_similarities(x, y, max_pairs=20_000, seed=5)
    assert not s1.exact and len(s1.genuine) == len(s1.impostor) == 20_000
    assert np.array_equal(s1.genuine, s2.genuine)
    # KS of a 20k sample to its population: 99.9% bound ~1.95 / sqrt(20k)
    assert ks_distance(s1.genuine, exact.genuine) < 1.95 / np.sqrt(20_000) + 1e-3
    assert ks_distance(s1.impostor, exact.impostor) < 1.95 / np.sqrt(20_000) + 1e-3


def test_bad_cap():
    with pytest.raises(ValueError, match="max_pairs must be a positive integer"):
        pair_similarities(torch.randn(4, 2), [0, 0, 1, 1], max_pairs=0)
