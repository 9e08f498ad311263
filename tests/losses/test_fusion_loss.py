"""FusionLoss (seed 002) term by term against formulas in numpy / scipy and torch's CE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import log_softmax

from embscope.losses import FUSION_PRESETS, FusionLoss

B, C, DG, FEAT = 6, 3, 4, 8


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return {
        "logits": r(B, C),
        "labels": torch.randint(0, C, (B,), generator=g),
        "global_feat": r(B, DG),
        "local_feat": r(B, DG),
        "attn_a": torch.rand(B, 5, generator=g, dtype=torch.float64),
        "attn_b": torch.rand(B, 5, generator=g, dtype=torch.float64),
        "features": r(B, FEAT),
    }


def infonce_by_hand(g, loc, temperature):
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    loc = loc / np.linalg.norm(loc, axis=1, keepdims=True)
    s = g @ loc.T / temperature
    diag = np.arange(len(s))
    return -0.5 * (
        log_softmax(s, axis=1)[diag, diag].mean() + log_softmax(s.T, axis=1)[diag, diag].mean()
    )


def attention_by_hand(a, b):
    balance = (a.mean() - 0.5) ** 2 + (b.mean() - 0.5) ** 2
    return balance + np.exp(-a.var()) + np.exp(-b.var())


def test_presets_are_the_seed_weights():
    assert FUSION_PRESETS == {
        "simple": {"w_cls": 1.0, "w_consistency": 0.0, "w_attention": 0.0, "w_center": 0.0},
        "standard": {"w_cls": 1.0, "w_consistency": 0.1, "w_attention": 0.0, "w_center": 0.0},
        "full": {"w_cls": 1.0, "w_consistency": 0.1, "w_attention": 0.05, "w_center": 0.0},
        "advanced": {"w_cls": 1.0, "w_consistency": 0.1, "w_attention": 0.05, "w_center": 0.01},
    }


def test_advanced_terms_match_references():
    torch.manual_seed(0)
    crit = FusionLoss(C, FEAT, mode="advanced").double()
    data = inputs()
    total, terms = crit(**data)
    n = {k: v.numpy() for k, v in data.items()}
    cls = F.cross_entropy(data["logits"], data["labels"], label_smoothing=0.1).item()
    centers = crit.center.centers.detach().numpy()
    cent = 0.5 * np.mean(np.sum((n["features"] - centers[n["labels"]]) ** 2, axis=1))
    want = {
        "cls": 1.0 * cls,
        "cons": 0.1 * infonce_by_hand(n["global_feat"], n["local_feat"], 0.1),
        "attn": 0.05 * attention_by_hand(n["attn_a"], n["attn_b"]),
        "cent": 0.01 * cent,
    }
    assert set(terms) == set(want)
    for name, value in want.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-10), name
    assert total.item() == pytest.approx(sum(want.values()), rel=1e-12)


def test_infonce_is_log_batch_at_chance_and_small_when_aligned():
    crit = FusionLoss(C, FEAT, mode="standard", w_cls=0.0, w_consistency=1.0)
    data = inputs()
    same = torch.ones(B, DG, dtype=torch.float64)
    _, terms = crit(data["logits"], data["labels"], global_feat=same, local_feat=same)
    assert terms["cons"].item() == pytest.approx(np.log(B), rel=1e-12)
    eye = torch.eye(B, dtype=torch.float64)
    _, terms = crit(data["logits"], data["labels"], global_feat=eye, local_feat=eye)
    assert terms["cons"].item() < 1e-3


@pytest.mark.parametrize("mode", ["simple", "standard", "full"])
def test_disabled_terms_are_zero_and_need_no_input(mode):
    crit = FusionLoss(C, FEAT, mode=mode).double()
    data = inputs()
    needed = {
        "simple": [],
        "standard": ["global_feat", "local_feat"],
        "full": ["global_feat", "local_feat", "attn_a", "attn_b"],
    }[mode]
    total, terms = crit(data["logits"], data["labels"], **{k: data[k] for k in needed})
    weights = FUSION_PRESETS[mode]
    for name, weight in (("cons", "w_consistency"), ("attn", "w_attention"), ("cent", "w_center")):
        assert (terms[name].item() == 0.0) == (weights[weight] == 0.0), name
    assert crit.center is None
    assert total.item() == pytest.approx(sum(t.item() for t in terms.values()), rel=1e-12)


def test_custom_weights_override_the_preset():
    crit = FusionLoss(C, FEAT, mode="simple", w_cls=0.5, w_center=0.2).double()
    data = inputs()
    total, terms = crit(data["logits"], data["labels"], features=data["features"])
    assert crit.weights == {"w_cls": 0.5, "w_consistency": 0.0, "w_attention": 0.0, "w_center": 0.2}
    cls = F.cross_entropy(data["logits"], data["labels"], label_smoothing=0.1).item()
    assert terms["cls"].item() == pytest.approx(0.5 * cls, rel=1e-12)
    assert terms["cent"].item() > 0


def test_gradients_reach_centers_and_features():
    crit = FusionLoss(C, FEAT, mode="advanced").double()
    data = inputs()
    for key in ("logits", "global_feat", "features", "attn_a"):
        data[key].requires_grad_(True)
    total, _ = crit(**data)
    total.backward()
    assert crit.center.centers.grad is not None
    for key in ("logits", "global_feat", "features", "attn_a"):
        assert bool(torch.isfinite(data[key].grad).all()) and bool(data[key].grad.abs().sum() > 0)


def test_rejects_missing_and_bad_input():
    data = inputs()
    with pytest.raises(ValueError, match=r"global_feat is required by mode='standard'"):
        FusionLoss(C, FEAT)(data["logits"], data["labels"])
    with pytest.raises(ValueError, match=r"attn_a is required by mode='full'"):
        FusionLoss(C, FEAT, mode="full")(
            data["logits"],
            data["labels"],
            global_feat=data["global_feat"],
            local_feat=data["local_feat"],
        )
    with pytest.raises(ValueError, match=r"features is required by mode='advanced'"):
        FusionLoss(C, FEAT, mode="advanced")(**{k: v for k, v in data.items() if k != "features"})
    with pytest.raises(ValueError, match=r"mode must be one of 'simple', 'standard', 'full'"):
        FusionLoss(C, FEAT, mode="extreme")
    with pytest.raises(ValueError, match=r"unknown weights \['w_triplet'\]"):
        FusionLoss(C, FEAT, w_triplet=1.0)
    with pytest.raises(ValueError, match=r"w_center must be >= 0, got -0\.1"):
        FusionLoss(C, FEAT, w_center=-0.1)
    with pytest.raises(ValueError, match=r"local_feat must have shape \[B, 4\], got \[6, 3\]"):
        FusionLoss(C, FEAT)(
            data["logits"],
            data["labels"],
            global_feat=data["global_feat"],
            local_feat=data["local_feat"][:, :3],
        )
    with pytest.raises(ValueError, match=r"global_feat must have 6 rows"):
        FusionLoss(C, FEAT)(
            data["logits"],
            data["labels"],
            global_feat=data["global_feat"][:4],
            local_feat=data["local_feat"][:4],
        )
    with pytest.raises(ValueError, match=r"logits must have shape \[B, 3\], got \[6, 2\]"):
        FusionLoss(C, FEAT, mode="simple")(data["logits"][:, :2], data["labels"])
