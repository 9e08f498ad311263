import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from embscope.diagnostics import diagnose, pca
from embscope.diagnostics.pca import pca_view

from .conftest import blobs


def _reference(x: np.ndarray) -> np.ndarray:
    """[N, 2] coordinates by scikit-learn's full-SVD PCA in float64, each axis signed so that
    its largest-magnitude component is positive (the view's convention)."""
    ref = PCA(n_components=2, svd_solver="full").fit(x.astype(np.float64))
    comp = ref.components_
    sign = np.sign(comp[np.arange(2), np.abs(comp).argmax(axis=1)])
    return ref.transform(x.astype(np.float64)) * sign


def _view(x: np.ndarray, y: np.ndarray, values=(0, 1, 2, 3), **kw) -> dict:
    return pca_view(torch.from_numpy(x), torch.from_numpy(y), list(values), 0, **kw)


def _coords(view: dict) -> np.ndarray:
    return np.column_stack([view["x"], view["y"]])


@pytest.fixture(params=["full", "subset"])
def solver(request, monkeypatch):
    """Both eigensolvers: torch's full eigh (small matrices) and LAPACK's subset solver."""
    if request.param == "subset":
        monkeypatch.setattr(pca, "_SUBSET_FROM", 2)
    return request.param


# N < D (the N x N Gram), N > D (the D x D scatter) and N = D; coordinates are rounded to 5
# decimals, so they agree to 5e-6 plus rounding of the solvers
@pytest.mark.parametrize(("n", "d"), [(40, 300), (500, 12), (64, 64), (7, 5000)])
def test_coordinates_match_sklearn(n, d, solver):
    x, y = blobs(n=n, d=d, k=4, sep=2.0, seed=n + d)
    got = _coords(_view(x, y))
    expected = _reference(x)
    # equal up to a sign per axis, and equal outright under the sign convention
    for j in range(2):
        s = np.sign(got[:, j] @ expected[:, j])
        assert got[:, j] == pytest.approx(s * expected[:, j], abs=1e-5)
    assert got == pytest.approx(expected, abs=1e-5)


def test_only_the_first_limit_rows_enter_the_view(solver):
    x, y = blobs(n=300, d=20, k=3, seed=1)
    view = _view(x, y, limit=120)
    assert len(view["x"]) == 120
    assert _coords(view) == pytest.approx(_reference(x[:120]), abs=1e-5)


def test_labels_are_the_slot_values():
    x, y = blobs(n=30, d=6, k=3, seed=2)
    view = _view(x, y, values=(-7, 1000, 42))
    assert view["label"] == [[-7, 1000, 42][c] for c in y]


def test_row_order_only_permutes_the_points(solver):
    x, y = blobs(n=80, d=200, k=4, sep=2.0, seed=3)
    perm = np.random.default_rng(0).permutation(80)
    a, b = _coords(_view(x, y)), _coords(_view(x[perm], y[perm]))
    assert b == pytest.approx(a[perm], abs=2e-5)


@pytest.mark.parametrize(("n", "d"), [(2, 10), (10, 1), (0, 4)])
def test_too_few_rows_or_columns_give_an_empty_view(n, d):
    view = _view(np.ones((n, d), np.float32), np.zeros(n, np.int64))
    assert view == {"x": [], "y": [], "label": []}


@pytest.mark.parametrize(("n", "d"), [(5, 50), (50, 5)])
def test_zero_variance_axes_have_zero_coordinates(n, d, solver):
    g = np.random.default_rng(4)
    same = np.tile(g.normal(size=(1, d)), (n, 1)).astype(np.float32)
    view = _view(same, np.zeros(n, np.int64))
    assert _coords(view) == pytest.approx(np.zeros((n, 2)), abs=1e-9)
    line = (g.normal(size=(n, 1)) * g.normal(size=(1, d))).astype(np.float32)  # rank one
    got = _coords(_view(line, np.zeros(n, np.int64)))
    assert np.isfinite(got).all()
    assert got[:, 1] == pytest.approx(np.zeros(n), abs=1e-5)
    assert got[:, 0] == pytest.approx(_reference(line)[:, 0], abs=1e-5)


def test_wide_rows_need_no_d_by_d_matrix():
    # D = 100,000: a D x D float64 scatter would be 80 GB; the N x N Gram is 4 x 4
    g = np.random.default_rng(5)
    x = g.normal(size=(4, 100_000)).astype(np.float32)
    y = np.array([0, 0, 1, 1])
    got = _coords(_view(x, y))
    assert got == pytest.approx(_reference(x), abs=1e-5)
    report = diagnose(x, y)
    assert len(report.sections["pca"]["x"]) == 4
    assert np.isfinite(report.metrics["nc1"])
