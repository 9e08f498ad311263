"""Several views of the same samples (modalities, branches, a fused embedding): one report.

>>> report = diagnose_views({"left": a, "right": b, "fused": f}, labels, logits=z,
...                         attention=w)                                 # doctest: +SKIP
>>> report.metrics["views.left.eer"], report.metrics["fusion_gain.eer"]  # doctest: +SKIP

A `ViewsDiagnoser` holds one `Diagnoser` per view (the logits and a margin head go to the fused
view's), the attention sums and a joint, content-hashed sample of every view's rows of the same
samples (the cross-view agreement and the fusion gain's paired intervals are computed on it).
It updates batch by batch, merges and syncs across ranks like a `Diagnoser`; the report's keys
are described in views_report.py.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence

import torch

from . import views_metrics as VM
from ._validation import as_tensor, check_batch, check_space
from .diagnoser import Diagnoser
from .errors import InputError
from .reservoir import Reservoir

JOINT_ROWS = 2_000  # rows of the joint sample (agreement, paired intervals)
NAME = re.compile(r"[A-Za-z0-9_-]+")
FUSED_NAMES = ("fused", "embedding", "embeddings", "features", "emb")
ROW_SUM_TOLERANCE = 1e-3


class ViewsDiagnoser:
    """Streaming, mergeable accumulator of several views of the same samples.

    Parameters
    ----------
    fused : name of the fused view (its embeddings come from all the others; the logits and
        the head belong to it, and the fusion gain compares it with the best other view).
        Default: the view named ``fused`` (or ``embedding``) when there is one, else none.
    head : a margin head of the fused view (angles, m and s).
    joint_rows : bound on the joint sample of rows of every view (agreement, paired intervals).
    **options : `Diagnoser` options (space, reservoir_size, seed, ...), for every view.
    """

    def __init__(
        self, *, fused: str | None = None, head=None, joint_rows: int = JOINT_ROWS, **options
    ):
        if fused is not None and (not isinstance(fused, str) or not NAME.fullmatch(fused)):
            raise InputError("fused", f"must be a view name, got {fused!r}", argument="fused")
        if not isinstance(joint_rows, int) or isinstance(joint_rows, bool) or joint_rows < 2:
            raise InputError(
                "joint_rows", f"must be an integer >= 2, got {joint_rows!r}", argument="joint_rows"
            )
        options.pop("sync_on_compute", None)
        self.sync_on_compute = True
        self.process_group = options.pop("process_group", None)
        self.options = options
        self.space = check_space(options.get("space", "cosine"))
        self.seed = int(options.get("seed", 0))
        Diagnoser(**options)  # checks the options once, before any data
        self.head = head
        self.fused_given = fused
        self.joint_rows = joint_rows
        self.reset()

    def reset(self) -> None:
        self.names: list[str] | None = None  # in the order of the first batch
        self.fused: str | None = self.fused_given
        self.dims: dict[str, int] = {}
        self.diagnosers: dict[str, Diagnoser] = {}
        self.joint = Reservoir(self.joint_rows, self.seed)
        self.attention: dict | None = None
        self.with_attention: bool | None = None  # fixed by the first batch
        self.synced = False

    @property
    def inputs(self) -> list[str]:
        """The views other than the fused one, in order (attention columns follow it)."""
        return [v for v in self.names or [] if v != self.fused]

    # ------------------------------------------------------------------------------------------
    def _start(self, views: Mapping) -> None:
        names = list(views)
        for name in names:
            if not isinstance(name, str) or not NAME.fullmatch(name):
                raise InputError(
                    "views",
                    f"has the name {name!r}",
                    "name views with letters, digits, '_' or '-' (no dots)",
                    argument="views",
                )
        if self.fused is None:
            self.fused = next((n for n in FUSED_NAMES if n in names), None)
        elif self.fused not in names:
            raise InputError(
                "fused",
                f"names {self.fused!r}, which is not among the views {names}",
                argument="fused",
            )
        if len([n for n in names if n != self.fused]) < 2 and self.fused is None:
            raise InputError(
                "views",
                f"holds {len(names)} view(s) {names}",
                "pass two or more views of the same samples",
                argument="views",
            )
        if not [n for n in names if n != self.fused]:
            raise InputError(
                "views",
                f"holds only the fused view {self.fused!r}",
                "pass the views it was fused from too",
                argument="views",
            )
        self.names = names
        for name in names:
            options = dict(self.options)
            if name != self.fused:  # the head and the probe's finding are the fused model's
                options = {
                    k: v for k, v in options.items() if k not in ("margin_leak", "head_info")
                }
            head = self.head if name == self.fused else None
            self.diagnosers[name] = Diagnoser(head=head, sync_on_compute=False, **options)

    @torch.no_grad()
    def update(
        self, views: Mapping, labels, logits=None, attention=None, ids: Sequence[str] | None = None
    ) -> None:
        """Add one batch: ``views`` maps each name to ``[B, D_v]`` embeddings of the same B
        samples; labels ``[B]``; logits (the fused view's) None, ``[B]`` or ``[B, C]``;
        attention None or ``[B, V]`` weights of the views other than the fused one, in their
        order, each row summing to 1; ids optional. A batch that raises leaves the state as
        it was."""
        if self.synced:
            raise RuntimeError(
                "this ViewsDiagnoser was synced and holds every rank's samples; call reset() "
                "before feeding the next evaluation"
            )
        if not isinstance(views, Mapping) or not views:
            raise InputError(
                "views",
                f"is a {type(views).__name__}",
                "pass a dict of view name -> [N, D] embeddings",
                argument="views",
            )
        fresh = self.names is None
        if fresh:
            self._start(views)
        elif set(views) != set(self.names):
            raise InputError(
                "views",
                f"holds {sorted(views)} but earlier batches held {sorted(self.names)}",
                "pass the same views in every batch",
                argument="views",
            )
        try:
            batch = self._check(views, labels, logits, attention)
            for name in self.names:  # every view's batch is checked before any state changes
                d = self.diagnosers[name]
                z = logits if name == self.fused else None
                d._check_shapes(
                    check_batch(
                        batch["views"][name],
                        batch["labels"],
                        z,
                        ids,
                        drop_zero_rows=d.space == "cosine",
                    )
                )
        except Exception:
            if fresh:
                self.reset()
            raise
        for name in self.names:
            z = logits if name == self.fused else None
            self.diagnosers[name].update(batch["views"][name], batch["labels"], z, ids)
        self.with_attention = batch["attention"] is not None
        self._update_joint(batch)

    def _check(self, views, labels, logits, attention) -> dict:
        y = as_tensor(labels, "labels")
        if y.ndim != 1:
            raise InputError(
                "labels", f"has shape {list(y.shape)}", "pass [N] labels", argument="labels"
            )
        out = {}
        for name in self.names:
            x = as_tensor(views[name], f"views[{name!r}]")
            if x.ndim != 2 or len(x) != len(y):
                raise InputError(
                    f"views[{name!r}]",
                    f"has shape {list(x.shape)} for {len(y)} labels",
                    f"pass [{len(y)}, D] embeddings of the same samples",
                    argument="views",
                )
            if name in self.dims and x.shape[1] != self.dims[name]:
                raise InputError(
                    f"views[{name!r}]",
                    f"has D = {x.shape[1]}, earlier batches had {self.dims[name]}",
                    argument="views",
                )
            out[name] = x
        if logits is not None and self.fused is None:
            raise InputError(
                "logits",
                "were given but no view is the fused one",
                "name the fused view 'fused' or pass fused=NAME",
                argument="logits",
            )
        w = None
        if attention is not None:
            w = as_tensor(attention, "attention").double()
            v = len(self.inputs)
            if w.shape != (len(y), v):
                raise InputError(
                    "attention",
                    f"has shape {list(w.shape)}",
                    f"pass [{len(y)}, {v}] weights of the views {self.inputs}, in that order",
                    argument="attention",
                )
            ok = torch.isfinite(w).all(1)
            bad = ok & (((w < 0).any(1)) | ((w.sum(1) - 1).abs() > ROW_SUM_TOLERANCE))
            if bool(bad.any()):
                raise InputError(
                    "attention",
                    f"has {int(bad.sum())} rows that are not weights summing to 1",
                    "pass per-sample weights over the views (a softmax), e.g. w / w.sum(1)",
                    argument="attention",
                )
        if self.with_attention is not None and (w is not None) != self.with_attention:
            raise InputError(
                "attention", "must be given for every batch or for none", argument="attention"
            )
        return {"views": out, "labels": y, "attention": w}

    def _update_joint(self, batch: dict) -> None:
        """The joint sample and the attention sums, over the rows usable in every view."""
        y = batch["labels"].long()
        parts, keep = [], torch.ones(len(y), dtype=torch.bool)
        for name in self.names:
            x = batch["views"][name].double()
            self.dims.setdefault(name, x.shape[1])
            norms = torch.linalg.vector_norm(x, dim=1)
            keep &= torch.isfinite(norms)
            if self.space == "cosine":
                keep &= norms > 0
                x = x / torch.where(norms > 0, norms, 1.0)[:, None]
            parts.append(x.float())
        w = batch["attention"]
        if w is not None:
            keep &= torch.isfinite(w).all(1)
        rows = torch.cat(parts, dim=1)[keep]
        self.joint.update(rows, y[keep])
        if w is not None:
            self.attention = VM.attention_merge(
                self.attention, VM.attention_update(w[keep], y[keep])
            )

    # ------------------------------------------------------------------------------------------
    def merge(self, other: ViewsDiagnoser) -> ViewsDiagnoser:
        """Fold another accumulator (same options, same views) into this one; returns self."""
        if self.synced:
            raise RuntimeError("this ViewsDiagnoser was synced; merge into one that was not")
        if (other.options, other.joint_rows) != (self.options, self.joint_rows):
            raise ValueError("cannot merge ViewsDiagnosers built with different options")
        if other.names is None:
            return self
        if self.names is None:
            self.fused = other.fused
            self._start({n: None for n in other.names})
            self.dims = dict(other.dims)
        elif set(other.names) != set(self.names) or other.fused != self.fused:
            raise ValueError(
                f"cannot merge: views {other.names} (fused {other.fused!r}) vs "
                f"{self.names} (fused {self.fused!r})"
            )
        if None not in (self.with_attention, other.with_attention) and (
            self.with_attention != other.with_attention
        ):
            raise ValueError("cannot merge: one ViewsDiagnoser has attention and the other not")
        if self.with_attention is None:
            self.with_attention = other.with_attention
        for name in self.names:
            self.diagnosers[name].merge(other.diagnosers[name])
        joint = other.joint
        if len(joint) and self.dims != other.dims:
            raise ValueError(f"cannot merge: view sizes {other.dims} vs {self.dims}")
        self.joint.merge(joint)
        self.attention = VM.attention_merge(self.attention, other.attention)
        return self

    def sync(self, group=None) -> ViewsDiagnoser:
        """Fold the states of every rank of ``group`` into this one (all ranks end equal): the
        joint sample and the attention sums of every rank are gathered and merged in rank
        order, and each view's Diagnoser syncs as a `Diagnoser` does (a rank that saw no batch
        takes the views of the others)."""
        import torch.distributed as dist

        if self.synced:
            return self
        mine = {
            "names": self.names,
            "fused": self.fused,
            "dims": self.dims,
            "joint": self.joint.state(),
            "attention": self.attention,
            "with_attention": self.with_attention,
        }
        states: list = [None] * dist.get_world_size(group)
        dist.all_gather_object(states, mine, group=group)
        live = [s for s in states if s["names"] is not None]
        for s in live:
            if (set(s["names"]), s["fused"]) != (set(live[0]["names"]), live[0]["fused"]):
                raise ValueError(
                    f"cannot sync: views {live[0]['names']} (fused {live[0]['fused']!r}) on one "
                    f"rank, {s['names']} (fused {s['fused']!r}) on another"
                )
        if live and self.names is None:
            self.fused = live[0]["fused"]
            self._start({n: None for n in live[0]["names"]})
        for name in self.names or []:
            self.diagnosers[name].sync(group)
        self.joint = Reservoir(self.joint_rows, self.seed)
        self.attention = None
        for state in live:
            self.dims = self.dims or dict(state["dims"])
            if self.with_attention is None:
                self.with_attention = state["with_attention"]
            part = Reservoir(self.joint_rows, self.seed)
            part.seen = state["joint"]["seen"]
            if state["joint"]["rows"] is not None and len(state["joint"]["keys"]):
                part.rows, part.keys = state["joint"]["rows"], state["joint"]["keys"]
                part.labels = state["joint"]["labels"]
            self.joint.merge(part)
            self.attention = VM.attention_merge(self.attention, state["attention"])
        self.synced = True
        return self

    def compute(self):
        """The views report of everything seen so far (views_report.py). Under an initialised
        torch.distributed process group it covers every rank's samples."""
        from .views_report import assemble_views

        if self.sync_on_compute and not self.synced:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                memo = {id(self.process_group): self.process_group}
                synced = copy.deepcopy(self, memo).sync(self.process_group)
                if synced.names is None:
                    raise ValueError("no usable rows: no rank was given rows")
                return assemble_views(synced)
        if self.names is None:
            raise ValueError("no usable rows: no rows were given")
        return assemble_views(self)


def diagnose_views(
    views: Mapping,
    labels,
    *,
    logits=None,
    attention=None,
    fused=None,
    head=None,
    ids=None,
    **options,
):
    """One report on several views of the same samples (`ViewsDiagnoser`, one update).

    views : name -> ``[N, D_v]`` embeddings (e.g. ``{"palm": ..., "vein": ..., "fused": ...}``);
    labels ``[N]``; logits of the fused view (``[N]`` or ``[N, C]``); attention ``[N, V]``
    per-sample weights of the views other than the fused one, in the mapping's order;
    fused the fused view's name (default ``fused`` when present); ``**options`` `Diagnoser`
    options for every view. Keys of the report: views_report.py.
    """
    d = ViewsDiagnoser(fused=fused, head=head, **options)
    d.update(views, labels, logits, attention, ids)
    return d.compute()
