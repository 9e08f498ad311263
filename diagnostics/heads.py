"""Margin heads seen from the outside: finding them by duck typing, probing for a margin applied
at evaluation, per-sample angles, and the health of the class weights."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .forward import labels_parameter, logits_or_embedding

NAN = float("nan")


def _number(module: nn.Module, *names: str) -> float | None:
    for name in names:
        v = getattr(module, name, None)
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def is_margin_head(module: nn.Module) -> bool:
    """A module with a 2-D ``weight`` [C, D] and numeric ``m``/``margin`` and ``s``/``scale``."""
    w = getattr(module, "weight", None)
    return (
        isinstance(w, torch.Tensor)
        and w.ndim == 2
        and _number(module, "m", "margin") is not None
        and _number(module, "s", "scale") is not None
    )


def find_margin_head(model: nn.Module) -> nn.Module | None:
    """The last submodule (in registration order) that looks like a margin head, or None."""
    found = None
    for module in model.modules():
        if is_margin_head(module):
            found = module
    return found


@dataclass(frozen=True)
class HeadParams:
    """What diagnostics read from a margin head: m (radians for angular margins), s, the class
    weights [C, D] and the margin kind ("angular" for ArcFace-like, "cosine" for CosFace-like,
    "unknown"), with where the kind came from ("declared" by the head's ``margin_type``, or
    "class name" for a head that does not declare it)."""

    m: float
    s: float
    weight: torch.Tensor
    kind: str
    kind_source: str = "declared"

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]


def head_params(head: nn.Module) -> HeadParams:
    if not is_margin_head(head):
        raise TypeError(
            f"head must have a 2-D weight [C, D] and numeric m/margin and s/scale, "
            f"got {type(head).__name__}"
        )
    kind, source = getattr(head, "margin_type", None), "declared"
    if kind not in ("angular", "cosine"):
        # a head from another library that does not declare its margin: its class name is
        # the only hint (ArcFace-like names hold "arc", CosFace/AM-softmax-like "cos")
        name = type(head).__name__.lower()
        kind = "angular" if "arc" in name else "cosine" if "cos" in name else "unknown"
        source = "class name"
    return HeadParams(
        _number(head, "m", "margin"),
        _number(head, "s", "scale"),
        head.weight.detach(),
        kind,
        source,
    )


@torch.no_grad()
def probe_margin_leak(model: nn.Module, inputs, labels) -> bool:
    """Whether the model's eval-mode output changes when labels are passed.

    Runs ``model(inputs)`` and ``model(inputs, labels=labels)`` in eval mode (the labels go by
    the name of ``forward``'s labels parameter, see `embscope.diagnostics.forward`) and compares
    the logits (or the embedding of a model without logits). True means the margin leaks into
    evaluation: reported logits are then not what inference computes. Returns False when
    ``forward`` takes no labels. The modules' training flags are restored.
    """
    parameter = labels_parameter(model)
    if parameter is None:
        return False
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        plain = logits_or_embedding(model(inputs))
        with_labels = logits_or_embedding(model(inputs, **{parameter: labels}))
    finally:
        for m, mode in modes.items():
            m.training = mode
    if plain.shape != with_labels.shape:
        return True
    scale = float(plain.abs().max()) if plain.numel() else 1.0
    return not torch.allclose(plain, with_labels, rtol=1e-5, atol=1e-6 * max(scale, 1.0))


def _angles_update(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, norms: torch.Tensor | None = None
):
    """Angle (degrees) of each embedding to its class weight and to the nearest other one."""
    w = F.normalize(weight.detach().to(x.device, torch.float32), dim=1)
    if norms is None:
        norms = torch.linalg.vector_norm(x, dim=1)
    # unit rows first, in the rows' own dtype: rows of any finite magnitude (float64 beyond
    # float32's range, or tiny ones) keep their direction
    unit = (x / norms.to(x.dtype).clamp_min(torch.finfo(x.dtype).tiny)[:, None]).float()
    cos = unit @ w.T
    true = cos.gather(1, y[:, None])[:, 0]
    if cos.shape[1] > 1:
        other = cos.scatter(1, y[:, None], -2.0).amax(dim=1)
    else:
        other = torch.full_like(true, NAN)
    deg = 180.0 / math.pi
    return (
        torch.arccos(true.clamp(-1, 1)).double() * deg,
        torch.arccos(other.clamp(-1, 1)).double() * deg,
    )


def min_weight_angle(weight: torch.Tensor, chunk: int = 2048) -> float:
    """Smallest angle (degrees) between two distinct class weight vectors, in row blocks."""
    w = F.normalize(weight.detach().float(), dim=1)
    c = w.shape[0]
    if c < 2:
        return NAN
    best = -1.0
    for start in range(0, c, chunk):
        block = w[start : start + chunk] @ w.T
        rows = torch.arange(block.shape[0], device=block.device)
        block[rows, rows + start] = -2.0
        best = max(best, float(block.max()))
    return math.degrees(math.acos(max(-1.0, min(1.0, best))))


def head_health(
    params: HeadParams,
    class_means: torch.Tensor,
    present: torch.Tensor,
    predicted_counts: torch.Tensor | None,
    missing: bool = False,
) -> tuple[dict, dict]:
    """Metrics of the class weights and the reasons behind any nan.

    head.weight_norm_cv: std / mean of the weight row norms (spread; 0 = equal norms).
    head.min_weight_angle: smallest angle between two class weights, degrees.
    head.centroid_alignment: mean over classes of cos(w_c - mean w, mu_c - mean mu), unit
        weights and class means each centred on their own average over the classes present
        (the softmax ignores a shift shared by all weights, so only the centred parts train);
        near 0 (within 3 / sqrt(D), the spread of random directions) the weights ignore the
        data, near 1 they point at it.
    head.dead_class_count: classes present in the labels that are never the argmax.
    head.looks_untrained: 1 when the alignment is under min(3 / sqrt(D), 0.5) or the weights
        were missing.
    """
    w = params.weight.detach().double().cpu()
    norms = w.norm(dim=1)
    out = {
        "head.s": params.s,
        "head.m": params.m,
        "head.num_classes": float(w.shape[0]),
        "head.weight_norm_cv": float(norms.std(unbiased=False) / norms.mean())
        if norms.mean() > 0
        else NAN,
        "head.min_weight_angle": min_weight_angle(params.weight),
    }
    reasons = {}
    k = min(w.shape[0], class_means.shape[0])
    use = present[:k].clone()
    if use.any():
        wu = F.normalize(w[:k][use], dim=1)
        mu = class_means[:k][use].double()
        if int(use.sum()) >= 2:
            wu, mu = wu - wu.mean(0), mu - mu.mean(0)
        cos = F.cosine_similarity(wu, mu, dim=1)
        alignment = float(cos.mean())
    else:
        alignment = NAN
        reasons["head.centroid_alignment"] = "no class of the head occurs in the labels"
    out["head.centroid_alignment"] = alignment
    chance = min(3.0 / math.sqrt(w.shape[1]), 0.5)
    untrained = missing or (not math.isnan(alignment) and alignment < chance)
    out["head.looks_untrained"] = 1.0 if untrained else 0.0
    if missing:
        reasons["head.looks_untrained"] = "the head's weights were missing from the checkpoint"
    elif untrained:
        reasons["head.looks_untrained"] = (
            f"class weights align with their class means no better than chance "
            f"(mean cos {alignment:.3f} < min(3/sqrt(D), 0.5) = {chance:.3f})"
        )
    if predicted_counts is not None:
        pc = predicted_counts[:k]
        out["head.dead_class_count"] = float(((pc == 0) & use).sum())
    return out, reasons
