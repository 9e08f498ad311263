"""Two small autograd functions that keep the margin heads close to the cost of their matmuls.

Why they exist (measured in ``benchmarks/bench_losses.py``):

- ``l2_normalize``: ``F.normalize`` differentiates through ``x / norm.clamp_min(eps).expand_as(x)``
  with the generic division rule, several full passes over the ``[C, D]`` class weights in the
  backward. The closed form ``dx = (g - y <g, y>) / ||x||`` needs one reduction and one fused pass.
- ``apply_target_margin``: the margin changes ``B`` entries of a ``[B, C]`` matrix. Autograd
  through a gather plus an out-of-place scatter allocates, fills and adds several ``[B, C]``
  gradients; this function writes the ``B`` targets in place and, in the backward, copies the
  incoming gradient once and rescales its ``B`` target entries.

Both support one backward pass (``once_differentiable``); double backward raises.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types (autocast safety), the tensor's own dtype for float32/float64."""
    return torch.promote_types(dtype, torch.float32)


class _L2Normalize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.to(_compute_dtype(x.dtype))
        norm = torch.linalg.vector_norm(xf, dim=1, keepdim=True).clamp_min_(eps)
        y = xf / norm
        ctx.save_for_backward(y, norm)
        ctx.in_dtype = x.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        y, norm = ctx.saved_tensors
        grad = grad.to(y.dtype)
        dot = (grad * y).sum(dim=1, keepdim=True)
        return grad.addcmul(y, dot, value=-1.0).div_(norm).to(ctx.in_dtype), None


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of ``x`` divided by their L2 norm (clamped below at ``eps``), as ``F.normalize``.

    Computed in float32 for half inputs (the result is then float32), else in ``x.dtype``.
    """
    return _L2Normalize.apply(x, eps)


class _TargetMargin(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        labels: torch.Tensor,
        scale: float,
        fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        index = labels.unsqueeze(1)
        cos = logits.gather(1, index).to(_compute_dtype(logits.dtype)).div_(scale)
        with torch.enable_grad():
            leaf = cos.detach().requires_grad_(True)
            modified = fn(leaf)
        logits.scatter_(1, index, (modified.detach() * scale).to(logits.dtype))
        ctx.mark_dirty(logits)
        ctx.save_for_backward(index)
        ctx.graph = (leaf, modified)
        return logits

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (index,) = ctx.saved_tensors
        leaf, modified = ctx.graph
        grad_target = grad.gather(1, index).to(leaf.dtype)
        # retain_graph: the B-element graph must survive an outer backward(retain_graph=True).
        (grad_cos,) = torch.autograd.grad(modified, leaf, grad_target, retain_graph=True)
        return grad.scatter(1, index, grad_cos.to(grad.dtype)), None, None, None


def apply_target_margin(
    logits: torch.Tensor,
    labels: torch.Tensor,
    scale: float,
    fn: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Replace ``logits[i, labels[i]] = scale * c`` by ``scale * fn(c)``, in place.

    ``logits`` must be ``scale * cos`` and a fresh tensor the caller owns (it is modified and
    returned). ``fn`` maps the ``[B]`` target cosines (float32 or float64) to modified cosines and
    is differentiated by autograd on those ``B`` values only.
    """
    if torch.is_grad_enabled() and logits.requires_grad:
        return _TargetMargin.apply(logits, labels, scale, fn)
    index = labels.unsqueeze(1)
    cos = logits.gather(1, index).to(_compute_dtype(logits.dtype)).div_(scale)
    return logits.scatter_(1, index, (fn(cos) * scale).to(logits.dtype))
