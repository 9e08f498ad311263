"""Genuine (same-class) and impostor (different-class) pair similarities.

Exact by blocked matrix products while a kind has at most ``max_pairs`` pairs; beyond, a seeded
uniform sample of ``max_pairs`` pairs of that kind. The distributions feed ``pair_ks``,
``pair_hellinger`` and the verification metrics (EER, TAR@FAR).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .retrieval import _check_chunk_size, _check_embeddings, _check_labels

_SMALL_CLASS = 256  # classes up to this size are batched (padded to a power of two)


@dataclass(frozen=True)
class PairSample:
    """Cosine similarities of unordered pairs i < j, in [-1, 1], float32.

    Attributes
    ----------
    genuine, impostor : similarities of same-class / different-class pairs; every pair of the
        kind when that kind is exact, else a uniform sample (with replacement) of them.
    exact : True when both arrays hold every pair.
    n_genuine_total, n_impostor_total : pairs of each kind in the population,
        sum_c n_c (n_c - 1) / 2 and N (N - 1) / 2 minus that.
    genuine_exact, impostor_exact : whether each kind is complete.
    """

    genuine: np.ndarray
    impostor: np.ndarray
    exact: bool
    n_genuine_total: int
    n_impostor_total: int
    genuine_exact: bool = True
    impostor_exact: bool = True


def pair_similarities(
    embeddings,
    labels,
    *,
    max_pairs: int = 2_000_000,
    seed: int = 0,
    chunk_size: int = 4096,
) -> PairSample:
    """Cosine similarities of all (or a uniform sample of) genuine and impostor pairs.

    For each kind (genuine: same label, impostor: different labels) of unordered pairs i < j:
    when the kind has at most ``max_pairs`` pairs, all of them, computed by blocked matrix
    products of L2-normalised rows; otherwise ``max_pairs`` pairs drawn uniformly from that
    kind with replacement (numpy ``default_rng(seed)``): a genuine pair picks its class with
    probability n_c (n_c - 1) / 2 / n_genuine_total, then two distinct members; an impostor
    pair picks its first member's class with probability n_a (N - n_a) / (2 n_impostor_total),
    then a member of it and one of the N - n_a samples outside it.

    The exact arrays are the same multiset whatever the order of the samples. A sample is
    reproducible for the same inputs (in the same order) and seed; reordering the samples
    draws other pairs from the same distribution.

    Parameters
    ----------
    embeddings : [N, D] tensor or array (computed in float32 on its device).
    labels : [N] integers of any values.
    max_pairs : the cap per kind, a positive integer.
    seed : seed of the sampling.
    chunk_size : rows per block; working memory is about chunk_size^2 floats (4 bytes each)
        plus the returned arrays.

    Returns
    -------
    PairSample (numpy float32 arrays, on the CPU).
    """
    x = _check_embeddings(embeddings)
    n = x.shape[0]
    codes = _check_labels(labels, n, x.device)
    max_pairs = _check_chunk_size(max_pairs, "max_pairs", allow_none=False)
    chunk = _check_chunk_size(chunk_size, "chunk_size", allow_none=False)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")

    with torch.no_grad():
        x = F.normalize(x, dim=1)
        order = torch.argsort(codes, stable=True)
        xs = x[order]
        sizes = torch.bincount(codes).cpu().numpy().astype(np.int64)
        n_gen = int((sizes * (sizes - 1) // 2).sum())
        n_imp = n * (n - 1) // 2 - n_gen
        rng = np.random.default_rng(seed)
        if n_gen <= max_pairs:
            genuine = _exact_genuine(xs, sizes, chunk)
        else:
            genuine = _pair_dots(xs, *_sample_genuine(sizes, max_pairs, rng), chunk)
        if n_imp <= max_pairs:
            impostor = _exact_impostor(xs, codes[order], chunk)
        else:
            impostor = _pair_dots(xs, *_sample_impostor(sizes, max_pairs, rng), chunk)
    gen_exact, imp_exact = n_gen <= max_pairs, n_imp <= max_pairs
    return PairSample(
        genuine, impostor, gen_exact and imp_exact, n_gen, n_imp, gen_exact, imp_exact
    )


def _to_numpy(parts: list[torch.Tensor]) -> np.ndarray:
    if not parts:
        return np.zeros(0, np.float32)
    return torch.cat(parts).cpu().numpy().astype(np.float32, copy=False)


def _exact_genuine(xs: torch.Tensor, sizes: np.ndarray, chunk: int) -> np.ndarray:
    """Same-class pairs of class-sorted rows ``xs``.

    Classes up to 256 members are grouped by size (padded to the next power of two) and
    multiplied as a batch; larger classes are tiled in chunk x chunk blocks.
    """
    dev = xs.device
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = []
    small = np.flatnonzero((sizes >= 2) & (sizes <= _SMALL_CLASS))
    width = 1 << np.ceil(np.log2(np.maximum(sizes[small], 2))).astype(np.int64)
    for w in np.unique(width):
        cls = small[width == w]
        slot = torch.arange(int(w), device=dev)
        upper = slot[None, :] > slot[:, None]
        per_batch = max(1, chunk * chunk // int(w * max(w, xs.shape[1])))
        for s in range(0, len(cls), per_batch):
            c = cls[s : s + per_batch]
            n_c = torch.as_tensor(sizes[c], device=dev)
            rows = torch.as_tensor(starts[c], device=dev)[:, None] + slot[None, :]
            valid = slot[None, :] < n_c[:, None]
            group = xs[torch.where(valid, rows, 0)] * valid[..., None]
            sims = torch.bmm(group, group.transpose(1, 2))
            keep = upper[None] & valid[:, None, :] & valid[:, :, None]
            out.append(sims[keep])
    for c in np.flatnonzero(sizes > _SMALL_CLASS):
        xc = xs[starts[c] : starts[c] + sizes[c]]
        out.extend(_upper_blocks(xc, None, chunk))
    return _to_numpy(out)


def _exact_impostor(xs: torch.Tensor, codes: torch.Tensor, chunk: int) -> np.ndarray:
    return _to_numpy(list(_upper_blocks(xs, codes, chunk)))


def _upper_blocks(x: torch.Tensor, codes: torch.Tensor | None, chunk: int):
    """Similarities of the pairs i < j of ``x`` (of different ``codes`` when given), by tiles."""
    n = x.shape[0]
    for a in range(0, n, chunk):
        for b in range(a, n, chunk):
            sims = x[a : a + chunk] @ x[b : b + chunk].T
            keep = torch.ones_like(sims, dtype=torch.bool)
            if a == b:
                keep = torch.triu(keep, diagonal=1)
            if codes is not None:
                keep &= codes[a : a + chunk, None] != codes[None, b : b + chunk]
            yield sims[keep]


def _sample_genuine(sizes: np.ndarray, m: int, rng: np.random.Generator):
    """m uniform genuine pairs as positions in the class-sorted order."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cum = np.cumsum(sizes * (sizes - 1) // 2)
    cls = np.searchsorted(cum, rng.integers(0, cum[-1], m), side="right")
    n_c = sizes[cls]
    i = rng.integers(0, n_c)
    j = rng.integers(0, n_c - 1)
    j += j >= i
    return starts[cls] + i, starts[cls] + j


def _sample_impostor(sizes: np.ndarray, m: int, rng: np.random.Generator):
    """m uniform impostor pairs as positions in the class-sorted order."""
    n = int(sizes.sum())
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cum = np.cumsum(sizes * (n - sizes))
    cls = np.searchsorted(cum, rng.integers(0, cum[-1], m), side="right")
    i = starts[cls] + rng.integers(0, sizes[cls])
    j = rng.integers(0, n - sizes[cls])  # a position among the samples outside the class
    j += np.where(j >= starts[cls], sizes[cls], 0)
    return i, j


def _pair_dots(xs: torch.Tensor, i: np.ndarray, j: np.ndarray, chunk: int) -> np.ndarray:
    step = max(1, chunk * chunk // (2 * xs.shape[1]))
    out = []
    for s in range(0, len(i), step):
        a = torch.as_tensor(i[s : s + step], device=xs.device)
        b = torch.as_tensor(j[s : s + step], device=xs.device)
        out.append((xs[a] * xs[b]).sum(dim=1))
    return _to_numpy(out)
