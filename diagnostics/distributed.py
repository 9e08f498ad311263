"""Syncing a :class:`~embscope.diagnostics.Diagnoser` across the ranks of torch.distributed.

Each rank of a DistributedDataParallel validation loop feeds its shard of the data to its own
``Diagnoser``; :func:`sync_diagnoser` folds the states of every rank into each of them, so that
``compute()`` reports on the whole set, identically on all ranks. The result equals one process
that saw every shard (up to float64 summation order): sums are order-free, per-sample scalars
are concatenated in rank order, and the content-hashed reservoir keeps the same rows (the
``capacity`` smallest keys of the union) whatever the sharding.

Collectives used, all on ``group`` (the default group when None):

- ``all_gather_object`` once, for the small description of each rank's state (options, D,
  logit shape, label values, per-sample lengths);
- ``all_reduce`` SUM of one packed float64 buffer (class counts, sums and squared norms, the
  confusion matrix, logit column count/sum/sum of squares, one-vs-rest histograms and sums, the
  calibration bins and sums) and MIN of one buffer (logit column minima, and the negated
  maxima); the maximum calibration error is computed from the summed bins, so needs no MAX;
- ``all_gather`` of padded tensors for what grows with the data (per-sample scalars, sample ids
  as UTF-8 bytes, reservoir rows/labels/keys and, from three logit columns on, the logits of
  the reservoir's rows); the lengths are known from the description.

Tensors travel on the CPU under gloo and on ``torch.cuda.current_device()`` under nccl (set it
with ``torch.cuda.set_device(local_rank)`` before syncing, as DDP itself requires).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import state as S
from .reservoir import Reservoir

if TYPE_CHECKING:
    from .diagnoser import Diagnoser


def _dist():
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "Diagnoser.sync needs an initialised torch.distributed process group "
            "(call torch.distributed.init_process_group first, e.g. under torchrun)"
        )
    return dist


def collective_device(group=None) -> torch.device:
    """Where tensors must be for the collectives of ``group``: CUDA under nccl, else the CPU."""
    dist = _dist()
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _describe(d: Diagnoser) -> dict:
    """The small, picklable description of one rank's state that every rank needs first."""
    samples = {k: torch.cat(d.state[k]) if d.state.get(k) else None for k in S.cat_fields()}
    # ids travel as one UTF-8 blob per rank plus their lengths in characters
    ids = d.ids or []
    blob = "".join(ids).encode("utf-8")
    return {
        "options": (d.space, d.bins, d.reservoir.capacity, d.seed),
        "head": None if d.head is None else d.head.num_classes,
        "dim": d.dim,
        "num_columns": d.num_columns,
        "values": [int(v) for v in d._values],
        "n": 0 if samples["samples.label"] is None else len(samples["samples.label"]),
        "lengths": {k: 0 if t is None else len(t) for k, t in samples.items()},
        "dtypes": {
            k: str(t.dtype).removeprefix("torch.") for k, t in samples.items() if t is not None
        },
        "has_ids": d.ids is not None,
        "id_bytes": len(blob),
        "reservoir": len(d.reservoir),
        "seen": int(d.reservoir.seen),
        "nonfinite": int(d.nonfinite),
        "zero_norm": int(d.zero_norm),
        "_samples": samples,
        "_id_chars": np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)),
        "_id_blob": blob,
    }


def _check(descs: list[dict]) -> list[dict]:
    """Raise the same ValueError on every rank when the states cannot be combined; return the
    descriptions of the ranks that hold a state (``dim`` set)."""
    for r, e in enumerate(descs):
        if e["options"] != descs[0]["options"]:
            raise ValueError(
                "cannot sync Diagnosers built with different options: (space, bins, "
                f"reservoir_size, seed) is {descs[0]['options']} on rank 0 and {e['options']} "
                f"on rank {r}"
            )
        if e["head"] != descs[0]["head"]:
            raise ValueError(
                f"cannot sync: rank 0 has head={descs[0]['head']} classes and rank {r} has "
                f"head={e['head']} (None: no head); pass the same head on every rank"
            )
    live = [(r, e) for r, e in enumerate(descs) if e["dim"] is not None]
    if not live:
        return []
    r0, e0 = live[0]
    for r, e in live:
        if (e["dim"], e["num_columns"]) != (e0["dim"], e0["num_columns"]):
            raise ValueError(
                f"cannot sync: rank {r0} saw D = {e0['dim']} with {_logit_shape(e0)}, rank {r} "
                f"saw D = {e['dim']} with {_logit_shape(e)}; every rank must feed the same kind "
                "of batch"
            )
    with_samples = [(r, e) for r, e in live if e["n"] > 0]
    if with_samples and any(e["has_ids"] != with_samples[0][1]["has_ids"] for _, e in with_samples):
        has = [r for r, e in with_samples if e["has_ids"]]
        lacks = [r for r, e in with_samples if not e["has_ids"]]
        raise ValueError(
            f"cannot sync: ranks {has} passed ids and ranks {lacks} did not; pass ids on every "
            "rank or on none"
        )
    return [e for _, e in live]


def _logit_shape(e: dict) -> str:
    c = e["num_columns"]
    return "no logits" if c is None else "logits [N]" if c == 1 else f"logits [N, {c}]"


def _gather_rows(t: torch.Tensor, lengths: list[int], group, device) -> torch.Tensor:
    """all_gather of tensors whose first dimension differs per rank: pad to the longest, gather,
    trim, concatenate in rank order (on the CPU)."""
    dist = _dist()
    longest = max(lengths)
    if longest == 0:
        return t[:0].cpu()
    wire = torch.uint8 if t.dtype == torch.bool else t.dtype
    padded = torch.zeros((longest, *t.shape[1:]), dtype=wire, device=device)
    padded[: len(t)] = t.to(device, wire)
    out = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(out, padded, group=group)
    return torch.cat([o[:n] for o, n in zip(out, lengths, strict=True)]).to("cpu", t.dtype)


def sync_diagnoser(diagnoser: Diagnoser, group=None) -> Diagnoser:
    """Fold the states of every rank of ``group`` into ``diagnoser``, in place; returns it.

    A collective: every rank of ``group`` must call it, once per evaluation (this function
    syncing twice counts the other ranks twice; ``Diagnoser.sync`` guards against that).
    Afterwards every rank holds the same state, equal to that of one Diagnoser fed every
    rank's batches in rank order, except that class slots follow the
    sorted label values (slots are internal; reports do not depend on them) and sums differ by
    float64 rounding. A rank that saw no samples (``dim`` None) contributes nothing.

    Raises ValueError, on every rank alike, when the ranks' Diagnosers were built with different
    options or fed batches of different kinds (D, logit shape, ids given or not); RuntimeError
    when no process group is initialised.
    """
    dist = _dist()
    device = collective_device(group)
    world = dist.get_world_size(group)
    mine = _describe(diagnoser)
    wire = {k: v for k, v in mine.items() if not k.startswith("_")}
    descs: list[dict] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(descs, wire, group=group)
    live = _check(descs)
    d = diagnoser
    for counter in ("nonfinite", "zero_norm"):  # the early fields: summed from the descriptions
        setattr(d, counter, sum(e[counter] for e in descs))
    seen = sum(e["seen"] for e in descs)
    if not live:
        d.reservoir.seen = seen
        return d

    # one class order for all ranks: logit columns, else the sorted union of label values
    dim, cols = live[0]["dim"], live[0]["num_columns"]
    if cols is not None:
        values = list(live[0]["values"])
    else:
        values = sorted({v for e in live for v in e["values"]})
    pos = {v: i for i, v in enumerate(values)}
    k = len(values)
    mapping = torch.as_tensor([pos[v] for v in mine["values"]], dtype=torch.int64)

    # fixed-shape states, as declared (state.py): one SUM and one MIN all_reduce of packed
    # float64 buffers (maxima travel negated), per-class fields on the common slots
    layout = S.Layout(k, dim, cols)
    reduced = _all_reduce_packed(
        S.remapped(d.state, layout, mapping, "sum"), dist.ReduceOp.SUM, group, device
    )
    lows = {
        **S.remapped(d.state, layout, mapping, "min"),
        **{name: -t for name, t in S.remapped(d.state, layout, mapping, "max").items()},
    }
    if lows:
        for name, t in _all_reduce_packed(lows, dist.ReduceOp.MIN, group, device).items():
            reduced[name] = t if S.FIELDS[name].reduce == "min" else -t

    # per-sample scalars, ids and the reservoir: padded all_gather in rank order
    lengths = [e["n"] for e in descs]
    gathered = {}
    for key, local in mine["_samples"].items():
        key_lengths = [e["lengths"][key] for e in descs]
        if sum(key_lengths) == 0:
            continue
        # ranks may differ in precision (e.g. float32 vs float64 embeddings): use the widest
        dtype = functools.reduce(
            torch.promote_types,
            [getattr(torch, e["dtypes"][key]) for e in descs if key in e["dtypes"]],
        )
        local = torch.zeros(0, dtype=dtype) if local is None else local.to(dtype)
        if S.FIELDS[key].slots and len(local):
            local = mapping[local]
        gathered[key] = _gather_rows(local, key_lengths, group, device)
    if any(e["n"] for e in descs):
        has_ids = any(e["has_ids"] for e in descs if e["n"])
    else:
        has_ids = any(e["has_ids"] for e in descs)
    ids = [] if has_ids else None
    if has_ids and sum(lengths):
        chars = _gather_rows(torch.from_numpy(mine["_id_chars"]), lengths, group, device)
        blob = _gather_rows(
            torch.from_numpy(np.frombuffer(mine["_id_blob"], dtype=np.uint8).copy()),
            [e["id_bytes"] for e in descs],
            group,
            device,
        )
        text = blob.numpy().tobytes().decode("utf-8")  # whole blobs of whole strings: valid
        ends = chars.cumsum(0).tolist()
        ids = [text[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    res = d.reservoir
    res_lengths = [e["reservoir"] for e in descs]
    with_logits = cols is not None and cols > 2  # the reservoir keeps its rows' logits
    if len(res):
        rows, keys, res_labels = res.rows, res.keys, mapping[res.labels]
        extra = res.extra
    else:
        rows = torch.zeros(0, dim, dtype=torch.float32)
        keys = res_labels = torch.zeros(0, dtype=torch.int64)
        extra = torch.zeros(0, cols, dtype=torch.float32) if with_logits else None
    union = Reservoir(res.capacity, res.seed)
    if sum(res_lengths):
        union.rows = _gather_rows(rows, res_lengths, group, device)
        union.keys = _gather_rows(keys, res_lengths, group, device)
        union.labels = _gather_rows(res_labels, res_lengths, group, device)
        if with_logits:
            union.extra = _gather_rows(extra, res_lengths, group, device)
    union.seen = seen

    # install the common state
    d.dim, d.num_columns = dim, cols
    d._values = values
    d._slot = {} if d._indexed else dict(pos)
    d.state = {
        "nonfinite": d.state["nonfinite"],
        "zero_norm": d.state["zero_norm"],
        **reduced,
        **{key: [gathered[key]] if key in gathered else [] for key in S.cat_fields()},
        "ids": ids,
    }
    d.reservoir = Reservoir(res.capacity, res.seed)
    d.reservoir.merge(union)  # keeps the ``capacity`` smallest keys, as one process would
    return d


def _all_reduce_packed(states: dict, op, group, device) -> dict:
    """all_reduce a dict of float64 tensors as one flat buffer; returns new CPU tensors."""
    dist = _dist()
    flat = torch.cat([t.reshape(-1) for t in states.values()]).to(device)
    dist.all_reduce(flat, op=op, group=group)
    if op == dist.ReduceOp.SUM and dist.get_world_size(group) > 2:
        # ranks may add in different orders (gloo does with 3+ ranks): take rank 0's bits so
        # that every rank holds exactly the same state
        dist.broadcast(
            flat, src=0 if group is None else dist.get_global_rank(group, 0), group=group
        )
    flat = flat.cpu()
    out, at = {}, 0
    for key, t in states.items():
        out[key] = flat[at : at + t.numel()].reshape(t.shape).clone()
        at += t.numel()
    return out
