"""The streaming accumulator behind every report."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from . import metrics as M
from . import state as S
from ._validation import check_batch, check_label_range, check_space
from .calibration import (
    NO_SCALE,
    TemperatureFit,
    _calibration_compute,
    _calibration_update,
    _fit_temperature,
)
from .heads import HeadParams, _angles_update, head_health, head_params
from .pca import pca_view
from .reservoir import Reservoir
from .state import HIST_BINS_FINE, MAX_COLUMN_KEYS

NAN = float("nan")
SCHEMA = "embscope.report/1"
NO_MAP = torch.zeros(0, dtype=torch.int64)  # merges of fields that are not per class slot
MAX_PLOT_SERIES = 10  # per-class histograms in the report up to this many classes


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
    head_info : extra facts about the head, e.g. ``{"missing_from_checkpoint": True}``.
    thresholds : overrides of the recommendation thresholds (see ``recommend``).
    hard_k : how many hardest samples the report lists.
    pair_rows : pair metrics (pair_ks, pair_hellinger, eer, tar_at_far_*) use every pair among
        the first ``pair_rows`` reservoir rows (a uniform sample; 2,000 rows give about 2
        million pairs, computed by blocked products).
    retrieval_rows : retrieval metrics (recall_at_k, map_at_r) use the first
        ``retrieval_rows`` reservoir rows as queries and references (exact kNN among them).
    sync_on_compute : when torch.distributed is initialised, ``compute()`` reports on the
        states of all ranks of ``process_group`` (this object's own state is left as it is).
    process_group : the torch.distributed group to sync over (None: the default group).
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
        pair_rows: int = 2_000,
        retrieval_rows: int = 5_000,
        sync_on_compute: bool = True,
        process_group=None,
    ):
        self.space = check_space(space)
        if not _is_int(bins) or bins < 1 or HIST_BINS_FINE % bins:
            raise ValueError(f"bins must be a positive divisor of {HIST_BINS_FINE}, got {bins!r}")
        if not _is_int(seed):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not _is_int(hard_k) or hard_k < 0:
            raise ValueError(f"hard_k must be a non-negative integer, got {hard_k!r}")
        if margin_leak is not None and not isinstance(margin_leak, (bool, np.bool_)):
            raise ValueError(f"margin_leak must be True, False or None, got {margin_leak!r}")
        self.head: HeadParams | None = head_params(head) if head is not None else None
        self.bins = int(bins)
        self.seed = int(seed)
        self.margin_leak = margin_leak
        self.head_info = dict(head_info or {})
        self.thresholds = dict(thresholds or {})
        self.hard_k = int(hard_k)
        for name, value in (("pair_rows", pair_rows), ("retrieval_rows", retrieval_rows)):
            if not _is_int(value) or value < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
        self.pair_rows = int(pair_rows)
        self.retrieval_rows = int(retrieval_rows)
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

    def _layout(self) -> S.Layout:
        return S.Layout(len(self._values), self.dim, self.num_columns)

    def state_dict(self) -> dict:
        """The declared state and what fixes its layout (a copy; see state.py)."""
        return {
            "layout": None if self.dim is None else self._layout(),
            "values": list(self._values),
            "state": {
                k: list(v) if isinstance(v, list) else v.clone()
                for k, v in self.state.items()
                if v is not None
            },
        }

    # ------------------------------------------------------------------------------------------
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
        """
        if self.synced:
            raise RuntimeError(
                "this Diagnoser was synced and holds every rank's samples; call reset() "
                "before feeding the next evaluation"
            )
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
        self._add("calibration", _calibration_update(z, y, lse=h.get("lse")))

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
        from .distributed import sync_diagnoser

        if self.synced:
            return self
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
                return copy.deepcopy(self, memo).sync(self.process_group)._compute_local()
        return self._compute_local()

    def _compute_local(self):
        from .advice import recommend
        from .report import Report

        metrics: dict[str, float] = {}
        reasons: dict[str, str] = {}
        sampled: dict[str, dict] = {}
        sections: dict = {}
        order = np.argsort(np.asarray(self._values, dtype=np.int64), kind="stable")
        n = 0.0 if self.counts is None else float(self.counts.sum())
        if n == 0:
            raise ValueError(self._no_rows_message())
        present = self.counts > 0
        metrics["n"] = n
        metrics["num_classes"] = float(present.sum())
        metrics["nonfinite_count"] = float(self.nonfinite)
        metrics["zero_norm_count"] = float(self.zero_norm)
        labels = torch.cat(self.samples["label"])
        self._geometry(metrics, reasons)
        if self.num_columns is not None:
            self._logits(metrics, reasons, sampled, sections, labels)
            self._calibration(metrics, reasons, sampled, sections)
        if self.head is not None:
            self._head(metrics, reasons, sections)
        self._vectors(metrics, reasons, sampled, sections)
        sections["classes"] = self._class_table(order)
        if self.num_columns is None and "hardest" not in sections:
            sections["hardest"] = []
        if self.margin_leak is not None:
            metrics["head.margin_leak"] = 1.0 if self.margin_leak else 0.0
        report = Report(
            metrics=metrics, reasons=reasons, sampled=sampled, sections=sections, meta=self._meta()
        )
        return report.with_recommendations(recommend(report, thresholds=self.thresholds))

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
        return {
            "schema": SCHEMA,
            "space": self.space,
            "reservoir_size": self.reservoir.capacity,
            "seed": self.seed,
            "bins": self.bins,
            "dim": self.dim,
            "logit_columns": self.num_columns,
            "head_kind": None if self.head is None else self.head.kind,
            "head_kind_source": None if self.head is None else self.head.kind_source,
            "head_info": self.head_info,
        }

    def _geometry(self, metrics, reasons) -> None:
        g = M._geometry_compute(self.counts, self.sums, self.sqnorms, self.space)
        metrics.update(g.to_dict())
        reasons.update(g.reasons)

    def _logits(self, metrics, reasons, sampled, sections, labels) -> None:
        s = {k: torch.cat(v) for k, v in self.samples.items() if v}
        y = labels
        k = len(self._values)
        margin = s["margin"].numpy()
        metrics["margin_mean"] = float(margin.mean())
        metrics["margin_median"] = float(np.median(margin))
        metrics["margin_p05"] = float(np.percentile(margin, 5))
        metrics["negative_margin_fraction"] = float((margin < 0).mean())
        cm = self.confusion.numpy()
        metrics.update(M.classification_scores(cm))
        hard = M._hard_compute(s, y, self.ids, self.hard_k)
        metrics.update(hard.to_dict())
        sections["hardest"] = hard.hardest
        cs = M._column_stats_compute(self.colstats)
        sections["logit_columns"] = cs
        if (self.num_columns or 0) <= MAX_COLUMN_KEYS:
            metrics.update(M.flatten_column_stats(cs))
        top = s["top_prob"].numpy()
        edges = M.histogram_edges(self.bins)
        sections["histograms"] = {}
        mhist_edges = np.histogram_bin_edges(margin, bins=40)
        yy = y.numpy()
        series = (
            {f"class {self._values[c]}": yy == c for c in range(k)}
            if k <= MAX_PLOT_SERIES
            else {"all samples": np.ones(len(yy), dtype=bool)}
        )
        sections["histograms"]["margin"] = {
            "edges": mhist_edges.tolist(),
            "counts": {
                name: np.histogram(margin[sel], mhist_edges)[0].tolist()
                for name, sel in series.items()
            },
        }
        if self.num_columns <= 2:
            odds = s["log_odds"]
            p = torch.sigmoid(odds).numpy()
            pos, neg = (y == 1).numpy(), (y == 0).numpy()
            metrics["prob_mean"] = float(p.mean())
            # the prediction (argmax / p >= 0.5) decides, as in the confusion matrix
            metrics["pred_positive_rate"] = float(cm[:, 1].sum() / cm.sum())
            metrics["label_positive_rate"] = float(pos.mean())
            metrics["saturation_fraction"] = float(((p < 1e-3) | (p > 1 - 1e-3)).mean())
            metrics["score_ks"] = M.ks_distance(odds[pos], odds[neg])
            hp = np.histogram(np.clip(p[pos], 0, 1), edges)[0]
            hn = np.histogram(np.clip(p[neg], 0, 1), edges)[0]
            metrics["score_hellinger"] = M.hellinger_from_counts(hp, hn)
            metrics["score_fisher"] = M.fisher_score(p[pos], p[neg])
            if not pos.any() or not neg.any():
                for key in ("score_ks", "score_hellinger", "score_fisher"):
                    reasons[key] = "needs samples of both classes"
            sections["histograms"]["score"] = {
                "edges": edges.tolist(),
                "counts": {"class 0": hn.tolist(), "class 1": hp.tolist()},
                "xlabel": "P(positive)",
            }
        else:
            self._multiclass_scores(metrics, reasons, sampled, sections, top)

    def _multiclass_scores(self, metrics, reasons, sampled, sections, top) -> None:
        """One-vs-rest score separation, macro-averaged over classes: from exact histograms
        (binned at 1/1000 of probability) up to MAX_COLUMN_KEYS columns, from the reservoir's
        logits beyond (exact when it holds every sample)."""
        metrics["prob_mean"] = float(top.mean())
        metrics["saturation_fraction"] = float((top > 1 - 1e-3).mean())
        for key in ("pred_positive_rate", "label_positive_rate", "f1"):
            metrics[key] = NAN
            reasons[key] = "defined for binary models only"
        if self.ovr is not None:
            pos_h, all_h = self.ovr["pos_hist"].numpy(), self.ovr["all_hist"].numpy()
            moments = {
                k: self.ovr[k].numpy() for k in ("pos_sum", "pos_sumsq", "all_sum", "all_sumsq")
            }
            n_c = self.counts.numpy()
            how = f"binned at 1/{HIST_BINS_FINE} of probability"
        else:
            res = self.reservoir
            if len(res) == 0:
                for key in ("score_ks", "score_hellinger", "score_fisher"):
                    metrics[key] = NAN
                    reasons[key] = (
                        "wide logits are scored on the reservoir, and reservoir_size is 0"
                    )
                return
            pos_h, all_h, moments, n_c = _ovr_from_rows(res.extra, res.labels, len(self._values))
            how = f"binned at 1/{HIST_BINS_FINE}, on the reservoir of {len(res)} samples"
            info = {"exact": res.exact, "sample_size": len(res), "population": res.seen}
            for key in ("score_ks", "score_hellinger", "score_fisher"):
                sampled[key] = dict(info)
        ks, hel, fis = _ovr_separation(pos_h, all_h, moments, n_c, self.bins)
        metrics["score_ks"], metrics["score_hellinger"], metrics["score_fisher"] = ks, hel, fis
        reasons["score_ks"] = f"one-vs-rest, macro-averaged over classes; {how}"
        group = HIST_BINS_FINE // self.bins
        neg_h = all_h - pos_h
        sections["histograms"]["score"] = {
            "edges": M.histogram_edges(self.bins).tolist(),
            "counts": {
                "true class": pos_h.sum(0).reshape(-1, group).sum(1).tolist(),
                "other classes": neg_h.sum(0).reshape(-1, group).sum(1).tolist(),
            },
            "xlabel": "P(class) one-vs-rest, pooled",
        }

    def _calibration(self, metrics, reasons, sampled, sections) -> None:
        """ECE, MCE, Brier and NLL from the exact calibration sums, a reliability diagram, and
        the NLL-optimal temperature: fitted on every margin for one logit or two columns (the
        NLL of a binary model depends on its margins only), on the reservoir's logits from
        three columns on (exact when it holds every sample, else flagged in ``sampled``)."""
        if self.num_columns <= 2:
            margins = torch.cat(self.samples["margin"])
            fit = _fit_temperature(margins=margins)
            how = f"fitted on all {len(margins)} margins"
        else:
            res = self.reservoir
            if len(res) == 0:
                fit = TemperatureFit(
                    NAN, reason="fitted on the reservoir's logits, and reservoir_size is 0"
                )
            else:
                order = torch.argsort(res.keys)  # independent of arrival order
                fit = _fit_temperature(logits=res.extra[order], labels=res.labels[order])
                info = {"exact": res.exact, "sample_size": len(res), "population": res.seen}
                sampled["fitted_temperature"] = dict(info)
                sampled["fitted_scale"] = dict(info)
            how = f"fitted on the logits of the reservoir's {len(res)} rows"
        scale, why = self._logit_scale()
        result = _calibration_compute(self.calibration, fit, scale, why)
        metrics.update(result.to_dict())
        reasons.update(result.reasons)
        reasons.setdefault("fitted_temperature", how)
        sections["reliability"] = result.reliability

    def _logit_scale(self) -> tuple[float | None, str]:
        """The head's s when the logits can be its scaled cosines s cos(theta) (one column per
        head class, every |z| <= s up to 0.1%), else None and why not."""
        if self.head is None:
            return None, NO_SCALE
        s = self.head.s
        if self.num_columns != self.head.num_classes:
            return None, (
                f"the logits ({self._describe(self.num_columns)}) do not have one column per "
                f"class of the head ({self.head.num_classes}): they are not its s * cos(theta)"
            )
        cs = self.colstats
        reach = max(float(cs["max"].max()), -float(cs["min"].min()))
        if not s > 0 or reach > s * (1 + 1e-3):
            return None, (
                f"the logits reach |z| = {reach:.4g}, beyond the head's s = {s:g}: they are not "
                "its s * cos(theta)"
            )
        return s, ""

    def _head(self, metrics, reasons, sections) -> None:
        hp = self.head
        t = torch.cat(self.samples["angle_true"]).numpy()
        o = torch.cat(self.samples["angle_other"]).numpy()
        metrics["angle_true_mean"] = float(t.mean())
        metrics["angle_nearest_other_mean"] = float(np.nanmean(o)) if np.isfinite(o).any() else NAN
        if hp.kind == "angular":
            metrics["fallback_fraction"] = float((np.radians(t) + hp.m > math.pi).mean())
        else:
            metrics["fallback_fraction"] = NAN
            reasons["fallback_fraction"] = "defined for angular (ArcFace-like) margins only"
        edges = np.linspace(0, 180, 61)
        sections.setdefault("histograms", {})["angle"] = {
            "edges": edges.tolist(),
            "counts": {
                "to true class": np.histogram(t, edges)[0].tolist(),
                "to nearest other": np.histogram(o[np.isfinite(o)], edges)[0].tolist(),
            },
            "xlabel": "angle (degrees)",
        }
        means = self.sums / self.counts.clamp_min(1)[:, None]
        predicted = self.confusion.sum(0) if self.confusion is not None else None
        h, r = head_health(
            hp,
            means,
            self.counts > 0,
            predicted,
            bool(self.head_info.get("missing_from_checkpoint")),
        )
        metrics.update(h)
        reasons.update(r)
        sections["head"] = {"kind": hp.kind, "m": hp.m, "s": hp.s, "num_classes": hp.num_classes}

    def _vectors(self, metrics, reasons, sampled, sections) -> None:
        """Metrics that need the vectors, on the reservoir (exact when it holds every sample)."""
        res = self.reservoir
        names = [
            "nc1",
            "centroid_confusion_count",
            "pair_ks",
            "pair_hellinger",
            "eer",
            "tar_at_far_1e-2",
            "tar_at_far_1e-3",
            "tar_at_far_1e-4",
            "roc_auc",
            "recall_at_1",
            "recall_at_5",
            "map_at_r",
        ]
        if len(res) == 0:
            for key in names:
                metrics[key] = NAN
                reasons[key] = "reservoir_size is 0: vector-based metrics are off"
            return
        order = torch.argsort(res.keys)  # independent of arrival order
        x, y = res.rows[order], res.labels[order]
        info = {"exact": res.exact, "sample_size": len(res), "population": res.seen}
        for key in names:
            rows = {"pair": self.pair_rows, "retrieval": self.retrieval_rows}.get(
                _VECTOR_GROUP.get(key), len(res)
            )
            used = min(rows, len(res))
            sampled[key] = {
                "exact": res.exact and used == len(res),
                "sample_size": used,
                "population": res.seen,
            }
        n_total = float(self.counts.sum())
        weight = n_total / len(res)
        value, why = M._nc1_compute(x, y, self.counts, self.sums, weight)
        metrics["nc1"] = value
        if why:
            reasons["nc1"] = why
        means = self.sums / self.counts.clamp_min(1)[:, None]
        present = self.counts > 0
        if int(present.sum()) >= 2:
            mu = means.float()
            if self.space == "cosine":
                d = -(x @ torch.nn.functional.normalize(mu, dim=1).T)
            else:
                d = torch.cdist(x, mu) ** 2
            d[:, ~present] = math.inf
            own = d.gather(1, y[:, None])[:, 0]
            d.scatter_(1, y[:, None], math.inf)
            confused = float((d.min(dim=1).values < own).double().sum())
            metrics["centroid_confusion_count"] = confused * weight
            metrics["centroid_confusion_fraction"] = confused / len(res)
            sampled["centroid_confusion_fraction"] = dict(info)
        else:
            metrics["centroid_confusion_count"] = NAN
            reasons["centroid_confusion_count"] = "needs at least two classes"
        self._pairs(x[: self.pair_rows], y[: self.pair_rows], metrics, reasons, sections)
        self._retrieval(x[: self.retrieval_rows], y[: self.retrieval_rows], metrics, reasons)
        sections["pca"] = pca_view(x, y, self._values, self.seed)

    def _pairs(self, x, y, metrics, reasons, sections) -> None:
        """Genuine vs impostor cosine similarities of every pair among these rows."""
        from .pairs import pair_similarities
        from .verification import verification_metrics

        n = len(y)
        ps = pair_similarities(x, y, max_pairs=max(1, n * (n - 1) // 2), seed=self.seed)
        if not (len(ps.genuine) and len(ps.impostor)):
            for key in [k for k, group in _VECTOR_GROUP.items() if group == "pair"]:
                metrics[key] = NAN
                reasons[key] = "needs same-class and different-class pairs"
            return
        g, i = ps.genuine.astype(np.float64), ps.impostor.astype(np.float64)
        v = verification_metrics(g, i)
        metrics["pair_ks"] = v.ks  # from the ROC's one sort (max |TAR - FAR|)
        edges = M.histogram_edges(self.bins, -1.0, 1.0)
        # equal bins by range: numpy's fast path, the same counts as by these edges
        hg = np.histogram(np.clip(g, -1, 1), self.bins, range=(-1.0, 1.0))[0]
        hi = np.histogram(np.clip(i, -1, 1), self.bins, range=(-1.0, 1.0))[0]
        metrics["pair_hellinger"] = M.hellinger_from_counts(hg, hi)
        metrics.update(v.to_dict())
        for note_key, note in (getattr(v, "notes", None) or {}).items():
            reasons.setdefault(str(note_key), str(note))
        sections.setdefault("histograms", {})["pair"] = {
            "edges": edges.tolist(),
            "counts": {"genuine": hg.tolist(), "impostor": hi.tolist()},
            "xlabel": "cosine similarity of a pair",
        }

    def _retrieval(self, x, y, metrics, reasons) -> None:
        """Exact kNN retrieval among these rows (each one a query against the others)."""
        from .retrieval import knn_retrieval

        if int((torch.bincount(y) >= 2).sum()) == 0:
            for key in ("recall_at_1", "recall_at_5", "map_at_r"):
                metrics[key] = NAN
                reasons[key] = "no class has two samples"
            return
        # reservoir rows live on the CPU; 1024-row blocks keep the working memory near 0.2 GB
        # for 5,000 rows of two classes (2048: 0.6 GB) at the same speed
        r = knn_retrieval(x, y, ks=(1, 5), space=self.space, chunk_size=1024)
        metrics.update(r.to_dict())

    def _class_table(self, order) -> list[dict]:
        n_c = self.counts.numpy()
        means = (self.sums / self.counts.clamp_min(1)[:, None]).numpy()
        q = self.sqnorms.numpy()
        rows = []
        for slot in order:
            if n_c[slot] == 0:
                continue
            spread = q[slot] / n_c[slot] - means[slot] @ means[slot]
            row = {
                "label": int(self._values[slot]),
                "count": int(n_c[slot]),
                "mean_norm": float(np.linalg.norm(means[slot])),
                "spread": float(max(spread, 0.0)),
            }
            if self.confusion is not None:
                cm = self.confusion.numpy()
                row["recall"] = float(cm[slot, slot] / cm[slot].sum()) if cm[slot].sum() else NAN
                row["predicted"] = int(cm[:, slot].sum())
            rows.append(row)
        return rows


# which bounded subset of the reservoir each vector-based metric uses
_VECTOR_GROUP = {
    "pair_ks": "pair",
    "pair_hellinger": "pair",
    "eer": "pair",
    "tar_at_far_1e-2": "pair",
    "tar_at_far_1e-3": "pair",
    "tar_at_far_1e-4": "pair",
    "roc_auc": "pair",
    "recall_at_1": "retrieval",
    "recall_at_5": "retrieval",
    "map_at_r": "retrieval",
}


def _ovr_state(p: torch.Tensor, y: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """One-vs-rest score state of rows with class probabilities ``p`` [B, k]: histograms of
    P(class c) over all rows and over the rows of class c (``HIST_BINS_FINE`` bins, binned in
    p's dtype), and their sums and sums of squares in float64; on p's device."""
    bins = HIST_BINS_FINE
    flat = (p * bins).long().clamp_max_(bins - 1)
    flat += torch.arange(0, k * bins, bins, device=p.device)
    p64 = p.double()  # narrow logits only (C <= MAX_COLUMN_KEYS) or reservoir rows: small
    ptrue = p64.gather(1, y[:, None])[:, 0]
    zeros = torch.zeros(k, dtype=torch.float64, device=p.device)
    return {
        "all_hist": torch.bincount(flat.view(-1), minlength=k * bins).view(k, bins),
        "pos_hist": torch.bincount(flat.gather(1, y[:, None])[:, 0], minlength=k * bins).view(
            k, bins
        ),
        "pos_sum": zeros.index_add(0, y, ptrue),
        "pos_sumsq": zeros.index_add(0, y, ptrue * ptrue),
        "all_sum": p64.sum(0),
        "all_sumsq": (p64 * p64).sum(0),
    }


def _ovr_from_rows(logits: torch.Tensor, labels: torch.Tensor, k: int):
    """One-vs-rest histograms and moments, as the streaming state keeps them, from rows."""
    state = _ovr_state(torch.softmax(logits.double(), dim=1), labels, k)
    moments = {key: state[key].numpy() for key in ("pos_sum", "pos_sumsq", "all_sum", "all_sumsq")}
    n_c = torch.bincount(labels, minlength=k).double().numpy()
    return state["pos_hist"].double().numpy(), state["all_hist"].double().numpy(), moments, n_c


def _ovr_separation(pos_h, all_h, moments, n_c, bins: int) -> tuple[float, float, float]:
    """Macro-averaged one-vs-rest KS, Hellinger (``bins`` coarse bins) and Fisher score."""
    n = n_c.sum()
    neg_h = all_h - pos_h
    group = HIST_BINS_FINE // bins
    ks, hel, fis = [], [], []
    for c in np.nonzero(n_c > 0)[0]:
        n_neg = n - n_c[c]
        if n_neg <= 0:
            continue
        ks.append(np.max(np.abs(np.cumsum(pos_h[c]) / n_c[c] - np.cumsum(neg_h[c]) / n_neg)))
        hel.append(
            M.hellinger_from_counts(
                pos_h[c].reshape(-1, group).sum(1), neg_h[c].reshape(-1, group).sum(1)
            )
        )
        m1 = moments["pos_sum"][c] / n_c[c]
        v1 = moments["pos_sumsq"][c] / n_c[c] - m1 * m1
        m0 = (moments["all_sum"][c] - moments["pos_sum"][c]) / n_neg
        v0 = (moments["all_sumsq"][c] - moments["pos_sumsq"][c]) / n_neg - m0 * m0
        v = max(v1, 0) + max(v0, 0)
        fis.append((m1 - m0) ** 2 / v if v > 0 else NAN)
    ks_v = float(np.mean(ks)) if ks else NAN
    hel_v = float(np.nanmean(hel)) if hel and np.isfinite(hel).any() else NAN
    fis_v = float(np.nanmean(fis)) if fis and np.isfinite(fis).any() else NAN
    return ks_v, hel_v, fis_v


def dropped_line(nonfinite: float, zero_norm: float, total: float) -> str:
    """ "900 of 1000 rows were dropped: 850 with NaN/Inf, 50 all-zero"."""
    parts = []
    if nonfinite:
        parts.append(f"{int(nonfinite)} with NaN/Inf")
    if zero_norm:
        parts.append(f"{int(zero_norm)} all-zero")
    return f"{int(nonfinite + zero_norm)} of {int(total)} rows were dropped: {', '.join(parts)}"


def _columns(z: torch.Tensor | None) -> int | None:
    """Logit width: None without logits, 1 for one binary logit [N], else C."""
    return None if z is None else (1 if z.ndim == 1 else z.shape[1])


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def diagnose(embeddings, labels, logits=None, head=None, *, ids=None, **options):
    """One-shot report: ``Diagnoser(head=head, **options)``, one update, compute.

    embeddings [N, D]; labels [N] integers; logits None, [N] (one binary logit) or [N, C];
    head an optional margin head (for angles, m and s). See :class:`Diagnoser` for options.
    """
    d = Diagnoser(head=head, **options)
    d.update(embeddings, labels, logits, ids)
    return d.compute()
