"""Center loss: pull each feature towards a learnable centre of its class."""

from __future__ import annotations

import torch
from torch import nn

from ._validation import check_class_labels, check_embedding, check_positive_int


class CenterLoss(nn.Module):
    r"""``L = 0.5 * mean_i ||x_i - c_{y_i}||^2`` with learnable class centres ``c``.

    Wen et al., "A Discriminative Feature Learning Approach for Deep Face Recognition",
    ECCV 2016. Convention: the paper's ``1/2 sum_i`` over the mini-batch is taken as a mean over
    the batch (so the weight of the term does not depend on the batch size), and the centres are
    ordinary parameters updated by the optimiser (put this module's parameters in it) rather than
    by the paper's separate centre-update rule. Range ``[0, inf)``, lower is more compact.

    Parameters
    ----------
    num_classes : int
        C.
    feat_dim : int
        D.

    Attributes
    ----------
    centers : nn.Parameter ``[C, D]``
        Initialised from a standard normal.
    """

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.feat_dim = check_positive_int(feat_dim, "feat_dim")
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar loss for ``features [B, D]`` and integer ``labels [B]`` in ``[0, C)``."""
        check_embedding(features, self.feat_dim, "features")
        check_class_labels(labels, features.shape[0], self.num_classes)
        diff = features - self.centers.index_select(0, labels.to(self.centers.device))
        return 0.5 * (diff * diff).sum(dim=1).mean()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feat_dim={self.feat_dim}"
