"""BCEHead against torch's BCE-with-logits and the formula by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embscope.losses import BCEHead


def setup(pos_weight=None):
    torch.manual_seed(0)
    head = BCEHead(5, pos_weight=pos_weight).double()
    x = torch.randn(12, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1])
    return head, x, y


def test_forward_is_one_linear_logit_per_sample():
    head, x, _ = setup()
    z = head(x)
    assert z.shape == (12,)
    want = x.numpy() @ head.linear.weight.detach().numpy()[0] + head.linear.bias.item()
    assert z.detach().numpy() == pytest.approx(want, rel=1e-12)
    assert torch.equal(head(x, torch.zeros(12, dtype=torch.long)), z)


@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_loss_matches_formula_and_torch(pos_weight):
    head, x, y = setup(pos_weight)
    z = head(x).detach().numpy()
    p = 1.0 if pos_weight is None else pos_weight
    sig = 1.0 / (1.0 + np.exp(-z))
    yn = y.numpy()
    by_hand = np.mean(-(p * yn * np.log(sig) + (1 - yn) * np.log(1 - sig)))
    assert head.loss(x, y).item() == pytest.approx(by_hand, rel=1e-12)
    torch_ref = F.binary_cross_entropy_with_logits(
        head(x), y.double(), pos_weight=None if pos_weight is None else torch.tensor(p)
    )
    assert head.loss(x, y).item() == pytest.approx(torch_ref.item(), rel=1e-12)


def test_loss_accepts_bool_and_soft_labels():
    head, x, y = setup()
    assert head.loss(x, y.bool()).item() == pytest.approx(head.loss(x, y).item())
    soft = torch.full((12,), 0.5, dtype=torch.float64)
    want = F.binary_cross_entropy_with_logits(head(x), soft).item()
    assert head.loss(x, soft).item() == pytest.approx(want)


def test_gradcheck():
    head, x, y = setup(2.0)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: head.loss(x, y), (x,))


def test_rejects_bad_input():
    head, x, y = setup()
    with pytest.raises(ValueError, match=r"pos_weight must be > 0, got 0\.0"):
        BCEHead(5, pos_weight=0)
    with pytest.raises(ValueError, match=r"embedding must have shape \[B, 5\], got \[12, 4\]"):
        head(x[:, :4])
    with pytest.raises(ValueError, match=r"labels must have shape \[12\], got \[12, 1\]"):
        head.loss(x, y[:, None])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\].*got 2"):
        head.loss(x, y * 2)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\].*got nan"):
        head.loss(x, torch.full((12,), float("nan")))
