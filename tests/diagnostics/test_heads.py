"""A head's settings stated by the caller (``head_info``): checked once, replacing those read off
a head module, or standing alone for a head known without its weights; and where each of s, m
and the kind came from (``meta["head_provenance"]``)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from embscope.diagnostics import diagnose
from embscope.diagnostics.heads import check_head_info
from embscope.losses import ArcFaceHead

from .conftest import blobs


def cosine_logits(s: float, seed: int = 0):
    """Embeddings of two classes and the logits ``s * cos`` of a head with weights ``w``."""
    x, y = blobs(n=300, d=5, k=2, seed=seed)
    x = torch.as_tensor(x, dtype=torch.float32)
    torch.manual_seed(seed)
    head = ArcFaceHead(5, 2, m=0.2, s=s)
    z = s * F.normalize(x, dim=1) @ F.normalize(head.weight.detach(), dim=1).T
    return x, torch.as_tensor(y), z, head


def test_a_stated_s_without_weights_gives_fitted_scale_and_the_head_settings() -> None:
    x, y, z, head = cosine_logits(s=20.0)
    plain = diagnose(x, y, z)
    stated = diagnose(x, y, z, head_info={"s": 20.0, "m": 0.2, "kind": "angular"})
    assert math.isnan(plain.metrics["fitted_scale"]) and "head.s" not in plain.metrics
    t = stated.metrics["fitted_temperature"]
    assert t == pytest.approx(plain.metrics["fitted_temperature"])
    assert stated.metrics["fitted_scale"] == pytest.approx(20.0 / t)
    assert (stated.metrics["head.s"], stated.metrics["head.m"]) == (20.0, 0.2)
    assert stated.metrics["head.num_classes"] == 2
    assert stated.meta["head_kind"] == "angular"
    assert stated.meta["head_provenance"] == {"s": "user", "m": "user", "kind": "user"}
    assert stated.sections["head"]["weights"] is False
    # with the weights, the same s gives the same fitted_scale
    with_head = diagnose(x, y, z, head=head)
    assert with_head.metrics["fitted_scale"] == pytest.approx(stated.metrics["fitted_scale"])


def test_an_s_the_logits_exceed_is_not_theirs() -> None:
    x, y, z, _ = cosine_logits(s=20.0)
    report = diagnose(x, y, z, head_info={"s": 5.0})
    assert math.isnan(report.metrics["fitted_scale"])
    assert "beyond the head's s = 5" in report.reasons["fitted_scale"]
    assert math.isnan(report.metrics["head.m"])
    assert report.reasons["head.m"].startswith("not stated")
    assert report.meta["head_kind"] == "unknown"


def test_stated_settings_replace_those_read_off_the_head() -> None:
    x, y, z, head = cosine_logits(s=20.0)
    read = diagnose(x, y, z, head=head)
    assert read.meta["head_provenance"] == {
        "s": "head attribute",
        "m": "head attribute",
        "kind": "declared",
    }
    stated = diagnose(
        x,
        y,
        z,
        head=head,
        head_info={"m": 0.35, "kind": "cosine", "provenance": {"s": "factory default"}},
    )
    assert (stated.metrics["head.s"], stated.metrics["head.m"]) == (20.0, 0.35)
    assert stated.meta["head_kind"] == "cosine" and stated.meta["head_kind_source"] == "user"
    assert stated.meta["head_provenance"] == {"s": "factory default", "m": "user", "kind": "user"}
    assert "factory's default" in stated.reasons["head.s"] and "head.m" not in stated.reasons
    assert math.isnan(stated.metrics["fallback_fraction"])  # a cosine margin has none
    assert head.m == 0.2  # the module is not changed


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({"s": 0.0}, "head_info['s'] must be a finite number > 0, got 0.0"),
        ({"s": float("inf")}, "head_info['s'] must be a finite number > 0"),
        ({"m": -0.1}, "head_info['m'] must be a finite number >= 0 (radians), got -0.1"),
        ({"m": True}, "head_info['m'] must be a finite number >= 0"),
        ({"kind": "arcface"}, "head_info['kind'] must be 'angular' (ArcFace-like) or 'cosine'"),
        ({"provenance": {"s": "guess"}}, "head_info['provenance'] must map 's', 'm' and 'kind'"),
    ],
)
def test_bad_head_info_is_refused_naming_the_entry(info: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_head_info(info)
    with pytest.raises(ValueError, match="head_info"):
        x, y, z, _ = cosine_logits(s=20.0)
        diagnose(x, y, z, head_info=info)


# --------------------------------------------------------------------------- looks_untrained


@pytest.mark.parametrize(("dim", "present"), [(3, 2), (16, 2), (16, 10), (64, 5)])
def test_the_untrained_threshold_is_random_weights_spread(dim: int, present: int) -> None:
    """sigma = 1 / sqrt(D (P - 1)) is the standard deviation of the centred alignment of random
    unit weights against fixed class means, by simulation."""
    from embscope.diagnostics.heads import HeadParams, head_health

    g = torch.Generator().manual_seed(dim * 100 + present)
    means = torch.randn(present, dim, generator=g, dtype=torch.float64)
    values = []
    for _ in range(1500):
        weight = torch.randn(present, dim, generator=g)
        out, _ = head_health(
            HeadParams(0.3, 10.0, weight, "angular"),
            means,
            torch.ones(present, dtype=torch.bool),
            None,
        )
        values.append(out["head.centroid_alignment"])
    sd = float(torch.tensor(values).std())
    assert sd == pytest.approx(1 / math.sqrt(dim * (present - 1)), rel=0.08)


def test_a_head_is_not_called_untrained_where_random_weights_spread_as_widely() -> None:
    """D = 3 with two classes present: 3 sigma = 1.7, so even a perfect alignment is within
    random weights' spread; a weakly aligned trained head gets no claim, with the reason."""
    from embscope.diagnostics.heads import HeadParams, head_health

    means = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    weight = torch.tensor([[1.0, 0.2, 0.5], [0.3, 1.0, -0.4]])  # alignment about 0.5
    out, reasons = head_health(
        HeadParams(0.3, 10.0, weight, "angular"), means, torch.ones(2, dtype=torch.bool), None
    )
    assert out["head.looks_untrained"] == 0.0
    assert "not judged" in reasons["head.looks_untrained"]
    # the same alignment in D = 512 (3 sigma = 0.13) is judged: aligned, trained
    big = torch.zeros(2, 512, dtype=torch.float64)
    big[:, :3] = means
    w_big = torch.zeros(2, 512)
    w_big[:, :3] = weight
    out, reasons = head_health(
        HeadParams(0.3, 10.0, w_big, "angular"), big, torch.ones(2, dtype=torch.bool), None
    )
    assert out["head.looks_untrained"] == 0.0 and "head.looks_untrained" not in reasons
    # and random weights in D = 512 are called untrained
    rnd = torch.randn(2, 512, generator=torch.Generator().manual_seed(0))
    big[:, 3:] = torch.randn(
        2, 509, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    out, reasons = head_health(
        HeadParams(0.3, 10.0, rnd, "angular"), big, torch.ones(2, dtype=torch.bool), None
    )
    assert (
        out["head.looks_untrained"] == 1.0
        and "no better than chance" in reasons["head.looks_untrained"]
    )
