import math

import numpy as np
import pytest
import torch


def blobs(n=300, d=8, k=3, sep=1.5, seed=0):
    """Gaussian classes with distinct means: embeddings [n, d] float32, labels [n] int64."""
    g = np.random.default_rng(seed)
    y = g.integers(0, k, n)
    centers = g.normal(size=(k, d)) * sep
    x = centers[y] + g.normal(size=(n, d))
    return x.astype(np.float32), y.astype(np.int64)


def same_metrics(a: dict, b: dict, rel=1e-6, abs_=1e-9):
    """Assert two metric dicts agree (nan equals nan)."""
    assert set(a) == set(b), set(a) ^ set(b)
    for k in a:
        va, vb = float(a[k]), float(b[k])
        if math.isnan(va) or math.isnan(vb):
            assert math.isnan(va) and math.isnan(vb), (k, va, vb)
        else:
            assert va == pytest.approx(vb, rel=rel, abs=abs_), k


@pytest.fixture
def data():
    return blobs()


@pytest.fixture(autouse=True)
def _threads():
    """Small inputs run fastest on one thread; the count is restored for other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
