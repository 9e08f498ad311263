"""The blocked exact kNN behind `knn_retrieval`: similarity factors, sortable int64 keys, a
running top-K per query, candidate selection from each block product, and a scheduler that
runs blocks sharing no query side by side on threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

_NEG_INF = float("-inf")


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


_SENTINEL = torch.iinfo(torch.int64).min
_IDX_MAX = 2**31 - 1
_LOWEST = torch.finfo(torch.float32).min


def _keys(v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered as (similarity descending, then sample index ascending).

    The float32 bits are mapped to an int32 of the same order (negative floats have their
    magnitude bits flipped), shifted up, and the low 32 bits hold 2^31 - 1 - index.
    """
    bits = v.contiguous().view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (ordered.to(torch.int64) << 32) | (_IDX_MAX - idx)


def _key_values(keys: torch.Tensor) -> torch.Tensor:
    ordered = (keys >> 32).to(torch.int32)
    return (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)).view(torch.float32)


def _key_index(keys: torch.Tensor) -> torch.Tensor:
    return _IDX_MAX - (keys & 0xFFFFFFFF)


def _top_rows(keys: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest keys of each row, sorted descending (numpy's vectorised sort on CPU)."""
    width = keys.shape[1]
    k = min(k, width)
    if keys.device.type != "cpu":
        return torch.topk(keys, k, dim=1).values
    arr = keys.numpy()
    if 4 * k < width:
        arr = np.partition(arr, width - k, axis=1)[:, width - k :]
    out = np.sort(arr, axis=1)[:, ::-1][:, :k]
    return torch.from_numpy(np.ascontiguousarray(out))


def _kth_largest(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The k[i]-th largest value of row i of a float tensor (-inf where k[i] > row length)."""
    width = x.shape[1]
    if x.device.type != "cpu":
        desc = torch.sort(x, dim=1, descending=True).values
    else:
        desc = torch.from_numpy(np.sort(x.numpy(), axis=1)[:, ::-1].copy())
    kth = desc.gather(1, (k - 1).clamp(0, width - 1)[:, None])[:, 0]
    return torch.where(k <= width, kth, _NEG_INF)


@contextmanager
def _threads(device: torch.device) -> Iterator[int]:
    """Yield the number of worker threads; on CPU make every library call single-threaded.

    On CPU the work is split into independent tasks (block pairs touching disjoint queries)
    run by as many Python threads as torch was allowed (``torch.get_num_threads()``); each
    task's products (numpy's BLAS) and selection (torch, numpy) run on its own thread. Nested
    thread pools (torch's OpenMP and OpenBLAS's) would fight over the cores (measurements in
    benchmarks/README.md).
    The previous settings are restored on exit. On CUDA: one thread, the device does the work.
    """
    if device.type != "cpu":
        yield 1
        return
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield previous
    finally:
        torch.set_num_threads(previous)


def _run(tasks: list[tuple[tuple[int, ...], Callable[[], object]]], workers: int) -> list:
    """Run ``(blocks, task)`` pairs on ``workers`` threads, never two sharing a block at once.

    Tasks start in list order as far as their blocks are free (no barrier between rounds);
    results come back in list order. With one worker they run inline, in order.
    """
    if workers <= 1 or len(tasks) <= 1:
        return [task() for _, task in tasks]
    results: list = [None] * len(tasks)
    pending = list(range(len(tasks)))
    busy: set[int] = set()
    errors: list[BaseException] = []
    cond = threading.Condition()

    def worker() -> None:
        while True:
            with cond:
                while True:
                    if not pending or errors:
                        return
                    pick = next((p for p in pending if busy.isdisjoint(tasks[p][0])), None)
                    if pick is not None:
                        break
                    cond.wait()
                pending.remove(pick)
                busy.update(tasks[pick][0])
            try:
                results[pick] = tasks[pick][1]()
            except BaseException as exc:  # re-raised in the calling thread
                with cond:
                    errors.append(exc)
            finally:
                with cond:
                    busy.difference_update(tasks[pick][0])
                    cond.notify_all()

    threads = [threading.Thread(target=worker) for _ in range(min(workers, len(tasks)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


class _Products:
    """Block products ``a[rows] @ b[cols].T`` into a reused buffer, one per thread.

    On CPU the product goes through numpy's BLAS (OpenBLAS in numpy's wheels), which was the
    faster of the two for these float32 block shapes (benchmarks/README.md). The buffer is
    reused so no block pays for fresh pages.
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, size: int):
        self.a, self.b = a, b
        self.cpu = a.device.type == "cpu"
        self.size = size
        self.local = threading.local()

    def __call__(self, s: int, e: int, s2: int, e2: int) -> torch.Tensor:
        buf = getattr(self.local, "buf", None)
        if buf is None:
            buf = self.local.buf = torch.empty(self.size, dtype=self.a.dtype, device=self.a.device)
        out = buf[: (e - s) * (e2 - s2)].view(e - s, e2 - s2)
        if self.cpu:
            np.matmul(self.a[s:e].numpy(), self.b[s2:e2].numpy().T, out=out.numpy())
        else:
            torch.mm(self.a[s:e], self.b[s2:e2].T, out=out)
        return out


def _rounds(t: int) -> list[list[tuple[int, int]]]:
    """Every pair i < j of 0..t-1 once, in rounds where no index appears twice (circle method)."""
    ids: list[int | None] = list(range(t)) + ([None] if t % 2 else [])
    size = len(ids)
    rounds = []
    for _ in range(size - 1):
        pairs = [(ids[k], ids[size - 1 - k]) for k in range(size // 2)]
        rounds.append([(min(p), max(p)) for p in pairs if None not in p])
        ids = [ids[0], ids[-1], *ids[1:-1]]
    return rounds


def _sort_rows_(x: torch.Tensor) -> torch.Tensor:
    """Sort each row ascending, in place on CPU (numpy's vectorised sort); returns x sorted."""
    if x.device.type == "cpu":
        x.numpy().sort(axis=1)
        return x
    return torch.sort(x, dim=1).values


class _TopK:
    """Running top-K neighbours of queries 0..M-1 as int64 keys (see :func:`_keys`).

    Each row holds its K best keys in ascending order (so the best is last), padded at the
    front with a sentinel below every key. ``thr[q]`` is a lower bound of the K_q-th best
    similarity of query q: a candidate below it cannot be among q's K_q nearest. It only rises
    (at merges, and from seeding).
    """

    _edges = torch.tensor([8, 32, 128, 512])

    def __init__(self, kq: torch.Tensor, k: int):
        m, dev = len(kq), kq.device
        self.k = k
        self.kpos = (k - kq).clamp(0, k - 1)  # column of the K_q-th best
        self.keys = torch.full((m, k), _SENTINEL, dtype=torch.int64, device=dev)
        self.thr = torch.full((m,), _LOWEST, device=dev)

    def raise_thr(self, q: torch.Tensor | slice, lower_bound: torch.Tensor) -> None:
        self.thr[q] = torch.maximum(self.thr[q], lower_bound.clamp_min(_LOWEST))

    def descending(self, s: int, e: int) -> torch.Tensor:
        """Keys of queries s..e, best first."""
        return self.keys[s:e].flip(1)

    def offer(self, q: torch.Tensor, keys: torch.Tensor, s: int, e: int) -> None:
        """Merge candidates (query ``q[p]``, key ``keys[p]``), q sorted and in [s, e)."""
        if len(q) == 0:
            return
        dev = q.device
        counts = torch.bincount(q - s, minlength=e - s)
        start = torch.cumsum(counts, 0) - counts
        pos = torch.arange(len(q), device=dev) - start[q - s]
        m = int(counts.max())
        if m <= 32:
            # Few candidates per query (the usual case): merge the whole range of rows.
            both = torch.empty((e - s, m + self.k), dtype=torch.int64, device=dev)
            both[:, :m] = _SENTINEL
            both[:, m:] = self.keys[s:e]
            both[q - s, pos] = keys
            self._set(slice(s, e), _sort_rows_(both)[:, m:])
            return
        uq = torch.nonzero(counts).flatten()
        # Rows are packed to the longest candidate list of their bucket: buckets of similar
        # lengths keep the padding (and the sort) small when a few rows have many candidates.
        bucket = torch.bucketize(counts[uq], self._edges.to(dev))
        for b in torch.unique(bucket).tolist():
            rows = uq[bucket == b]
            slot = torch.full((e - s,), -1, dtype=torch.int64, device=dev)
            slot[rows] = torch.arange(len(rows), device=dev)
            take = slot[q - s] >= 0
            width = int(counts[rows].max())
            both = torch.full((len(rows), width + self.k), _SENTINEL, device=dev)
            both[:, width:] = self.keys[s + rows]
            both[slot[q[take] - s], pos[take]] = keys[take]
            self._set(s + rows, _sort_rows_(both)[:, width:])

    def _set(self, q: torch.Tensor | slice, top: torch.Tensor) -> None:
        self.keys[q] = top
        kth = top.gather(1, self.kpos[q][:, None])[:, 0]
        self.raise_thr(q, torch.where(kth == _SENTINEL, _LOWEST, _key_values(kth)))


def _group_max(sim: torch.Tensor, g: int, dim: int) -> torch.Tensor:
    """Maxima of the consecutive groups of ``g`` entries along ``dim`` (sizes divisible by g)."""
    return sim.unflatten(dim, (sim.shape[dim] // g, g)).amax(dim=dim + 1)


_GROUP = 32


def _sorted_by_first(parts: list, device: torch.device) -> tuple[torch.Tensor, ...]:
    if not parts:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty, torch.zeros(0, device=device)
    if len(parts) == 1:
        return parts[0]
    first, second, vals = (torch.cat(t) for t in zip(*parts, strict=True))
    order = torch.argsort(first, stable=True)
    return first[order], second[order], vals[order]


def _candidates_rows(sim: torch.Tensor, thr: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(row, column, value) of the entries of ``sim`` >= ``thr[row]``, sorted by row.

    Maxima over groups of 32 columns select the few groups that hold a candidate; only those
    are read again.
    """
    g = _GROUP
    br, bc = sim.shape
    full = bc // g * g
    out = []
    if full:
        head = sim[:, :full]
        a, gi = torch.nonzero(_group_max(head, g, 1) >= thr[:, None], as_tuple=True)
        if len(a):
            v = head.unflatten(1, (full // g, g))[a, gi]
            p, o = torch.nonzero(v >= thr[a][:, None], as_tuple=True)
            out.append((a[p], gi[p] * g + o, v[p, o]))
    if full < bc:
        a, c = torch.nonzero(sim[:, full:] >= thr[:, None], as_tuple=True)
        out.append((a, c + full, sim[a, c + full]))
    return _sorted_by_first(out, sim.device)


def _candidates_cols(sim: torch.Tensor, thr: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(column, row, value) of the entries of ``sim`` >= ``thr[column]``, sorted by column.

    Groups of 16 rows; hit groups are read in row-major order (cache friendly), then sorted.
    """
    g = _GROUP // 2
    br, bc = sim.shape
    full = br // g * g
    out = []
    if full:
        head = sim[:full]
        gi, c = torch.nonzero(_group_max(head, g, 0) >= thr[None, :], as_tuple=True)
        if len(c):
            v = head.unflatten(0, (full // g, g))[gi, :, c]
            p, o = torch.nonzero(v >= thr[c][:, None], as_tuple=True)
            out.append((c[p], gi[p] * g + o, v[p, o]))
    if full < br:
        a, c = torch.nonzero(sim[full:] >= thr[None, :], as_tuple=True)
        out.append((c, a + full, sim[a + full, c]))
    if not out:
        return _sorted_by_first(out, sim.device)
    c, a, v = (torch.cat(t) for t in zip(*out, strict=True)) if len(out) > 1 else out[0]
    order = torch.argsort(c, stable=True)
    return c[order], a[order], v[order]


def _symmetric_topk(
    a: torch.Tensor,
    b: torch.Tensor,
    orig: torch.Tensor,
    kq: torch.Tensor,
    m: int,
    block: int,
    workers: int,
) -> _TopK:
    """Top-K_q neighbours of queries 0..m-1 among all N rows, each block product once.

    Pass 1 visits the diagonal blocks, tile row by tile row from the last, each against the
    columns from its own tile on (the upper triangle at tile granularity). The tile on the
    diagonal gives its queries a lower bound of their K_q-th best similarity (the K_q-th best
    within the tile, whose rows are mostly classmates in the class-sorted order). Pass 2
    visits each off-diagonal block (i < j) once and offers it to the queries of block i (its
    rows) and of block j (its columns, when those are queries). Tasks that share no block
    share no query, so they run side by side on the worker threads.
    """
    n = a.shape[0]
    dev = a.device
    top = _TopK(kq, int(kq.max()))
    product = _Products(a, b, block * block)
    tile = min(block, max(512, 4 * top.k))
    q_blocks = [(s, min(s + block, m)) for s in range(0, m, block)]
    bounds = q_blocks + [(s, min(s + block, n)) for s in range(m, n, block)]

    def diagonal(s: int, e: int) -> None:
        # Tile rows from the last: rows of tile t against columns t.. (the upper triangle at
        # tile granularity, ~half the block). The columns right of the tile belong to tiles
        # already seen, whose thresholds are set; the tile itself seeds its own.
        for t0 in reversed(range(s, e, tile)):
            t1 = min(t0 + tile, e)
            sim = product(t0, t1, t0, e)
            own = sim[:, : t1 - t0]
            own.fill_diagonal_(_NEG_INF)
            q = torch.arange(t0, t1, device=dev)
            top.raise_thr(q, _kth_largest(own, kq[q]))
            r, c, v = _candidates_rows(sim, top.thr[t0:t1])
            top.offer(t0 + r, _keys(v, orig[t0 + c]), t0, t1)
            if t1 < e:
                c, r, v = _candidates_cols(sim[:, t1 - t0 :], top.thr[t1:e])
                top.offer(t1 + c, _keys(v, orig[t0 + r]), t1, e)

    def off_diagonal(s: int, e: int, s2: int, e2: int) -> None:
        sim = product(s, e, s2, e2)
        r, c, v = _candidates_rows(sim, top.thr[s:e])
        top.offer(s + r, _keys(v, orig[s2 + c]), s, e)
        if s2 < m:
            c, r, v = _candidates_cols(sim, top.thr[s2:e2])
            top.offer(s2 + c, _keys(v, orig[s + r]), s2, e2)

    # Diagonal blocks first (they seed the thresholds), then the pairs in round-robin order,
    # so that consecutive pairs touch different blocks and can run side by side.
    tasks = [((i,), lambda i=i: diagonal(*q_blocks[i])) for i in range(len(q_blocks))]
    tasks += [
        ((i, j), lambda i=i, j=j: off_diagonal(*bounds[i], *bounds[j]))
        for pairs in _rounds(len(bounds))
        for i, j in pairs
        if i < len(q_blocks)
    ]
    _run(tasks, workers)
    return top
