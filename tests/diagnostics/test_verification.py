"""verification_metrics and roc_curve against scikit-learn, scipy and hand-derived ROCs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn import metrics

from embscope.diagnostics.verification import (
    VerificationResult,
    far_key,
    roc_curve,
    verification_metrics,
)


def scores(seed: int, n_gen: int, n_imp: int, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    g = rng.normal(1.2, 1.0, n_gen)
    i = rng.normal(0.0, 1.0, n_imp)
    if decimals is not None:  # rounding makes ties within and across the two sides
        g, i = np.round(g, decimals), np.round(i, decimals)
    return g, i


def sklearn_roc(g, i, drop_intermediate=True):
    y = np.r_[np.ones(len(g)), np.zeros(len(i))]
    return metrics.roc_curve(y, np.r_[g, i], drop_intermediate=drop_intermediate)


@pytest.mark.parametrize(("seed", "decimals"), [(0, None), (1, None), (2, 1), (3, 2)])
def test_eer_against_sklearn_roc_and_brentq(seed, decimals):
    g, i = scores(seed, 2000, 15000, decimals)
    fpr, tpr, _ = sklearn_roc(g, i)
    # The usual recipe: the FPR where the interpolated ROC meets the line TPR = 1 - FPR.
    expected = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0, xtol=1e-14)
    got = verification_metrics(g, i)
    assert got.eer == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("seed", "decimals"), [(4, None), (5, 2)])
def test_tar_at_far_and_auc_against_sklearn(seed, decimals):
    g, i = scores(seed, 3000, 20000, decimals)
    fpr, tpr, _ = sklearn_roc(g, i, drop_intermediate=False)
    got = verification_metrics(g, i, fars=(0.1, 1e-2, 1e-3, 1e-4, 5e-5))
    for far in (0.1, 1e-2, 1e-3, 1e-4, 5e-5):
        assert got.tar_at_far[far] == pytest.approx(tpr[fpr <= far].max())
    y = np.r_[np.ones(len(g)), np.zeros(len(i))]
    assert got.auc == pytest.approx(metrics.roc_auc_score(y, np.r_[g, i]), abs=1e-12)
    assert (got.n_genuine, got.n_impostor) == (3000, 20000)


def test_eer_threshold_is_where_far_reaches_frr():
    g, i = scores(6, 500, 700, decimals=1)
    got = verification_metrics(g, i)
    t = got.eer_threshold
    assert np.mean(i >= t) >= np.mean(g < t)  # at the threshold FAR >= FRR
    above = np.unique(np.r_[g, i])
    above = above[above > t].min()  # the next stricter threshold
    assert np.mean(i >= above) < np.mean(g < above)


def test_hand_derived_cases():
    perfect = verification_metrics([0.9, 0.8], [0.1, 0.2, 0.3], fars=(0.5,))
    assert perfect.eer == pytest.approx(0.0)
    assert perfect.auc == pytest.approx(1.0)
    assert perfect.tar_at_far[0.5] == pytest.approx(1.0)
    inverted = verification_metrics([0.1, 0.2], [0.8, 0.9], fars=(0.5,))
    assert inverted.eer == pytest.approx(1.0)
    assert inverted.auc == pytest.approx(0.0)
    assert inverted.tar_at_far[0.5] == pytest.approx(0.0)
    same = verification_metrics([0.5, 0.5, 0.5], [0.5, 0.5], fars=(0.5,))
    assert same.eer == pytest.approx(0.5)
    assert same.auc == pytest.approx(0.5)
    # ROC: (0,0) (0,2/3)@0.9 (1/2,2/3)@0.8 (1,2/3)@0.7 (1,1)@0.1. FAR = FRR = 1/3 on the
    # horizontal segment after (0, 2/3): EER 1/3, reached at threshold 0.8.
    r = verification_metrics([0.9, 0.9, 0.1], [0.8, 0.7], fars=(0.5,))
    assert r.eer == pytest.approx(1 / 3)
    assert r.eer_threshold == pytest.approx(0.8)
    assert r.tar_at_far[0.5] == pytest.approx(2 / 3)
    assert r.auc == pytest.approx(2 / 3)  # 4 of 6 (genuine, impostor) pairs ordered right


def test_identical_distributions_give_chance():
    rng = np.random.default_rng(7)
    both = rng.normal(size=40000)
    got = verification_metrics(both[:20000], both[20000:])
    assert got.eer == pytest.approx(0.5, abs=0.02)
    assert got.auc == pytest.approx(0.5, abs=0.02)


def test_too_few_impostors_for_a_far_is_nan_with_a_reason():
    g, i = scores(8, 100, 999)
    got = verification_metrics(g, i, fars=(1e-2, 1e-3))
    assert not math.isnan(got.tar_at_far[1e-2])
    assert math.isnan(got.tar_at_far[1e-3])
    assert got.notes == {
        "tar_at_far_1e-3": "needs at least 1000 impostor pairs to measure FAR 0.001, got 999"
    }
    assert not math.isnan(verification_metrics(g, np.r_[i, 0.0], fars=(1e-3,)).tar_at_far[1e-3])


def test_empty_side_is_all_nan():
    got = verification_metrics([], [0.1, 0.2], fars=(0.5,))
    assert math.isnan(got.eer) and math.isnan(got.auc) and math.isnan(got.tar_at_far[0.5])
    assert got.notes["eer"] == "needs genuine and impostor scores, got 0 and 2"


def test_keys_and_directions():
    g, i = scores(9, 50, 200)
    got = verification_metrics(torch.from_numpy(g).float(), i, fars=(1e-3, 1e-2, 5e-4))
    assert isinstance(got, VerificationResult)
    assert list(got.to_dict()) == [
        "eer",
        "tar_at_far_1e-3",
        "tar_at_far_1e-2",
        "tar_at_far_5e-4",
        "roc_auc",
    ]
    assert far_key(1e-4) == "tar_at_far_1e-4"
    assert far_key(0.1) == "tar_at_far_1e-1"
    assert got.higher_is_better == {"eer": False, "tar_at_far": True, "roc_auc": True}


def test_roc_curve_is_a_downsampled_subset_of_sklearns():
    g, i = scores(10, 5000, 50000)
    fpr, tpr, _ = sklearn_roc(g, i, drop_intermediate=False)
    curve = roc_curve(g, i, max_points=100)
    assert 50 <= len(curve["fpr"]) <= 100
    points = set(zip(fpr.tolist(), tpr.tolist(), strict=True))
    assert all(p in points for p in zip(curve["fpr"], curve["tpr"], strict=True))
    assert (curve["fpr"][0], curve["tpr"][0]) == (0.0, 0.0)
    assert (curve["fpr"][-1], curve["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["tpr"]) >= 0)
    # The low-FAR end is kept: the highest TPR at the smallest non-zero FAR is a point.
    first = fpr[fpr > 0].min()
    assert (first, tpr[fpr <= first].max()) in set(zip(curve["fpr"], curve["tpr"], strict=True))


def test_short_roc_curve_is_returned_whole():
    g, i = [0.9, 0.9, 0.1], [0.8, 0.7]
    fpr, tpr, _ = sklearn_roc(np.array(g), np.array(i), drop_intermediate=False)
    curve = roc_curve(g, i)
    assert curve["fpr"] == pytest.approx(fpr.tolist())
    assert curve["tpr"] == pytest.approx(tpr.tolist())


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: verification_metrics(np.zeros((3, 2)), [0.0]),
            ValueError,
            r"genuine must be 1-D \[n\] scores, got shape \(3, 2\)",
        ),
        (
            lambda: verification_metrics([0.1], ["a"]),
            TypeError,
            "impostor must hold numbers, got dtype <U1",
        ),
        (
            lambda: verification_metrics([0.1], "ab"),
            TypeError,
            "impostor must be a torch.Tensor, numpy array or list",
        ),
        (
            lambda: verification_metrics([0.1, np.inf], [0.0]),
            ValueError,
            r"genuine must be finite scores, got 1 NaN or Inf values \(first at index 1\)",
        ),
        (
            lambda: verification_metrics([0.1], [0.0], fars=(0.0,)),
            ValueError,
            r"fars must lie in \(0, 1\), got 0.0",
        ),
        (
            lambda: verification_metrics([0.1], [0.0], fars=(1,)),
            ValueError,
            r"fars must lie in \(0, 1\), got 1",
        ),
        (
            lambda: roc_curve([0.1], [0.0], max_points=1),
            ValueError,
            "max_points must be an integer >= 2, got 1",
        ),
        (
            lambda: roc_curve([], [0.0]),
            ValueError,
            "roc_curve needs genuine and impostor scores, got 0 and 1",
        ),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
