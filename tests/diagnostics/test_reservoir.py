import numpy as np
import pytest
import torch

from embscope.diagnostics.reservoir import Reservoir, row_keys


def _fill(x, y, cuts, capacity=50, seed=0):
    r = Reservoir(capacity, seed)
    bounds = [0, *cuts, len(y)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        r.update(x[a:b], y[a:b])
    return r


def _kept(r):
    return sorted(map(tuple, r.rows.numpy().round(6).tolist()))


def test_exact_when_everything_fits():
    x = torch.randn(40, 3)
    y = torch.randint(0, 2, (40,))
    r = _fill(x, y, [10, 25])
    assert r.exact and len(r) == 40
    assert _kept(r) == sorted(map(tuple, x.numpy().round(6).tolist()))


def test_kept_set_ignores_batching_order_and_merging():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=g)
    y = torch.randint(0, 3, (500,), generator=g)
    a = _fill(x, y, [100, 333])
    perm = torch.randperm(500, generator=g)
    b = _fill(x[perm], y[perm], [7, 8, 250, 499])
    left, right = _fill(x[:200], y[:200], []), _fill(x[200:], y[200:], [50])
    right.merge(left)
    assert not a.exact and len(a) == 50 and a.seen == 500
    assert _kept(a) == _kept(b) == _kept(right)
    assert right.seen == 500


def test_full_reservoir_only_takes_smaller_keys():
    x = torch.randn(300, 8)
    y = torch.zeros(300, dtype=torch.long)
    r = _fill(x, y, list(range(10, 300, 10)), capacity=20)
    expected = torch.sort(row_keys(x, y, 0)).values[:20]
    assert torch.equal(torch.sort(r.keys).values, expected)


def test_keys_are_per_row_and_seeded():
    x = torch.randn(10, 300)
    y = torch.zeros(10, dtype=torch.long)
    k = row_keys(x, y, seed=1)
    assert torch.equal(k[3:5], row_keys(x[3:5], y[3:5], seed=1))
    assert not torch.equal(k, row_keys(x, y, seed=2))
    assert bool((k >= 0).all())


def test_sample_is_roughly_uniform():
    # class shares in the kept sample follow the population's (binomial 4-sigma bound)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20_000, 8, generator=g)
    y = (torch.rand(20_000, generator=g) < 0.2).long()
    r = _fill(x, y, list(range(1000, 20_000, 1000)), capacity=2000)
    share = float(r.labels.float().mean())
    assert share == pytest.approx(0.2, abs=4 * np.sqrt(0.2 * 0.8 / 2000))


def test_bad_capacity_is_refused():
    with pytest.raises(ValueError, match="reservoir_size must be a non-negative integer"):
        Reservoir(-1)
