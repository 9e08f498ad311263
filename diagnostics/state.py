"""The Diagnoser's streaming state, declared once.

Every field names how two partial states combine: ``sum``, ``min`` or ``max`` for fixed-shape
float64 tensors, ``cat`` for per-sample values kept in arrival order (rank order after a sync).
A field whose first axis is the class slot (``by_class``) is remapped when two states hold
their classes in different slots, and a ``cat`` field whose values are slots (``slots``) has
its values remapped. Reset, merge and the distributed sync (``distributed.py``) are derived
from this table: a new streaming statistic is one entry here and the update
that fills it.

The reservoir (a bounded sample, combined by keeping the smallest keys) and the options are
not in the table: they have their own rules (``reservoir.py``, ``Diagnoser.__init__``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .calibration import _calibration_zeros

HIST_BINS_FINE = 1000  # one-vs-rest score histograms (multi-class KS resolution)
MAX_COLUMN_KEYS = 16  # logit column statistics per class (and flat metric keys) up to this


@dataclass(frozen=True)
class Layout:
    """What fixes the shapes of the state: ``k`` class slots, ``dim`` = D, ``cols`` the logit
    width (None: no logits; 1: one binary logit)."""

    k: int
    dim: int
    cols: int | None

    @property
    def logits(self) -> bool:
        return self.cols is not None

    @property
    def stat_rows(self) -> int:
        """Rows of the logit column statistics: one per class up to MAX_COLUMN_KEYS columns,
        one in all beyond (wide logits)."""
        return self.k if self.cols is not None and self.cols <= MAX_COLUMN_KEYS else 1

    @property
    def ovr(self) -> bool:
        """Whether one-vs-rest score histograms stream (3 to MAX_COLUMN_KEYS columns; wider
        logits are scored on the reservoir's rows)."""
        return self.cols is not None and 2 < self.cols <= MAX_COLUMN_KEYS


@dataclass(frozen=True)
class Field:
    """One piece of state. ``shape`` (fixed-shape fields) from the layout; ``active`` whether
    the field exists in this layout; ``early`` fields exist before the first batch."""

    reduce: str  # "sum", "min", "max" or "cat"
    shape: Callable[[Layout], tuple] | None = None
    active: Callable[[Layout], bool] = lambda layout: True
    by_class: bool = False
    slots: bool = False
    early: bool = False

    @property
    def identity(self) -> float:
        return {"sum": 0.0, "min": math.inf, "max": -math.inf}[self.reduce]


def _logits(layout: Layout) -> bool:
    return layout.logits


def _ovr(layout: Layout) -> bool:
    return layout.ovr


def _cal(key: str) -> Callable[[Layout], tuple]:
    shape = tuple(_calibration_zeros()[key].shape)
    return lambda layout: shape


def _stats(layout: Layout) -> tuple:
    return (layout.stat_rows, layout.cols)


FIELDS: dict[str, Field] = {
    # rows dropped at the boundary (counted from the first call on)
    "nonfinite": Field("sum", lambda layout: (), early=True),
    "zero_norm": Field("sum", lambda layout: (), early=True),
    # geometry: per class slot, float64 (see metrics._class_sums_update)
    "counts": Field("sum", lambda layout: (layout.k,), by_class=True),
    "sums": Field("sum", lambda layout: (layout.k, layout.dim), by_class=True),
    "sqnorms": Field("sum", lambda layout: (layout.k,), by_class=True),
    # logits (labels are logit columns there, so slots never differ between states)
    "confusion": Field("sum", lambda layout: (layout.k, layout.k), _logits),
    "colstats.count": Field("sum", lambda layout: (layout.stat_rows,), _logits),
    "colstats.sum": Field("sum", _stats, _logits),
    "colstats.sumsq": Field("sum", _stats, _logits),
    "colstats.min": Field("min", _stats, _logits),
    "colstats.max": Field("max", _stats, _logits),
    "ovr.pos_hist": Field("sum", lambda layout: (layout.k, HIST_BINS_FINE), _ovr),
    "ovr.all_hist": Field("sum", lambda layout: (layout.k, HIST_BINS_FINE), _ovr),
    "ovr.pos_sum": Field("sum", lambda layout: (layout.k,), _ovr),
    "ovr.pos_sumsq": Field("sum", lambda layout: (layout.k,), _ovr),
    "ovr.all_sum": Field("sum", lambda layout: (layout.k,), _ovr),
    "ovr.all_sumsq": Field("sum", lambda layout: (layout.k,), _ovr),
    **{f"calibration.{key}": Field("sum", _cal(key), _logits) for key in _calibration_zeros()},
    # per sample, in arrival order
    "samples.label": Field("cat", slots=True),
    "samples.log_odds": Field("cat"),
    "samples.margin": Field("cat"),
    "samples.pred": Field("cat"),
    "samples.top_prob": Field("cat"),
    "samples.gray": Field("cat"),
    "samples.angle_true": Field("cat"),
    "samples.angle_other": Field("cat"),
    "ids": Field("cat"),  # strings; kept only when every batch brings them
}


def empty(layout: Layout | None, fields: dict[str, Field] | None = None) -> dict:
    """A fresh state: the early fields before the first batch (``layout`` None), every field
    active in ``layout`` after it (identities of their reductions, empty lists). ``fields``:
    another declared table (default: the Diagnoser's, ``FIELDS``)."""
    state = {}
    for name, f in (FIELDS if fields is None else fields).items():
        if layout is None and not f.early:
            continue
        if layout is not None and not f.active(layout):
            continue
        if f.reduce == "cat":
            state[name] = []
        else:
            state[name] = torch.full(f.shape(layout), f.identity, dtype=torch.float64)
    return state


def group(state: dict, prefix: str) -> dict | None:
    """The fields ``prefix.*`` as a dict keyed by the rest of their names (the same tensor and
    list objects: updating them updates the state), or None when none is active."""
    head = prefix + "."
    out = {name[len(head) :]: v for name, v in state.items() if name.startswith(head)}
    return out or None


def grow(state: dict, k: int) -> None:
    """Give the per-class fields ``k`` slots (new slots hold the identity)."""
    for name, f in FIELDS.items():
        t = state.get(name)
        if not f.by_class or t is None or t.shape[0] >= k:
            continue
        pad = torch.full((k - t.shape[0], *t.shape[1:]), f.identity, dtype=t.dtype)
        state[name] = torch.cat([t, pad])


def merge(
    dst: dict, src: dict, mapping: torch.Tensor, fields: dict[str, Field] | None = None
) -> None:
    """Fold ``src`` into ``dst`` in place; ``mapping[j]`` is dst's slot of src's slot j.
    ``fields``: another declared table (default ``FIELDS``)."""
    for name, f in (FIELDS if fields is None else fields).items():
        b = src.get(name)
        if b is None or name not in dst:
            continue
        if f.reduce == "cat":
            dst[name].extend(mapping[c] for c in b) if f.slots else dst[name].extend(b)
        elif f.by_class:
            dst[name].index_add_(0, mapping, b) if len(mapping) else None
        elif f.reduce == "sum":
            dst[name] += b
        elif f.reduce == "min":
            torch.minimum(dst[name], b, out=dst[name])
        else:
            torch.maximum(dst[name], b, out=dst[name])


def remapped(
    state: dict,
    layout: Layout,
    mapping: torch.Tensor,
    reduce: str,
    fields: dict[str, Field] | None = None,
) -> dict:
    """The fixed-shape fields reduced by ``reduce``, on ``layout``'s class slots (per-class
    fields moved through ``mapping``; missing fields as their identity): what one rank puts
    into a packed all-reduce. ``fields``: another declared table (default ``FIELDS``)."""
    out = {}
    for name, f in (FIELDS if fields is None else fields).items():
        if f.reduce != reduce or f.early or not f.active(layout):
            continue
        t = state.get(name)
        if f.by_class:
            full = torch.full(f.shape(layout), f.identity, dtype=torch.float64)
            if t is not None and len(mapping):
                full.index_add_(0, mapping, t.double())
            out[name] = full
        elif t is None:
            out[name] = torch.full(f.shape(layout), f.identity, dtype=torch.float64)
        else:
            out[name] = t.to("cpu", torch.float64)
    return out


def cat_fields() -> list[str]:
    """Names of the per-sample fields other than ids (tensors concatenated in order)."""
    return [name for name, f in FIELDS.items() if f.reduce == "cat" and name != "ids"]
