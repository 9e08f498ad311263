"""The private autograd helpers behind the margin heads, against torch's generic autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from embscope.losses import ArcFaceHead
from embscope.losses._autograd import apply_target_margin, l2_normalize


def test_l2_normalize_matches_f_normalize_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(7, 5, dtype=torch.float64)
    ours = l2_normalize(x)
    (gx,) = torch.autograd.grad(ours, x, g)
    x2 = x.detach().clone().requires_grad_(True)
    ref = F.normalize(x2, dim=1)
    (rx,) = torch.autograd.grad(ref, x2, g)
    assert ours.detach().numpy() == pytest.approx(ref.detach().numpy(), rel=1e-14, abs=1e-15)
    assert gx.numpy() == pytest.approx(rx.numpy(), rel=1e-12, abs=1e-14)


def test_l2_normalize_gradcheck_and_zero_row():
    torch.manual_seed(0)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(l2_normalize, (x,))
    zero = torch.zeros(2, 3, requires_grad=True)
    out = l2_normalize(zero)
    out.sum().backward()
    assert torch.equal(out, torch.zeros(2, 3))
    assert bool(torch.isfinite(zero.grad).all())


def test_l2_normalize_computes_half_inputs_in_float32():
    x = torch.randn(3, 4).to(torch.bfloat16).requires_grad_(True)
    y = l2_normalize(x)
    assert y.dtype == torch.float32
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16


def test_apply_target_margin_matches_autograd_scatter():
    torch.manual_seed(0)
    scale = 3.0
    labels = torch.tensor([2, 0, 1, 2])

    def fn(c):
        return c * c - 0.1

    base = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    ours = apply_target_margin(base * scale, labels, scale, fn)
    idx = labels[:, None]
    cos = (base * scale).gather(1, idx) / scale
    ref = (base * scale).scatter(1, idx, fn(cos) * scale)
    g = torch.randn(4, 3, dtype=torch.float64)
    (go,) = torch.autograd.grad(ours, base, g)
    (gr,) = torch.autograd.grad(ref, base, g)
    assert ours.detach().numpy() == pytest.approx(ref.detach().numpy(), rel=1e-14)
    assert go.numpy() == pytest.approx(gr.numpy(), rel=1e-14)
    assert torch.autograd.gradcheck(
        lambda b: apply_target_margin(b * scale, labels, scale, fn), (base,)
    )


def test_double_backward_raises_instead_of_silently_dropping_terms():
    head = ArcFaceHead(3, 2, s=4.0)
    x = torch.randn(2, 3, requires_grad=True)
    y = torch.tensor([0, 1])
    (g,) = torch.autograd.grad(head.loss(x, y), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.pow(2).sum().backward()
