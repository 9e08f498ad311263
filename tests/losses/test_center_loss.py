"""CenterLoss against the formula in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embscope.losses import CenterLoss


def test_value_and_center_gradient_match_formula():
    torch.manual_seed(0)
    crit = CenterLoss(3, 4).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    y = torch.tensor([0, 2, 2, 1, 0, 2, 1])
    loss = crit(x, y)
    loss.backward()
    c = crit.centers.detach().numpy()
    diff = x.numpy() - c[y.numpy()]
    assert loss.item() == pytest.approx(0.5 * np.mean(np.sum(diff**2, axis=1)), rel=1e-12)
    # d/dc_k = -(1/B) sum_{i: y_i = k} (x_i - c_k)
    want = np.stack([-diff[y.numpy() == k].sum(axis=0) / 7 for k in range(3)])
    assert crit.centers.grad.numpy() == pytest.approx(want, rel=1e-12)


def test_zero_at_the_centers_and_gradcheck():
    crit = CenterLoss(2, 3).double()
    y = torch.tensor([1, 0, 1])
    assert crit(crit.centers.detach()[y], y).item() == 0.0
    x = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: crit(x, y), (x,))


def test_rejects_bad_input():
    crit = CenterLoss(3, 4)
    with pytest.raises(ValueError, match=r"features must have shape \[B, 4\], got \[2, 5\]"):
        crit(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\] \(num_classes=3\), got 3"):
        crit(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"num_classes must be >= 1, got 0"):
        CenterLoss(0, 4)
