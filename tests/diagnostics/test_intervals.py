"""Intervals on every scalar metric (diagnostics/intervals.py): the Wilson interval against
scipy, every metric either with an interval holding its value or a stated reason, the bootstrap
reproducible with its seed, the intervals' widths against the spread of the metric over
independent samples, and the report's files (report.json keys, samples.npz) round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from embscope.diagnostics import Report, diagnose
from embscope.diagnostics.intervals import LEVEL, metric_range, wilson, z_value


def _data(n: int, k: int, seed: int, d: int = 8, shift: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    centres = torch.randn(k, d, generator=g) * shift
    x = centres[y] + torch.randn(n, d, generator=g)
    cols = 2 if k == 2 else k
    z = torch.randn(n, cols, generator=g)
    z[torch.arange(n), y] += 1.5
    return x, y, z


@given(n=st.integers(1, 10_000), frac=st.floats(0, 1), level=st.sampled_from([0.8, 0.95, 0.99]))
@settings(max_examples=200, deadline=None)
def test_wilson_equals_scipy_and_the_hand_formula(n: int, frac: float, level: float) -> None:
    k = round(frac * n)
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    lo, hi = wilson(k, n, level)
    assert lo == pytest.approx(ci.low, abs=1e-12)
    assert hi == pytest.approx(ci.high, abs=1e-12)
    z = z_value(level)
    centre = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
    assert lo == pytest.approx(max(0.0, centre - half), abs=1e-12)
    assert lo <= k / n <= hi


def test_wilson_of_nothing_is_undefined() -> None:
    assert all(math.isnan(v) for v in wilson(0, 0))


@pytest.mark.parametrize("k", [2, 5])
def test_every_metric_has_an_interval_or_says_why(k: int) -> None:
    x, y, z = _data(600, k, seed=k)
    r = diagnose(x, y, z, reservoir_size=400, pair_rows=300, retrieval_rows=300)
    assert r.interval_level == LEVEL
    for name, value in r.metrics.items():
        method = r.interval_methods[name]
        if name in r.intervals:
            lo, hi = r.intervals[name]
            assert lo <= value <= hi, name
            bounds = metric_range(name)
            assert bounds[0] <= lo and hi <= bounds[1], name
            assert not method.startswith("none"), name
        else:
            assert method.startswith("none"), (name, method)
    undescribed = {
        n for n in r.metrics if n not in r.intervals and "descriptive" not in r.interval_methods[n]
    }
    # without an interval and not descriptive: only flags, head facts and undefined values
    assert all(n.startswith("head.") or not math.isfinite(r.metrics[n]) for n in undescribed), (
        undescribed
    )
    for name in ("accuracy", "macro_f1", "score_ks", "ece", "brier", "nll", "fisher_ratio"):
        assert name in r.intervals
    assert r.interval_methods["accuracy"].startswith("Wilson")
    assert "sampl" in r.interval_methods["pair_ks"]  # on 300 of the 600 rows: it says so
    assert "scaled to N = 600" in r.interval_methods["fisher_ratio"]  # 400 reservoir rows


@given(
    n=st.integers(20, 300),
    k=st.integers(2, 4),
    seed=st.integers(0, 2**16),
    logits=st.booleans(),
)
@settings(max_examples=25, deadline=None)
def test_intervals_hold_their_value(n: int, k: int, seed: int, logits: bool) -> None:
    x, y, z = _data(n, k, seed)
    r = diagnose(x, y, z if logits else None, reservoir_size=64, pair_rows=40, retrieval_rows=40)
    for name, (lo, hi) in r.intervals.items():
        assert lo <= r.metrics[name] <= hi, name
        assert math.isfinite(lo) and math.isfinite(hi), name


def test_the_bootstrap_is_reproducible_and_follows_the_seed() -> None:
    x, y, z = _data(500, 2, seed=3)
    a = diagnose(x, y, z, reservoir_size=300)
    b = diagnose(x, y, z, reservoir_size=300)
    assert a.intervals == b.intervals
    other = diagnose(x, y, z, reservoir_size=300, seed=1)
    assert other.intervals["f1"] != a.intervals["f1"]  # another bootstrap draw
    assert other.intervals["accuracy"] == a.intervals["accuracy"]  # Wilson: no draw


def test_interval_widths_match_the_spread_over_independent_samples() -> None:
    """The standard error an interval implies against the standard deviation of the metric
    over 40 independent validation sets of the same population (a factor of 1.5 either way)."""
    names = (
        "accuracy",
        "f1",
        "score_ks",
        "ece",
        "margin_median",
        "fisher_ratio",
        "map_at_r",
        "fitted_temperature",
        "nll_at_fitted_temperature",
        "logits.col0.mean",
    )
    values = {k: [] for k in names}
    implied = {k: [] for k in names}
    z = z_value()
    for seed in range(40):
        g = torch.Generator().manual_seed(1000 + seed)
        n = 800
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.randn(n, 6, generator=g) + y[:, None] * 0.7
        logits = torch.randn(n, generator=g) + (2 * y - 1) * 1.2
        r = diagnose(x, y, logits, reservoir_size=300, pair_rows=50, retrieval_rows=300)
        for k in names:
            values[k].append(r.metrics[k])
            lo, hi = r.intervals[k]
            implied[k].append((hi - lo) / (2 * z))
    for k in names:
        ratio = np.mean(implied[k]) / np.std(values[k], ddof=1)
        assert 1 / 1.5 < ratio < 1.5, (k, ratio)


def test_report_json_has_the_intervals_and_old_reports_still_load() -> None:
    x, y, z = _data(200, 3, seed=4)
    r = diagnose(x, y, z, reservoir_size=100)
    data = json.loads(r.to_json())
    assert data["schema"] == "embscope.report/1"
    assert data["interval_level"] == 0.95
    assert data["intervals"]["accuracy"] == pytest.approx(list(r.intervals["accuracy"]))
    assert data["interval_methods"]["n"].startswith("exact")
    assert data["intervals"]["n"] == [200.0, 200.0]
    back = Report.from_json(r.to_json())
    assert back.intervals.keys() == r.intervals.keys()
    for name, (lo, hi) in r.intervals.items():
        assert back.intervals[name] == pytest.approx([lo, hi])
    for key in ("intervals", "interval_level", "interval_methods"):
        del data[key]
    old = Report.from_dict(data)
    assert old.intervals == {} and old.interval_level is None
    assert "intervals" not in old.to_dict()


def test_to_frame_lists_the_interval() -> None:
    x, y, z = _data(200, 2, seed=5)
    frame = diagnose(x, y, z, reservoir_size=100).to_frame()
    assert frame.loc["accuracy", "low"] <= frame.loc["accuracy", "value"]
    assert frame.loc["accuracy", "value"] <= frame.loc["accuracy", "high"]
    assert frame.loc["n", "low"] == frame.loc["n", "high"] == 200
    assert frame.loc["n", "interval"].startswith("exact")


def test_markdown_and_html_show_the_intervals() -> None:
    x, y, z = _data(200, 2, seed=6)
    r = diagnose(x, y, z, reservoir_size=100)
    md = r.to_markdown()
    assert "| metric | value | 95% interval |" in md
    lo, hi = r.intervals["accuracy"]
    assert f"[{lo:.4g}, {hi:.4g}]" in md
    assert "95% interval" in r.to_html(plots={})


def test_samples_are_saved_next_to_the_report_and_read_back(tmp_path) -> None:
    x, y, z = _data(150, 2, seed=7)
    ids = [f"img{i}.png" for i in range(150)]
    r = diagnose(x, y, z, ids=ids, reservoir_size=100)
    assert set(r.samples) == {"label", "pred", "margin", "top_prob", "gray", "id_hash"}
    r.save(tmp_path / "out")
    assert (tmp_path / "out" / "samples.npz").is_file()
    back = Report.load(tmp_path / "out")
    for key, value in r.samples.items():
        np.testing.assert_array_equal(back.samples[key], value)
    assert back.meta["data"] == r.meta["data"]
    assert r.meta["data"]["n"] == 150 and "ids_sha256" in r.meta["data"]
    # a samples.npz that does not fit the report is ignored, not trusted
    np.savez(tmp_path / "out" / "samples.npz", label=np.zeros(3, dtype=np.int32))
    assert Report.load(tmp_path / "out").samples is None


def test_the_fingerprint_ignores_the_order_of_the_samples() -> None:
    x, y, z = _data(120, 2, seed=8)
    ids = [f"s{i}" for i in range(120)]
    a = diagnose(x, y, z, ids=ids, reservoir_size=50).meta["data"]
    perm = torch.randperm(120, generator=torch.Generator().manual_seed(0))
    b = diagnose(x[perm], y[perm], z[perm], ids=[ids[i] for i in perm], reservoir_size=50)
    fp = b.meta["data"]
    assert fp["ids_sha256"] == a["ids_sha256"] and fp["id_labels_sha256"] == a["id_labels_sha256"]
    assert fp["class_counts"] == a["class_counts"]
    assert fp["labels_sha256"] != a["labels_sha256"]  # the label vector in arrival order


def test_permuting_the_samples_leaves_the_intervals_unchanged() -> None:
    x, y, z = _data(7000, 3, seed=9)  # more than the bootstrap's pool of samples
    a = diagnose(x, y, z, reservoir_size=300)
    perm = torch.randperm(7000, generator=torch.Generator().manual_seed(1))
    b = diagnose(x[perm], y[perm], z[perm], reservoir_size=300)
    assert a.intervals.keys() == b.intervals.keys()
    for name, (lo, hi) in a.intervals.items():
        assert b.intervals[name] == pytest.approx([lo, hi], rel=1e-6, abs=1e-9), name
