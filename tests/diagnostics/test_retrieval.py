"""knn_retrieval against pytorch-metric-learning's AccuracyCalculator and a brute-force ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from embscope.diagnostics.retrieval import RetrievalResult, knn_retrieval


def clustered(n: int, d: int, sizes_or_c, sigma: float, seed: int):
    """Unit-norm rows around random class centres; ``sizes_or_c`` = class count or sizes."""
    rng = np.random.default_rng(seed)
    if np.isscalar(sizes_or_c):
        y = rng.integers(0, sizes_or_c, n)
    else:
        y = np.repeat(np.arange(len(sizes_or_c)), sizes_or_c)
        rng.shuffle(y)
    centres = rng.normal(size=(int(y.max()) + 1, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[y] + sigma * rng.normal(size=(len(y), d)) / np.sqrt(d)
    return x.astype(np.float32), y


DATASETS = {
    "balanced": lambda: clustered(300, 16, 10, 1.5, 0),
    # Geometric class sizes: a few big classes, many small ones, several singletons.
    "imbalanced": lambda: clustered(None, 24, [120, 60, 30, 15, 8, 4, 2, 1, 1, 1, 1, 2, 3], 1.2, 1),
    "singleton_class": lambda: clustered(None, 8, [40, 35, 1, 30], 2.0, 2),
    "many_small": lambda: clustered(400, 32, 150, 1.0, 3),
    "hard": lambda: clustered(350, 16, 7, 3.0, 4),
}


def pml(x: np.ndarray, y: np.ndarray) -> dict:
    calc = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    return calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(x, y, ks, space="cosine"):
    """Full N x N ranking in float64; ties broken by the lower sample index."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y)
    n = len(y)
    if space == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = x @ x.T
    else:
        s = -((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(s, -np.inf)
    idx = np.broadcast_to(np.arange(n), (n, n))
    ranked = np.lexsort((idx, -s), axis=1)[:, : n - 1]
    rel = y[ranked] == y[:, None]
    r = (y[:, None] == y[None, :]).sum(1) - 1
    queries = np.flatnonzero(r > 0)
    recall = {k: float(rel[queries, :k].any(axis=1).mean()) for k in ks}
    aps = []
    for i in queries:
        hits = rel[i, : r[i]]
        precision = np.cumsum(hits) / np.arange(1, r[i] + 1)
        aps.append(float((precision * hits).sum() / r[i]))
    return recall, float(np.mean(aps)), len(queries)


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("chunk_size", [None, 37, 128])
def test_matches_pytorch_metric_learning(name, chunk_size):
    x, y = DATASETS[name]()
    x = unit(x)
    ref = pml(x, y)
    got = knn_retrieval(x, y, ks=(1,), chunk_size=chunk_size)
    assert got.recall_at_k[1] == pytest.approx(ref["precision_at_1"])
    assert got.map_at_r == pytest.approx(ref["mean_average_precision_at_r"])


@pytest.mark.parametrize("name", ["balanced", "imbalanced", "hard"])
def test_euclidean_matches_pytorch_metric_learning(name):
    x, y = DATASETS[name]()
    x = x * np.float32(3.0) + np.float32(0.5)  # not unit rows, not centred
    ref = pml(x, y)
    got = knn_retrieval(x, y, ks=(1,), space="euclidean", chunk_size=64)
    assert got.recall_at_k[1] == pytest.approx(ref["precision_at_1"])
    assert got.map_at_r == pytest.approx(ref["mean_average_precision_at_r"])


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("space", ["cosine", "euclidean"])
def test_matches_brute_force(name, space):
    x, y = DATASETS[name]()
    recall, mapr, n_queries = brute_force(x, y, (1, 2, 5, 10), space)
    got = knn_retrieval(x, y, ks=(1, 2, 5, 10), space=space, chunk_size=50)
    for k in (1, 2, 5, 10):
        assert got.recall_at_k[k] == pytest.approx(recall[k])
    assert got.map_at_r == pytest.approx(mapr)
    assert got.n_queries == n_queries
    assert got.n_skipped == len(y) - n_queries


def test_ties_are_broken_by_sample_index():
    # Rows on the coordinate axes: every cosine is exactly -1, 0 or 1, so ties are everywhere.
    rng = np.random.default_rng(5)
    axes = np.concatenate([np.eye(4), -np.eye(4)]).astype(np.float32)
    x = axes[rng.integers(0, 8, 200)] * rng.uniform(0.5, 2.0, (200, 1)).astype(np.float32)
    y = rng.integers(0, 5, 200)
    recall, mapr, _ = brute_force(x, y, (1, 5))
    for chunk_size in (None, 16, 45):
        got = knn_retrieval(x, y, ks=(1, 5), chunk_size=chunk_size)
        assert got.recall_at_k[1] == pytest.approx(recall[1])
        assert got.recall_at_k[5] == pytest.approx(recall[5])
        assert got.map_at_r == pytest.approx(mapr)


def test_chunk_sizes_that_do_not_divide_n_agree():
    x, y = DATASETS["imbalanced"]()
    base = knn_retrieval(x, y, ks=(1, 5), chunk_size=1000)
    # 7 and 13 send the big classes through the full-row panels, 101 keeps them blocked.
    for chunk_size in (7, 13, 101, 246):
        got = knn_retrieval(x, y, ks=(1, 5), chunk_size=chunk_size)
        assert got.to_dict() == pytest.approx(base.to_dict())
        assert (got.n_queries, got.n_skipped) == (base.n_queries, base.n_skipped)


def test_permutation_and_relabelling_change_nothing():
    x, y = DATASETS["imbalanced"]()
    base = knn_retrieval(x, y, ks=(1, 5), chunk_size=40)
    rng = np.random.default_rng(9)
    perm = rng.permutation(len(y))
    relabel = rng.permutation(int(y.max()) + 1) * 1000 - 7  # any integers, negatives included
    got = knn_retrieval(x[perm], relabel[y[perm]], ks=(1, 5), chunk_size=40)
    assert got.to_dict() == pytest.approx(base.to_dict())


def test_tensor_and_array_inputs_agree():
    x, y = DATASETS["balanced"]()
    a = knn_retrieval(x, y)
    b = knn_retrieval(torch.from_numpy(x).double(), torch.from_numpy(y).int())
    assert b.to_dict() == pytest.approx(a.to_dict())


def test_result_fields_and_dict():
    x, y = DATASETS["singleton_class"]()
    got = knn_retrieval(x, y, ks=(5, 1, 5))
    assert isinstance(got, RetrievalResult)
    assert list(got.to_dict()) == ["recall_at_1", "recall_at_5", "map_at_r"]
    assert got.n_queries == len(y) - 1
    assert got.n_skipped == 1
    assert got.space == "cosine"
    assert got.higher_is_better is True


def test_hand_derived_small_case():
    # 1-D points: class 0 at 0.0, 0.1, 5.0; class 1 at 1.0, 1.1 (squared distances).
    x = np.array([[0.0], [0.1], [5.0], [1.0], [1.1]], np.float32)
    y = np.array([0, 0, 0, 1, 1])
    got = knn_retrieval(x, y, ks=(1, 2), space="euclidean")
    # Neighbours: q0 -> 1(+),3,4,2(+); q1 -> 0(+),3,4,2(+); q2 -> 4,3,1(+),0(+);
    # q3 -> 4(+),...; q4 -> 3(+),...
    assert got.recall_at_k[1] == pytest.approx(4 / 5)
    assert got.recall_at_k[2] == pytest.approx(4 / 5)
    # AP@R (R = 2 for class 0, 1 for class 1): q0, q1: (1/1)/2; q2: 0; q3, q4: 1.
    assert got.map_at_r == pytest.approx((0.5 + 0.5 + 0 + 1 + 1) / 5)


def test_no_classmates_gives_nan():
    x = np.eye(4, dtype=np.float32)
    got = knn_retrieval(x, np.arange(4))
    assert math.isnan(got.recall_at_k[1]) and math.isnan(got.map_at_r)
    assert (got.n_queries, got.n_skipped) == (0, 4)
    one = knn_retrieval(x[:1], np.array([3]))
    assert math.isnan(one.map_at_r) and one.n_skipped == 1


def test_k_beyond_the_other_samples():
    x, y = clustered(12, 4, 3, 1.0, 6)
    got = knn_retrieval(x, y, ks=(1, 11, 50))
    assert got.recall_at_k[11] == pytest.approx(1.0)
    assert got.recall_at_k[50] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"embeddings": "abc"},
            TypeError,
            "embeddings must be a torch.Tensor, numpy array or list",
        ),
        ({"embeddings": [["a", "b"]]}, TypeError, "embeddings must hold numbers, got <U1"),
        (
            {"embeddings": np.zeros(5)},
            ValueError,
            r"embeddings must be 2-D \[N, D\], got shape \(5,\)",
        ),
        ({"embeddings": np.zeros((0, 3))}, ValueError, "at least one row"),
        (
            {"labels": np.zeros(4, int)},
            ValueError,
            r"labels must be 1-D .*\(\[5\]\), got shape \(4,\)",
        ),
        ({"labels": np.zeros(5)}, TypeError, "labels must hold integers, got dtype torch.float64"),
        (
            {"ks": (0, 5)},
            ValueError,
            r"ks must be a non-empty sequence of positive integers, got \(0, 5\)",
        ),
        ({"ks": ()}, ValueError, "ks must be a non-empty sequence"),
        ({"space": "l2"}, ValueError, "space must be 'cosine' or 'euclidean', got 'l2'"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be a positive integer, got 0"),
        ({"chunk_size": 2.5}, TypeError, "chunk_size must be a positive integer, got 2.5"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = {"embeddings": np.ones((5, 3), np.float32), "labels": np.zeros(5, int)}
    args.update(kwargs)
    embeddings, labels = args.pop("embeddings"), args.pop("labels")
    with pytest.raises(error, match=match):
        knn_retrieval(embeddings, labels, **args)


def test_non_finite_rows_are_named():
    x = np.ones((6, 3), np.float32)
    x[4, 1] = np.nan
    x[5, 0] = np.inf
    with pytest.raises(ValueError, match=r"embeddings must be finite, got 2 rows .*first at row 4"):
        knn_retrieval(x, np.zeros(6, int))


@pytest.mark.parametrize("threads", [2, 3])
def test_worker_threads_give_the_same_result(threads):
    # Blocks run on worker threads (torch.get_num_threads() of them); the conftest pins one.
    x, y = DATASETS["imbalanced"]()
    base = knn_retrieval(x, y, ks=(1, 5), chunk_size=23)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = knn_retrieval(x, y, ks=(1, 5), chunk_size=23)
        big = knn_retrieval(x, y, ks=(1, 5), chunk_size=9)  # large classes in parallel panels
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert got.to_dict() == pytest.approx(base.to_dict())
    assert big.to_dict() == pytest.approx(base.to_dict())


def test_restores_torch_thread_count():
    before = torch.get_num_threads()
    x, y = DATASETS["balanced"]()
    knn_retrieval(x, y)
    assert torch.get_num_threads() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    for name in ("imbalanced", "hard", "many_small"):
        x, y = DATASETS[name]()
        cpu = knn_retrieval(x, y, ks=(1, 5), chunk_size=64)
        gpu = knn_retrieval(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), ks=(1, 5))
        on_arg = knn_retrieval(x, y, ks=(1, 5), chunk_size=50, device="cuda")
        assert gpu.to_dict() == pytest.approx(cpu.to_dict())
        assert on_arg.to_dict() == pytest.approx(cpu.to_dict())
