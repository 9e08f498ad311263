"""diagnose_views / ViewsDiagnoser: each view's metrics are a single-view diagnose(), the fusion
gain their difference, the attention statistics numpy's, the agreement brute force's, and
streaming (any batching, any merge order) equals one shot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score, roc_curve

from embscope.diagnostics import InputError, diagnose
from embscope.diagnostics import registry as R
from embscope.diagnostics import views_metrics as VM
from embscope.diagnostics.views import ViewsDiagnoser, diagnose_views
from embscope.diagnostics.views_report import FUSION_KEYS

from .conftest import same_metrics

N = 120


def _views(n=N, k=4, seed=0, with_logits=True):
    g = np.random.default_rng(seed)
    y = g.integers(0, k, n)
    centres = g.normal(size=(k, 6)) * 1.5
    left = (centres[y] + g.normal(size=(n, 6))).astype(np.float32)
    right = (centres[y][:, ::-1] + 1.6 * g.normal(size=(n, 6))).astype(np.float32)
    w = g.dirichlet([1.0, 1.0], size=n)
    w[:5] = [0.97, 0.03]  # a few degenerate rows
    fused = (w[:, :1] * left + w[:, 1:] * right).astype(np.float32)
    z = (g.normal(size=(n, k)) + 2.5 * np.eye(k)[y]).astype(np.float32) if with_logits else None
    return {"left": left, "right": right, "fused": fused}, y, z, w


@pytest.fixture(scope="module")
def case():
    views, y, z, w = _views()
    return views, y, z, w, diagnose_views(views, y, logits=z, attention=w)


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# Each view is a single-view diagnose(); the fusion gain is their difference.
# ----------------------------------------------------------------------------------------------


def test_each_view_equals_a_single_view_diagnose(case):
    views, y, z, _, report = case
    for name, x in views.items():
        single = diagnose(x, y, z if name == "fused" else None)
        prefix = f"views.{name}."
        mine = {k[len(prefix) :]: v for k, v in report.metrics.items() if k.startswith(prefix)}
        same_metrics(mine, single.metrics, rel=1e-12, abs_=0)
        for key, interval in single.intervals.items():
            assert report.intervals[prefix + key] == pytest.approx(interval, rel=1e-12)
    # the report's own (unprefixed) metrics are the fused view's, as for any model
    fused = diagnose(views["fused"], y, z)
    top = {k: v for k, v in report.metrics.items() if "." not in k or k.startswith("logits.")}
    same_metrics(top, {k: v for k, v in fused.metrics.items() if k in top}, rel=1e-12, abs_=0)
    assert set(fused.metrics) <= set(report.metrics)


def test_fusion_gain_is_fused_minus_the_best_single_view(case):
    _, _, _, _, report = case
    m = report.metrics
    for key in FUSION_KEYS:
        best = (max if R.direction(key) == "higher" else min)(
            m[f"views.left.{key}"], m[f"views.right.{key}"]
        )
        assert m[f"fusion_gain.{key}"] == pytest.approx(m[f"views.fused.{key}"] - best, abs=1e-15)
        low, high = report.intervals[f"fusion_gain.{key}"]
        assert low <= m[f"fusion_gain.{key}"] <= high and high > low
        assert "paired" in report.interval_methods[f"fusion_gain.{key}"]
        verdict = report.sections["views"]["fusion_gain"][key]
        assert verdict["best"] == best


def test_every_key_has_a_record_and_directions_follow_the_metric(case):
    report = case[4]
    for key in report.metrics:
        assert R.info(key) is not None, key
    assert R.direction("views.left.eer") == "lower" == R.direction("fusion_gain.eer")
    assert R.direction("views.right.recall_at_1") == "higher"
    assert R.direction("attention.balance_gap") == "lower"
    assert R.direction("agreement.left.right.spearman") is None
    assert not R.info("views.left.eer").gated and R.info("eer").gated


# ----------------------------------------------------------------------------------------------
# Attention: numpy on the weights.
# ----------------------------------------------------------------------------------------------


def test_attention_statistics_equal_numpy(case):
    _, y, _, w, report = case
    m = report.metrics
    for i, name in enumerate(("left", "right")):
        assert m[f"attention.{name}.mean"] == pytest.approx(np.mean(w[:, i]), rel=1e-12)
        assert m[f"attention.{name}.std"] == pytest.approx(np.std(w[:, i]), rel=1e-9)
        for c in np.unique(y):
            assert m[f"attention.{name}.class{c}.mean"] == pytest.approx(
                np.mean(w[y == c, i]), rel=1e-12
            )
    assert m["attention.balance_gap"] == pytest.approx(np.abs(w.mean(0) - 0.5).sum(), rel=1e-12)
    assert m["attention.degenerate_fraction"] == pytest.approx(np.mean(w.max(1) > 0.9))
    hist = report.sections["views"]["attention"]["hist"]["left"]
    assert hist == np.histogram(w[:, 0], bins=20, range=(0, 1))[0].tolist()
    # the standard error of the mean weight is numpy's over n
    lo, hi = report.intervals["attention.left.mean"]
    se = np.std(w[:, 0], ddof=1) / math.sqrt(len(w))
    assert (hi - lo) / 2 == pytest.approx(1.959964 * se, rel=1e-4)


def test_attention_interval_of_the_std_covers_its_bootstrap():
    g = np.random.default_rng(3)
    w1 = g.beta(2, 5, size=4000)
    w = np.stack([w1, 1 - w1], 1)
    state = VM.attention_update(torch.from_numpy(w), torch.zeros(4000, dtype=torch.int64))
    a = VM.attention_compute(state)
    boots = [np.std(w1[g.integers(0, 4000, 4000)]) for _ in range(300)]
    assert a["se_std"][0] == pytest.approx(np.std(boots), rel=0.2)


# ----------------------------------------------------------------------------------------------
# Agreement: brute force, scipy.
# ----------------------------------------------------------------------------------------------


def test_agreement_equals_brute_force(case):
    views, y, _, _, report = case
    a, b = _unit(views["left"]), _unit(views["right"])
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -np.inf)
    np.fill_diagonal(sb, -np.inf)
    nna, nnb = sa.argmax(1), sb.argmax(1)
    top_a = [set(np.argsort(-r, kind="stable")[:10]) for r in sa]
    top_b = [set(np.argsort(-r, kind="stable")[:10]) for r in sb]
    right_a, right_b = y[nna] == y, y[nnb] == y
    m = report.metrics
    p = "agreement.left.right."
    assert m[p + "nn_agreement"] == pytest.approx(np.mean(nna == nnb))
    assert m[p + "knn_overlap"] == pytest.approx(
        np.mean([len(s & t) / 10 for s, t in zip(top_a, top_b, strict=True)])
    )
    assert m[p + "only_first_right"] == pytest.approx(np.mean(right_a & ~right_b))
    assert m[p + "only_second_right"] == pytest.approx(np.mean(right_b & ~right_a))
    assert m[p + "complementarity"] == pytest.approx(np.mean(right_a != right_b))
    i, j = np.triu_indices(N, 1)
    rho = spearmanr((a @ a.T)[i, j], (b @ b.T)[i, j]).statistic
    assert m[p + "spearman"] == pytest.approx(rho, rel=1e-9)
    for key in ("nn_agreement", "knn_overlap", "spearman", "complementarity"):
        low, high = report.intervals[p + key]
        assert low <= m[p + key] <= high


def test_the_bootstrap_metrics_equal_sklearn_at_unit_weights(case):
    views, y, _, _, report = case
    x = torch.from_numpy(_unit(views["right"]))
    reps = VM.pair_replicates(x, y, np.ones((1, N)))
    i, j = np.triu_indices(N, 1)
    s = (x @ x.T).numpy()[i, j]
    gen = y[i] == y[j]
    assert reps["roc_auc"][0] == pytest.approx(roc_auc_score(gen, s), rel=1e-9)
    fpr, tpr, _ = roc_curve(gen, s)
    assert reps["pair_ks"][0] == pytest.approx(np.max(tpr - fpr), rel=1e-9)
    assert reps["eer"][0] == pytest.approx(report.metrics["views.right.eer"], abs=2e-3)
    q = VM.retrieval_per_query(x, torch.from_numpy(y))
    assert q["recall_at_1"].mean() == pytest.approx(report.metrics["views.right.recall_at_1"])
    assert q["map_at_r"].mean() == pytest.approx(report.metrics["views.right.map_at_r"])


# ----------------------------------------------------------------------------------------------
# Streaming equals one shot.
# ----------------------------------------------------------------------------------------------


def _feed(d, views, y, z, w, rows, ids=None):
    d.update(
        {k: v[rows] for k, v in views.items()},
        y[rows],
        None if z is None else z[rows],
        None if w is None else w[rows],
        None if ids is None else [ids[i] for i in rows],
    )


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # each example costs seconds
)
@given(
    cuts=st.lists(st.integers(1, 89), min_size=1, max_size=4, unique=True),
    shards=st.integers(1, 3),
    order=st.permutations(range(3)),
)
def test_streaming_and_merging_equal_one_shot(cuts, shards, order):
    views, y, z, w = _views(n=90, seed=5)
    one = diagnose_views(views, y, logits=z, attention=w, joint_rows=60, reservoir_size=80)
    edges = [0, *sorted(cuts), 90]
    parts = [
        ViewsDiagnoser(joint_rows=60, reservoir_size=80) for _ in range(shards)
    ]  # batches dealt round-robin to shards, merged in the drawn order
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        _feed(parts[b % shards], views, y, z, w, np.arange(lo, hi))
    merged = ViewsDiagnoser(joint_rows=60, reservoir_size=80)
    for s in order:
        if s < shards:
            merged.merge(parts[s])
    streamed = merged.compute()
    # the views' own metrics as a Diagnoser's streaming guarantees them (float64 sums in
    # another order), the rest to rounding
    same_metrics(one.metrics, streamed.metrics)
    mine = [k for k in one.metrics if k.startswith(("agreement.", "fusion_gain.", "attention."))]
    same_metrics(
        {k: one.metrics[k] for k in mine}, {k: streamed.metrics[k] for k in mine}, rel=1e-9
    )
    for key in one.intervals:
        if key.startswith(("agreement.", "fusion_gain.", "attention.")):
            assert streamed.intervals[key] == pytest.approx(one.intervals[key], rel=1e-9), key


def test_row_order_and_label_values_do_not_matter():
    views, y, z, w = _views(n=100, seed=7, with_logits=False)
    one = diagnose_views(views, y, attention=w)
    perm = np.random.default_rng(1).permutation(100)
    shuffled = diagnose_views(
        {k: v[perm] for k, v in views.items()}, (y * 7 - 3)[perm], attention=w[perm]
    )
    for key, value in one.metrics.items():
        if key.startswith(("agreement.", "fusion_gain.", "attention.")) and "class" not in key:
            assert shuffled.metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    for c in np.unique(y):
        assert shuffled.metrics[f"attention.left.class{7 * c - 3}.mean"] == pytest.approx(
            one.metrics[f"attention.left.class{c}.mean"], rel=1e-12
        )


# ----------------------------------------------------------------------------------------------
# Without a fused view; bad input.
# ----------------------------------------------------------------------------------------------


def test_views_without_a_fused_view_have_agreement_but_no_gain():
    views, y, _, _ = _views(n=80, seed=2, with_logits=False)
    report = diagnose_views({"a": views["left"], "b": views["right"]}, y)
    assert not any(k.startswith("fusion_gain.") for k in report.metrics)
    assert "agreement.a.b.spearman" in report.metrics
    assert report.metrics["n"] == 80 and "eer" not in report.metrics


@pytest.mark.parametrize(
    "change, argument",
    [
        (lambda v, y, z, w: ({**v, "left": v["left"][:-1]}, y, z, w), "views"),
        (lambda v, y, z, w: (v, y, z, w * 2), "attention"),
        (lambda v, y, z, w: (v, y, z, w[:, :1]), "attention"),
        (lambda v, y, z, w: ({"left": v["left"], "right": v["right"]}, y, z, w), "logits"),
        (lambda v, y, z, w: ({"le.ft": v["left"], "right": v["right"]}, y, None, w), "views"),
        (lambda v, y, z, w: ({"left": v["left"]}, y, None, None), "views"),
    ],
)
def test_bad_input_is_one_error_naming_the_argument(change, argument):
    views, y, z, w = _views(n=40, seed=4)
    v2, y2, z2, w2 = change(views, y, z, w)
    with pytest.raises(InputError) as error:
        diagnose_views(v2, y2, logits=z2, attention=w2)
    assert error.value.argument == argument
    assert "\n" not in str(error.value)


def test_a_refused_batch_leaves_the_state_as_it_was():
    views, y, z, w = _views(n=60, seed=6)
    d = ViewsDiagnoser()
    _feed(d, views, y, z, w, np.arange(30))
    before = d.compute().metrics
    bad = {**{k: v[30:] for k, v in views.items()}}
    bad["right"] = bad["right"][:, :3]  # another D than before, for one view only
    with pytest.raises(InputError):
        d.update(bad, y[30:], z[30:], w[30:])
    with pytest.raises(ValueError):  # logits of another width, for the fused view
        d.update({k: v[30:] for k, v in views.items()}, y[30:], z[30:, :2], w[30:])
    same_metrics(before, d.compute().metrics, rel=0, abs_=0)


# ----------------------------------------------------------------------------------------------
# Sync across gloo processes equals one process that saw every shard.
# ----------------------------------------------------------------------------------------------


def _sync_worker(rank, world, port, out):
    import json
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        views, y, z, w = _views(n=90, seed=11)
        d = ViewsDiagnoser(joint_rows=50, reservoir_size=70)
        shard = np.arange(0, 90)[np.arange(90) % (world - 1) == rank] if rank < world - 1 else []
        for lo in range(0, len(shard), 16):  # the last rank sees no batch at all
            _feed(d, views, y, z, w, shard[lo : lo + 16])
        report = d.compute()  # syncs a copy
        with open(os.path.join(out, f"{rank}.json"), "w") as f:
            f.write(json.dumps({"metrics": report.to_dict()["metrics"], "n": len(shard)}))
    finally:
        dist.destroy_process_group()


def test_sync_equals_one_process_fed_in_rank_order(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world = 3
    mp.start_processes(
        _sync_worker, args=(world, port, str(tmp_path)), nprocs=world, start_method="spawn"
    )
    views, y, z, w = _views(n=90, seed=11)
    one = ViewsDiagnoser(joint_rows=50, reservoir_size=70)
    for rank in range(world - 1):
        shard = np.arange(90)[np.arange(90) % (world - 1) == rank]
        _feed(one, views, y, z, w, shard)
    expected = one.compute().to_dict()["metrics"]
    for rank in range(world):
        got = json.loads((tmp_path / f"{rank}.json").read_text())["metrics"]
        same_metrics(
            {k: float(v) for k, v in expected.items()}, {k: float(v) for k, v in got.items()}
        )
