import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from sklearn.metrics import accuracy_score, calinski_harabasz_score, f1_score

from embscope.diagnostics import (
    classification_scores,
    fisher_ratio,
    geometry,
    hard_examples,
    hellinger_distance,
    hellinger_from_counts,
    intra_inter,
    ks_distance,
    logit_column_stats,
    nc1,
    prediction_margins,
    score_separation,
)

from .conftest import blobs


def _normalise(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("k", [2, 3, 7])
@pytest.mark.parametrize("space", ["cosine", "euclidean"])
def test_fisher_ratio_matches_calinski_harabasz(k, space):
    x, y = blobs(n=400, d=6, k=k, seed=k)
    ref_x = _normalise(x.astype(np.float64)) if space == "cosine" else x.astype(np.float64)
    n = len(y)
    expected = calinski_harabasz_score(ref_x, y) * (k - 1) / (n - k)
    assert fisher_ratio(x, y, space=space) == pytest.approx(expected, rel=1e-5)


def _brute_pairs(x, y, space):
    intra, inter = [], []
    for i in range(len(y)):
        for j in range(i + 1, len(y)):
            if space == "cosine":
                d = 1 - x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j]))
            else:
                d = np.sum((x[i] - x[j]) ** 2)
            (intra if y[i] == y[j] else inter).append(d)
    return np.mean(intra), np.mean(inter)


@pytest.mark.parametrize("space", ["cosine", "euclidean"])
def test_intra_inter_match_brute_force(space):
    x, y = blobs(n=60, d=5, k=4, seed=3)
    intra, inter = _brute_pairs(x.astype(np.float64), y, space)
    g = intra_inter(x, y, space=space)
    assert g.intra_mean == pytest.approx(intra, rel=1e-5)
    assert g.inter_mean == pytest.approx(inter, rel=1e-5)
    assert g.intra_inter_ratio == pytest.approx(intra / inter, rel=1e-5)


def test_labels_of_any_value_are_remapped():
    x, y = blobs(n=100, k=3, seed=1)
    odd = np.array([-7, 1000, 42])[y]
    assert fisher_ratio(x, odd) == pytest.approx(fisher_ratio(x, y), rel=1e-9)


def test_one_class_gives_nan_with_reason():
    x, _ = blobs(n=50)
    g = geometry(x, np.zeros(50, dtype=int))
    assert math.isnan(g.fisher_ratio) and "two classes" in g.reasons["fisher_ratio"]
    assert math.isnan(g.inter_mean) and math.isnan(g.intra_inter_ratio)
    xs = _normalise(x.astype(np.float64))
    cos = xs @ xs.T
    expected = np.mean(1 - cos[np.triu_indices(50, 1)])
    assert g.intra_mean == pytest.approx(expected, rel=1e-5)


def test_class_with_one_sample_has_no_intra_pairs():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    g = geometry(x, [0, 1, 1])  # class 0 has one sample: only the class-1 pair is intra (d = 0)
    assert g.intra_mean == pytest.approx(0.0, abs=1e-12)
    assert g.inter_mean == pytest.approx(1.0)


def test_nc1_matches_numpy():
    x, y = blobs(n=200, d=4, k=3, seed=5)
    xs = _normalise(x.astype(np.float64))
    mu = xs.mean(0)
    sw = np.zeros((4, 4))
    sb = np.zeros((4, 4))
    for c in range(3):
        xc = xs[y == c]
        mc = xc.mean(0)
        sw += (xc - mc).T @ (xc - mc)
        sb += len(xc) * np.outer(mc - mu, mc - mu)
    expected = np.trace(sw @ np.linalg.pinv(sb)) / 3
    assert nc1(x, y) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("block", [1 << 18, 7, 1])
@pytest.mark.parametrize("spread", [1.0, 1e-4])
def test_nc1_wider_than_rows_and_in_blocks_matches_numpy(monkeypatch, block, spread):
    # D > N (S_W and S_B both rank-deficient); blocks of one row up to the whole matrix;
    # nearly collapsed classes (spread 1e-4 around the means) as well as spread ones
    import embscope.diagnostics.geometry_metrics as metrics

    monkeypatch.setattr(metrics, "_NC1_BLOCK", block)
    g = np.random.default_rng(6)
    y = np.arange(30) % 4
    x = (g.normal(size=(4, 50))[y] + spread * g.normal(size=(30, 50))).astype(np.float32)
    xs = _normalise(x.astype(np.float64))
    mu = xs.mean(0)
    sw = np.zeros((50, 50))
    sb = np.zeros((50, 50))
    for c in range(4):
        xc = xs[y == c]
        mc = xc.mean(0)
        sw += (xc - mc).T @ (xc - mc)
        sb += len(xc) * np.outer(mc - mu, mc - mu)
    expected = np.trace(sw @ np.linalg.pinv(sb)) / 4
    assert nc1(x, y) == pytest.approx(expected, rel=1e-6)


def test_ks_distance_matches_scipy_with_ties():
    g = np.random.default_rng(0)
    a = np.round(g.normal(size=300), 1)
    b = np.round(g.normal(0.4, 1.2, size=211), 1)
    assert ks_distance(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)
    assert ks_distance(a, a) == pytest.approx(0.0)
    assert ks_distance([0.0, 0.1], [0.5, 0.9]) == pytest.approx(1.0)
    assert math.isnan(ks_distance([], [1.0]))


def test_hellinger_by_hand():
    assert hellinger_from_counts([1, 0], [0, 1]) == pytest.approx(1.0)
    assert hellinger_from_counts([3, 5], [6, 10]) == pytest.approx(0.0, abs=1e-7)
    # p = (1/2, 1/2), q = (1, 0): BC = sqrt(1/2)
    assert hellinger_from_counts([1, 1], [2, 0]) == pytest.approx(math.sqrt(1 - math.sqrt(0.5)))


def test_hellinger_distance_bins_like_numpy():
    g = np.random.default_rng(1)
    a, b = g.beta(2, 5, 500), g.beta(5, 2, 400)
    edges = np.linspace(0, 1, 11)
    p, q = np.histogram(a, edges)[0] / 500, np.histogram(b, edges)[0] / 400
    expected = math.sqrt(1 - np.sum(np.sqrt(p * q)))
    assert hellinger_distance(a, b, bins=10) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("two_columns", [False, True])
def test_score_separation_matches_scipy(two_columns):
    g = np.random.default_rng(2)
    y = g.integers(0, 2, 400)
    z = g.normal(size=400) + 1.5 * y
    logits = np.stack([np.zeros(400), z], 1) if two_columns else z
    s = score_separation(logits, y)
    p = 1 / (1 + np.exp(-z))
    assert s.ks == pytest.approx(ks_2samp(p[y == 1], p[y == 0]).statistic, abs=1e-6)
    p1, p0 = p[y == 1], p[y == 0]
    assert s.fisher == pytest.approx((p1.mean() - p0.mean()) ** 2 / (p1.var() + p0.var()), rel=1e-9)
    assert s.hellinger == pytest.approx(hellinger_distance(p1, p0, bins=50), rel=1e-12)


def test_logit_column_stats_match_numpy():
    g = np.random.default_rng(3)
    y = g.integers(0, 3, 100)
    z = g.normal(size=(100, 3)).astype(np.float32)
    st = logit_column_stats(z, y)
    assert st["logits.col2.mean"] == pytest.approx(z[:, 2].mean(), rel=1e-5)
    assert st["logits.col0.std"] == pytest.approx(z[:, 0].std(), rel=1e-5)
    assert st["logits.col1.class2.max"] == pytest.approx(z[y == 2, 1].max())
    assert st["logits.col1.class0.min"] == pytest.approx(z[y == 0, 1].min())
    assert st["logits.col0.class1.mean"] == pytest.approx(z[y == 1, 0].mean(), rel=1e-5)


def test_prediction_margins_brute_force():
    z = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 5.0]])
    assert prediction_margins(z, [0, 1]).tolist() == pytest.approx([1.0, -2.0])
    assert prediction_margins(np.array([1.5, -0.5]), [0, 0]).tolist() == pytest.approx([-1.5, 0.5])


def test_classification_scores_match_sklearn():
    g = np.random.default_rng(4)
    for k in (2, 4):
        y = g.integers(0, k, 300)
        pred = np.where(g.random(300) < 0.7, y, g.integers(0, k, 300))
        cm = np.zeros((k, k))
        np.add.at(cm, (y, pred), 1)
        s = classification_scores(cm)
        assert s["accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert s["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
        if k == 2:
            assert s["f1"] == pytest.approx(f1_score(y, pred))


def test_hard_examples_by_hand():
    # P(pos) = sigmoid(z): 0.5 (gray), 0.95 wrong (confident error), 0.99 right, 0.45 gray
    z = torch.tensor([0.0, math.log(0.95 / 0.05), math.log(99.0), math.log(0.45 / 0.55)])
    h = hard_examples(z, [1, 0, 1, 0], ids=["a", "b", "c", "d"], k=2)
    assert h.gray_zone_count == 2
    assert h.gray_zone_fraction == pytest.approx(0.5)
    assert h.confident_error_count == 1
    assert [e["id"] for e in h.hardest] == ["b", "a"]


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="embeddings must be 2-D"):
        fisher_ratio(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="labels must be 1-D"):
        fisher_ratio(np.zeros((5, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="labels must be integers"):
        fisher_ratio(np.zeros((2, 2)), np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="space must be one of"):
        fisher_ratio(np.zeros((2, 2)), [0, 1], space="manhattan")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        prediction_margins(np.zeros((2, 3)), [0, 3])
    with pytest.raises(TypeError, match="embeddings must be a torch.Tensor, numpy array or list"):
        fisher_ratio("x", [0])
