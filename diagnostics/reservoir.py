"""A bounded, mergeable uniform sample of embeddings (bottom-k sampling on content hashes).

Each row gets a pseudo-random 63-bit key computed from its own bits, its label and the seed, and
the reservoir keeps the ``capacity`` rows with the smallest keys. The kept set therefore does not
depend on batch sizes, sample order, sharding or merge order, and it is exactly the whole input
when N <= capacity.
"""

from __future__ import annotations

import torch

_MASK63 = (1 << 63) - 1
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
_M1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_M2 = -7723592293110705685  # 0x94D049BB133111EB
_HASHED_DIMS = 64


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser: a bijection of int64 that scatters nearby inputs."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def row_keys(rows: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Keys in [0, 2^63) from the float32 bits of (up to 64 evenly spaced) columns, the label and
    the seed. Integer arithmetic only, so a row gets the same key in any batch."""
    d = rows.shape[1]
    cols = torch.linspace(0, d - 1, min(d, _HASHED_DIMS)).round().long().unique()
    bits = rows[:, cols.to(rows.device)].float().contiguous().view(torch.int32).long()
    coef = _mix(torch.arange(1, len(cols) + 1, dtype=torch.int64, device=rows.device) * _GOLDEN)
    h = (bits * (coef | 1)).sum(dim=1)  # wraps modulo 2^64: exact and order-free
    h = _mix(h ^ _mix(labels.long() * _GOLDEN + int(seed)))
    return h & _MASK63


class Reservoir:
    """At most ``capacity`` rows (float32, on the CPU) with their labels and keys."""

    def __init__(self, capacity: int, seed: int = 0):
        if not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"reservoir_size must be a non-negative integer, got {capacity!r}")
        self.capacity = capacity
        self.seed = int(seed)
        self.reset()

    def reset(self) -> None:
        self.rows: torch.Tensor | None = None
        self.labels = torch.zeros(0, dtype=torch.int64)
        self.keys = torch.zeros(0, dtype=torch.int64)
        self.seen = 0

    @property
    def exact(self) -> bool:
        """True when the reservoir holds every row it was offered."""
        return self.seen <= self.capacity

    def __len__(self) -> int:
        return len(self.keys)

    def update(self, raw: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor) -> None:
        """Offer a batch: ``raw`` rows are hashed, ``rows`` (e.g. normalised) are stored."""
        self.seen += len(labels)
        if self.capacity == 0 or len(labels) == 0:
            return
        self._offer(row_keys(raw, labels, self.seed), rows, labels)

    def merge(self, other: Reservoir) -> None:
        if other.capacity != self.capacity or other.seed != self.seed:
            raise ValueError(
                "cannot merge reservoirs with different reservoir_size or seed "
                f"({self.capacity}, {self.seed}) vs ({other.capacity}, {other.seed})"
            )
        self.seen += other.seen
        if len(other):
            self._offer(other.keys, other.rows, other.labels)

    def _offer(self, keys: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor) -> None:
        keys = keys.cpu()
        if len(self) == self.capacity:
            take = keys < self.keys.max()
            if not bool(take.any()):
                return
            keys = keys[take]
            rows, labels = rows[take.to(rows.device)], labels[take.to(labels.device)]
        rows = rows.detach().to("cpu", torch.float32)
        labels = labels.cpu()
        if self.rows is None:
            self.rows = rows[:0].clone()
        if rows.shape[1] != self.rows.shape[1]:
            raise ValueError(
                f"embeddings have {rows.shape[1]} columns, earlier batches had {self.rows.shape[1]}"
            )
        if len(self) + len(keys) <= self.capacity:
            self.rows = torch.cat([self.rows, rows])
            self.labels = torch.cat([self.labels, labels])
            self.keys = torch.cat([self.keys, keys])
            return
        all_keys = torch.cat([self.keys, keys])
        # (key, position) ordering makes equal keys (duplicate rows) resolve deterministically
        keep = torch.argsort(all_keys, stable=True)[: self.capacity]
        if len(self) < self.capacity:
            self.rows = torch.cat([self.rows, rows])[keep]
            self.labels = torch.cat([self.labels, labels])[keep]
            self.keys = all_keys[keep]
            return
        new = keep[keep >= len(self)] - len(self)
        kept_old = torch.zeros(len(self), dtype=torch.bool)
        kept_old[keep[keep < len(self)]] = True
        slots = torch.nonzero(~kept_old)[:, 0]
        self.rows[slots] = rows[new]
        self.labels[slots] = labels[new]
        self.keys[slots] = keys[new]

    def state(self) -> dict:
        return {"rows": self.rows, "labels": self.labels, "keys": self.keys, "seen": self.seen}
