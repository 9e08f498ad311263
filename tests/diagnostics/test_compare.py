"""One decision rule (diagnostics/compare.py): compare and check_regression agree on any pair,
a metric is worse only beyond its tolerance and its noise, a paired test on the same samples
finds a shift that the two intervals hide, counts are judged as rates, several baselines are
judged by their spread, and reports of other data are refused."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embscope.diagnostics import Report, check_regression, compare, diagnose, recommend
from embscope.diagnostics.compare import (
    GATED_KEYS,
    DifferentData,
    decide,
    not_comparable,
    pairing,
)
from embscope.diagnostics.intervals import z_value


def _report(values: dict, intervals: dict | None = None, **meta) -> Report:
    return Report(
        metrics={k: float(v) for k, v in values.items()},
        intervals=intervals or {},
        interval_level=0.95 if intervals else None,
        meta={"head_kind": None, **meta},
    )


def _binary(n: int, seed: int, accuracy: float = 0.8):
    """Labels, embeddings and one binary logit whose sign is right for ``accuracy`` of them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 6, generator=g) + y[:, None]
    right = torch.rand(n, generator=g) < accuracy
    z = (2 * y - 1) * (0.5 + torch.rand(n, generator=g) * 3)
    z = torch.where(right, z, -z)
    return x, y, z


# ------------------------------------------------------------------------------- the rule


def test_worse_needs_the_tolerance_and_the_noise() -> None:
    z = z_value()
    # 0.05 below, tolerance 0.02, noise 1.96 * sqrt(2) * 0.01 = 0.028: worse
    iv = lambda v: (v - z * 0.01, v + z * 0.01)  # noqa: E731
    d = decide("f1", [0.90], 0.85, tolerance=0.02, a_intervals=[iv(0.90)], b_interval=iv(0.85))
    assert d.outcome == "worse" and d.test == "intervals"
    assert d.noise == pytest.approx(z * math.sqrt(2) * 0.01)
    # within the tolerance: the same, however narrow the intervals
    d = decide(
        "f1", [0.90], 0.885, tolerance=0.02, a_intervals=[(0.9, 0.9)], b_interval=(0.885, 0.885)
    )
    assert d.outcome == "same"
    # beyond the tolerance but within the noise: the same
    wide = lambda v: (v - 0.1, v + 0.1)  # noqa: E731
    d = decide("f1", [0.90], 0.85, tolerance=0.02, a_intervals=[wide(0.9)], b_interval=wide(0.85))
    assert d.outcome == "same" and d.noise > 0.05
    # no intervals: the tolerance alone, as before intervals existed
    assert decide("f1", [0.90], 0.85, tolerance=0.02).test == "tolerance only"
    assert decide("f1", [0.90], 0.85, tolerance=0.02).outcome == "worse"
    # lower is better; nan now after a finite baseline is worse; descriptive is not judged
    assert decide("eer", [0.10], 0.20, tolerance=0.02).outcome == "worse"
    assert decide("eer", [0.10], float("nan"), tolerance=0.02).outcome == "worse"
    assert decide("n", [100], 50, tolerance=0.02).outcome == "descriptive"


@st.composite
def report_pairs(draw):
    names = draw(st.lists(st.sampled_from(GATED_KEYS), min_size=1, max_size=6, unique=True))
    reports = []
    for _ in range(2):
        values, intervals = {}, {}
        for name in names:
            v = draw(st.one_of(st.floats(0, 1), st.just(float("nan"))))
            values[name] = v
            if math.isfinite(v) and draw(st.booleans()):
                lo = draw(st.floats(0, 0.2))
                hi = draw(st.floats(0, 0.2))
                intervals[name] = [max(0.0, v - lo), min(1.0, v + hi)]
        values["n"] = draw(st.integers(1, 10_000))
        reports.append(_report(values, intervals))
    # None: each metric's default, the same in compare() and check_regression()
    tolerance = draw(st.one_of(st.none(), st.floats(0, 0.1), st.just({"*": 0.02, names[0]: 0.0})))
    return reports[0], reports[1], tolerance


@given(report_pairs())
@settings(max_examples=300, deadline=None)
def test_compare_and_the_gate_agree_on_any_pair(pair) -> None:
    a, b, tolerance = pair
    regressions = check_regression(b, a, tolerance=tolerance)
    comparison = compare(a, b, tolerance=tolerance)
    if tolerance is None:  # the defaults, not passed at all
        assert compare(a, b).losses == comparison.losses
        assert check_regression(b, a) == regressions
    assert {r.name for r in regressions} == set(comparison.losses)
    assert [r.name for r in comparison.regressions] == [r.name for r in regressions]
    assert (comparison.verdict == "a_better") == bool(regressions)
    # the other way round: what makes B better is what would make A a regression
    assert {r.name for r in check_regression(a, b, tolerance=tolerance)} == set(
        compare(b, a, tolerance=tolerance).losses
    )


def test_recommend_uses_the_same_comparison() -> None:
    bce = _report({"f1": 0.80, "score_ks": 0.60})
    arc = _report({"f1": 0.70, "score_ks": 0.50, "head.m": 0.2, "head.s": 8, "head.num_classes": 2})
    comparison = compare(bce, arc)
    assert comparison.verdict == "disable_arcface"
    assert "disable_arcface" in [r.action for r in recommend(arc, baseline=bce)]


# ------------------------------------------------------------------------------- paired


def test_a_paired_test_finds_a_shift_the_intervals_hide() -> None:
    n = 2000
    x, y, za = _binary(n, seed=0)
    right = torch.nonzero((za > 0).long() == y)[:, 0]
    flip = right[torch.randperm(len(right), generator=torch.Generator().manual_seed(1))[:30]]
    zb = za.clone()
    zb[flip] = -zb[flip]  # B gets 30 of A's right answers wrong: accuracy -0.015
    ids = [f"img{i}" for i in range(n)]
    a = diagnose(x, y, za, ids=ids, reservoir_size=200)
    b = diagnose(x, y, zb, ids=ids, reservoir_size=200)
    assert a.metrics["accuracy"] - b.metrics["accuracy"] == pytest.approx(0.015)
    paired = compare(a, b, tolerance=0.005).decisions["accuracy"]
    assert paired.test.startswith("paired by id") and paired.outcome == "worse"
    unpaired = compare(replace(a, samples=None), replace(b, samples=None), tolerance=0.005)
    assert unpaired.decisions["accuracy"].test == "intervals"
    assert unpaired.decisions["accuracy"].outcome == "same"
    # the gate sees what compare sees
    assert "accuracy" in {r.name for r in check_regression(b, a, tolerance=0.005)}


def test_pairing_by_id_ignores_the_order_and_needs_the_same_samples() -> None:
    n = 300
    x, y, z = _binary(n, seed=2)
    ids = [f"s{i}" for i in range(n)]
    a = diagnose(x, y, z, ids=ids, reservoir_size=50)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    b = diagnose(x[perm], y[perm], z[perm], ids=[ids[i] for i in perm], reservoir_size=50)
    ia, ib, how = pairing(a, b)
    assert how.startswith("paired by id")
    np.testing.assert_array_equal(a.samples["id_hash"][ia], b.samples["id_hash"][ib])
    # the same model on the same samples in another order: no difference, no noise
    decision = compare(a, b).decisions["accuracy"]
    assert decision.outcome == "same" and decision.se == pytest.approx(0.0)
    other = diagnose(x, y, z, ids=[f"t{i}" for i in range(n)], reservoir_size=50)
    assert pairing(a, other) is None
    # without ids: by position, when the label sequences are equal
    c, d = diagnose(x, y, z, reservoir_size=50), diagnose(x, y, -z, reservoir_size=50)
    assert pairing(c, d)[2].startswith("paired by position")
    assert pairing(c, diagnose(x[perm], y[perm], z[perm], reservoir_size=50)) is None


def test_paired_samples_survive_save_and_load(tmp_path) -> None:
    n = 400
    x, y, z = _binary(n, seed=3)
    ids = [f"s{i}" for i in range(n)]
    a = diagnose(x, y, z, ids=ids, reservoir_size=50)
    a.save(tmp_path / "a")
    loaded = Report.load(tmp_path / "a")
    assert compare(loaded, a).decisions["accuracy"].test.startswith("paired by id")


# ------------------------------------------------------------------------------- what is judged


def test_counts_are_judged_as_rates() -> None:
    base = _report({"confident_error_count": 0, "n": 1000})
    now = _report({"confident_error_count": 1, "n": 1000})
    assert check_regression(now, base, gate=["confident_error_count"]) == []
    many = _report({"confident_error_count": 60, "n": 1000})
    (r,) = check_regression(many, base, gate=["confident_error_count"])
    assert r.decision.rate and r.value == pytest.approx(0.06) and "(rate, count / n)" in str(r)


def test_the_default_gate_judges_quality_not_description() -> None:
    base = _report({"f1": 0.9, "score_fisher": 20.0, "inter_mean": 1.0, "margin_median": 5.0})
    now = _report({"f1": 0.9, "score_fisher": 10.0, "inter_mean": 0.8, "margin_median": 2.0})
    assert check_regression(now, base) == []
    assert {r.name for r in check_regression(now, base, gate=["score_fisher"])} == {"score_fisher"}
    assert compare(base, now).verdict == "no_difference"
    with pytest.raises(ValueError, match="without a better direction"):
        check_regression(now, base, gate=["n"])


def test_per_metric_tolerances() -> None:
    base = _report({"f1": 0.90, "ece": 0.05})
    now = _report({"f1": 0.885, "ece": 0.08})
    assert {r.name for r in check_regression(now, base, tolerance=0.02)} == {"ece"}
    names = {r.name for r in check_regression(now, base, tolerance={"*": 0.05, "f1": 0.01})}
    assert names == {"f1"}


def test_several_baselines_are_judged_by_their_spread() -> None:
    seeds = [_report({"f1": v}) for v in (0.80, 0.86, 0.83)]
    # 0.79 is within the spread of the seeds (sd 0.03): not a regression, though 0.04 below
    assert check_regression(_report({"f1": 0.79}), seeds) == []
    assert check_regression(_report({"f1": 0.79}), seeds[1]) != []  # against one: it is
    (r,) = check_regression(_report({"f1": 0.60}), seeds)
    assert "spread of 3 baselines" in r.decision.test
    comparison = compare(seeds, _report({"f1": 0.60}))
    assert comparison.losses == ["f1"] and comparison.verdict == "a_better"


def test_quantities_of_other_models_are_not_compared() -> None:
    bce = _report({"f1": 0.8, "margin_median": 3.0, "logits.col0.mean": 0.1}, logit_columns=1)
    arc = _report(
        {"f1": 0.8, "margin_median": 9.0, "logits.col0.mean": -4.0, "head.s": 16.0},
        logit_columns=2,
        head_kind="angular",
    )
    assert not_comparable(bce, arc) == {"margin_median", "logits.col0.mean"}
    comparison = compare(bce, arc)
    assert "margin_median" not in comparison.deltas
    assert comparison.omitted == ["logits.col0.mean", "margin_median"]
    assert "Not compared" in comparison.to_markdown()


# ------------------------------------------------------------------------------- the data


def test_reports_of_other_data_are_refused_unless_allowed() -> None:
    x, y, z = _binary(300, seed=4)
    a = diagnose(x, y, z, reservoir_size=50)
    b = diagnose(x[:250], y[:250], z[:250], reservoir_size=50)
    with pytest.raises(DifferentData, match="samples: report has 250, baseline has 300"):
        check_regression(b, a)
    with pytest.raises(DifferentData, match="different data"):
        compare(a, b)
    assert compare(a, b, allow_different_data=True).verdict in (
        "a_better",
        "b_better",
        "no_difference",
    )
    check_regression(b, a, allow_different_data=True)
    # other ids over as many samples, or the same ids with other labels
    ids = [f"s{i}" for i in range(300)]
    c = diagnose(x, y, z, ids=ids, reservoir_size=50)
    d = diagnose(x, y, z, ids=[f"u{i}" for i in range(300)], reservoir_size=50)
    with pytest.raises(DifferentData, match="sample ids differ"):
        compare(c, d)
