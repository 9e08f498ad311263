"""The Diagnoser's side of dense batches: ``update``, ``merge`` and the exact twin.

``Diagnoser.update`` hands a dense batch (``segmentation.is_dense``) to :func:`dense_update`,
``Diagnoser.merge`` two Diagnosers of which one holds dense batches to :func:`dense_merge`.
"""

from __future__ import annotations

import copy

from .reservoir import Reservoir
from .segmentation import DenseState, is_dense


def dense_update(d, embeddings, labels, logits, ids) -> None:
    """``Diagnoser.update`` for a dense batch: into ``d._dense`` (created on the first)."""
    if d._dense is None:
        if d.dim is not None:
            raise ValueError(
                "this Diagnoser was fed [B, D] rows; dense batches (masks [B, H, W] with "
                "logits [B, C, H, W]) need their own Diagnoser"
            )
        d._dense = DenseState(
            ignore_index=d.ignore_index, capacity=d.reservoir.capacity, seed=d.seed, twin=_twin(d)
        )
    elif not is_dense(labels, logits):
        raise ValueError(
            "this Diagnoser was fed dense batches (masks with logits [B, C, H, W]); "
            f"labels of shape {tuple(getattr(labels, 'shape', ()))} cannot join them"
        )
    d._dense.update(embeddings, labels, logits, ids)


def dense_merge(d, other) -> None:
    """``Diagnoser.merge`` when either side holds dense batches."""
    if other._dense is None and other.dim is None:
        return
    if (d._dense is None and d.dim is not None) or (other._dense is None):
        raise ValueError("cannot merge a Diagnoser of dense batches with one of [B, D] rows")
    if other.ignore_index != d.ignore_index:
        raise ValueError(f"cannot merge: ignore_index {other.ignore_index} vs {d.ignore_index}")
    if d._dense is None:
        d._dense = DenseState(
            ignore_index=d.ignore_index, capacity=d.reservoir.capacity, seed=d.seed, twin=_twin(d)
        )
    d._dense.merge(other._dense)


def _twin(d):
    """A Diagnoser with ``d``'s options and no reservoir (see ``DenseState``)."""
    twin = copy.copy(d)
    twin.reservoir = Reservoir(0, d.seed)
    twin.sync_on_compute = False
    twin.reset()  # a fresh state of its own (and no dense state)
    return twin
