"""Retrieval metrics where every sample queries all the others: recall@k and MAP@R.

The numbers are those of pytorch-metric-learning's ``AccuracyCalculator`` with the queries as
the references (``get_accuracy(x, y)``): ``recall_at_1`` is its ``precision_at_1`` and
``map_at_r`` its ``mean_average_precision_at_r``. The computation is exact and blocked: the
N x N similarity matrix is never held, and because the queries are the references each
off-diagonal block is computed once and serves the queries of both its rows and its columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

NAN = float("nan")
SPACES = ("cosine", "euclidean")
_NEG_INF = float("-inf")


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
    """

    recall_at_k: dict[int, float]
    map_at_r: float
    n_queries: int
    n_skipped: int
    space: str = "cosine"

    higher_is_better: ClassVar[bool] = True

    def to_dict(self) -> dict[str, float]:
        """``{"recall_at_1": ..., "recall_at_5": ..., "map_at_r": ...}``, one key per k."""
        out = {f"recall_at_{k}": float(v) for k, v in self.recall_at_k.items()}
        out["map_at_r"] = float(self.map_at_r)
        return out


# ----------------------------------------------------------------------------------------------
# Input checks shared by the retrieval and pair functions.
# ----------------------------------------------------------------------------------------------


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _check_embeddings(embeddings, device=None) -> torch.Tensor:
    """[N, D] finite real values -> float32 tensor on ``device`` (default: where it lives)."""
    x = _as_tensor(embeddings, "embeddings")
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
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()
        raise ValueError(
            f"embeddings must be finite, got {len(rows)} rows with NaN or Inf "
            f"(first at row {int(rows[0])})"
        )
    return x


def _check_labels(labels, n: int, device: torch.device) -> torch.Tensor:
    """[N] integers of any values -> int64 class codes 0..C-1 on ``device``."""
    y = _as_tensor(labels, "labels")
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
    return 8192 if device.type == "cuda" else 2048


# ----------------------------------------------------------------------------------------------
# The blocked exact kNN.
# ----------------------------------------------------------------------------------------------


def _score_factors(x: torch.Tensor, space: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (A, B) with A_i . B_j = the similarity of i and j, higher = nearer.

    Cosine: unit rows, A = B. Euclidean: minus the squared distance of centred rows,
    -|a - b|^2 = 2 a.b - |a|^2 - |b|^2, folded into two extra columns so the matrix product
    yields it directly (the same expansion faiss uses; centring keeps the cancellation small).
    """
    if space == "cosine":
        a = F.normalize(x, dim=1)
        return a, a
    xc = x - x.mean(dim=0, keepdim=True)
    sq = (xc * xc).sum(dim=1, keepdim=True)
    one = torch.ones_like(sq)
    return torch.cat([xc, -sq, one], dim=1), torch.cat([2 * xc, one, -sq], dim=1)


class _TopK:
    """Running top-K neighbours (values and same-class flags) of queries 0..M-1, sorted.

    ``thr[q]`` is the K_q-th best similarity seen so far for query q (-inf until K_q are seen):
    a candidate not above it cannot enter q's top K_q. Strictly above: among equal values the
    one seen first is kept, so ties are broken by processing order.
    """

    def __init__(self, kq: torch.Tensor, codes: torch.Tensor, k: int):
        m, dev = len(kq), kq.device
        self.k = k
        self.codes = codes
        self.kq1 = (kq - 1).clamp_min(0)[:, None]
        self.vals = torch.full((m, k), _NEG_INF, device=dev)
        self.rel = torch.zeros((m, k), dtype=torch.bool, device=dev)
        self.thr = torch.full((m,), _NEG_INF, device=dev)

    def offer(self, q: torch.Tensor, cand: torch.Tensor, ref0: int) -> None:
        """Merge candidates ``cand[a, c]`` = similarity of query ``q[a]`` to reference ref0 + c."""
        thr = self.thr[q]
        mask = cand > thr[:, None]
        counts = mask.sum(dim=1)
        m = int(counts.max()) if len(counts) else 0
        if m == 0:
            return
        keep = counts > 0
        if not bool(keep.all()):
            q, cand, mask, counts = q[keep], cand[keep], mask[keep], counts[keep]
        qcode = self.codes[q]
        width = cand.shape[1]
        if 8 * int(counts.sum()) > len(q) * width:
            # Dense: most candidates pass, rank them all.
            v, c = torch.topk(cand, min(self.k, width), dim=1)
            r = (self.codes[ref0 + c] == qcode[:, None]) & (v > _NEG_INF)
        else:
            # Sparse: pack each row's few passing candidates into m columns (-inf padded).
            a, c = torch.nonzero(mask, as_tuple=True)
            start = torch.cumsum(counts, 0) - counts
            pos = torch.arange(len(a), device=a.device) - start[a]
            v = torch.full((len(q), m), _NEG_INF, device=cand.device)
            v[a, pos] = cand[a, c]
            r = torch.zeros((len(q), m), dtype=torch.bool, device=cand.device)
            r[a, pos] = self.codes[ref0 + c] == qcode[a]
        allv = torch.cat([self.vals[q], v], dim=1)
        allr = torch.cat([self.rel[q], r], dim=1)
        top_v, top_i = torch.topk(allv, self.k, dim=1)
        self.vals[q] = top_v
        self.rel[q] = torch.gather(allr, 1, top_i)
        self.thr[q] = torch.gather(top_v, 1, self.kq1[q])[:, 0]


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
    k="max_bin_count").get_accuracy(x, y)`` (which ranks by L2 distance with faiss, so pass it
    unit rows to compare with ``space="cosine"``). Differences, all on tied or near-tied
    similarities only: ties are broken by processing order here and by faiss' order there;
    when duplicates of a query tie with it, pytorch-metric-learning may drop a duplicate
    instead of the query itself; similarities are float32 dot products here and float32
    expanded L2 distances there, which can reorder neighbours closer than ~1e-6.

    Parameters
    ----------
    embeddings : [N, D] tensor or array; computed in float32 (as faiss does).
    labels : [N] integers of any values.
    ks : the k of recall@k, positive integers; k >= N - 1 gives 1 for every query.
    space : "cosine" or "euclidean".
    chunk_size : rows per similarity block (default 2048 on CPU, 8192 on CUDA). Working memory
        is about 3 * chunk_size^2 floats for the blocks plus a running top-K of N * K values
        (5 bytes each), K = max(max(ks), R) over the queries whose K stays under
        max(max(ks), chunk_size^2 / N); queries of larger classes are ranked in panels of
        about chunk_size^2 / N full rows, so memory stays bounded for any class size.
    device : where to compute (default: where ``embeddings`` lives; numpy arrays on CPU).

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

    with torch.no_grad():
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
        codes, r_all, kq_all = codes[order], r_all[order], kq_all[order]
        a, b = _score_factors(x[order], space)

        n_hits = torch.zeros(len(ks), dtype=torch.float64, device=dev)
        ap_sum = torch.zeros((), dtype=torch.float64, device=dev)
        if n_small:
            top = _symmetric_topk(a, b, codes, kq_all[:n_small], n_small, block)
            for s in range(0, n_small, block):
                e = min(s + block, n_small)
                hits, ap = _scores(top.rel[s:e], r_all[s:e], ks)
                n_hits += torch.stack([h.sum() for h in hits]).to(torch.float64)
                ap_sum += ap.sum()
        if n_large:
            rows = max(1, block * block // n)
            for s in range(n_small, n_small + n_large, rows):
                e = min(s + rows, n_small + n_large)
                sim = a[s:e] @ b.T
                sim[torch.arange(e - s, device=dev), torch.arange(s, e, device=dev)] = _NEG_INF
                k = int(kq_all[s:e].max())
                idx = torch.topk(sim, k, dim=1).indices
                del sim
                rel = codes[idx] == codes[s:e, None]
                hits, ap = _scores(rel, r_all[s:e], ks)
                n_hits += torch.stack([h.sum() for h in hits]).to(torch.float64)
                ap_sum += ap.sum()

    n_queries = n_small + n_large
    if n_queries == 0:
        recall = {k: NAN for k in ks}
        mapr = NAN
    else:
        recall = {k: float(h) / n_queries for k, h in zip(ks, n_hits.cpu().tolist())}
        mapr = float(ap_sum) / n_queries
    return RetrievalResult(recall, mapr, n_queries, n - n_queries, space)


def _symmetric_topk(
    a: torch.Tensor, b: torch.Tensor, codes: torch.Tensor, kq: torch.Tensor, m: int, block: int
) -> _TopK:
    """Top-K_q neighbours of queries 0..m-1 among all N rows, each block product once.

    Pass 1 visits the diagonal blocks: small tiles on the diagonal seed every query's top-K
    with its nearest rows in the (class-sorted) order, then the rest of the block is offered.
    Pass 2 visits each off-diagonal block (i < j) once and offers it to the queries of block i
    (its rows) and of block j (its columns, when those are queries). Row and column maxima
    decide which queries can gain anything, so most of a block is read once and dropped.
    """
    n = a.shape[0]
    k = int(kq.max())
    top = _TopK(kq, codes, k)
    tile = min(block, max(512, 4 * k))
    q_blocks = [(s, min(s + block, m)) for s in range(0, m, block)]
    bounds = q_blocks + [(s, min(s + block, n)) for s in range(m, n, block)]

    for s, e in q_blocks:
        sim = a[s:e] @ b[s:e].T
        q = torch.arange(s, e, device=a.device)
        for t in range(0, e - s, tile):
            u = min(t + tile, e - s)
            part = sim[t:u, t:u]
            part.fill_diagonal_(_NEG_INF)
            top.offer(q[t:u], part, s + t)
            part.fill_(_NEG_INF)
        sim.fill_diagonal_(_NEG_INF)
        _offer_rows(top, sim, q, s)

    for i, (s, e) in enumerate(q_blocks):
        q_rows = torch.arange(s, e, device=a.device)
        for s2, e2 in bounds[i + 1 :]:
            sim = a[s:e] @ b[s2:e2].T
            _offer_rows(top, sim, q_rows, s2)
            if s2 < m:
                cmax = sim.amax(dim=0)
                cols = torch.nonzero(cmax > top.thr[s2:e2]).flatten()
                if len(cols):
                    top.offer(cols + s2, sim[:, cols].T, s)
    return top


def _offer_rows(top: _TopK, sim: torch.Tensor, q: torch.Tensor, ref0: int) -> None:
    rmax = sim.amax(dim=1)
    rows = torch.nonzero(rmax > top.thr[q]).flatten()
    if len(rows):
        top.offer(q[rows], sim[rows], ref0)
