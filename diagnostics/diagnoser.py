"""The streaming accumulator behind every report.

One class over 400 lines, on purpose: its update path (validate the whole batch, then touch the
state), merge and sync are read together to see that a rejected batch changes nothing and that
every field of the declared state (state.py) is handled. Report assembly lives in assembly.py,
the state declaration in state.py, the distributed reduction in distributed.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from . import metrics as M
from . import state as S
from ._validation import check_batch, check_label_range, check_space
from .assembly import assemble
from .calibration import (
    _calibration_update,
)
from .distributed import sync_diagnoser
from .heads import HeadParams, _angles_update, check_head_info, head_meta, head_params, stated_head
from .reservoir import Reservoir
from .scores import _ovr_state
from .segmentation import is_dense
from .segmentation_hooks import dense_merge, dense_update
from .state import HIST_BINS_FINE, MAX_COLUMN_KEYS

NAN = float("nan")
SCHEMA = "embscope.report/1"
_BUDGET_DIM = 1024  # beyond this D, default row counts shrink so rows^2 x D stays bounded
NO_MAP = torch.zeros(0, dtype=torch.int64)  # merges of fields that are not per class slot


class _Field:
    """``d.counts`` reads and writes ``d.state["counts"]`` (one declared field, state.py)."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, obj, owner=None):
        return self if obj is None else obj.state.get(self.name)

    def __set__(self, obj, value) -> None:
        obj.state[self.name] = value


class _Count(_Field):
    """A scalar counter field, read as an int."""

    def __get__(self, obj, owner=None):
        return self if obj is None else int(obj.state[self.name])

    def __set__(self, obj, value) -> None:
        obj.state[self.name] = torch.tensor(float(value), dtype=torch.float64)


class _Group:
    """``d.ovr`` is the dict of the fields ``ovr.*`` (the state's own tensors and lists), or
    None when none is active."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def __get__(self, obj, owner=None):
        return self if obj is None else S.group(obj.state, self.prefix)


class Diagnoser:
    """Streaming, mergeable accumulator of embedding-space diagnostics.

    State (declared once in ``state.py``): per-class counts, vector sums and squared norms (float64), a confusion matrix,
    logit column moments, one-vs-rest score histograms, per-sample scalars (labels, scores,
    margins, angles, ids) and a bounded reservoir of at most ``reservoir_size`` embeddings for
    the metrics that need vectors (retrieval, pair distributions, NC1, centroid confusion),
    exact when N <= reservoir_size. Never the N x D matrix.

    Parameters
    ----------
    head : optional margin head (module with weight [C, D] and m/s) for angles and head health.
    space : "cosine" (default; rows L2-normalised) or "euclidean".
    reservoir_size : bound on stored embeddings; 0 disables the vector-based metrics.
    seed : seed of the reservoir's sampling and of pair sampling.
    bins : bins of the score histograms used for Hellinger distances (edges in the report).
    margin_leak : result of :func:`probe_margin_leak` when the model was probed, else None.
    head_info : facts about the head, e.g. ``{"missing_from_checkpoint": True}``. ``s``, ``m``
        and ``kind`` (``"angular"``/``"cosine"``) state the head's settings: with ``head`` they
        replace the values read off it; without (no weights, e.g. precomputed embeddings) they
        are used where no weights are needed (``head.s``/``head.m``, ``fitted_scale``, the
        advice). ``provenance`` says where each came from (see `heads.PROVENANCES`).
    thresholds : overrides of the recommendation thresholds (see ``recommend``).
    hard_k : how many hardest samples the report lists.
    pair_rows : pair metrics (pair_ks, pair_hellinger, eer, tar_at_far_*) use every pair among
        the first ``pair_rows`` reservoir rows (a uniform sample; 2,000 rows give about 2
        million pairs, computed by blocked products).
    retrieval_rows : retrieval metrics (recall_at_k, map_at_r) use the first
        ``retrieval_rows`` reservoir rows as queries and references (exact kNN among them).
        By default (None) 2,000 pair rows and 5,000 retrieval rows up to D = 1,024, and fewer
        beyond, in proportion to sqrt(1024 / D), so that their products (rows^2 x D) cost no
        more than at D = 1,024; the report says on how many rows each metric was computed.
        The 2-D PCA view uses at most 2,000 rows, bounded the same way.
    sync_on_compute : when torch.distributed is initialised, ``compute()`` reports on the
        states of all ranks of ``process_group`` (this object's own state is left as it is).
    process_group : the torch.distributed group to sync over (None: the default group).
    ignore_index : dense batches (masks [B, H, W] with logits [B, C, H, W]): the mask value of
        unlabelled pixels (see `segmentation.py`).
    """

    def __init__(
        self,
        *,
        head=None,
        space: str = "cosine",
        reservoir_size: int = 10_000,
        seed: int = 0,
        bins: int = 50,
        margin_leak: bool | None = None,
        head_info: dict | None = None,
        thresholds: dict | None = None,
        hard_k: int = 20,
        pair_rows: int | None = None,
        retrieval_rows: int | None = None,
        sync_on_compute: bool = True,
        process_group=None,
        ignore_index: int = 255,
    ):
        self.space = check_space(space)
        if not _is_int(ignore_index):
            raise ValueError(f"ignore_index must be an integer, got {ignore_index!r}")
        self.ignore_index = int(ignore_index)
        if not _is_int(bins) or bins < 1 or HIST_BINS_FINE % bins:
            raise ValueError(f"bins must be a positive divisor of {HIST_BINS_FINE}, got {bins!r}")
        if not _is_int(seed):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not _is_int(hard_k) or hard_k < 0:
            raise ValueError(f"hard_k must be a non-negative integer, got {hard_k!r}")
        if margin_leak is not None and not isinstance(margin_leak, (bool, np.bool_)):
            raise ValueError(f"margin_leak must be True, False or None, got {margin_leak!r}")
        self.head_info = check_head_info(head_info)
        self.head: HeadParams | None = stated_head(
            head_params(head) if head is not None else None, self.head_info
        )
        self.bins = int(bins)
        self.seed = int(seed)
        self.margin_leak = margin_leak
        self.thresholds = dict(thresholds or {})
        self.hard_k = int(hard_k)
        for name, value in (("pair_rows", pair_rows), ("retrieval_rows", retrieval_rows)):
            if value is not None and (not _is_int(value) or value < 2):
                raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
        self._rows = {"pair": pair_rows, "retrieval": retrieval_rows}
        self.sync_on_compute = bool(sync_on_compute)
        self.process_group = process_group
        self.reservoir = Reservoir(reservoir_size, seed)
        self.reset()

    # declared state (state.py), read and written under these names
    counts = _Field("counts")
    sums = _Field("sums")
    sqnorms = _Field("sqnorms")
    confusion = _Field("confusion")
    ids = _Field("ids")
    nonfinite = _Count("nonfinite")
    zero_norm = _Count("zero_norm")
    ovr = _Group("ovr")
    calibration = _Group("calibration")
    samples = _Group("samples")

    @property
    def colstats(self) -> dict | None:
        cs = S.group(self.state, "colstats")
        if cs is not None:
            cs["by_class"] = self.num_columns <= MAX_COLUMN_KEYS
        return cs

    # ------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.reservoir.reset()
        # Class identity. With logits or a margin head, a label IS its class index (a logit
        # column, a row of the head's weights): slots equal label values and ``_values`` is
        # range(k). Without either, labels are any integers, given slots in order of arrival
        # (reports never depend on slots: they sort by label value).
        self._values: list[int] = []  # slot -> raw label value
        self._slot: dict[int, int] = {}
        self.dim: int | None = None
        self.num_columns: int | None = None  # logits: None (none seen), 1 (binary logit) or C
        self.synced = False  # True once sync() folded every rank in (see sync, compute)
        self.state: dict = S.empty(None)
        self._dense = None  # a segmentation evaluation's state (segmentation.py), if dense

    @property
    def pair_rows(self) -> int:
        """Reservoir rows whose pairs the pair metrics use (see the class docstring)."""
        return self._budget("pair", 2_000)

    @property
    def retrieval_rows(self) -> int:
        """Reservoir rows the retrieval metrics use as queries and references."""
        return self._budget("retrieval", 5_000)

    @property
    def pca_rows(self) -> int:
        """Reservoir rows the 2-D PCA view projects."""
        return self._budget("pca", 2_000)

    def _budget(self, what: str, base: int) -> int:
        given = self._rows.get(what)
        if given is not None:
            return int(given)
        if self.dim is None or self.dim <= _BUDGET_DIM:
            return base
        return max(2, int(base * math.sqrt(_BUDGET_DIM / self.dim)))

    def _layout(self) -> S.Layout:
        return S.Layout(len(self._values), self.dim, self.num_columns)

    def _slots(self, labels: torch.Tensor) -> torch.Tensor:
        """Class slots of raw label values, adding unseen labels."""
        if self._indexed:
            return labels  # labels are logit columns / head rows
        values, inverse = torch.unique(labels, return_inverse=True)
        lut = []
        for v in values.tolist():
            if v not in self._slot:
                self._slot[v] = len(self._values)
                self._values.append(v)
            lut.append(self._slot[v])
        return torch.as_tensor(lut, dtype=torch.int64, device=labels.device)[inverse]

    @property
    def _indexed(self) -> bool:
        """Whether labels index classes directly (logits or a head were given)."""
        return self.num_columns is not None or self.head is not None

    def _grow(self, k: int) -> None:
        S.grow(self.state, k)

    def _check_shapes(self, b) -> None:
        """Raise, without touching the state, when this batch cannot join the earlier ones."""
        cols = _columns(b.logits)
        d = b.embeddings.shape[1]
        if d == 0:
            raise ValueError(
                f"embeddings must have at least one column, got shape {(len(b.labels), 0)}"
            )
        if self.head is not None and d != self.head.weight.shape[1]:
            raise ValueError(
                f"embeddings have D = {d} columns but the head's class weights have "
                f"{self.head.weight.shape[1]} (weight shape {tuple(self.head.weight.shape)}); "
                "pass the embeddings the head was applied to"
            )
        if self.dim is not None:
            if d != self.dim:
                raise ValueError(
                    f"embeddings must keep D = {self.dim} columns across batches, "
                    f"got shape {tuple(b.embeddings.shape)}"
                )
            if cols != self.num_columns:
                raise ValueError(
                    f"logits must keep one shape across batches: earlier batches had "
                    f"{self._describe(self.num_columns)}, this one has {self._describe(cols)}"
                )
            if (b.ids is None) != (self.ids is None):
                raise ValueError("ids must be given for every batch or for none")
        if cols is not None:
            what = "logit columns" if cols > 1 else "two classes of a binary logit"
            check_label_range(b.labels, 2 if cols == 1 else cols, what)
        if self.head is not None:
            check_label_range(b.labels, self.head.num_classes, "head's class weights")

    def _start(self, dim: int, cols: int | None, with_ids: bool) -> None:
        """Fix D, the logit shape, the class slots and ids from the first batch (or the first
        state merged in), and lay the declared state out for them."""
        self.dim, self.num_columns = dim, cols
        if cols is not None:
            self._values = list(range(2 if cols == 1 else cols))
        elif self.head is not None:
            self._values = list(range(self.head.num_classes))
        early = {k: v for k, v in self.state.items() if S.FIELDS[k].early}
        self.state = {**S.empty(self._layout()), **early}
        if not with_ids:
            self.state["ids"] = None

    @staticmethod
    def _describe(cols):
        return "no logits" if cols is None else "[N]" if cols == 1 else f"[N, {cols}]"

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, embeddings, labels, logits=None, ids: Sequence[str] | None = None) -> None:
        """Add one batch. embeddings [B, D]; labels [B] integers; logits None, [B] or [B, C];
        ids an optional sequence of B strings (e.g. file paths). Rows with NaN/Inf are counted
        in ``nonfinite_count`` and all-zero rows in cosine space in ``zero_norm_count``; both
        are otherwise ignored.

        With logits or a head, labels are class indices (logit columns, head weight rows) and
        must lie in [0, C). The whole batch is validated before anything is added: a batch
        that raises leaves the state as it was.

        Dense batches (segmentation): labels are masks [B, H, W] (any [B, ...]) of class indices
        or ``ignore_index``, logits [B, C, H, W], embeddings a feature map [B, D, H, W] or None
        (the logits stand in); see ``segmentation.py``. A Diagnoser takes dense batches or row
        batches, not both.
        """
        if self.synced:
            raise RuntimeError(
                "this Diagnoser was synced and holds every rank's samples; call reset() "
                "before feeding the next evaluation"
            )
        if self._dense is not None or is_dense(labels, logits):
            return dense_update(self, embeddings, labels, logits, ids)
        b = check_batch(embeddings, labels, logits, ids, drop_zero_rows=self.space == "cosine")
        self._check_shapes(b)
        if self.dim is None:
            self._start(b.embeddings.shape[1], _columns(b.logits), b.ids is not None)
        self.nonfinite += b.dropped
        self.zero_norm += b.zero_rows
        slots = self._slots(b.labels)
        self._grow(len(self._values))
        if len(slots) == 0:
            return
        x = b.embeddings
        if self.space == "cosine":  # unit rows without materialising them
            scale = 1.0 / b.norms
            row_sq = torch.ones_like(b.norms, dtype=torch.float64)
        else:
            scale, row_sq = None, b.norms.double() ** 2
        counts, sums, sq = M._class_sums_update(x, slots, len(self._values), scale, row_sq)
        self.counts += counts
        self.sums += sums
        self.sqnorms += sq
        # the reservoir keeps the logits of its rows from three columns on (the temperature is
        # fitted on them; wide logits' one-vs-rest scores too)
        multi = self.num_columns is not None and self.num_columns > 2
        self.reservoir.update(
            x, slots, scale, key_labels=b.labels, extra=b.logits if multi else None
        )
        self.samples["label"].append(slots.cpu())
        if b.ids is not None:
            self.ids.extend(b.ids)
        if b.logits is not None:
            self._update_logits(b.logits, slots)
        if self.head is not None:
            t, o = _angles_update(b.embeddings, slots, self.head.weight, b.norms)
            self.samples["angle_true"].append(t.cpu())
            self.samples["angle_other"].append(o.cpu())

    def _update_logits(self, z: torch.Tensor, y: torch.Tensor) -> None:
        k = len(self._values)
        h = M._hardness_update(z, y)
        for key in ("margin", "pred", "top_prob", "gray"):
            self.samples[key].append(h[key].cpu())
        if self.num_columns <= 2:
            self.samples["log_odds"].append(M.positive_log_odds(z).double().cpu())
        self.confusion += M._confusion_update(h["pred"], y, k)
        cs = M._column_stats_update(z, y, k, by_class=self.num_columns <= MAX_COLUMN_KEYS)
        self._add("colstats", {key: v for key, v in cs.items() if key != "by_class"})
        if self.ovr is not None:
            p = torch.exp(z.float() - h["lse"].float()[:, None])
            self._add("ovr", {key: v.cpu() for key, v in _ovr_state(p, y, k).items()})
        self._add("calibration", _calibration_update(z, y, hardness=h))

    def _add(self, prefix: str, batch_state: dict) -> None:
        """Fold one batch's ``prefix.*`` fields into the state by their declared reductions."""
        S.merge(self.state, {f"{prefix}.{k}": v for k, v in batch_state.items()}, NO_MAP)

    # ------------------------------------------------------------------------------------------
    def merge(self, other: Diagnoser) -> Diagnoser:
        """Fold another accumulator (same options) into this one; returns self."""
        if self.synced:
            raise RuntimeError(
                "this Diagnoser was synced and holds every rank's samples; merge into a "
                "Diagnoser that was not synced"
            )
        if (other.space, other.bins, other.reservoir.capacity, other.seed) != (
            self.space,
            self.bins,
            self.reservoir.capacity,
            self.seed,
        ):
            raise ValueError("cannot merge Diagnosers built with different options")
        if self._dense is not None or other._dense is not None:
            dense_merge(self, other)
            return self
        head_classes = (
            None if self.head is None else self.head.num_classes,
            None if other.head is None else other.head.num_classes,
        )
        if head_classes[0] != head_classes[1]:
            raise ValueError(
                f"cannot merge: one Diagnoser has a head of {head_classes[0]} classes and the "
                f"other of {head_classes[1]} (None: no head)"
            )
        if other.dim is None:
            return self
        if self.dim is not None and (
            other.dim != self.dim or other.num_columns != self.num_columns
        ):
            raise ValueError(
                f"cannot merge: D {other.dim} vs {self.dim}, logits "
                f"{self._describe(other.num_columns)} vs {self._describe(self.num_columns)}"
            )
        if self.dim is not None and (other.ids is None) != (self.ids is None):
            raise ValueError("cannot merge: one Diagnoser has ids and the other has not")
        if self.dim is None:
            self._start(other.dim, other.num_columns, other.ids is not None)
        # map the other's slots onto ours
        mapping = (
            self._slots(torch.as_tensor(other._values, dtype=torch.int64))
            if other._values
            else torch.zeros(0, dtype=torch.int64)
        )
        self._grow(len(self._values))
        S.merge(self.state, other.state, mapping)
        moved = Reservoir(other.reservoir.capacity, other.reservoir.seed)
        moved.seen = other.reservoir.seen
        if len(other.reservoir):
            moved.rows, moved.keys = other.reservoir.rows, other.reservoir.keys
            moved.extra = other.reservoir.extra
            moved.labels = mapping[other.reservoir.labels]
        self.reservoir.merge(moved)
        return self

    # ------------------------------------------------------------------------------------------
    def sync(self, group=None) -> Diagnoser:
        """Fold the states of every rank of ``group`` into this one (all ranks end equal).

        Fixed-shape states are all-reduced, per-sample scalars and the reservoir all-gathered
        (uneven sizes per rank are padded). Afterwards the Diagnoser is marked synced: a second
        ``sync()`` does nothing, ``compute()`` reports on the synced state without syncing
        again, and ``update``/``merge`` raise until ``reset()``.
        """
        if self.synced:
            return self
        if self._dense is not None:
            self._dense.sync(group)
        else:
            sync_diagnoser(self, group)
        self.synced = True
        return self

    def compute(self):
        """The report of everything seen so far (the state is kept).

        Under an initialised torch.distributed process group (and ``sync_on_compute``), the
        report covers every rank's samples and is identical on all ranks (a Diagnoser already
        synced with ``sync()`` is not synced again).

        Raises ValueError when no usable row was seen (all were non-finite or all-zero, or no
        rows were given): a report of nothing would read as a report of a model.
        """
        if self.sync_on_compute and not self.synced:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                import copy

                # the group is shared, not copied (a ProcessGroup cannot be deep-copied)
                memo = {id(self.process_group): self.process_group}
                return _report(copy.deepcopy(self, memo).sync(self.process_group))
        return _report(self)

    def _no_rows_message(self) -> str:
        dropped = self.nonfinite + self.zero_norm
        if dropped == 0:
            return "no usable rows: no rows were given"
        why = []
        if self.nonfinite:
            why.append(f"{self.nonfinite} with NaN/Inf in the embeddings or logits")
        if self.zero_norm:
            why.append(f"{self.zero_norm} all-zero, which have no direction in cosine space")
        return f"no usable rows: all {dropped} rows were dropped ({', '.join(why)})"

    def _meta(self) -> dict:
        from embscope import __version__

        return {
            "schema": SCHEMA,
            "embscope_version": __version__,
            "space": self.space,
            "reservoir_size": self.reservoir.capacity,
            "seed": self.seed,
            "bins": self.bins,
            "dim": self.dim,
            "logit_columns": self.num_columns,
            **head_meta(self.head, self.head_info),
            "head_info": self.head_info,
        }


def dropped_line(nonfinite: float, zero_norm: float, total: float) -> str:
    """ "900 of 1000 rows were dropped: 850 with NaN/Inf, 50 all-zero"."""
    parts = []
    if nonfinite:
        parts.append(f"{int(nonfinite)} with NaN/Inf")
    if zero_norm:
        parts.append(f"{int(zero_norm)} all-zero")
    return f"{int(nonfinite + zero_norm)} of {int(total)} rows were dropped: {', '.join(parts)}"


def _report(d):
    """The report of ``d``'s state: a segmentation report for dense batches."""
    from .segmentation_report import dense_report

    return dense_report(d) if d._dense is not None else assemble(d)


def _columns(z: torch.Tensor | None) -> int | None:
    """Logit width: None without logits, 1 for one binary logit [N], else C."""
    return None if z is None else (1 if z.ndim == 1 else z.shape[1])


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def diagnose(embeddings, labels, logits=None, head=None, *, ids=None, **options):
    """One-shot report: ``Diagnoser(head=head, **options)``, one update, compute.

    embeddings [N, D]; labels [N] integers; logits None, [N] (one binary logit) or [N, C];
    or dense: embeddings [B, D, H, W] (or None), masks [B, H, W], logits [B, C, H, W];
    head an optional margin head (for angles, m and s). See :class:`Diagnoser` for options.
    """
    d = Diagnoser(head=head, **options)
    d.update(embeddings, labels, logits, ids)
    return d.compute()
