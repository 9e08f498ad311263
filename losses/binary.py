"""A single-logit binary head with its BCE loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._validation import check_binary_targets, check_embedding, check_positive_int, check_real
from .registry import register_head


@register_head("bce")
class BCEHead(nn.Module):
    r"""Linear binary head: one logit ``z = w . x + b`` per sample, trained with BCE.

    ``loss = mean_i -[p y_i log sigmoid(z_i) + (1 - y_i) log(1 - sigmoid(z_i))]`` with ``p`` the
    ``pos_weight`` (1 when None), as ``F.binary_cross_entropy_with_logits``.

    Parameters
    ----------
    embedding_dim : int
        D.
    pos_weight : float or None
        Weight of the positive class (> 0), e.g. ``n_negative / n_positive`` for imbalanced data.

    Attributes
    ----------
    linear : nn.Linear
        ``D -> 1``.
    """

    def __init__(self, embedding_dim: int, pos_weight: float | None = None) -> None:
        super().__init__()
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
        self.pos_weight = (
            None
            if pos_weight is None
            else check_real(pos_weight, "pos_weight", low=0.0, low_open=True)
        )
        self.linear = nn.Linear(embedding_dim, 1)

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B]`` for ``embedding [B, D]``; ``labels`` are accepted and ignored (same call
        as the margin heads; a linear head has no margin to leak)."""
        check_embedding(embedding, self.embedding_dim)
        return self.linear(embedding).squeeze(1)

    def loss(self, embedding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean BCE-with-logits for binary (or soft) ``labels [B]`` in ``[0, 1]``."""
        logits = self(embedding)
        check_binary_targets(labels, tuple(logits.shape))
        pos_weight = (
            None
            if self.pos_weight is None
            else torch.tensor(self.pos_weight, dtype=logits.dtype, device=logits.device)
        )
        return F.binary_cross_entropy_with_logits(
            logits, labels.to(logits.dtype), pos_weight=pos_weight
        )

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, pos_weight={self.pos_weight}"
