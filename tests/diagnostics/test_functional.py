"""The functional forms of what the Diagnoser reports: one call each, the same numbers as the
report, and an independent reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from embscope.diagnostics import (
    centroid_confusion,
    diagnose,
    margin_summary,
    ovr_score_separation,
)

from .conftest import blobs


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_centroid_confusion_matches_brute_force_and_the_report():
    x, y = blobs(n=150, d=5, k=4, seed=3)
    x = x + np.random.default_rng(0).normal(scale=1.5, size=x.shape)  # some confusion
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    classes = np.unique(y)
    means = np.stack([u[y == c].mean(0) for c in classes])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    cos = u @ means.T
    own = cos[np.arange(len(y)), np.searchsorted(classes, y)]
    cos[np.arange(len(y)), np.searchsorted(classes, y)] = -np.inf
    expected = float((cos.max(1) > own).sum())
    assert 0 < expected < len(y)
    count, fraction = centroid_confusion(x, y)
    assert count == expected and fraction == pytest.approx(expected / len(y))
    r = diagnose(x, y)
    assert r.metrics["centroid_confusion_count"] == expected


def test_margin_summary_matches_numpy_and_the_report():
    g = np.random.default_rng(1)
    y = g.integers(0, 3, 200)
    z = g.normal(size=(200, 3)) + 1.5 * np.eye(3)[y]
    other = np.where(np.eye(3)[y] == 1, -np.inf, z).max(1)
    m = z[np.arange(200), y] - other
    got = margin_summary(z, y)
    assert got["margin_mean"] == pytest.approx(m.mean())
    assert got["margin_median"] == pytest.approx(np.median(m))
    assert got["margin_p05"] == pytest.approx(np.percentile(m, 5))
    assert got["negative_margin_fraction"] == pytest.approx((m < 0).mean())
    r = diagnose(g.normal(size=(200, 4)), y, z)
    for key, value in got.items():
        assert r.metrics[key] == pytest.approx(value, rel=1e-6)


def test_ovr_score_separation_matches_scipy_and_the_report():
    g = np.random.default_rng(2)
    y = g.integers(0, 5, 400)
    z = g.normal(size=(400, 5)) + 1.2 * np.eye(5)[y]
    sep = ovr_score_separation(z, y)
    p = _softmax(z)
    ks = np.mean([ks_2samp(p[y == c, c], p[y != c, c]).statistic for c in range(5)])
    assert sep.ks == pytest.approx(ks, abs=2e-3)  # P(c) binned at 1/1000
    r = diagnose(g.normal(size=(400, 4)), y, z)
    assert r.metrics["score_ks"] == pytest.approx(sep.ks, rel=1e-9)
    assert r.metrics["score_hellinger"] == pytest.approx(sep.hellinger, rel=1e-9)
    assert r.metrics["score_fisher"] == pytest.approx(sep.fisher, rel=1e-6)
    with pytest.raises(ValueError, match="C >= 3"):
        ovr_score_separation(z[:, :2], y % 2)
