"""The fused autograd functions behind the margin heads, against plain torch autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from embscope.losses import ArcFaceHead
from embscope.losses._autograd import margin_cross_entropy, margin_logits

SCALE = 3.0


def curved(c):
    """A nonlinear margin, so that its derivative matters."""
    return c * c * 0.5 + c * 0.25 - 0.1


def curved_with_slope(c):
    """``curved`` and its derivative, as a head's ``_target_logit_and_slope`` gives them."""
    return curved(c), c + 0.25


def shifted(c):
    return c - 0.2


def shifted_with_slope(c):
    """A margin of slope 1 (CosFace's form): no gradient correction at all."""
    return c - 0.2, None


# each margin as (fn, slope_fn) for the kernels, and the fn the reference differentiates
MARGINS = {
    "none": ((None, None), None),
    "autograd": ((curved, None), curved),
    "slope": ((None, curved_with_slope), curved),
    "slope-1": ((None, shifted_with_slope), shifted),
    "autograd-shift": ((shifted, None), shifted),
}


def reference_logits(x, w, labels, scale, fn):
    """The same quantity through torch's own autograd: normalize, matmul, gather, scatter."""
    logits = scale * F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
    if fn is None:
        return logits
    index = labels[:, None]
    return logits.scatter(1, index, scale * fn(logits.gather(1, index) / scale))


def data(b=6, d=5, c=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(c, d, generator=g, dtype=dtype, requires_grad=True)
    labels = torch.tensor([0, 3, 3, 1, 2, 0])[:b]
    return x, w, labels


# C <= D: the backward builds one [B, C] gradient matrix; C > D: rank-one corrections
SHAPES = {"C<=D": dict(d=5, c=4), "C>D": dict(d=3, c=5)}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("margin", MARGINS)
def test_margin_logits_match_reference_values_and_gradients(margin, shape):
    (fn, slope_fn), ref_fn = MARGINS[margin]
    x, w, labels = data(**SHAPES[shape])
    g = torch.randn(6, w.shape[0], dtype=torch.float64)
    ours = margin_logits(x, w, labels if ref_fn else None, SCALE, fn, slope_fn)
    ref = reference_logits(x, w, labels, SCALE, ref_fn)
    assert ours.detach().numpy() == pytest.approx(ref.detach().numpy(), rel=1e-12, abs=1e-12)
    got = torch.autograd.grad(ours, (x, w), g)
    want = torch.autograd.grad(ref, (x, w), g)
    for a, b in zip(got, want, strict=True):
        assert a.numpy() == pytest.approx(b.numpy(), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("margin", MARGINS)
def test_margin_cross_entropy_matches_reference_values_and_gradients(margin, shape):
    (fn, slope_fn), ref_fn = MARGINS[margin]
    x, w, labels = data(**SHAPES[shape])
    ours = margin_cross_entropy(x, w, labels, SCALE, fn, slope_fn)
    ref = F.cross_entropy(reference_logits(x, w, labels, SCALE, ref_fn), labels)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    got = torch.autograd.grad(2.5 * ours, (x, w))
    want = torch.autograd.grad(2.5 * ref, (x, w))
    for a, b in zip(got, want, strict=True):
        assert a.numpy() == pytest.approx(b.numpy(), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("d", [3, 2])
def test_gradcheck_and_repeated_labels(d):
    x, w, _ = data(b=5, d=d, c=3)
    labels = torch.tensor([1, 1, 1, 0, 1])  # index_add must accumulate repeated rows
    assert torch.autograd.gradcheck(lambda x, w: margin_logits(x, w, labels, SCALE, curved), (x, w))
    assert torch.autograd.gradcheck(
        lambda x, w: margin_cross_entropy(x, w, labels, SCALE, curved), (x, w)
    )
    assert torch.autograd.gradcheck(
        lambda x, w: margin_cross_entropy(x, w, labels, SCALE, None), (x, w)
    )
    for slope_fn in (curved_with_slope, shifted_with_slope):
        assert torch.autograd.gradcheck(
            lambda x, w, f=slope_fn: margin_logits(x, w, labels, SCALE, None, f), (x, w)
        )
        assert torch.autograd.gradcheck(
            lambda x, w, f=slope_fn: margin_cross_entropy(x, w, labels, SCALE, None, f), (x, w)
        )


def test_gradient_only_for_inputs_that_need_it():
    x, w, labels = data()
    x = x.detach()
    loss = margin_cross_entropy(x, w, labels, SCALE, curved)
    (gw,) = torch.autograd.grad(loss, w)
    ref = F.cross_entropy(reference_logits(x, w, labels, SCALE, curved), labels)
    (rw,) = torch.autograd.grad(ref, w)
    assert gw.numpy() == pytest.approx(rw.numpy(), rel=1e-10, abs=1e-12)


def test_zero_rows_give_finite_gradients():
    x = torch.zeros(2, 3, requires_grad=True)
    w = torch.randn(3, 3, requires_grad=True)
    margin_cross_entropy(x, w, torch.tensor([0, 1]), SCALE, curved).backward()
    assert bool(torch.isfinite(x.grad).all()) and bool(torch.isfinite(w.grad).all())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("margin", MARGINS)
def test_backward_twice_with_retained_graph(margin, shape):
    (fn, slope_fn), _ = MARGINS[margin]
    x, w, labels = data(**SHAPES[shape])
    for kernel in (margin_cross_entropy, margin_logits):
        loss = kernel(x, w, labels, SCALE, fn, slope_fn).sum()
        first = torch.autograd.grad(loss, (x, w), retain_graph=True)
        second = torch.autograd.grad(loss, (x, w))
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("margin", MARGINS)
def test_no_grad_forward_equals_grad_forward(margin):
    (fn, slope_fn), _ = MARGINS[margin]
    x, w, labels = data(dtype=torch.float32)
    for kernel in (margin_cross_entropy, margin_logits):
        with torch.no_grad():
            quiet = kernel(x, w, labels, SCALE, fn, slope_fn)
        assert torch.equal(quiet, kernel(x, w, labels, SCALE, fn, slope_fn).detach())


def test_bfloat16_inputs_keep_their_dtype():
    x, w, labels = data(dtype=torch.bfloat16)
    logits = margin_logits(x, w, labels, SCALE, curved)
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16


def test_double_backward_raises_instead_of_silently_dropping_terms():
    head = ArcFaceHead(3, 2, s=4.0)
    x = torch.randn(2, 3, requires_grad=True)
    y = torch.tensor([0, 1])
    for loss in (head.loss(x, y), F.cross_entropy(head(x, y), y)):
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
            g.pow(2).sum().backward()
