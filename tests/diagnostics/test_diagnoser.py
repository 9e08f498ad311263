import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from embscope.diagnostics import (
    Diagnoser,
    diagnose,
    fisher_ratio,
    intra_inter,
    ks_distance,
    probe_margin_leak,
)

from .conftest import blobs, same_metrics

# the vector-based metrics have their own tests; here reservoir_size=0 keeps the property
# tests fast except where the reservoir is the subject
FAST = {"reservoir_size": 0}


def _logits(x, y, k, seed=0):
    g = np.random.default_rng(seed)
    z = g.normal(size=(len(y), k)) * 0.7
    z[np.arange(len(y)), y] += 1.5
    return z.astype(np.float32)


def _run(batches, **opts):
    d = Diagnoser(**opts)
    for b in batches:
        d.update(*b)
    return d


def test_one_shot_equals_plain_functions(data):
    x, y = data
    r = diagnose(x, y, **FAST)
    assert r.metrics["fisher_ratio"] == pytest.approx(fisher_ratio(x, y), rel=1e-6)
    g = intra_inter(x, y)
    assert r.metrics["intra_mean"] == pytest.approx(g.intra_mean, rel=1e-6)
    assert r.metrics["n"] == len(y) and r.metrics["num_classes"] == 3


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(1, 119), max_size=6),
    seed=st.integers(0, 10_000),
    with_logits=st.booleans(),
)
def test_batching_merging_and_order_do_not_change_the_report(cuts, seed, with_logits):
    x, y = blobs(n=120, d=5, k=3, seed=7)
    z = _logits(x, y, 3) if with_logits else None
    ids = [f"s{i}" for i in range(120)]
    one = diagnose(x, y, z, ids=ids, reservoir_size=200)
    perm = np.random.default_rng(seed).permutation(120)
    xp, yp, zp = x[perm], y[perm], None if z is None else z[perm]
    idp = [ids[i] for i in perm]
    bounds = [0, *sorted(set(cuts)), 120]
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        d = Diagnoser(reservoir_size=200)
        d.update(xp[a:b], yp[a:b], None if zp is None else zp[a:b], idp[a:b])
        parts.append(d)
    order = np.random.default_rng(seed + 1).permutation(len(parts))
    merged = Diagnoser(reservoir_size=200)
    for i in order:
        merged.merge(parts[i])
    rep = merged.compute()
    same_metrics(one.metrics, rep.metrics, rel=1e-5, abs_=1e-9)  # float32 batch sums
    assert one.sections["hardest"] == rep.sections["hardest"]


def test_relabelling_classes_changes_nothing(data):
    x, y = data
    base = diagnose(x, y, **FAST).metrics
    other = diagnose(x, np.array([50, -3, 9])[y], **FAST).metrics
    same_metrics(base, other)


def test_relabelling_with_logits_permutes_columns_too(data):
    x, y = data
    z = _logits(x, y, 3)
    perm = np.array([2, 0, 1])  # class c becomes perm[c]; its logit column moves with it
    z2 = np.empty_like(z)
    z2[:, perm] = z
    a = diagnose(x, y, z, **FAST).metrics
    b = diagnose(x, perm[y], z2, **FAST).metrics
    keys = [k for k in a if not k.startswith("logits.")]
    same_metrics({k: a[k] for k in keys}, {k: b[k] for k in keys})
    assert b["logits.col2.class2.mean"] == pytest.approx(a["logits.col0.class0.mean"])


def test_nonfinite_rows_are_counted_and_excluded(data):
    x, y = data
    bad = x.copy()
    bad[3, 1] = np.nan
    bad[10, 0] = np.inf
    z = _logits(x, y, 3)
    z[20, 2] = np.nan
    r = diagnose(bad, y, z, **FAST)
    keep = np.ones(len(y), bool)
    keep[[3, 10, 20]] = False
    clean = diagnose(x[keep], y[keep], z[keep], **FAST)
    assert r.metrics["nonfinite_count"] == 3
    same_metrics(
        {k: v for k, v in r.metrics.items() if k != "nonfinite_count"},
        {k: v for k, v in clean.metrics.items() if k != "nonfinite_count"},
    )


def test_edge_cases_never_crash():
    x, y = blobs(n=50, d=4, k=2)
    one = diagnose(x, np.zeros(50, int), **FAST)
    assert math.isnan(one.metrics["fisher_ratio"]) and one.reasons["fisher_ratio"]
    single = diagnose(x, np.r_[np.zeros(49, int), 1], **FAST)  # a class with one sample
    assert math.isfinite(single.metrics["fisher_ratio"])
    d1 = diagnose(x[:, :1], y, space="euclidean", **FAST)  # D = 1
    assert math.isfinite(d1.metrics["fisher_ratio"])
    xb, yb = blobs(n=3000, d=16, k=1000, seed=2)
    big = diagnose(xb, yb, _logits(xb, yb, 1000), reservoir_size=0)
    assert big.metrics["num_classes"] == len(np.unique(yb))
    assert "logits.col0.mean" not in big.metrics  # column keys only for narrow logits
    binary = diagnose(x, y, np.random.default_rng(0).normal(size=50), **FAST)
    assert 0 <= binary.metrics["score_ks"] <= 1
    with pytest.raises(ValueError, match=r"^no usable rows: all 4 rows were dropped \(4 with NaN"):
        diagnose(np.full((4, 3), np.nan), [0, 1, 0, 1], **FAST)


def test_binary_score_ks_matches_scipy():
    from scipy.stats import ks_2samp

    x, y = blobs(n=400, d=6, k=2, seed=9)
    z = np.random.default_rng(1).normal(size=400) + y
    r = diagnose(x, y, z, **FAST)
    p = 1 / (1 + np.exp(-z))
    assert r.metrics["score_ks"] == pytest.approx(
        ks_2samp(p[y == 1], p[y == 0]).statistic, abs=1e-6
    )
    assert r.metrics["label_positive_rate"] == pytest.approx(y.mean())
    assert r.metrics["pred_positive_rate"] == pytest.approx((z >= 0).mean())


def test_multiclass_one_vs_rest_ks_is_close_to_exact():
    x, y = blobs(n=600, d=6, k=4, seed=4)
    z = _logits(x, y, 4, seed=2)
    r = diagnose(x, y, z, **FAST)
    p = torch.softmax(torch.as_tensor(z, dtype=torch.float64), 1).numpy()
    exact = np.mean([ks_distance(p[y == c, c], p[y != c, c]) for c in range(4)])
    # binned at 1/1000 of probability: the binned statistic can only miss by bin mass
    assert r.metrics["score_ks"] == pytest.approx(exact, abs=0.02)


def test_seed_collapse_is_reported():
    """Seed 000: col0 mean -4.06, col1 mean 0.443 for both classes; every sample positive."""
    g = np.random.default_rng(0)
    n = 2000
    y = (g.random(n) < 0.3).astype(int)
    z = np.stack([g.normal(-4.06, 0.5, n), g.normal(0.443, 0.5, n)], 1)
    x = g.normal(size=(n, 8)) + y[:, None] * 0.2
    r = diagnose(x, y, z, **FAST)
    assert r.metrics["pred_positive_rate"] > 0.99
    assert r.metrics["logits.col0.mean"] == pytest.approx(-4.06, abs=0.05)
    assert r.metrics["prob_mean"] > 0.95
    assert r.metrics["f1"] < 0.5
    top = r.recommendations[0]
    assert top.severity in ("error", "warning")
    assert "collapsed" in top.reason
    assert "pred_positive_rate" in top.evidence


class LeakyArcHead(nn.Module):
    """The seed's bug, written independently of embscope's heads: margin whenever labels come."""

    def __init__(self, d, c, m=0.2, s=16.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c, d))
        self.m, self.s = m, s

    def forward(self, x, labels=None):
        cos = nn.functional.normalize(x) @ nn.functional.normalize(self.weight).T
        if labels is not None:
            theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
            onehot = nn.functional.one_hot(labels, cos.shape[1]).bool()
            cos = torch.where(onehot, torch.cos(theta + self.m), cos)
        return self.s * cos


class CorrectArcHead(LeakyArcHead):
    def forward(self, x, labels=None):
        return super().forward(x, labels if self.training else None)


def test_margin_leak_probe_and_fix_eval_margin():
    x, y = blobs(n=64, d=8, k=2)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    leaky, good = LeakyArcHead(8, 2), CorrectArcHead(8, 2)
    good.train()
    assert probe_margin_leak(leaky, xt, yt) is True
    assert probe_margin_leak(good, xt, yt) is False
    assert good.training  # the flag is restored
    r = diagnose(x, y, leaky(xt).detach(), head=leaky, margin_leak=True, **FAST)
    assert r.recommendations[0].action == "fix_eval_margin"
    assert r.recommendations[0].severity == "error"


def test_two_class_arcface_with_large_scale_gets_decrease_scale():
    """s = 64 on overlapping classes saturates the softmax far beyond what the overlap supports:
    decrease_scale (and calibrate_temperature); on separated classes saturation is right."""
    from embscope.losses import ArcFaceHead

    def report(sep):
        torch.manual_seed(0)
        x, y = blobs(n=400, d=8, k=2, sep=sep)
        head = ArcFaceHead(8, 2, m=0.2, s=64.0)
        with torch.no_grad():  # weights at the class means: a trained-looking head
            xs = nn.functional.normalize(torch.as_tensor(x))
            head.weight.copy_(torch.stack([xs[y == c].mean(0) for c in (0, 1)]))
        head.eval()
        z = head(torch.as_tensor(x)).detach()
        return diagnose(x, y, z, head=head, **FAST)

    r = report(sep=0.7)
    rec = {a.action: a for a in r.recommendations}
    assert "decrease_scale" in rec and "calibrate_temperature" in rec
    assert 1 < rec["decrease_scale"].value < 32
    assert r.metrics["head.s"] == 64.0 and r.metrics["head.m"] == pytest.approx(0.2)
    assert r.metrics["head.looks_untrained"] == 0.0
    separated = report(sep=2.0)
    assert separated.metrics["accuracy"] == 1.0
    assert "decrease_scale" not in {a.action for a in separated.recommendations}


def test_untrained_head_is_flagged():
    from embscope.losses import ArcFaceHead

    torch.manual_seed(1)
    x, y = blobs(n=400, d=256, k=2, sep=0.5)
    head = ArcFaceHead(256, 2, m=0.2, s=8.0)
    r = diagnose(x, y, head(torch.as_tensor(x)).detach(), head=head, **FAST)
    assert r.metrics["head.looks_untrained"] == 1.0
    assert r.recommendations[0].action == "check_head"


def test_angles_match_brute_force():
    from embscope.losses import CosFaceHead

    torch.manual_seed(2)
    x, y = blobs(n=50, d=6, k=3)
    head = CosFaceHead(6, 3)
    r = diagnose(x, y, head=head, **FAST)
    w = head.weight.detach().double().numpy()
    xs = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = xs @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    true = np.degrees(np.arccos(cos[np.arange(50), y]))
    cos[np.arange(50), y] = -2
    other = np.degrees(np.arccos(cos.max(1)))
    assert r.metrics["angle_true_mean"] == pytest.approx(true.mean(), rel=1e-5)
    assert r.metrics["angle_nearest_other_mean"] == pytest.approx(other.mean(), rel=1e-5)
    assert math.isnan(r.metrics["fallback_fraction"])  # cosine margin: no fallback region


def test_state_holds_no_n_by_d_array():
    n, d = 100_000, 32
    diag = Diagnoser(reservoir_size=1000)
    g = torch.Generator().manual_seed(0)
    for _ in range(n // 10_000):
        x = torch.randn(10_000, d, generator=g)
        y = torch.randint(0, 5, (10_000,), generator=g)
        diag.update(x, y, torch.randn(10_000, 5, generator=g))

    def tensors(obj, seen=None):
        seen = seen if seen is not None else set()
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, np.ndarray):
            yield torch.from_numpy(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from tensors(v, seen)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from tensors(v, seen)
        elif hasattr(obj, "__dict__"):
            yield from tensors(vars(obj), seen)

    sizes = [t.numel() for t in tensors(diag)]
    assert max(sizes) < n * d / 10
    assert sum(sizes) < 30 * n  # per-sample scalars and fixed-size state only


def test_inconsistent_batches_are_refused():
    d = Diagnoser(**FAST)
    d.update(np.zeros((2, 3)) + 1, [0, 1], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="logits must keep one shape"):
        d.update(np.ones((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="D = 3"):
        d.update(np.ones((2, 4)), [0, 1], np.zeros((2, 2)))


def test_wide_logits_are_scored_on_the_reservoir():
    x, y = blobs(n=400, d=6, k=20, seed=8)
    z = _logits(x, y, 20, seed=3)
    r = diagnose(x, y, z, reservoir_size=1000)
    p = torch.softmax(torch.as_tensor(z, dtype=torch.float64), 1).numpy()
    present = np.unique(y)
    exact = np.mean([ks_distance(p[y == c, c], p[y != c, c]) for c in present])
    assert r.metrics["score_ks"] == pytest.approx(exact, abs=0.02)
    assert r.sampled["score_ks"]["exact"] is True
    off = diagnose(x, y, z, reservoir_size=0)
    assert math.isnan(off.metrics["score_ks"]) and "reservoir" in off.reasons["score_ks"]


def test_vector_metrics_in_the_report_match_brute_force():
    from scipy.stats import ks_2samp

    x, y = blobs(n=300, d=6, k=3, seed=11)
    r = diagnose(x, y)  # 300 rows: the reservoir, pair and retrieval subsets hold every sample
    xs = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xs @ xs.T
    iu = np.triu_indices(300, 1)
    same = (y[:, None] == y[None, :])[iu]
    gen, imp = sim[iu][same], sim[iu][~same]
    assert r.metrics["pair_ks"] == pytest.approx(ks_2samp(gen, imp).statistic, abs=1e-5)
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.argmax(1)
    assert r.metrics["recall_at_1"] == pytest.approx(np.mean(y[nearest] == y))
    assert r.sampled["pair_ks"]["exact"] and r.sampled["recall_at_1"]["exact"]
    assert r.sampled["recall_at_1"]["sample_size"] == 300
