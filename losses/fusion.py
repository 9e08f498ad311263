"""The multi-term loss of the user's two-modality attention-fusion model (seed 002)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._validation import (
    check_choice,
    check_class_labels,
    check_embedding,
    check_float_tensor,
    check_positive_int,
    check_real,
)
from .center import CenterLoss
from .classification import LabelSmoothingCrossEntropy

#: Term weights of each preset (the four modes of the two-view fusion loss).
FUSION_PRESETS: dict[str, dict[str, float]] = {
    "simple": {"w_cls": 1.0, "w_consistency": 0.0, "w_attention": 0.0, "w_center": 0.0},
    "standard": {"w_cls": 1.0, "w_consistency": 0.1, "w_attention": 0.0, "w_center": 0.0},
    "full": {"w_cls": 1.0, "w_consistency": 0.1, "w_attention": 0.05, "w_center": 0.0},
    "advanced": {"w_cls": 1.0, "w_consistency": 0.1, "w_attention": 0.05, "w_center": 0.01},
}


def consistency_loss(
    global_feat: torch.Tensor, local_feat: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    r"""Symmetric InfoNCE between the global and local features of the same samples.

    ``S = cos(g_i, l_j) / T``; ``loss = (CE(S, i) + CE(S^T, i)) / 2``: each sample's global
    feature must pick its own local feature out of the batch, and vice versa (Oord et al., 2018;
    Chen et al., SimCLR, ICML 2020). ``[B, D]`` each; range ``[0, inf)``, ``log B`` at chance.
    """
    g = F.normalize(
        global_feat.float()
        if global_feat.dtype in (torch.float16, torch.bfloat16)
        else global_feat,
        dim=1,
    )
    loc = F.normalize(local_feat.to(g.dtype), dim=1)
    sim = g @ loc.T / temperature
    target = torch.arange(sim.shape[0], device=sim.device)
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))


def attention_loss(attn_a: torch.Tensor, attn_b: torch.Tensor) -> torch.Tensor:
    r"""Attention balance plus diversity for two modality attention maps.

    ``balance = (mean(a) - 0.5)^2 + (mean(b) - 0.5)^2`` (neither modality dominates) and
    ``diversity = exp(-var(a)) + exp(-var(b))`` (weights are not uniform), means and population
    variances over all elements. Range ``(0, 2.5]``; lower is better.
    """
    a = attn_a.float() if attn_a.dtype in (torch.float16, torch.bfloat16) else attn_a
    b = attn_b.to(a.dtype)
    balance = (a.mean() - 0.5) ** 2 + (b.mean() - 0.5) ** 2
    diversity = torch.exp(-a.var(correction=0)) + torch.exp(-b.var(correction=0))
    return balance + diversity


class FusionLoss(nn.Module):
    r"""Classification + modality consistency + attention regularisation + center loss.

    ``total = w_cls * CE_ls(logits, y) + w_consistency * InfoNCE(global, local)
    + w_attention * (balance + diversity)(attn_a, attn_b) + w_center * center(features, y)``

    with ``CE_ls`` the label-smoothed cross-entropy (:class:`LabelSmoothingCrossEntropy`),
    :func:`consistency_loss`, :func:`attention_loss` and :class:`CenterLoss`. Presets
    (:data:`FUSION_PRESETS`): ``simple`` (classification only), ``standard`` (+ consistency
    0.1), ``full`` (+ attention 0.05), ``advanced`` (+ center 0.01); ``**weights`` override them.

    Returns ``(total, {"cls": ..., "cons": ..., "attn": ..., "cent": ...})``: each term as it
    enters the total (already weighted, so they sum to it); a term with weight 0 is not computed
    and reported as a zero tensor. The centres of the center term (when its weight is > 0) are
    parameters of this module: give them to the optimiser.

    Parameters
    ----------
    num_classes : int
    feat_dim : int
        Size of ``features`` for the center term (for two fused views: global + local dims).
    mode : {"simple", "standard", "full", "advanced"}
    label_smoothing : float
        In ``[0, 1]``, default 0.1.
    temperature : float
        InfoNCE temperature, > 0, default 0.1.
    **weights : float
        ``w_cls``, ``w_consistency``, ``w_attention``, ``w_center`` (>= 0).
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        mode: str = "standard",
        *,
        label_smoothing: float = 0.1,
        temperature: float = 0.1,
        **weights: float,
    ) -> None:
        super().__init__()
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.feat_dim = check_positive_int(feat_dim, "feat_dim")
        self.mode = check_choice(mode, "mode", tuple(FUSION_PRESETS))
        self.temperature = check_real(temperature, "temperature", low=0.0, low_open=True)
        resolved = dict(FUSION_PRESETS[mode])
        unknown = sorted(set(weights) - set(resolved))
        if unknown:
            raise ValueError(f"unknown weights {unknown}; expected some of {sorted(resolved)}")
        for name, value in weights.items():
            resolved[name] = check_real(value, name, low=0.0)
        self.weights = resolved
        self.classification = LabelSmoothingCrossEntropy(label_smoothing)
        self.center = CenterLoss(num_classes, feat_dim) if resolved["w_center"] > 0 else None

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        global_feat: torch.Tensor | None = None,
        local_feat: torch.Tensor | None = None,
        attn_a: torch.Tensor | None = None,
        attn_b: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its weighted terms.

        Parameters
        ----------
        logits : ``[B, C]``
        labels : integer ``[B]``
        global_feat, local_feat : ``[B, D]`` each (consistency term)
        attn_a, attn_b : attention weights of the two modalities, any shape (attention term)
        features : ``[B, feat_dim]`` (center term)
        """
        w = self.weights
        check_embedding(logits, self.num_classes, "logits")
        check_class_labels(labels, logits.shape[0], self.num_classes)
        batch = logits.shape[0]
        zero = logits.new_zeros((), dtype=torch.promote_types(logits.dtype, torch.float32))
        terms = {"cls": zero, "cons": zero, "attn": zero, "cent": zero}

        if w["w_cls"] > 0:
            terms["cls"] = w["w_cls"] * self.classification(logits, labels)
        if w["w_consistency"] > 0:
            self._require(global_feat=global_feat, local_feat=local_feat)
            check_embedding(global_feat, None, "global_feat")
            check_embedding(local_feat, global_feat.shape[1], "local_feat")
            for name, feat in (("global_feat", global_feat), ("local_feat", local_feat)):
                if feat.shape[0] != batch:
                    raise ValueError(
                        f"{name} must have {batch} rows (the batch of logits), got {feat.shape[0]}"
                    )
            terms["cons"] = w["w_consistency"] * consistency_loss(
                global_feat, local_feat, self.temperature
            )
        if w["w_attention"] > 0:
            self._require(attn_a=attn_a, attn_b=attn_b)
            for name, attn in (("attn_a", attn_a), ("attn_b", attn_b)):
                check_float_tensor(attn, name)
                if attn.numel() == 0:
                    raise ValueError(f"{name} must not be empty, got shape {list(attn.shape)}")
            terms["attn"] = w["w_attention"] * attention_loss(attn_a, attn_b)
        if self.center is not None:
            self._require(features=features)
            check_embedding(features, self.feat_dim, "features")
            if features.shape[0] != batch:
                raise ValueError(
                    f"features must have {batch} rows (the batch of logits), "
                    f"got {features.shape[0]}"
                )
            terms["cent"] = w["w_center"] * self.center(features, labels)

        total = terms["cls"] + terms["cons"] + terms["attn"] + terms["cent"]
        return total, terms

    def _require(self, **inputs: torch.Tensor | None) -> None:
        for name, value in inputs.items():
            if value is None:
                raise ValueError(
                    f"{name} is required by mode={self.mode!r} with weights "
                    f"{self.weights} (set its weight to 0 to switch the term off)"
                )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, mode={self.mode!r}, "
            f"weights={self.weights}, temperature={self.temperature:g}"
        )
