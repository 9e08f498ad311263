"""The model code of the CI example: what ``diagnose --model digits_model.py:build`` imports.

``build(**config)`` returns a ten-class digit classifier, an MLP embedding (64 -> 64 -> 16)
with an ArcFace head; its ``forward(x, labels=None)`` returns ``(embedding, logits)``, so the
``diagnose`` command takes both from the model's output.
"""

from __future__ import annotations

from torch import nn

from embscope.demo import DigitsNet
from embscope.losses import ArcFaceHead


def build(hidden: int = 64, embedding_dim: int = 16, m: float = 0.3, s: float = 16.0) -> nn.Module:
    head = ArcFaceHead(embedding_dim, 10, m=m, s=s)
    return DigitsNet(head, hidden=hidden, embedding_dim=embedding_dim)
