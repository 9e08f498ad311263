import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from embscope.diagnostics.verification import far_key, verification_metrics
from embscope.diagnostics.verification import roc_curve as our_roc


def _sklearn_eer(g, i):
    y = np.r_[np.ones(len(g)), np.zeros(len(i))]
    fpr, tpr, _ = roc_curve(y, np.r_[g, i], drop_intermediate=False)
    fnr = 1 - tpr
    d = fpr - fnr
    k = int(np.argmax(d >= 0))
    t = d[k - 1] / (d[k - 1] - d[k])
    return fpr[k - 1] + t * (fpr[k] - fpr[k - 1]), fpr, tpr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eer_tar_auc_match_sklearn(seed):
    g_ = np.random.default_rng(seed)
    gen = np.round(g_.normal(1.0, 1.0, 3000), 2)  # rounded: ties included
    imp = np.round(g_.normal(0.0, 1.0, 20000), 2)
    r = verification_metrics(gen, imp, fars=(1e-2, 1e-3, 1e-5))
    eer, fpr, tpr = _sklearn_eer(gen, imp)
    assert r.eer == pytest.approx(eer, abs=1e-12)
    assert r.tar_at_far[1e-3] == pytest.approx(tpr[fpr <= 1e-3].max())
    assert r.tar_at_far[1e-2] == pytest.approx(tpr[fpr <= 1e-2].max())
    assert math.isnan(r.tar_at_far[1e-5]) and "impostor pairs" in r.notes["tar_at_far_1e-5"]
    y = np.r_[np.ones(len(gen)), np.zeros(len(imp))]
    assert r.auc == pytest.approx(roc_auc_score(y, np.r_[gen, imp]), abs=1e-12)


def test_ks_from_the_roc_matches_scipy():
    from scipy.stats import ks_2samp

    g_ = np.random.default_rng(4)
    gen = np.round(g_.normal(0.5, 1.0, 700), 1)  # ties within and across the two samples
    imp = np.round(g_.normal(0.0, 1.0, 900), 1)
    r = verification_metrics(gen, imp)
    assert r.ks == pytest.approx(ks_2samp(gen, imp).statistic, abs=1e-12)


def test_by_hand():
    perfect = verification_metrics([0.9, 0.8], [0.1, 0.2, 0.3], fars=(0.5,))
    assert perfect.eer == pytest.approx(0.0)
    assert perfect.auc == pytest.approx(1.0)
    assert perfect.tar_at_far[0.5] == pytest.approx(1.0)
    same = verification_metrics([0.5, 0.5], [0.5, 0.5], fars=(0.5,))
    assert same.eer == pytest.approx(0.5)
    assert same.auc == pytest.approx(0.5)


def test_keys_and_curve():
    r = verification_metrics(np.linspace(0, 1, 100), np.linspace(-1, 0.5, 5000))
    assert set(r.to_dict()) == {
        "eer",
        "tar_at_far_1e-2",
        "tar_at_far_1e-3",
        "tar_at_far_1e-4",
        "roc_auc",
    }
    assert far_key(0.001) == "tar_at_far_1e-3"
    c = our_roc(np.linspace(0, 1, 100), np.linspace(-1, 0.5, 5000), max_points=50)
    assert len(c["fpr"]) <= 50 and c["fpr"][0] == 0 and c["tpr"][-1] == 1


def test_bad_scores():
    with pytest.raises(ValueError, match="genuine must be finite"):
        verification_metrics([np.nan], [0.0])
    with pytest.raises(ValueError, match=r"fars must lie in \(0, 1\)"):
        verification_metrics([1.0], [0.0], fars=(1.5,))
