"""The fused cosine-margin kernels behind the margin heads: two autograd functions.

``margin_logits`` computes ``s * cos`` between L2-normalised embeddings and class weights and
applies the margin to the ``B`` target entries; ``margin_cross_entropy`` also takes the mean
cross-entropy. Their backward passes are written by hand so that a training step costs little
more than its three matrix products (measured in ``benchmarks/bench_losses.py``):

- the margin's gradient is added as ``B`` rank-one corrections to the two backward matrix
  products (``delta_b * w_{y_b}`` into the embedding gradient, ``delta_b * x_b`` into row
  ``y_b`` of the weight gradient) instead of rewriting a copy of the ``[B, C]`` gradient;
- the normalisation backward ``(g - y <g, y>) / |x|`` runs in place on the fresh products;
- ``margin_cross_entropy`` exponentiates its ``[B, C]`` logits once, in place, and never builds
  a probability, one-hot or gradient matrix: ``softmax = exp / sum`` enters the products as a
  per-row factor on the ``[B, D]`` side and the ``-1`` at the targets is a correction too.

The margin itself, ``fn`` (a head's ``_target_logit``), is differentiated by autograd on the
``B`` target cosines only, in float32 (float64 for float64 inputs). Under autocast the matrix
products run in the autocast dtype and everything else in float32. Only one backward pass is
supported (``once_differentiable``); double backward raises.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

_NORM_EPS = 1e-12  # as F.normalize

MarginFn = Callable[[torch.Tensor], torch.Tensor]


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32 for half inputs, float64 if any input is float64."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _forward(
    ctx,
    x: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor | None,
    scale: float,
    fn: MarginFn | None,
    track: bool,
) -> torch.Tensor:
    """``s * cos``, with the margin on the targets when ``fn`` is given; stores what the backward
    needs on ``ctx`` (``labels`` is kept for the backward corrections even without ``fn``)."""
    device_type = x.device.type
    cdt = _compute_dtype(x, weight)
    if torch.is_autocast_enabled(device_type):
        mm_dtype = torch.get_autocast_dtype(device_type)
    else:
        mm_dtype = torch.promote_types(x.dtype, weight.dtype)
    with torch.autocast(device_type, enabled=False):
        xf, wf = x.to(cdt), weight.to(cdt)
        x_norm = torch.linalg.vector_norm(xf, dim=1, keepdim=True).clamp_min_(_NORM_EPS)
        w_norm = torch.linalg.vector_norm(wf, dim=1, keepdim=True).clamp_min_(_NORM_EPS)
        s_over_norm = scale / x_norm
        xs = xf * s_over_norm  # s * x / |x|
        wn = wf / w_norm
        xs_mm, wn_mm = xs.to(mm_dtype), wn.to(mm_dtype)
        logits = torch.mm(xs_mm, wn_mm.T)
        margin = None
        if fn is not None:
            index = labels.unsqueeze(1)
            cos = logits.gather(1, index).squeeze(1).to(cdt).div_(scale)
            if track:
                with torch.enable_grad():
                    leaf = cos.detach().requires_grad_(True)
                    modified = fn(leaf)
                margin = (leaf, modified)
            else:
                modified = fn(cos)
            logits.scatter_(1, index, (modified.detach() * scale).to(logits.dtype).unsqueeze(1))
    if track:
        ctx.save_for_backward(xs, xs_mm, s_over_norm, wf, w_norm, labels)
        # not saved tensors: the backward reuses wn's memory as scratch (see _normalized_weights)
        ctx.wn = (wn, wn_mm)
        ctx.margin = margin
        ctx.scale = scale
        ctx.dtypes = (x.dtype, weight.dtype, mm_dtype)
    return logits


def _backward(
    ctx,
    grad_logits: torch.Tensor,
    delta: torch.Tensor | None,
    grad_scale: torch.Tensor | float = 1.0,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients for ``x`` and ``weight`` from ``grad_logits * grad_scale`` (``[B, C]`` times a
    scalar or a ``[B, 1]`` column) plus the target corrections ``delta`` (``[B]``)."""
    xs, xs_mm, s_over_norm, wf, w_norm, labels = ctx.saved_tensors
    x_dtype, w_dtype, mm_dtype = ctx.dtypes
    wn, wn_mm = _normalized_weights(ctx, wf, w_norm, mm_dtype)
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_logits = grad_logits.to(mm_dtype)
    grad_x = grad_w = None
    with torch.autocast(grad_logits.device.type, enabled=False):
        if need_x:
            grad_xs = torch.mm(grad_logits, wn_mm).to(xs.dtype)
            if not isinstance(grad_scale, float):
                grad_xs.mul_(grad_scale)
            if delta is not None:
                grad_xs.addcmul_(wn.index_select(0, labels), delta.unsqueeze(1))
            # xs = s x / |x|:  dL/dx = (s / |x|) (g - u <g, u>) with u = x / |x| = xs / s
            dot = torch.linalg.vecdot(grad_xs, xs, dim=1).unsqueeze(1)
            grad_xs.addcmul_(xs, dot, value=-1.0 / ctx.scale**2)
            grad_x = grad_xs.mul_(s_over_norm).to(x_dtype)
        if need_w:
            if isinstance(grad_scale, float):
                grad_wn = torch.mm(grad_logits.T, xs_mm).to(wn.dtype)
            else:  # scale the [B, D] side rather than the [B, C] gradient (rows of grad_logits)
                grad_wn = torch.mm(grad_logits.T, (xs * grad_scale).to(mm_dtype)).to(wn.dtype)
            if delta is not None:
                grad_wn.index_add_(0, labels, xs * delta.unsqueeze(1))
            # W -> wn = W / |W|: dL/dW = (g - wn <g, wn>) / |W| = (g - W <g, wn> / |W|) / |W|;
            # <g, wn> row by row, with wn's own memory as the scratch of the product
            dot = torch.mul(grad_wn, wn, out=wn).sum(dim=1, keepdim=True)
            ctx.wn = None
            grad_w = grad_wn.addcmul_(wf, dot / w_norm, value=-1.0).div_(w_norm).to(w_dtype)
    return grad_x, grad_w


def _normalized_weights(
    ctx, wf: torch.Tensor, w_norm: torch.Tensor, mm_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``W / |W|`` (and its matmul-dtype copy) from the forward, or recomputed when an earlier
    backward of the same graph (``retain_graph=True``) used that memory as scratch."""
    if ctx.wn is not None:
        return ctx.wn
    wn = wf / w_norm
    return wn, wn.to(mm_dtype)


def _margin_delta(ctx, grad_target: torch.Tensor) -> torch.Tensor:
    """``dL/dcos_t - dL/dlogit_t`` per row: the gradient the margin adds at the targets."""
    leaf, modified = ctx.margin
    # retain_graph: the B-element graph must survive an outer backward(retain_graph=True).
    (grad_cos,) = torch.autograd.grad(modified, leaf, grad_target, retain_graph=True)
    return grad_cos - grad_target


class _MarginLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, labels, scale, fn):
        return _forward(ctx, x, weight, labels, scale, fn, track=True)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        delta = None
        if ctx.margin is not None:
            (*_, labels) = ctx.saved_tensors
            grad_target = grad.gather(1, labels.unsqueeze(1)).squeeze(1).to(ctx.margin[0].dtype)
            delta = _margin_delta(ctx, grad_target)
        grad_x, grad_w = _backward(ctx, grad, delta)
        return grad_x, grad_w, None, None, None


def _cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy; also ``exp(z - max z)`` (computed in place when ``logits`` is float32
    or float64, which the caller owns) and its row sums, from which the backward gets
    ``softmax = exp / sum`` without another pass over ``[B, C]``."""
    z = logits.to(_compute_dtype(logits))
    shift = z.amax(dim=1, keepdim=True)
    target = z.gather(1, labels.unsqueeze(1))
    expz = z.sub_(shift).exp_()
    total = expz.sum(dim=1, keepdim=True)
    loss = (total.log() + shift - target).mean()
    return loss, expz, total


class _MarginCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, labels, scale, fn):
        logits = _forward(ctx, x, weight, labels, scale, fn, True)
        loss, ctx.expz, ctx.total = _cross_entropy(logits, labels)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        (*_, labels) = ctx.saved_tensors
        expz, total = ctx.expz, ctx.total
        # dL/dz = w (softmax - onehot), w = grad / B, softmax = expz / total: the products run
        # on expz with the per-row factor w / total; the -w at the targets is a correction.
        w = grad_loss.to(expz.dtype) / expz.shape[0]
        row = w / total  # [B, 1]
        p_w = (expz.gather(1, labels.unsqueeze(1)) * row).squeeze(1)  # softmax_t * w
        grad_target = p_w - w  # dL/dz_t
        if ctx.margin is not None:
            # the target entry is s * fn(cos): dL/dcos_t = f'(cos) dL/dz_t
            delta = _margin_delta(ctx, grad_target.to(ctx.margin[0].dtype)).to(expz.dtype)
            delta = delta + grad_target - p_w
        else:
            delta = -w.expand_as(p_w)
        grad_x, grad_w = _backward(ctx, expz, delta, grad_scale=row)
        return grad_x, grad_w, None, None, None


def _track(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


def margin_logits(
    x: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor | None,
    scale: float,
    fn: MarginFn | None,
) -> torch.Tensor:
    """``scale * cos(x_i, w_j)`` ``[B, C]``; with ``labels`` the target entries become
    ``scale * fn(cos)``. Inputs must be validated by the caller."""
    if not _track(x, weight):  # plain tensor code: nothing to differentiate (and traceable)
        return _forward(None, x, weight, labels, scale, fn, track=False)
    return _MarginLogits.apply(x, weight, labels, scale, fn)


def margin_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, scale: float, fn: MarginFn | None
) -> torch.Tensor:
    """``F.cross_entropy(margin_logits(x, weight, labels, scale, fn), labels)`` (mean), fused;
    ``fn=None`` for no margin."""
    if not _track(x, weight):
        logits = _forward(None, x, weight, labels, scale, fn, track=False)
        return _cross_entropy(logits, labels)[0]
    return _MarginCrossEntropy.apply(x, weight, labels, scale, fn)
