"""The views advice fires on the symptom it names, not beside it, and carries its evidence and
track record."""

from __future__ import annotations

import numpy as np
import pytest

from embscope.diagnostics import diagnose_views
from embscope.diagnostics import views_advice as VA


def _data(n=240, k=4, seed=0, right_noise=1.0, attention_left=0.5):
    g = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n // k)
    centres = g.normal(size=(k, 8)) * 1.5
    left = centres[y] + g.normal(size=(n, 8))
    right = centres[y][:, ::-1] + right_noise * g.normal(size=(n, 8))
    if right_noise > 50:  # no information at all
        right = g.normal(size=(n, 8))
    a = np.clip(attention_left + 0.02 * g.normal(size=n), 0, 1)
    w = np.stack([a, 1 - a], 1)
    return y, left, right, w


def _actions(report):
    return {r.action: r for r in report.recommendations}


def test_raise_attention_balance_when_the_gate_ignores_an_informative_view():
    y, left, right, w = _data(attention_left=0.9)
    fused = np.concatenate([left, right], 1)
    report = diagnose_views({"left": left, "right": right, "fused": fused}, y, attention=w)
    recs = _actions(report)
    assert "raise_attention_balance" in recs
    rec = recs["raise_attention_balance"]
    assert rec.evidence["attention.balance_gap"]["value"] == pytest.approx(0.8, abs=0.01)
    assert rec.evidence["track_record"]["rule"] == "raise_attention_balance"
    assert rec.severity == VA.severity("raise_attention_balance")
    assert "'right'" in rec.reason  # the neglected view is named
    # the suggested weight, when the caller states the current one
    again = VA.recommend_views(report, w_attention=0.05)
    assert [r.value for r in again if r.action == "raise_attention_balance"] == [pytest.approx(0.2)]


def test_no_balance_advice_when_the_neglected_view_carries_nothing_or_the_gate_is_balanced():
    y, left, right, w = _data(attention_left=0.9, right_noise=100)
    views = {"left": left, "right": right, "fused": np.concatenate([left, right], 1)}
    assert "raise_attention_balance" not in _actions(diagnose_views(views, y, attention=w))
    y, left, right, w = _data(attention_left=0.55)
    views = {"left": left, "right": right, "fused": np.concatenate([left, right], 1)}
    assert "raise_attention_balance" not in _actions(diagnose_views(views, y, attention=w))


def test_prefer_single_view_when_fusion_adds_nothing_measurable():
    y, left, right, _ = _data(right_noise=100)
    g = np.random.default_rng(9)
    fused = left + 0.01 * g.normal(size=left.shape)  # the fused embedding is the left view
    report = diagnose_views({"left": left, "right": right, "fused": fused}, y)
    rec = _actions(report)["prefer_single_view"]
    assert rec.evidence["fusion_gain.eer"]["best_view"] == "left"
    low, high = rec.evidence["fusion_gain.eer"]["interval"]
    assert low <= 0 <= high or low > 0


def test_no_single_view_advice_when_fusion_measurably_helps():
    y, left, right, _ = _data(right_noise=1.0, n=400)
    fused = np.concatenate([left, right], 1)
    report = diagnose_views({"left": left, "right": right, "fused": fused}, y)
    assert report.sections["views"]["fusion_gain"]["eer"]["verdict"] == "better"
    assert "prefer_single_view" not in _actions(report)


def test_unknown_thresholds_are_refused():
    y, left, right, w = _data()
    report = diagnose_views({"left": left, "right": right}, y, attention=w)
    with pytest.raises(ValueError, match="unknown keys"):
        VA.recommend_views(report, thresholds={"balance": 1})
