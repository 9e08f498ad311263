"""Every finite scalar metric of a report has an interval (diagnostics/intervals.py and
interval_extras.py), whatever the kind of report; the intervals of the fitted temperature, the
head's centroid alignment, the dead classes, the logit column statistics, the leak scores and
MAP@R (a delete-a-group jackknife) against brute-force references (bootstraps refitted from scratch, scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from embscope.diagnostics import diagnose, diagnose_model, knn_retrieval
from embscope.diagnostics.calibration import _fit_temperature
from embscope.diagnostics.interval_extras import temperature_se
from embscope.diagnostics.intervals import z_value
from embscope.diagnostics.leak import _leak_compute, _leak_update, leak_intervals, leak_key
from embscope.diagnostics.report import Report
from embscope.losses import ArcFaceHead

from .test_leak import leaky_model, overlapping


def _blobs(n: int, k: int, seed: int, d: int = 8, spread: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    x = (torch.randn(k, d, generator=g) * spread)[y] + torch.randn(n, d, generator=g)
    return x, y


def _reports() -> dict[str, Report]:
    x2, y2 = _blobs(300, 2, 0)
    g = torch.Generator().manual_seed(1)
    bce = x2[:, 0] * 0.7 + torch.randn(300, generator=g)  # one binary logit [N]
    x5, y5 = _blobs(300, 5, 2)
    z5 = torch.randn(300, 5, generator=g)
    z5[torch.arange(300), y5] += 2.0
    ids = [f"img{i}.png" for i in range(300)]
    torch.manual_seed(3)
    head = ArcFaceHead(8, 5, m=0.3, s=16.0)
    with torch.no_grad():  # weights near the class means: a head that learned something
        head.weight.copy_(torch.stack([x5[y5 == c].mean(0) for c in range(5)]))
        head.weight.add_(torch.randn(5, 8) * 0.5)
        margin_logits = head(x5)
    model = leaky_model(2)
    xl, yl = overlapping(seed=1)
    return {
        "binary BCE logit": diagnose(x2, y2, bce, reservoir_size=200),
        "multiclass logits, ids": diagnose(x5, y5, z5, ids=ids),
        "margin head": diagnose(x5, y5, margin_logits, head=head),
        "embeddings only": diagnose(x5, y5, reservoir_size=250, retrieval_rows=200),
        "stated head": diagnose(x2, y2, bce, head_info={"s": 8.0, "m": 0.2, "kind": "angular"}),
        "margin leak": diagnose_model(model, (xl, yl), batch_size=64, reservoir_size=100),
    }


@pytest.fixture(scope="module")
def reports() -> dict[str, Report]:
    return _reports()


def test_every_finite_scalar_metric_has_an_interval_and_a_method(reports) -> None:
    for kind, r in reports.items():
        for name, value in r.metrics.items():
            if value is None or not math.isfinite(value):
                continue
            assert name in r.intervals, (kind, name, r.interval_methods.get(name))
            lo, hi = r.intervals[name]
            assert lo <= value <= hi, (kind, name, lo, value, hi)
            method = r.interval_methods.get(name, "")
            assert method and not method.startswith("none"), (kind, name, method)
    leak = reports["margin leak"]
    assert leak_key("f1", "with") in leak.intervals


def test_what_is_not_estimated_has_an_exact_interval_that_says_so(reports) -> None:
    r = reports["margin head"]
    for name in ("n", "num_classes", "head.s", "head.m", "head.min_weight_angle"):
        assert r.intervals[name] == [r.metrics[name], r.metrics[name]]
        assert r.interval_methods[name].startswith("exact")
    # estimates get a width
    for name in ("head.centroid_alignment", "angle_true_p99", "fitted_temperature", "map_at_r"):
        lo, hi = r.intervals[name]
        assert hi > lo, name


def _refit_sd(margins=None, logits=None, labels=None, reps: int = 150) -> float:
    """The spread of 1/T refitted on bootstrap resamples (brute force)."""
    g = np.random.default_rng(0)
    n = len(margins) if margins is not None else len(labels)
    us = []
    for _ in range(reps):
        i = torch.as_tensor(g.integers(0, n, n))
        fit = (
            _fit_temperature(margins=margins[i])
            if margins is not None
            else _fit_temperature(logits=logits[i], labels=labels[i])
        )
        us.append(1.0 / fit.temperature)
    return float(np.std(us, ddof=1))


def test_temperature_interval_matches_refitting_on_resamples() -> None:
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 2, (800,), generator=g)
    z = (2 * y - 1) * 1.0 + torch.randn(800, generator=g) * 1.5  # overconfident x3 below
    margins = ((2 * y - 1) * z * 3.0).double()
    u = 1.0 / _fit_temperature(margins=margins).temperature
    se = temperature_se(u, margins=margins.numpy())
    assert se == pytest.approx(_refit_sd(margins=margins), rel=0.25)

    logits = torch.randn(600, 4, generator=g).double() * 3
    labels = torch.randint(0, 4, (600,), generator=g)
    logits[torch.arange(600), labels] += 3.0
    u = 1.0 / _fit_temperature(logits=logits, labels=labels).temperature
    se = temperature_se(u, logits=logits.numpy(), labels=labels.numpy())
    assert se == pytest.approx(_refit_sd(logits=logits, labels=labels), rel=0.25)

    # the report's interval is 1 / (u -+ z se), and fitted_scale = s / T over it
    r = diagnose(torch.randn(800, 4, generator=g), y, z * 3.0)
    t = r.metrics["fitted_temperature"]
    lo, hi = r.intervals["fitted_temperature"]
    half = z_value() * temperature_se(1 / t, margins=margins.numpy())
    assert lo == pytest.approx(1 / (1 / t + half))
    assert hi == pytest.approx(1 / (1 / t - half))


def _alignment(w: torch.Tensor, means: torch.Tensor) -> float:
    wu = torch.nn.functional.normalize(w.detach().double(), dim=1)
    wu, mu = wu - wu.mean(0), means - means.mean(0)
    return float(torch.nn.functional.cosine_similarity(wu, mu, dim=1).mean().detach())


def test_centroid_alignment_interval_matches_resampling_the_samples() -> None:
    x, y = _blobs(400, 4, 7, d=6, spread=0.6)
    x = torch.nn.functional.normalize(x, dim=1)  # cosine space: the class means of unit rows
    torch.manual_seed(0)
    head = ArcFaceHead(6, 4, m=0.2, s=10.0)
    with torch.no_grad():
        means = torch.stack([x[y == c].mean(0) for c in range(4)])
        head.weight.copy_(means + 0.8 * torch.randn(4, 6))
        logits = head(x)
    r = diagnose(x, y, logits, head=head)
    value = r.metrics["head.centroid_alignment"]
    assert value == pytest.approx(_alignment(head.weight, means.double()), abs=1e-6)
    g = np.random.default_rng(1)
    reps = []
    for _ in range(300):  # resample within each class, recompute the means and the alignment
        m = torch.stack(
            [x[g.choice(np.flatnonzero(y == c), int((y == c).sum()))].mean(0) for c in range(4)]
        )
        reps.append(_alignment(head.weight, m.double()))
    lo, hi = r.intervals["head.centroid_alignment"]
    assert (hi - lo) / 2 == pytest.approx(z_value() * np.std(reps, ddof=1), rel=0.3)


def test_dead_class_interval_only_widens_upwards() -> None:
    x, y = _blobs(400, 4, 8)
    torch.manual_seed(0)
    head = ArcFaceHead(8, 4, m=0.2, s=10.0)
    with torch.no_grad():
        logits = head(x)
        logits[:, 3] = -100.0  # class 3 is never predicted
        logits[:20, 2] = 100.0  # class 2 rarely
        logits[20:, 2] = -100.0
    r = diagnose(x, y, logits, head=head)
    v = r.metrics["head.dead_class_count"]
    assert v == 1.0
    lo, hi = r.intervals["head.dead_class_count"]
    assert lo == v and hi >= v


def test_logit_column_mean_and_std_intervals_match_scipy(reports) -> None:
    g = torch.Generator().manual_seed(9)
    y = torch.randint(0, 3, (500,), generator=g)
    z = torch.randn(500, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5])
    r = diagnose(torch.randn(500, 4, generator=g), y, z)
    zz = z.double().numpy()
    for j in range(3):
        lo, hi = r.intervals[f"logits.col{j}.mean"]
        assert (hi - lo) / 2 == pytest.approx(z_value() * stats.sem(zz[:, j]), rel=1e-6)
        col = zz[y.numpy() == 1, j]
        lo, hi = r.intervals[f"logits.col{j}.class1.std"]
        want = z_value() * np.std(col) / math.sqrt(2 * (len(col) - 1))
        assert (hi - lo) / 2 == pytest.approx(want, rel=1e-6)
        assert r.intervals[f"logits.col{j}.max"] == [r.metrics[f"logits.col{j}.max"]] * 2


def test_leak_f1_interval_matches_a_bootstrap_of_the_samples() -> None:
    g = torch.Generator().manual_seed(4)
    y = torch.randint(0, 2, (1000,), generator=g)
    plain = (2 * y - 1) * 0.8 + torch.randn(1000, generator=g)
    with_labels = plain - (2 * y - 1) * 0.6
    state = _leak_update(with_labels, plain, y)
    metrics, _ = _leak_compute(state)
    r = leak_intervals(Report(metrics=metrics), state)
    key = leak_key("f1", "without")
    lo, hi = r.intervals[key]
    pred = (plain > 0).long().numpy()
    yy = y.numpy()
    rng = np.random.default_rng(0)
    f1s = []
    for _ in range(400):
        i = rng.integers(0, 1000, 1000)
        tp = np.sum((pred[i] == 1) & (yy[i] == 1))
        f1s.append(2 * tp / (np.sum(pred[i] == 1) + np.sum(yy[i] == 1)))
    assert (hi - lo) / 2 == pytest.approx(z_value() * np.std(f1s, ddof=1), rel=0.2)
    assert r.interval_methods[leak_key("accuracy", "with")].startswith("Wilson")


def _brute_ap(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query (rows with a classmate): hit@1, hit@5 and AP@R, ties by lower index."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = u @ u.T
    hits1, hits5, ap, index = [], [], [], []
    for q in range(len(y)):
        r = int((y == y[q]).sum()) - 1
        if r == 0:
            continue
        others = np.array([j for j in range(len(y)) if j != q])
        order = others[np.lexsort((others, -sim[q, others]))]
        rel = y[order] == y[q]
        hits1.append(rel[:1].any())
        hits5.append(rel[:5].any())
        prec = np.cumsum(rel[:r]) / np.arange(1, r + 1)
        ap.append(float((prec * rel[:r]).sum() / r))
        index.append(q)
    return np.array(index), np.stack([hits1, hits5], 1), np.array(ap)


@pytest.mark.parametrize("chunk", [7, 64])
def test_per_query_retrieval_values_equal_brute_force(chunk: int) -> None:
    x, y = _blobs(150, 6, 11, spread=0.8)
    y[0] = 99  # a lone sample: a reference, not a query
    res = knn_retrieval(x, y, ks=(1, 5), chunk_size=chunk, per_query=True)
    index, hits, ap = _brute_ap(x.double().numpy(), y.numpy())
    pq = res.per_query
    np.testing.assert_array_equal(pq.index, index)
    np.testing.assert_array_equal(pq.hits, hits)
    np.testing.assert_allclose(pq.ap, ap, atol=1e-9)
    assert res.map_at_r == pytest.approx(ap.mean())
    # the rows in another order: the same values, at the rows' new positions
    perm = torch.randperm(150, generator=torch.Generator().manual_seed(0))
    again = knn_retrieval(x[perm], y[perm], ks=(1, 5), chunk_size=chunk, per_query=True)
    back = {int(perm[i]): a for i, a in zip(again.per_query.index, again.per_query.ap, strict=True)}
    np.testing.assert_allclose([back[int(i)] for i in index], ap, atol=1e-9)


def test_map_at_r_interval_is_a_delete_a_group_jackknife() -> None:
    x, y = _blobs(300, 5, 12, spread=0.7)
    r = diagnose(x, y, reservoir_size=300, retrieval_rows=300)
    xs, ys = x.double().numpy(), y.numpy()
    index, hits, ap = _brute_ap(xs, ys)
    assert r.metrics["map_at_r"] == pytest.approx(ap.mean(), abs=1e-9)
    # the rows in the report's order (by reservoir key): groups are positions mod 10 there
    from embscope.diagnostics import Diagnoser

    d = Diagnoser(reservoir_size=300)
    d.update(x, y)
    order = torch.argsort(d.reservoir.keys)
    rows, labels = d.reservoir.rows[order].double().numpy(), d.reservoir.labels[order].numpy()
    group = np.arange(300) % 10
    left_out = [_brute_ap(rows[group != g], labels[group != g])[2].mean() for g in range(10)]
    se = math.sqrt(9 / 10 * np.sum((np.array(left_out) - np.mean(left_out)) ** 2))
    lo, hi = r.intervals["map_at_r"]
    assert (hi - lo) / 2 == pytest.approx(z_value() * se, rel=1e-6)
    assert r.interval_methods["map_at_r"].startswith("delete-a-group jackknife")
    k = int(hits[:, 0].sum())
    ci = stats.binomtest(k, len(index)).proportion_ci(method="wilson")
    assert r.intervals["recall_at_1"] == pytest.approx([ci.low, ci.high])
