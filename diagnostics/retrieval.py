"""Retrieval metrics where every sample queries all the others: recall@k and MAP@R.

The numbers are those of pytorch-metric-learning's ``AccuracyCalculator`` with the queries as
the references (``get_accuracy(x, y)``): ``recall_at_1`` is its ``precision_at_1`` and
``map_at_r`` its ``mean_average_precision_at_r``. The computation is exact and blocked: the
N x N similarity matrix is never held, and because the queries are the references each
off-diagonal block is computed once and serves the queries of both its rows and its columns
(the blocked engine is in `embscope.diagnostics.knn`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ._validation import SPACES, as_tensor
from .knn import (
    _NEG_INF,
    _SENTINEL,
    _key_index,
    _keys,
    _Products,
    _run,
    _score_factors,
    _symmetric_topk,
    _threads,
    _top_rows,
)

NAN = float("nan")


@dataclass(frozen=True)
class PerQuery:
    """Each query's retrieval values, queries in the order of the input rows.

    index : [Q] int64, the query's row in ``embeddings``.
    hits : [Q, len(ks)] bool, a same-class sample among its first k neighbours (columns in the
        order of ``ks``, ascending).
    ap : [Q] float64, its AP@R.
    ks : the k of the columns of ``hits``.
    """

    index: np.ndarray
    hits: np.ndarray
    ap: np.ndarray
    ks: tuple[int, ...]


@dataclass(frozen=True)
class RetrievalResult:
    """Leave-one-out retrieval quality; every value is in [0, 1], higher is better.

    Attributes
    ----------
    recall_at_k : {k: share of queries with at least one same-class sample among their k
        nearest neighbours}. recall@1 equals pytorch-metric-learning's ``precision_at_1``.
    map_at_r : mean over queries of AP@R (Musgrave et al., 2020).
    n_queries : queries averaged over (those with at least one other same-class sample).
    n_skipped : samples that are the only member of their class (R = 0); they still serve as
        references but are not queries, as in pytorch-metric-learning.
    space : "cosine" or "euclidean", the geometry the neighbours were ranked in.
    per_query : with ``per_query=True``, each query's values (`PerQuery`): what intervals over
        the queries and comparisons query by query need; None otherwise.
    """

    recall_at_k: dict[int, float]
    map_at_r: float
    n_queries: int
    n_skipped: int
    space: str = "cosine"
    per_query: PerQuery | None = None

    higher_is_better: ClassVar[bool] = True

    def to_dict(self) -> dict[str, float]:
        """``{"recall_at_1": ..., "recall_at_5": ..., "map_at_r": ...}``, one key per k."""
        out = {f"recall_at_{k}": float(v) for k, v in self.recall_at_k.items()}
        out["map_at_r"] = float(self.map_at_r)
        return out


# ----------------------------------------------------------------------------------------------
# Input checks shared by the retrieval and pair functions.
# ----------------------------------------------------------------------------------------------


def _check_embeddings(embeddings, device=None) -> torch.Tensor:
    """[N, D] finite real values -> float32 tensor on ``device`` (default: where it lives)."""
    x = as_tensor(embeddings, "embeddings")
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [N, D], got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"embeddings must have at least one row and one column, got shape {tuple(x.shape)}"
        )
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"embeddings must hold real numbers, got dtype {x.dtype}")
    if device is not None:
        x = x.to(device)
    x = x.to(torch.float32)
    # NaN propagates through max and min, and an infinity shows in one of them.
    bad = ~(torch.isfinite(x.amax(dim=1)) & torch.isfinite(x.amin(dim=1)))
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()
        raise ValueError(
            f"embeddings must be finite, got {len(rows)} rows with NaN or Inf "
            f"(first at row {int(rows[0])})"
        )
    return x


def _check_labels(labels, n: int, device: torch.device) -> torch.Tensor:
    """[N] integers of any values -> int64 class codes 0..C-1 on ``device``."""
    y = as_tensor(labels, "labels")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(
            f"labels must be 1-D with one entry per embedding row ([{n}]), "
            f"got shape {tuple(y.shape)}"
        )
    if y.dtype == torch.bool or torch.is_floating_point(y) or y.is_complex():
        raise TypeError(f"labels must hold integers, got dtype {y.dtype}")
    _, codes = torch.unique(y.to(device), return_inverse=True)
    return codes.to(torch.int64)


def _check_chunk_size(chunk_size, name: str = "chunk_size", allow_none: bool = True) -> int | None:
    if chunk_size is None and allow_none:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"{name} must be a positive integer, got {chunk_size}")
    return int(chunk_size)


def _check_ks(ks) -> tuple[int, ...]:
    if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool):
        ks = (ks,)
    if not isinstance(ks, Iterable):
        raise TypeError(f"ks must be a sequence of positive integers, got {ks!r}")
    ks = tuple(ks)
    if not ks or any(
        isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks
    ):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    return tuple(sorted({int(k) for k in ks}))


def _default_chunk_size(device: torch.device) -> int:
    return 16384 if device.type == "cuda" else 2048


def _scores(rel: torch.Tensor, r: torch.Tensor, ks: tuple[int, ...]) -> tuple[list, torch.Tensor]:
    """Per-query hits at each k and AP@R from the ranked same-class flags ``rel`` [Q, K].

    AP@R = (1/R) sum_{i <= R} P(i) rel(i), P(i) = (same-class among the first i) / i.
    """
    hits = [rel[:, :k].any(dim=1) for k in ks]
    width = rel.shape[1]
    pos = torch.arange(1, width + 1, device=rel.device)
    relr = rel & (pos[None, :] <= r[:, None])
    prec = torch.cumsum(relr, dim=1).to(torch.float64) / pos.to(torch.float64)
    ap = (prec * relr).sum(dim=1) / r.to(torch.float64)
    return hits, ap


def knn_retrieval(
    embeddings,
    labels,
    *,
    ks: Iterable[int] = (1, 5),
    space: str = "cosine",
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    per_query: bool = False,
) -> RetrievalResult:
    """Exact leave-one-out recall@k and MAP@R, every sample querying all the others.

    For query q with R_q other samples of its class, rank the N - 1 others by similarity
    (cosine: dot product of L2-normalised rows; euclidean: squared distance, ascending), then

    - recall@k(q) = 1 if a same-class sample is among the first k, else 0;
    - AP@R(q) = (1/R_q) * sum_{i=1..R_q} P(i) rel(i), P(i) = share of same-class samples among
      the first i (MAP@R, Musgrave, Belongie & Lim, "A Metric Learning Reality Check",
      ECCV 2020),

    averaged over the queries with R_q >= 1. Samples alone in their class are references only.

    These are the numbers of pytorch-metric-learning 2.9's
    ``AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"),
    k="max_bin_count").get_accuracy(x, y)``, which ranks by L2 distance with faiss (pass it
    unit rows to compare with ``space="cosine"``) and, like this function, leaves out the
    queries with R = 0 and averages over the rest (nan when none is left). Ties are broken
    here by the lower sample index (the order of ``embeddings``), whatever ``chunk_size``;
    faiss breaks them its own way, so the two can differ on tied similarities (duplicate
    rows) and, through float32 rounding (dot products here, expanded L2 distances there), on
    neighbours closer than ~1e-6.

    Computation: the rows are sorted by class, and the N x N similarity matrix is visited in
    chunk_size x chunk_size blocks, each off-diagonal block once for the queries of its rows
    and of its columns (it is symmetric), keeping a running top-K per query with
    K_q = max(max(ks), R_q). On CPU, independent blocks run on ``torch.get_num_threads()``
    threads, each single-threaded (torch's thread count is set to 1 meanwhile and restored).

    Parameters
    ----------
    embeddings : [N, D] tensor, array or nested list; computed in float32 (as faiss does).
    labels : [N] integers of any values.
    ks : the k of recall@k, positive integers; k >= N - 1 gives 1 for every query.
    space : "cosine" or "euclidean".
    chunk_size : rows per similarity block (default 2048 on CPU, 16384 on CUDA). Working memory
        is about 3 chunk_size^2 floats per thread plus the running top-K, 8 N K bytes over the
        queries whose K_q stays under max(max(ks), chunk_size^2 / N); queries of larger
        classes are ranked in panels of about chunk_size^2 / N full rows instead, so memory
        stays bounded whatever the class sizes.
    device : where to compute (default: where ``embeddings`` lives; arrays on CPU).
    per_query : also return each query's hits and AP@R (``RetrievalResult.per_query``); the
        means of those are the returned values.

    Returns
    -------
    RetrievalResult; values in [0, 1], higher is better; nan when no sample has a classmate.
    """
    x = _check_embeddings(embeddings, device)
    dev = x.device
    n = x.shape[0]
    codes = _check_labels(labels, n, dev)
    ks = _check_ks(ks)
    if space not in SPACES:
        raise ValueError(f"space must be 'cosine' or 'euclidean', got {space!r}")
    block = _check_chunk_size(chunk_size) or _default_chunk_size(dev)

    with torch.no_grad(), _threads(dev) as workers:
        counts = torch.bincount(codes)
        r_all = counts[codes] - 1
        kmax = min(ks[-1], n - 1)
        kq_all = r_all.clamp_min(kmax).clamp_max(max(n - 1, 1))
        cap = max(kmax, block * block // n)
        # Sorted by (group, class): small-K queries first, then large-K, then lone samples.
        # Classmates become neighbours in the order, so early blocks give tight thresholds.
        group = torch.where(r_all == 0, 2, torch.where(kq_all > cap, 1, 0))
        order = torch.argsort(group * (len(counts) + 1) + codes, stable=True)
        n_small = int((group == 0).sum())
        n_large = int((group == 1).sum())
        codes_in = codes
        codes, r_all, kq_all = codes[order], r_all[order], kq_all[order]
        a, b = _score_factors(x[order], space)

        kept: dict[int, tuple] = {}  # per-query values by first query, when asked for

        def score(keys: torch.Tensor, s: int, e: int) -> tuple[torch.Tensor, torch.Tensor]:
            """(hits at each k, sum of AP@R) of queries s..e from their ranked keys."""
            idx = _key_index(keys).clamp_max(n - 1)
            rel = (codes_in[idx] == codes[s:e, None]) & (keys != _SENTINEL)
            hits, ap = _scores(rel, r_all[s:e], ks)
            if per_query:
                kept[s] = (torch.stack(hits, 1).cpu(), ap.cpu())
            return torch.stack([h.sum() for h in hits]).to(torch.float64), ap.sum()

        parts = []
        if n_small:
            top = _symmetric_topk(a, b, order, kq_all[:n_small], n_small, block, workers)
            steps = range(0, n_small, block)
            parts += [
                score(top.descending(s, s + block), s, min(s + block, n_small)) for s in steps
            ]
            del top
        if n_large:
            rows = max(1, block * block // n)
            product = _Products(a, b, rows * n)

            def panel(s: int) -> tuple[torch.Tensor, torch.Tensor]:
                e = min(s + rows, n_small + n_large)
                sim = product(s, e, 0, n)
                sim[torch.arange(e - s, device=dev), torch.arange(s, e, device=dev)] = _NEG_INF
                keys = _keys(sim, order.expand(e - s, n))
                return score(_top_rows(keys, int(kq_all[s:e].max())), s, e)

            steps = range(n_small, n_small + n_large, rows)
            parts += _run([((), lambda s=s: panel(s)) for s in steps], workers)
        n_hits = sum(p[0].cpu() for p in parts) if parts else torch.zeros(len(ks))
        ap_sum = float(sum(float(p[1]) for p in parts))

    n_queries = n_small + n_large
    if n_queries == 0:
        recall = {k: NAN for k in ks}
        mapr = NAN
    else:
        recall = {k: float(h) / n_queries for k, h in zip(ks, n_hits.cpu().tolist(), strict=True)}
        mapr = float(ap_sum) / n_queries
    pq = None
    if per_query:
        starts = sorted(kept)
        hits = torch.cat([kept[s][0] for s in starts]) if starts else torch.zeros(0, len(ks))
        ap = torch.cat([kept[s][1] for s in starts]) if starts else torch.zeros(0)
        index = order[:n_queries].cpu().numpy()
        back = np.argsort(index, kind="stable")  # queries in input order
        pq = PerQuery(
            index[back].astype(np.int64),
            hits.numpy().astype(bool)[back],
            ap.to(torch.float64).numpy()[back],
            ks,
        )
    return RetrievalResult(recall, mapr, n_queries, n - n_queries, space, pq)
