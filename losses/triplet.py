"""Triplet loss on given triplets, or batch-hard mined from a labelled batch."""

from __future__ import annotations

import torch
from torch import nn

from ._validation import check_choice, check_class_labels, check_embedding, check_real

# Floor of the squared Euclidean distance under the square root (finite gradient at 0).
_DIST2_EPS = 1e-12


def _paired_distance(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    if distance == "cosine":
        return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)
    return torch.sqrt(((a - b) ** 2).sum(dim=1).clamp_min(_DIST2_EPS))


def _pairwise_distance(x: torch.Tensor, distance: str) -> torch.Tensor:
    if distance == "cosine":
        xn = torch.nn.functional.normalize(x, dim=1, eps=1e-12)
        return 1.0 - xn @ xn.T
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    return torch.sqrt(d2.clamp_min(_DIST2_EPS))


class TripletLoss(nn.Module):
    r"""Triplet loss ``mean relu(d(a, p) - d(a, n) + margin)``.

    Schroff et al., "FaceNet", CVPR 2015; batch-hard mining from Hermans et al.,
    "In Defense of the Triplet Loss for Person Re-Identification", 2017.

    Distances: ``"cosine"``: ``1 - cos(a, b)`` in ``[0, 2]``; ``"euclidean"``: ``|a - b|_2``
    (not squared; ``sqrt(max(., 1e-12))`` keeps gradients finite at 0).

    Two call forms, told apart by the number of tensors:

    - ``loss(anchor, positive, negative)``, each ``[B, D]``: the mean over the B given triplets
      (whatever ``mining``; the caller already chose them).
    - ``loss(embeddings, labels)`` with ``embeddings [B, D]`` and integer ``labels [B]``, only
      with ``mining="hard"``: for each anchor the farthest same-label sample and the nearest
      other-label sample; the mean over the anchors that have both. When no anchor has both
      (one label in the batch, or all labels distinct) there is nothing to learn from: the loss
      is 0 (still attached to the graph, zero gradient) and ``d_ap``, ``d_an`` are empty.

    Returns ``(loss, d_ap, d_an)``: the scalar loss and the per-triplet (per-anchor used)
    distances, for logging the gap ``d_an - d_ap`` (larger is better).

    Parameters
    ----------
    margin : float
        >= 0.
    mining : {"none", "hard"}
    distance : {"cosine", "euclidean"}
    """

    def __init__(self, margin: float = 0.5, mining: str = "none", distance: str = "cosine") -> None:
        super().__init__()
        self.margin = check_real(margin, "margin", low=0.0)
        self.mining = check_choice(mining, "mining", ("none", "hard"))
        self.distance = check_choice(distance, "distance", ("cosine", "euclidean"))

    def forward(
        self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if negative is None:
            return self._batch_hard(anchor, positive)
        check_embedding(anchor, None, "anchor")
        for name, other in (("positive", positive), ("negative", negative)):
            check_embedding(other, anchor.shape[1], name)
            if other.shape != anchor.shape:
                raise ValueError(
                    f"{name} must have the shape of anchor {list(anchor.shape)}, "
                    f"got {list(other.shape)}"
                )
        d_ap = _paired_distance(anchor, positive, self.distance)
        d_an = _paired_distance(anchor, negative, self.distance)
        loss = torch.relu(d_ap - d_an + self.margin).mean()
        return loss, d_ap, d_an

    def _batch_hard(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.mining != "hard":
            raise ValueError(
                "the batch form loss(embeddings, labels) needs mining='hard'; with "
                "mining='none' call loss(anchor, positive, negative)"
            )
        check_embedding(embeddings, None, "embeddings")
        if isinstance(labels, torch.Tensor) and labels.is_floating_point():
            raise ValueError(
                f"labels must be an integer tensor of class indices, got dtype {labels.dtype} "
                "(two tensors select the batch form loss(embeddings, labels); pass a negative "
                "for the triplet form)"
            )
        check_class_labels(labels, embeddings.shape[0], None)
        labels = labels.to(embeddings.device)
        dist = _pairwise_distance(embeddings, self.distance)
        same = labels[:, None] == labels[None, :]
        positive = same.clone()
        positive.fill_diagonal_(False)
        negative = ~same
        d_ap = torch.where(positive, dist, -torch.inf).amax(dim=1)
        d_an = torch.where(negative, dist, torch.inf).amin(dim=1)
        used = positive.any(dim=1) & negative.any(dim=1)
        d_ap, d_an = d_ap[used], d_an[used]
        if d_ap.numel() == 0:
            return dist.sum() * 0.0, d_ap, d_an
        return torch.relu(d_ap - d_an + self.margin).mean(), d_ap, d_an
