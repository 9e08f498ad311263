"""Focal, Dice and focal + Dice losses against torch's BCE/CE, scipy and formulas by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import dice as scipy_dice
from scipy.special import expit, log_softmax, softmax

from embscope.losses import DiceLoss, FocalDiceLoss, FocalLoss


def binary_data(shape=(6, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        3 * torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randint(0, 2, shape, generator=g),
    )


def multiclass_data(n=6, c=4, spatial=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        2 * torch.randn(n, c, *spatial, generator=g, dtype=torch.float64),
        torch.randint(0, c, (n, *spatial), generator=g),
    )


# ------------------------------------------------------------------------------------- focal


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_focal_binary_reduces_to_bce(reduction):
    x, y = binary_data()
    got = FocalLoss(alpha=None, gamma=0.0, task="binary", reduction=reduction)(x, y)
    want = F.binary_cross_entropy_with_logits(x, y.double(), reduction=reduction)
    assert torch.equal(got, want)


@pytest.mark.parametrize("spatial", [(), (3, 2)])
def test_focal_multiclass_reduces_to_cross_entropy(spatial):
    x, y = multiclass_data(spatial=spatial)
    got = FocalLoss(alpha=None, gamma=0.0, task="multiclass")(x, y)
    assert got.item() == pytest.approx(F.cross_entropy(x, y).item(), rel=1e-14)
    per_elem = FocalLoss(alpha=None, gamma=0.0, task="multiclass", reduction="none")(x, y)
    want = F.cross_entropy(x, y, reduction="none")
    assert per_elem.numpy() == pytest.approx(want.numpy(), rel=1e-14)


def test_focal_per_class_alpha_with_gamma_zero_is_weighted_cross_entropy_sum():
    x, y = multiclass_data()
    alpha = [0.1, 0.5, 2.0, 1.0]
    got = FocalLoss(alpha=alpha, gamma=0.0, task="multiclass", reduction="sum")(x, y)
    want = F.cross_entropy(x, y, weight=torch.tensor(alpha, dtype=torch.float64), reduction="sum")
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.6, 0.5), (None, 3.0)])
def test_focal_binary_matches_formula(alpha, gamma):
    x, y = binary_data()
    p = expit(x.numpy())
    t = y.numpy()
    p_t = p * t + (1 - p) * (1 - t)
    a_t = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    want = np.mean(-a_t * (1 - p_t) ** gamma * np.log(p_t))
    got = FocalLoss(alpha=alpha, gamma=gamma, task="binary")(x, y)
    assert got.item() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("alpha", [0.25, [0.2, 0.3, 0.1, 0.4], None])
def test_focal_multiclass_matches_formula(alpha):
    x, y = multiclass_data(spatial=(2,))
    logp = log_softmax(x.numpy(), axis=1)
    logp_t = np.take_along_axis(logp, y.numpy()[:, None], axis=1)[:, 0]
    if alpha is None:
        a_t = 1.0
    elif isinstance(alpha, float):
        a_t = alpha
    else:
        a_t = np.asarray(alpha)[y.numpy()]
    want = np.mean(-a_t * (1 - np.exp(logp_t)) ** 2.0 * logp_t)
    got = FocalLoss(alpha=alpha, gamma=2.0, task="multiclass")(x, y)
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_focal_gradients_finite_for_saturated_logits():
    for gamma in (0.5, 2.0):
        x = torch.tensor([60.0, -60.0, 0.0], requires_grad=True)
        FocalLoss(gamma=gamma)(x, torch.tensor([1, 0, 1])).backward()
        assert bool(torch.isfinite(x.grad).all())
        z = torch.tensor([[80.0, -80.0], [0.0, 1.0]], requires_grad=True)
        FocalLoss(gamma=gamma, task="multiclass")(z, torch.tensor([0, 1])).backward()
        assert bool(torch.isfinite(z.grad).all())


def test_focal_gradcheck():
    x, y = binary_data(shape=(4,))
    assert torch.autograd.gradcheck(lambda x: FocalLoss()(x, y), (x.requires_grad_(True),))
    z, t = multiclass_data(n=3, c=3)
    crit = FocalLoss(alpha=[0.2, 0.5, 0.3], task="multiclass")
    assert torch.autograd.gradcheck(lambda z: crit(z, t), (z.requires_grad_(True),))


def test_focal_rejects_bad_input():
    with pytest.raises(ValueError, match=r"gamma must be >= 0, got -1\.0"):
        FocalLoss(gamma=-1)
    with pytest.raises(ValueError, match=r"alpha must be >= 0 and <= 1, got 1\.5"):
        FocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match=r"alpha must be a float in \[0, 1\] or None"):
        FocalLoss(alpha=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"task must be one of 'binary', 'multiclass'"):
        FocalLoss(task="multilabel")
    with pytest.raises(ValueError, match=r"alpha has 3 per-class weights but logits have C=4"):
        FocalLoss(alpha=[1.0, 1.0, 1.0], task="multiclass")(*multiclass_data())
    x, y = multiclass_data()
    with pytest.raises(ValueError, match=r"targets must be in \[0, 3\] \(num_classes=4\), got 4"):
        FocalLoss(task="multiclass")(x, y + 1)
    with pytest.raises(ValueError, match=r"targets must have shape \[6\], got \[5\]"):
        FocalLoss(task="multiclass")(x, y[:5])
    with pytest.raises(ValueError, match=r"targets must have shape \[6, 5\], got \[6\]"):
        FocalLoss()(binary_data()[0], y)


# -------------------------------------------------------------------------------------- dice


def test_dice_binary_hard_predictions_match_scipy():
    x, y = binary_data(shape=(40,))
    hard = torch.where(x > 0, 100.0, -100.0).double()  # sigmoid -> exactly 0/1 in float64
    got = DiceLoss(task="binary", smooth=0.0)(hard, y)
    want = scipy_dice((x > 0).numpy(), y.numpy().astype(bool))
    assert got.item() == pytest.approx(want, rel=1e-12)


def test_dice_soft_binary_matches_formula():
    x, y = binary_data(shape=(3, 4, 5))
    p, t = expit(x.numpy()), y.numpy()
    want = 1 - (2 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
    assert DiceLoss(task="binary")(x, y).item() == pytest.approx(want, rel=1e-12)


def test_dice_multiclass_matches_per_class_formula():
    x, y = multiclass_data(n=3, c=4, spatial=(5, 2))
    p = softmax(x.numpy(), axis=1)
    dices = []
    for c in range(4):
        pc, tc = p[:, c], (y.numpy() == c).astype(float)
        dices.append((2 * (pc * tc).sum() + 0.5) / (pc.sum() + tc.sum() + 0.5))
    got = DiceLoss(task="multiclass", smooth=0.5)(x, y)
    assert got.item() == pytest.approx(1 - np.mean(dices), rel=1e-12)


def test_dice_perfect_prediction_is_zero():
    y = torch.tensor([[0, 1, 2], [2, 2, 1]])
    logits = 200.0 * F.one_hot(y, 3).movedim(-1, 1).double()
    assert DiceLoss(task="multiclass")(logits, y).item() == pytest.approx(0.0, abs=1e-12)


def test_dice_gradcheck_and_validation():
    x, y = multiclass_data(n=2, c=3, spatial=(2,))
    assert torch.autograd.gradcheck(
        lambda x: DiceLoss(task="multiclass")(x, y), (x.requires_grad_(True),)
    )
    with pytest.raises(ValueError, match=r"smooth must be >= 0, got -1\.0"):
        DiceLoss(smooth=-1)
    with pytest.raises(ValueError, match=r"logits must have shape \[N, C\].*C >= 2, got \[4\]"):
        DiceLoss(task="multiclass")(torch.randn(4), torch.zeros(4, dtype=torch.long))


# ------------------------------------------------------------------------------ focal + dice


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_focal_dice_is_focal_plus_weighted_dice(task):
    x, y = binary_data() if task == "binary" else multiclass_data(spatial=(3,))
    total, terms = FocalDiceLoss(alpha=0.5, gamma=2.5, dice_weight=1.5, task=task)(x, y)
    focal = FocalLoss(alpha=0.5, gamma=2.5, task=task)(x, y)
    dice = DiceLoss(task=task)(x, y)
    assert set(terms) == {"focal", "dice"}
    assert terms["focal"].item() == pytest.approx(focal.item(), rel=1e-12)
    assert terms["dice"].item() == pytest.approx(1.5 * dice.item(), rel=1e-12)
    assert total.item() == pytest.approx(focal.item() + 1.5 * dice.item(), rel=1e-12)


def test_focal_dice_rejects_negative_weight():
    with pytest.raises(ValueError, match=r"dice_weight must be >= 0, got -1\.0"):
        FocalDiceLoss(dice_weight=-1)
