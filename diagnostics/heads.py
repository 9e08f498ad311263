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
    "unknown"), with where the kind came from ("declared" by the head's ``margin_type``,
    "class name" for a head that does not declare it, or "user" when stated: `stated_head`)."""

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


# --------------------------------------------------------------------------------------------
# Facts about a head stated by the caller, and where each of s, m and the kind came from
# --------------------------------------------------------------------------------------------

#: The margin kinds by the names users know them by (``--head-kind``).
KIND_NAMES = {"arcface": "angular", "cosface": "cosine"}

#: Where a head's s, m or kind can come from (``report.meta["head_provenance"]``).
PROVENANCES = (
    "user",  # stated: --head-s/--head-m/--head-kind, --model-kwargs, or head_info
    "checkpoint config",  # an entry of the checkpoint's config dict, passed to the factory
    "checkpoint state",  # a tensor of the head in the checkpoint's state dict
    "pickled module",  # an attribute of a pickled module, as saved
    "factory default",  # a plain attribute the model's factory set by itself
    "head attribute",  # read off the head module given to the library (origin unknown)
    "declared",  # kind: the head's ``margin_type``
    "class name",  # kind: guessed from the head's class name
)


def check_head_info(head_info: dict | None) -> dict:
    """``head_info`` checked once: ``s`` a finite number > 0, ``m`` a finite number >= 0
    (radians for angular margins), ``kind`` ``"angular"`` or ``"cosine"``, ``provenance`` a
    dict from ``"s"``/``"m"``/``"kind"`` to one of `PROVENANCES`. Other keys pass through.

    Raises ValueError/TypeError naming the entry and what was expected.
    """
    if head_info is None:
        return {}
    if not isinstance(head_info, dict):
        raise TypeError(f"head_info must be a dict, got {type(head_info).__name__}")
    info = dict(head_info)
    for key, low in (("s", 0.0), ("m", 0.0)):
        if key not in info:
            continue
        value = info[key]
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < low or (key == "s" and value == 0):
            what = "a finite number > 0" if key == "s" else "a finite number >= 0 (radians)"
            raise ValueError(f"head_info[{key!r}] must be {what}, got {info[key]!r}")
        info[key] = float(value)
    if "kind" in info and info["kind"] not in ("angular", "cosine"):
        raise ValueError(
            f"head_info['kind'] must be 'angular' (ArcFace-like) or 'cosine' (CosFace-like), "
            f"got {info['kind']!r}"
        )
    provenance = info.get("provenance", {})
    if not isinstance(provenance, dict) or not all(
        k in ("s", "m", "kind") and v in PROVENANCES for k, v in provenance.items()
    ):
        raise ValueError(
            "head_info['provenance'] must map 's', 'm' and 'kind' to one of "
            f"{list(PROVENANCES)}, got {provenance!r}"
        )
    return info


def stated_head(params: HeadParams | None, head_info: dict) -> HeadParams | None:
    """``params`` with the s, m and kind stated in ``head_info`` in place of those read off the
    module (the kind's source becomes ``"user"``); None without a head module."""
    if params is None:
        return None
    kind = head_info.get("kind", params.kind)
    return HeadParams(
        head_info.get("m", params.m),
        head_info.get("s", params.s),
        params.weight,
        kind,
        "user" if "kind" in head_info else params.kind_source,
    )


def stated_facts(head_info: dict) -> dict:
    """The s, m and kind stated in ``head_info`` (those of them it holds)."""
    return {k: head_info[k] for k in ("s", "m", "kind") if k in head_info}


def head_provenance(params: HeadParams | None, head_info: dict) -> dict | None:
    """Where the head's s, m and kind came from: ``{"s": ..., "m": ..., "kind": ...}`` (one of
    `PROVENANCES`, None for what is not known at all); None without a head or stated facts.

    ``head_info["provenance"]`` wins (the CLI knows the checkpoint); a stated value is
    ``"user"``; a value read off a head module is ``"head attribute"``, its kind
    ``params.kind_source``.
    """
    facts = stated_facts(head_info)
    if params is None and not facts:
        return None
    given = head_info.get("provenance", {})
    out = {}
    for key in ("s", "m", "kind"):
        if key in given:
            out[key] = given[key]
        elif key in facts:
            out[key] = "user"
        elif params is not None:
            out[key] = params.kind_source if key == "kind" else "head attribute"
        else:
            out[key] = None
    return out


def head_meta(params: HeadParams | None, head_info: dict) -> dict:
    """The report's ``meta`` entries about the head: ``head_kind`` (``"unknown"`` for stated
    s/m without a kind), ``head_kind_source`` and ``head_provenance``."""
    provenance = head_provenance(params, head_info)
    if params is not None:
        kind = params.kind
    elif provenance is not None:
        kind = head_info.get("kind", "unknown")
    else:
        kind = None
    return {
        "head_kind": kind,
        "head_kind_source": None if provenance is None else provenance["kind"],
        "head_provenance": provenance,
    }


def provenance_reasons(provenance: dict | None, s: float, m: float) -> dict[str, str]:
    """Reasons for ``head.s``/``head.m`` that are the model factory's defaults: they may not be
    the values the model was trained with."""
    out = {}
    for key, value in (("s", s), ("m", m)):
        if provenance and provenance.get(key) == "factory default":
            out[f"head.{key}"] = (
                f"{key} = {value:g} is the model factory's default: the checkpoint holds no "
                f"config entry or tensor for it; if the model was trained with another {key}, "
                f"state it (--head-{key}, or head_info={{'{key}': ...}})"
            )
    return out


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
        near 0 the weights ignore the data, near 1 they point at it. For random weights it has
        mean 0 and standard deviation sigma = 1 / sqrt(D (P - 1)) over P >= 2 classes present
        (1 / sqrt(D) for one).
    head.dead_class_count: classes present in the labels that are never the argmax.
    head.looks_untrained: 1 when the alignment is under min(3 sigma, 0.5), or the weights were
        missing. No claim (0, with the reason) when 3 sigma >= 1: with so few dimensions and
        classes present even a perfectly aligned head is within random weights' spread, so a
        low alignment there says nothing about training.
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
    n_present = int(use.sum())
    spread = 3.0 / math.sqrt(w.shape[1] * max(n_present - 1, 1))  # 3 sigma of random weights
    chance = min(spread, 0.5)
    powerless = spread >= 1.0
    untrained = missing or (not math.isnan(alignment) and not powerless and alignment < chance)
    out["head.looks_untrained"] = 1.0 if untrained else 0.0
    if missing:
        reasons["head.looks_untrained"] = "the head's weights were missing from the checkpoint"
    elif untrained:
        reasons["head.looks_untrained"] = (
            f"class weights align with their class means no better than chance "
            f"(mean cos {alignment:.3f} < min(3 sigma, 0.5) = {chance:.3f}, sigma = "
            f"1/sqrt(D (P - 1)) for D = {w.shape[1]} and P = {n_present} classes present)"
        )
    elif powerless and not math.isnan(alignment):
        reasons["head.looks_untrained"] = (
            f"not judged: with D = {w.shape[1]} and {n_present} classes present, random "
            f"weights' alignment spreads as widely as a trained head's (3 sigma = {spread:.2f})"
        )
    if predicted_counts is not None:
        pc = predicted_counts[:k]
        out["head.dead_class_count"] = float(((pc == 0) & use).sum())
    return out, reasons
