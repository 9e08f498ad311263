"""Genuine (same-class) and impostor (different-class) pair similarities: exact by blocked
matrix products up to a size cap, a seeded uniform sample beyond."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ._validation import check_batch


@dataclass(frozen=True)
class PairSample:
    """Cosine similarities of pairs i < j: ``genuine`` (same class) and ``impostor``
    (different classes), float32. ``exact`` is True when both hold every pair; the population
    sizes are ``n_genuine_total`` and ``n_impostor_total``."""

    genuine: np.ndarray
    impostor: np.ndarray
    exact: bool
    n_genuine_total: int
    n_impostor_total: int


def pair_similarities(
    embeddings, labels, *, max_pairs: int = 2_000_000, seed: int = 0, chunk_size: int = 4096
) -> PairSample:
    """All genuine and impostor cosine similarities when each kind has at most ``max_pairs``
    pairs; otherwise, for that kind, ``max_pairs`` pairs drawn uniformly (with replacement,
    numpy Generator seeded with ``seed``). Memory is bounded by ``chunk_size`` rows times N
    plus the returned arrays."""
    if not isinstance(max_pairs, int) or max_pairs < 1:
        raise ValueError(f"max_pairs must be a positive integer, got {max_pairs!r}")
    b = check_batch(embeddings, labels)
    x = F.normalize(b.embeddings.float(), dim=1)
    _, y = torch.unique(b.labels, return_inverse=True)
    n = len(y)
    counts = torch.bincount(y).double()
    n_gen = int((counts * (counts - 1) / 2).sum())
    n_imp = int((n * n - (counts * counts).sum()) / 2)
    rng = np.random.default_rng(seed)
    if n_gen <= max_pairs:
        genuine = _exact_genuine(x, y, chunk_size)
    else:
        genuine = _sample_genuine(x, y, counts, max_pairs, rng)
    if n_imp <= max_pairs:
        impostor = _exact_impostor(x, y, chunk_size)
    else:
        impostor = _sample_impostor(x, y, max_pairs, rng)
    exact = n_gen <= max_pairs and n_imp <= max_pairs
    return PairSample(genuine, impostor, exact, n_gen, n_imp)


def _exact_genuine(x: torch.Tensor, y: torch.Tensor, chunk: int) -> np.ndarray:
    out = []
    order = torch.argsort(y, stable=True)
    xs, ys = x[order], y[order]
    bounds = torch.cumsum(torch.bincount(ys), 0).tolist()
    start = 0
    for end in bounds:
        xc = xs[start:end]
        for a in range(0, len(xc), chunk):
            block = xc[a : a + chunk] @ xc[a:].T  # rows a.., columns a..
            r = torch.arange(block.shape[0])[:, None]
            c = torch.arange(block.shape[1])[None, :]
            out.append(block[c > r])
        start = end
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, np.float32)


def _exact_impostor(x: torch.Tensor, y: torch.Tensor, chunk: int) -> np.ndarray:
    out = []
    for a in range(0, len(x), chunk):
        block = x[a : a + chunk] @ x[a:].T
        r = torch.arange(block.shape[0])[:, None]
        c = torch.arange(block.shape[1])[None, :]
        keep = (c > r) & (y[a : a + chunk, None] != y[None, a:])
        out.append(block[keep])
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, np.float32)


def _sample_genuine(x, y, counts, m: int, rng) -> np.ndarray:
    """Uniform over genuine pairs: a class with probability n_c (n_c - 1) / 2 / total, then two
    distinct members of it uniformly."""
    order = torch.argsort(y, stable=True).numpy()
    starts = np.r_[0, np.cumsum(counts.numpy())[:-1]].astype(np.int64)
    n_c = counts.numpy()
    w = n_c * (n_c - 1) / 2
    cls = rng.choice(len(n_c), size=m, p=w / w.sum())
    i = rng.integers(0, n_c[cls])
    j = rng.integers(0, n_c[cls] - 1)
    j = j + (j >= i)  # distinct from i
    a, b = order[starts[cls] + i], order[starts[cls] + j]
    return _dots(x, a, b)


def _sample_impostor(x, y, m: int, rng) -> np.ndarray:
    """Uniform over impostor pairs: uniform pairs of distinct samples, those of one class
    rejected, until m are drawn."""
    n = len(y)
    yy = y.numpy()
    a_all, b_all = [], []
    have = 0
    while have < m:
        a = rng.integers(0, n, size=2 * (m - have) + 16)
        b = rng.integers(0, n, size=len(a))
        keep = yy[a] != yy[b]
        a_all.append(a[keep])
        b_all.append(b[keep])
        have += int(keep.sum())
    a, b = np.concatenate(a_all)[:m], np.concatenate(b_all)[:m]
    return _dots(x, a, b)


def _dots(x: torch.Tensor, a: np.ndarray, b: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    out = []
    for s in range(0, len(a), chunk):
        ia = torch.as_tensor(a[s : s + chunk])
        ib = torch.as_tensor(b[s : s + chunk])
        out.append((x[ia] * x[ib]).sum(1))
    return torch.cat(out).cpu().numpy()
