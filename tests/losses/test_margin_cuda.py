"""The margin heads on CUDA give the CPU's loss and gradients (runs only where a GPU is present)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from embscope.losses import ArcFaceHead, CosFaceHead

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def step(head, x, y, fused, autocast):
    """Loss and gradients of one training step, on the device of ``x``."""
    x = x.detach().clone().requires_grad_(True)
    head.weight.grad = None
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = head.loss(x, y) if fused else F.cross_entropy(head(x, y), y)
    loss.backward()
    return loss.item(), x.grad.float().cpu(), head.weight.grad.float().cpu()


@cuda
@pytest.mark.parametrize("cls", [ArcFaceHead, CosFaceHead])
@pytest.mark.parametrize("dim, classes", [(64, 10), (16, 100)])  # C <= D and C > D paths
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("autocast", [False, True])
def test_cuda_step_equals_cpu_step(cls, dim, classes, fused, autocast):
    torch.manual_seed(0)
    head = cls(dim, classes, s=16.0).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, dim, generator=g)
    y = torch.randint(0, classes, (48,), generator=g)
    want = step(head, x, y, fused, autocast)
    got = step(head.cuda(), x.cuda(), y.cuda(), fused, autocast)
    rel, tol = (2e-2, 1e-2) if autocast else (1e-4, 1e-5)
    assert got[0] == pytest.approx(want[0], rel=rel)
    for a, b in zip(got[1:], want[1:], strict=True):
        assert a.numpy() == pytest.approx(b.numpy(), rel=rel, abs=tol * float(b.abs().max()))


@cuda
def test_cuda_out_of_range_label_raises_before_any_kernel_reads_it():
    head = ArcFaceHead(8, 4).cuda()
    x = torch.randn(3, 8, device="cuda")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\]"):
        head.loss(x, torch.tensor([0, 1, 4], device="cuda"))
    head.loss(x, torch.tensor([0, 1, 3], device="cuda")).item()  # the context still works
