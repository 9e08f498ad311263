"""Loss heads and losses for margin-based and metric learning.

Margin heads return logits; train them with ``F.cross_entropy(head(x, y), y)`` (or
``head.loss(x, y)``). In eval mode their output is ``s * cos`` with or without labels.
Multi-term losses return ``(total, {name: term})``.
"""

from .binary import BCEHead
from .center import CenterLoss
from .classification import DiceLoss, FocalDiceLoss, FocalLoss, LabelSmoothingCrossEntropy
from .fusion import FUSION_PRESETS, FusionLoss, attention_loss, consistency_loss
from .margin import ArcFaceHead, CosFaceHead, MarginHead
from .registry import build_head, head_config, known_heads, register_head
from .triplet import TripletLoss

__all__ = [
    "ArcFaceHead",
    "BCEHead",
    "CenterLoss",
    "CosFaceHead",
    "DiceLoss",
    "FUSION_PRESETS",
    "FocalDiceLoss",
    "FocalLoss",
    "FusionLoss",
    "LabelSmoothingCrossEntropy",
    "MarginHead",
    "TripletLoss",
    "attention_loss",
    "build_head",
    "consistency_loss",
    "head_config",
    "known_heads",
    "register_head",
]
