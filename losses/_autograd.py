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
  per-row factor on the ``[B, D]`` side and the ``-1`` at the targets is a correction too;
- except when ``C <= D``: then ``[B, C]`` is the smaller side, and the row factor and the
  corrections go into one new ``[B, C]`` gradient matrix (fewer operations, less memory traffic).

The margin itself is either ``fn`` (a head's ``_target_logit``), differentiated by autograd on
the ``B`` target cosines only, or ``slope_fn``, which returns the margin's value and derivative
in one call of plain tensor operations (a head's ``_target_logit_and_slope``); a slope of
``None`` means 1 everywhere (CosFace), and then the margin adds no correction at all. Both run
in float32 (float64 for float64 inputs). Under autocast the matrix products run in the autocast
dtype and everything else in float32. Only one backward pass is supported (double backward
raises).

A step at small sizes (and any step on a GPU, which launches the same ~50 kernels whatever the
sizes) costs the host's Python and dispatcher time, so the code avoids operations that do
nothing: no ``.to()`` to the same dtype, no disabled-autocast context unless autocast is on
(``bench_losses.py --overhead`` times and counts them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

_NORM_EPS = 1e-12  # as F.normalize

MarginFn = Callable[[torch.Tensor], torch.Tensor]
SlopeFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32 for half (and float32) inputs, float64 if any input is float64."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _to(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without dispatching the no-op case."""
    return t if t.dtype == dtype else t.to(dtype)


def _once_differentiable(fn):
    """``once_differentiable`` without its ``no_grad`` context in the usual case: a backward
    runs with grad mode off unless the caller asked for ``create_graph``."""
    guarded = once_differentiable(fn)

    @functools.wraps(fn)
    def wrapper(ctx, *args):
        if torch.is_grad_enabled():
            return guarded(ctx, *args)
        return fn(ctx, *args)

    return wrapper


def _forward(
    ctx,
    x: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor | None,
    scale: float,
    fn: MarginFn | None,
    slope_fn: SlopeFn | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``s * cos``, with the margin on the targets when ``fn`` or ``slope_fn`` is given; also
    the target logits ``[B, 1]`` (compute dtype; ``None`` without margin) and the ``[B, 1]``
    index of the targets (``None`` without labels). With a ``ctx``, stores what the backward
    needs on it (``labels`` is kept for the corrections even without margin)."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        mm_dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return _forward_body(ctx, x, weight, labels, scale, fn, slope_fn, mm_dtype)
    mm_dtype = x.dtype if x.dtype == weight.dtype else torch.promote_types(x.dtype, weight.dtype)
    return _forward_body(ctx, x, weight, labels, scale, fn, slope_fn, mm_dtype)


def _forward_body(ctx, x, weight, labels, scale, fn, slope_fn, mm_dtype):
    cdt = _compute_dtype(x.dtype, weight.dtype)
    xf, wf = _to(x, cdt), _to(weight, cdt)
    x_norm = torch.linalg.vector_norm(xf, dim=1, keepdim=True).clamp_min_(_NORM_EPS)
    w_norm = torch.linalg.vector_norm(wf, dim=1, keepdim=True).clamp_min_(_NORM_EPS)
    s_over_norm = x_norm.reciprocal_().mul_(scale)  # scale / x_norm, without Tensor.__rdiv__
    xs = xf * s_over_norm  # s * x / |x|
    wn = wf / w_norm
    xs_mm, wn_mm = _to(xs, mm_dtype), _to(wn, mm_dtype)
    logits = torch.mm(xs_mm, wn_mm.T)
    margin = slope = target = index = None
    if labels is not None:
        index = labels.unsqueeze(1)
        if fn is not None or slope_fn is not None:
            cos = _to(logits.gather(1, index), cdt).div_(scale)  # [B, 1]
            if slope_fn is not None:
                psi, slope = slope_fn(cos)
            elif ctx is not None:
                with torch.enable_grad():
                    leaf = cos.view(-1).detach().requires_grad_(True)
                    modified = fn(leaf)
                margin = (leaf, modified)
                psi = modified.detach().view(-1, 1)
            else:
                psi = fn(cos.view(-1)).view(-1, 1)
            target = psi * scale
            logits.scatter_(1, index, _to(target, logits.dtype))
    if ctx is not None:
        ctx.save_for_backward(xs, xs_mm, s_over_norm, wf, w_norm, labels, index)
        # not saved tensors: the backward reuses wn's memory as scratch (see _normalized_weights)
        ctx.wn = (wn, wn_mm)
        ctx.margin = margin
        ctx.slope = slope
        ctx.scale = scale
        ctx.dtypes = (x.dtype, weight.dtype, mm_dtype, cdt)
    return logits, target, index


def _backward(
    ctx,
    saved: tuple[torch.Tensor, ...],
    grad_logits: torch.Tensor,
    delta: torch.Tensor | None,
    grad_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients for ``x`` and ``weight`` from ``grad_logits * grad_scale`` (``[B, C]`` times a
    ``[B, 1]`` column) plus the target corrections ``delta`` (``[B, 1]`` or a scalar);
    ``saved`` is ``ctx.saved_tensors``, unpacked once by the caller."""
    device_type = grad_logits.device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return _backward_body(ctx, saved, grad_logits, delta, grad_scale)
    return _backward_body(ctx, saved, grad_logits, delta, grad_scale)


def _backward_body(ctx, saved, grad_logits, delta, grad_scale):
    xs, xs_mm, s_over_norm, wf, w_norm, labels, index = saved
    x_dtype, w_dtype, mm_dtype, cdt = ctx.dtypes
    wn, wn_mm = _normalized_weights(ctx, wf, w_norm, mm_dtype)
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if (
        (delta is not None or grad_scale is not None)
        and mm_dtype == cdt == grad_logits.dtype
        and grad_logits.shape[1] <= xs.shape[1]
    ):
        # C <= D: the [B, C] matrix is the smaller side, so the row factor and the target
        # corrections go into one gradient matrix (a new one: expz serves retain_graph too)
        if grad_scale is not None:
            grad_logits = grad_logits * grad_scale
        if delta is not None:
            delta = delta.expand(index.shape) if delta.dim() == 0 else delta
            scatter = torch.Tensor.scatter_add if grad_scale is None else torch.Tensor.scatter_add_
            grad_logits = scatter(grad_logits, 1, index, delta)
        grad_scale = delta = None
    grad_logits = _to(grad_logits, mm_dtype)
    grad_x = grad_w = None
    if need_x:
        grad_xs = _to(torch.mm(grad_logits, wn_mm), xs.dtype)
        if grad_scale is not None:
            grad_xs.mul_(grad_scale)
        if delta is not None:
            grad_xs.addcmul_(wn.index_select(0, labels), delta)
        # xs = s x / |x|:  dL/dx = (s / |x|) (g - u <g, u>) with u = x / |x| = xs / s
        dot = torch.linalg.vecdot(grad_xs, xs, dim=1).unsqueeze(1)
        grad_xs.addcmul_(xs, dot, value=-1.0 / ctx.scale**2)
        grad_x = _to(grad_xs.mul_(s_over_norm), x_dtype)
    if need_w:
        if grad_scale is None:
            grad_wn = _to(torch.mm(grad_logits.T, xs_mm), wn.dtype)
        else:  # scale the [B, D] side rather than the [B, C] gradient (rows of grad_logits)
            grad_wn = _to(torch.mm(grad_logits.T, _to(xs * grad_scale, mm_dtype)), wn.dtype)
        if delta is not None:
            grad_wn.index_add_(0, labels, xs * delta)
        # W -> wn = W / |W|: dL/dW = (g - wn <g, wn>) / |W| = (g - W <g, wn> / |W|) / |W|;
        # <g, wn> row by row, with wn's own memory as the scratch of the product
        dot = torch.mul(grad_wn, wn, out=wn).sum(dim=1, keepdim=True)
        ctx.wn = None
        grad_w = _to(grad_wn.addcmul_(wf, dot / w_norm, value=-1.0).div_(w_norm), w_dtype)
    return grad_x, grad_w


def _normalized_weights(
    ctx, wf: torch.Tensor, w_norm: torch.Tensor, mm_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``W / |W|`` (and its matmul-dtype copy) from the forward, or recomputed when an earlier
    backward of the same graph (``retain_graph=True``) used that memory as scratch."""
    if ctx.wn is not None:
        return ctx.wn
    wn = wf / w_norm
    return wn, _to(wn, mm_dtype)


def _margin_grad(ctx, grad_target: torch.Tensor) -> torch.Tensor:
    """``dL/dcos_t = psi'(cos_t) dL/dz_t`` (a new ``[B, 1]`` tensor); only called when the
    margin's slope is not 1."""
    if ctx.slope is not None:
        return grad_target * ctx.slope
    leaf, modified = ctx.margin
    # retain_graph: the B-element graph must survive an outer backward(retain_graph=True).
    (grad_cos,) = torch.autograd.grad(modified, leaf, grad_target.view(-1), retain_graph=True)
    return grad_cos.view(-1, 1)


def _has_slope(ctx) -> bool:
    """Whether the margin's derivative differs from 1 (else it adds no gradient correction)."""
    return ctx.slope is not None or ctx.margin is not None


class _MarginLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, labels, scale, fn, slope_fn):
        return _forward(ctx, x, weight, labels, scale, fn, slope_fn)[0]

    @staticmethod
    @_once_differentiable
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        delta = None
        if _has_slope(ctx):  # psi'(cos) dL/dz_t - dL/dz_t
            grad_target = _to(grad.gather(1, saved[-1]), ctx.dtypes[-1])
            delta = _margin_grad(ctx, grad_target).sub_(grad_target)
        grad_x, grad_w = _backward(ctx, saved, grad, delta)
        return grad_x, grad_w, None, None, None, None


def _cross_entropy(
    logits: torch.Tensor, index: torch.Tensor, target: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy; also ``exp(z - max z)`` (computed in place when ``logits`` is float32
    or float64, which the caller owns) and its row sums, from which the backward gets
    ``softmax = exp / sum`` without another pass over ``[B, C]``. ``target``: the ``[B, 1]``
    target logits when known in the compute dtype, else gathered."""
    z = _to(logits, _compute_dtype(logits.dtype))
    shift = z.amax(dim=1, keepdim=True)
    if target is None or target.dtype != logits.dtype:
        target = z.gather(1, index)
    expz = z.sub_(shift).exp_()
    total = expz.sum(dim=1, keepdim=True)
    loss = total.log().add_(shift).sub_(target).mean()
    return loss, expz, total


class _MarginCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, labels, scale, fn, slope_fn):
        logits, target, index = _forward(ctx, x, weight, labels, scale, fn, slope_fn)
        loss, ctx.expz, ctx.total = _cross_entropy(logits, index, target)
        return loss

    @staticmethod
    @_once_differentiable
    def backward(ctx, grad_loss):
        saved = ctx.saved_tensors
        expz, total = ctx.expz, ctx.total
        # dL/dz = w (softmax - onehot), w = grad / B, softmax = expz / total: the products run
        # on expz with the per-row factor w / total; the -w at the targets is a correction.
        w = _to(grad_loss, expz.dtype) / expz.shape[0]
        row = w / total  # [B, 1]
        if _has_slope(ctx):
            # the target entry is s * psi(cos): dL/dcos_t = psi'(cos) dL/dz_t
            p_w = expz.gather(1, saved[-1]).mul_(row)  # softmax_t * w
            grad_target = _to(p_w - w, ctx.dtypes[-1])  # dL/dz_t
            delta = _to(_margin_grad(ctx, grad_target), expz.dtype).sub_(p_w)
        else:  # no margin, or one of slope 1: dL/dcos_t = dL/dz_t
            delta = -w
        grad_x, grad_w = _backward(ctx, saved, expz, delta, grad_scale=row)
        return grad_x, grad_w, None, None, None, None


def _track(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


def margin_logits(
    x: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor | None,
    scale: float,
    fn: MarginFn | None,
    slope_fn: SlopeFn | None = None,
) -> torch.Tensor:
    """``scale * cos(x_i, w_j)`` ``[B, C]``; with ``labels`` the target entries become
    ``scale * fn(cos)``. ``slope_fn``, if given, replaces ``fn``: it maps the ``[B, 1]`` target
    cosines to ``(psi, dpsi/dcos)`` (``dpsi`` ``None`` for a slope of 1). Inputs must be
    validated by the caller."""
    if not _track(x, weight):  # plain tensor code: nothing to differentiate (and traceable)
        return _forward(None, x, weight, labels, scale, fn, slope_fn)[0]
    return _MarginLogits.apply(x, weight, labels, scale, fn, slope_fn)


def margin_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    scale: float,
    fn: MarginFn | None,
    slope_fn: SlopeFn | None = None,
) -> torch.Tensor:
    """``F.cross_entropy(margin_logits(x, weight, labels, scale, fn, slope_fn), labels)``
    (mean), fused; ``fn=None`` and ``slope_fn=None`` for no margin."""
    if not _track(x, weight):
        logits, target, index = _forward(None, x, weight, labels, scale, fn, slope_fn)
        return _cross_entropy(logits, index, target)[0]
    return _MarginCrossEntropy.apply(x, weight, labels, scale, fn, slope_fn)
