"""The report's 2-D PCA view: exact principal axes of a bounded sample, memory linear in D."""

from __future__ import annotations

import numpy as np
import torch

from ._threads import one_thread

_SUBSET_FROM = 1024  # matrices larger than this use the subset eigensolver


def pca_view(x: torch.Tensor, y: torch.Tensor, values, seed: int, limit: int = 2000) -> dict:
    """2-D PCA coordinates of at most ``limit`` reservoir rows (the first by key order).

    The axes are the two leading eigenvectors v_1, v_2 of the scatter C^T C of the centred rows
    C = X - mean(X), exactly as a full PCA finds them; the coordinates are C v_j. Each axis is
    signed so that its largest-magnitude component is positive, so the view does not flip
    between runs or solvers.

    Parameters
    ----------
    x : [N, D] rows (any float dtype; computed in float64).
    y : [N] class slots, indices into ``values``.
    values : the label value of each slot (what the plot's legend shows).
    seed : accepted for the report's call signature; the solver is exact and draws nothing.
    limit : at most this many rows (the first ones) enter the view.

    Returns
    -------
    ``{"x": [n], "y": [n], "label": [n]}`` with coordinates rounded to 5 decimals; empty lists
    when there are fewer than 3 rows or fewer than 2 columns.
    """
    y = y[:limit]
    if len(y) < 3 or x.shape[1] < 2:
        return {"x": [], "y": [], "label": []}
    centred = x[:limit].to("cpu", torch.float64, copy=True)  # centred in place: one copy
    centred -= centred.mean(0)
    v = _top_directions(centred, 2)
    v = v * torch.sign(v[:, v.abs().argmax(dim=1)].diagonal())[:, None]
    xy = (centred @ v.T).numpy()
    return {
        "x": np.round(xy[:, 0], 5).tolist(),
        "y": np.round(xy[:, 1], 5).tolist(),
        "label": [int(values[i]) for i in y.tolist()],
    }


def _top_directions(centred: torch.Tensor, k: int) -> torch.Tensor:
    """The k leading principal directions [k, D] of centred rows C [N, D], float64.

    Works on the smaller of the two matrices that share the nonzero spectrum: the N x N Gram
    C C^T when N <= D (its eigenvector u gives the direction C^T u / |C^T u|), else the D x D
    scatter C^T C. Cost O(N D min(N, D) + min(N, D)^3), memory O(N D + min(N, D)^2): never
    a D x D matrix when D > N.
    """
    n, d = centred.shape
    if n > d:
        return _leading_eigenvectors(centred, k, gram=False).T
    u = _leading_eigenvectors(centred, k, gram=True)  # [N, k]
    v = centred.T @ u
    # a zero-variance axis has C^T u = 0: leave it 0 (its coordinates are 0 either way)
    v = v / torch.linalg.vector_norm(v, dim=0).clamp_min(torch.finfo(v.dtype).tiny)
    return v.T


def _leading_eigenvectors(c: torch.Tensor, k: int, gram: bool) -> torch.Tensor:
    """Eigenvectors [m, k] of the k largest eigenvalues of C C^T (``gram``, m = N) or of
    C^T C (m = D), largest first; the eigensolver runs on one thread (see
    ``_threads.one_thread``).

    Up to ``_SUBSET_FROM`` rows the product and torch's full ``eigh``; beyond, BLAS ``syrk``
    (one triangle: half a general product's work) and LAPACK's ``syevr`` on the requested
    index range, which skips the other m - k eigenvectors (worth importing scipy.linalg only
    for large m).
    """
    m = min(c.shape)
    if m <= _SUBSET_FROM:
        a = c @ c.T if gram else c.T @ c
        with one_thread():
            _, vecs = torch.linalg.eigh(a)
        return vecs[:, -k:].flip(1)
    from scipy.linalg import eigh
    from scipy.linalg.blas import dsyrk
    from threadpoolctl import threadpool_limits

    # c.T as a Fortran-ordered [D, N] view (no copy); trans=1 gives C C^T, trans=0 C^T C
    upper = dsyrk(1.0, c.numpy().T, trans=1 if gram else 0)
    with threadpool_limits(limits=1, user_api="blas"):
        _, vecs = eigh(
            upper,
            lower=False,
            subset_by_index=[m - k, m - 1],
            driver="evr",
            overwrite_a=True,
            check_finite=False,
        )
    return torch.from_numpy(np.ascontiguousarray(vecs[:, ::-1]))
