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


def _column_hash(rows: torch.Tensor, labels: torch.Tensor, seed: int, n_cols: int) -> torch.Tensor:
    """63-bit hash of the float32 bits of up to ``n_cols`` evenly spaced columns, the label and
    the seed. Integer arithmetic only (wrapping modulo 2^64), so a row gets the same hash in
    any batch, on any device."""
    d = rows.shape[1]
    cols = torch.linspace(0, d - 1, min(d, n_cols)).round().long().unique()
    bits = rows.index_select(1, cols.to(rows.device)).float().contiguous().view(torch.int32)
    coef = (_mix(torch.arange(1, len(cols) + 1, dtype=torch.int64) * _GOLDEN) | 1).tolist()
    h = torch.zeros(rows.shape[0], dtype=torch.int64, device=rows.device)
    for j, c in enumerate(coef):  # column by column: 1-D integer ops are the fast ones
        h += bits[:, j].long() * c
    h = _mix(h ^ _mix(labels.long() * _GOLDEN + int(seed) * (n_cols + 1)))
    return h & _MASK63


def row_keys(rows: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Sampling keys in [0, 2^63): a cheap 31-bit hash of 4 columns in the high bits, a hash of
    up to 64 columns in the low 32 bits (ties of the cheap part are rare and resolved by it)."""
    return (_coarse_keys(rows, labels, seed) << 32) | (
        _column_hash(rows, labels, seed, _HASHED_DIMS) & 0xFFFFFFFF
    )


def _coarse_keys(rows: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.Tensor:
    return _shr(_column_hash(rows, labels, seed, 4), 32)


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
        self.extra: torch.Tensor | None = None  # optional payload aligned with rows
        self.labels = torch.zeros(0, dtype=torch.int64)
        self.keys = torch.zeros(0, dtype=torch.int64)
        self.seen = 0

    @property
    def exact(self) -> bool:
        """True when the reservoir holds every row it was offered."""
        return self.seen <= self.capacity

    def __len__(self) -> int:
        return len(self.keys)

    def update(
        self,
        raw: torch.Tensor,
        labels: torch.Tensor,
        row_scale: torch.Tensor | None = None,
        key_labels: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
    ) -> None:
        """Offer a batch of ``raw`` rows (hashed as given); a row is stored multiplied by its
        ``row_scale`` (e.g. 1 / norm for cosine space) with its ``labels``. ``key_labels`` (the
        raw label values, when ``labels`` are internal indices) enter the hash. Only rows whose
        cheap key can beat the current largest key are fully hashed and copied, so a full
        reservoir costs little."""
        self.seen += len(labels)
        if self.capacity == 0 or len(labels) == 0:
            return
        key_labels = labels if key_labels is None else key_labels
        coarse = _coarse_keys(raw, key_labels, self.seed)
        if len(self) == self.capacity:
            cand = (coarse << 32) < self.keys.max().to(coarse.device)
            if not bool(cand.any()):
                return
            idx = torch.nonzero(cand)[:, 0]
            raw, labels, coarse = raw.index_select(0, idx), labels[idx], coarse[idx]
            key_labels = key_labels[idx]
            row_scale = None if row_scale is None else row_scale[idx]
            extra = None if extra is None else extra.index_select(0, idx)
        fine = _column_hash(raw, key_labels, self.seed, _HASHED_DIMS) & 0xFFFFFFFF
        keys = (coarse << 32) | fine
        rows = raw if row_scale is None else raw * row_scale[:, None].to(raw.dtype)
        self._offer(keys, rows, labels, extra)

    def merge(self, other: Reservoir) -> None:
        if other.capacity != self.capacity or other.seed != self.seed:
            raise ValueError(
                "cannot merge reservoirs with different reservoir_size or seed "
                f"({self.capacity}, {self.seed}) vs ({other.capacity}, {other.seed})"
            )
        self.seen += other.seen
        if len(other):
            self._offer(other.keys, other.rows, other.labels, other.extra)

    def _offer(
        self,
        keys: torch.Tensor,
        rows: torch.Tensor,
        labels: torch.Tensor,
        extra: torch.Tensor | None = None,
    ) -> None:
        """Keep the ``capacity`` smallest keys of the stored rows and these candidates.
        ``extra`` is an optional payload aligned with the rows (e.g. wide logits)."""
        keys = keys.cpu()
        if len(self) == self.capacity and len(keys):
            take = keys < self.keys.max()
            if not bool(take.any()):
                return
            idx = torch.nonzero(take)[:, 0]
            keys = keys[idx]
            rows = rows.index_select(0, idx.to(rows.device))
            labels = labels.index_select(0, idx.to(labels.device))
            extra = None if extra is None else extra.index_select(0, idx.to(extra.device))
        new_fields = {"rows": rows.detach().to("cpu", torch.float32), "labels": labels.cpu()}
        if extra is not None:
            new_fields["extra"] = extra.detach().to("cpu", torch.float32)
        if self.rows is None:
            self.rows = new_fields["rows"][:0].clone()
            if extra is not None:
                self.extra = new_fields["extra"][:0].clone()
        if new_fields["rows"].shape[1] != self.rows.shape[1]:
            raise ValueError(
                f"embeddings have {rows.shape[1]} columns, earlier batches had {self.rows.shape[1]}"
            )
        if (extra is None) != (self.extra is None):
            raise ValueError("every batch must bring the reservoir payload, or none")
        names = list(new_fields)
        if len(self) + len(keys) <= self.capacity:
            for name in names:
                setattr(self, name, torch.cat([getattr(self, name), new_fields[name]]))
            self.keys = torch.cat([self.keys, keys])
            return
        all_keys = torch.cat([self.keys, keys])
        # (key, position) ordering makes equal keys (duplicate rows) resolve deterministically
        keep = torch.argsort(all_keys, stable=True)[: self.capacity]
        new = keep[keep >= len(self)] - len(self)
        kept_old = torch.zeros(len(self), dtype=torch.bool)
        kept_old.index_fill_(0, keep[keep < len(self)], True)
        if len(self) < self.capacity:
            for name in names:
                old = getattr(self, name)
                setattr(self, name, torch.cat([old[kept_old], new_fields[name][new]]))
            self.keys = torch.cat([self.keys[kept_old], keys[new]])
            return
        slots = torch.nonzero(~kept_old)[:, 0]
        for name in names:
            getattr(self, name).index_copy_(0, slots, new_fields[name].index_select(0, new))
        self.keys.index_copy_(0, slots, keys.index_select(0, new))

    def state(self) -> dict:
        return {
            "rows": self.rows,
            "labels": self.labels,
            "keys": self.keys,
            "extra": self.extra,
            "seen": self.seen,
        }
