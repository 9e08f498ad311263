"""LabelSmoothingCrossEntropy against F.cross_entropy(label_smoothing=...)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from embscope.losses import LabelSmoothingCrossEntropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.35, 1.0])
@pytest.mark.parametrize("spatial", [(), (3, 2)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_torch(smoothing, spatial, reduction):
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(5, 4, *spatial, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (5, *spatial), generator=g)
    got = LabelSmoothingCrossEntropy(smoothing, reduction=reduction)(x, y)
    want = F.cross_entropy(x, y, label_smoothing=smoothing, reduction=reduction)
    assert got.detach().numpy() == pytest.approx(want.numpy(), rel=1e-12)


def test_gradcheck_and_validation():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, 1])
    crit = LabelSmoothingCrossEntropy(0.2)
    assert torch.autograd.gradcheck(lambda x: crit(x, y), (x,))
    with pytest.raises(ValueError, match=r"smoothing must be >= 0 and <= 1, got 1\.5"):
        LabelSmoothingCrossEntropy(1.5)
    with pytest.raises(ValueError, match=r"targets must be an integer tensor.*float32"):
        crit(x, y.float())
