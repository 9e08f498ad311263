"""Embedding geometry from per-class sums: Fisher ratio, intra/inter distances, NC1, and
the class-sum state the streaming Diagnoser keeps (O(N * D), never the N x N matrix)."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ._threads import one_thread
from ._validation import check_batch, check_space

NAN = float("nan")


# ----------------------------------------------------------------------------------------------
# Geometry: per-class count, sum and sum of squared norms are all that Fisher ratio and the
# intra/inter means need (closed forms, O(N * D), never the N x N matrix).
# ----------------------------------------------------------------------------------------------


def prepare_embeddings(x: torch.Tensor, space: str) -> torch.Tensor:
    """Rows in the space the geometry is measured in: unit vectors (cosine) or as given."""
    x = x.float() if x.dtype != torch.float64 else x
    return F.normalize(x, dim=1) if space == "cosine" else x


_DENSE_CLASSES = 32  # up to this many classes the one-hot matrix is dense (a plain GEMM)


def _class_sums_update(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    row_scale: torch.Tensor | None = None,
    row_sqnorms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class (count [C], sum [C, D], sum of squared norms [C]) of rows, float64 on CPU.

    ``y`` holds class indices in [0, num_classes). ``row_scale`` [B] multiplies each row first
    (1 / norm puts rows on the unit sphere without materialising the normalised copy);
    ``row_sqnorms`` [B] are the squared norms of the scaled rows (computed when not given).
    The sums are one sparse-dense product (one pass over the batch, in its own dtype and
    device), then promoted, so long streams accumulate in float64.

    The within-class scatter is later q_c - |s_c|^2 / n_c over the whole stream. For a class
    whose spread in this batch is tiny (that difference under 1% of q_c) it would cancel
    catastrophically in float32 (unit rows are 1 +- 1e-7: a spread of 1e-3 would come out a
    few percent off, 1e-4 almost wholly wrong), so there q_c is restated as M2_c +
    |s_c|^2 / n_c, with M2_c the squared deviations from the batch's class mean, which keep
    their precision; the remaining differences are taken in float64. Other classes, the
    usual case, cost nothing more.
    """
    b = x.shape[0]
    weights = (
        row_scale.to(x.dtype)
        if row_scale is not None
        else torch.ones(b, dtype=x.dtype, device=x.device)
    )
    if row_sqnorms is None:
        row_sqnorms = torch.linalg.vector_norm(x, dim=1).double() ** 2 * weights.double() ** 2
    counts = torch.bincount(y, minlength=num_classes).to("cpu", torch.float64)
    if num_classes <= 4:  # a matrix-vector product per class beats a GEMM with 2-4 rows
        sums = torch.stack([(weights * (y == c)) @ x for c in range(num_classes)])
    elif num_classes <= _DENSE_CLASSES:
        onehot = torch.zeros(num_classes, b, dtype=x.dtype, device=x.device)
        onehot.scatter_(0, y[None], weights[None])
        sums = onehot @ x
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # sparse CSR is "beta"
            onehot = torch.sparse_coo_tensor(
                torch.stack([y, torch.arange(b, device=x.device)]), weights, (num_classes, b)
            ).to_sparse_csr()
        sums = onehot @ x
    sq = torch.zeros(num_classes, dtype=torch.float64, device=x.device).index_add_(
        0, y, row_sqnorms.double()
    )
    sq = sq.to("cpu")
    sums64 = sums.to("cpu", torch.float64)
    n_c = counts.clamp_min(1)
    between = sums64.square().sum(1) / n_c
    tight = (counts > 0) & (sq - between < 1e-2 * sq)
    if bool(tight.any()):
        sel = torch.nonzero(tight.to(y.device)[y])[:, 0]
        ys = y[sel]
        dev = (sums / n_c.to(sums.device, sums.dtype)[:, None]).index_select(0, ys)
        # scaled row minus its class's batch mean
        dev.neg_().addcmul_(x.index_select(0, sel), weights[sel][:, None])
        dev_sq = torch.einsum("bd,bd->b", dev, dev)
        if not bool(torch.isfinite(dev_sq).all()):  # squares beyond the dtype's range
            dev_sq = torch.einsum("bd,bd->b", dev.double(), dev.double())
        m2 = torch.zeros(num_classes, dtype=torch.float64, device=x.device).index_add_(
            0, ys, dev_sq.double()
        )
        sq = torch.where(tight, m2.to("cpu") + between, sq)
    return counts, sums64, sq


@dataclass(frozen=True)
class Geometry:
    """Class separation from per-class sums.

    fisher_ratio: tr(S_B) / tr(S_W); higher is better, 0 when all class means coincide.
    intra_mean / inter_mean: mean distance over same-class / different-class pairs i != j, each
    pair once (1 - cos in cosine space, squared Euclidean distance otherwise).
    intra_inter_ratio: intra_mean / inter_mean; lower is better (< 1: classes are separated).
    """

    fisher_ratio: float
    intra_mean: float
    inter_mean: float
    intra_inter_ratio: float
    reasons: dict

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "reasons"}


def _geometry_compute(
    counts: torch.Tensor, sums: torch.Tensor, sqnorms: torch.Tensor, space: str
) -> Geometry:
    n_c = counts.double().numpy()
    s_c = sums.double().numpy()
    q_c = sqnorms.double().numpy()
    present = n_c > 0
    n_c, s_c, q_c = n_c[present], s_c[present], q_c[present]
    reasons: dict[str, str] = {}
    n = n_c.sum()
    k = len(n_c)
    total = s_c.sum(axis=0)
    s_norm2 = np.einsum("cd,cd->c", s_c, s_c)
    # tr(S_W) = sum_c (q_c - |s_c|^2 / n_c);  tr(S_B) = sum_c |s_c|^2 / n_c - |S|^2 / N
    tr_w = float(np.sum(q_c - s_norm2 / n_c)) if k else NAN
    tr_b = float(np.sum(s_norm2 / n_c) - total @ total / n) if k else NAN
    if k < 2:
        fisher = NAN
        reasons["fisher_ratio"] = "needs at least two classes"
    elif tr_w <= 1e-12 * max(1.0, abs(tr_b)):
        fisher = NAN
        reasons["fisher_ratio"] = "within-class scatter is zero (every class is a single point)"
    else:
        fisher = max(tr_b, 0.0) / tr_w

    intra_pairs = float(np.sum(n_c * (n_c - 1) / 2))
    inter_pairs = float((n * n - np.sum(n_c * n_c)) / 2)
    # sum_{i<j in c} |x_i - x_j|^2 = n_c q_c - |s_c|^2 (= n_c M2_c: see _class_sums_update)
    intra_sum = max(float(np.sum(n_c * q_c - s_norm2)), 0.0)
    inter_sum = float(np.sum(q_c * (n - n_c)) - (total @ total - s_norm2.sum()))
    if space == "cosine":
        # on unit rows 1 - cos = |x_i - x_j|^2 / 2; this form, unlike pairs - sum of dots,
        # does not cancel when classes are tight
        intra_sum, inter_sum = intra_sum / 2, inter_sum / 2
    if intra_pairs > 0:
        intra = intra_sum / intra_pairs
    else:
        intra = NAN
        reasons["intra_mean"] = "no class has two samples"
    if inter_pairs > 0:
        inter = inter_sum / inter_pairs
    else:
        inter = NAN
        reasons["inter_mean"] = "needs at least two classes"
    if math.isnan(intra) or math.isnan(inter) or inter <= 0:
        ratio = NAN
        reasons["intra_inter_ratio"] = reasons.get("intra_mean") or reasons.get(
            "inter_mean", "inter_mean is zero"
        )
    else:
        ratio = intra / inter
    return Geometry(fisher, intra, inter, ratio, reasons)


def _geometry_inputs(embeddings, labels, space: str):
    check_space(space)
    b = check_batch(embeddings, labels)
    values, idx = torch.unique(b.labels, return_inverse=True)
    x = prepare_embeddings(b.embeddings, space)
    return x, idx, len(values)


def geometry(embeddings, labels, *, space: str = "cosine") -> Geometry:
    """Fisher ratio and intra/inter mean distances in one pass (see :class:`Geometry`).

    Parameters
    ----------
    embeddings : [N, D] array; rows with NaN/Inf are ignored.
    labels : [N] integers of any values.
    space : "cosine" (rows L2-normalised, distance 1 - cos) or "euclidean" (squared distance).
    """
    x, idx, k = _geometry_inputs(embeddings, labels, space)
    return _geometry_compute(*_class_sums_update(x, idx, k), space)


def fisher_ratio(embeddings, labels, *, space: str = "cosine") -> float:
    """tr(S_B) / tr(S_W) with S_B = sum_c n_c (mu_c - mu)(mu_c - mu)^T and
    S_W = sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T.

    Equals the Calinski-Harabasz index times (k - 1) / (n - k). Range [0, inf); higher means
    better separated classes (above 1: between-class scatter exceeds within-class scatter).
    nan with fewer than two classes.
    """
    return geometry(embeddings, labels, space=space).fisher_ratio


def intra_inter(embeddings, labels, *, space: str = "cosine") -> Geometry:
    """Mean same-class and different-class pair distances by exact closed forms."""
    return geometry(embeddings, labels, space=space)


def nc1(embeddings, labels, *, space: str = "cosine") -> float:
    """Neural-collapse NC1 = Tr(S_W S_B^+) / C (Papyan, Han and Donoho, PNAS 2020).

    S_W and S_B as in :func:`fisher_ratio`; ``^+`` is the Moore-Penrose pseudo-inverse.
    Range [0, inf); lower means within-class variability has collapsed onto the class means.
    """
    x, idx, k = _geometry_inputs(embeddings, labels, space)
    counts, sums, _ = _class_sums_update(x, idx, k)
    return _nc1_compute(x, idx, counts, sums, weight=1.0)[0]


_NC1_BLOCK = 1 << 18  # float64 elements of one block of rows (2 MB, cache-sized)


def _nc1_compute(
    x: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor, weight: float
) -> tuple[float, str | None]:
    """NC1 with exact class means and S_W from the rows ``x`` scaled by ``weight``
    (1 when x holds every sample, N / K when it is a uniform sample of K rows).

    Memory is linear in D: the k x D between-class factor, its pseudo-inverse and one block
    of rows at a time in float64; never a D x D or a second N x D matrix."""
    present = counts > 0
    k = int(present.sum())
    if k < 2:
        return NAN, "needs at least two classes"
    means = sums / counts.clamp_min(1)[:, None]
    mu = sums.sum(0) / counts.sum()
    # S_B = A^T A with A = sqrt(n_c) (mu_c - mu)  [k, D], so S_B^+ = A^+ A^+^T and
    # Tr(S_W S_B^+) = |centred @ A^+|_F^2 * weight: no D x D matrix is ever formed.
    a = (means - mu)[present] * counts[present].sqrt()[:, None]
    # sum_c sqrt(n_c) a_c = 0, so S_B has rank at most k - 1: its k-th singular direction is
    # rounding noise, and inverting it would blow NC1 up (to ~1e31), so it is cut explicitly
    with one_thread():
        u, sv, vh = torch.linalg.svd(a, full_matrices=False)
    cut = sv[0] * max(a.shape) * torch.finfo(sv.dtype).eps if len(sv) else 0.0
    r = min(k - 1, int((sv > cut).sum()))
    a_pinv = (vh[:r].T / sv[:r]) @ u[:, :r].T  # [D, k]
    # (x_i - mu_{y_i}) A^+ = x_i A^+ - mu_{y_i} A^+: rows are projected onto the k columns
    # block by block (float64), so no centred N x D copy is formed; the many small products
    # run on one thread (two spin against each other on a busy machine, as in one_thread)
    proj_means = means @ a_pinv  # [C, k]
    idx = idx.cpu()
    rows = max(1, _NC1_BLOCK // max(1, x.shape[1]))
    total = 0.0
    with one_thread():
        for start in range(0, x.shape[0], rows):
            proj = x[start : start + rows].to("cpu", torch.float64) @ a_pinv
            proj -= proj_means[idx[start : start + rows]]
            total += float(proj.square().sum())
    return float(weight * total / k), None


def _centroid_confusion_compute(
    x: torch.Tensor, y: torch.Tensor, means: torch.Tensor, present: torch.Tensor, space: str
) -> float:
    """How many rows ``x`` (unit rows in cosine space) are nearer another present class's mean
    ``means`` [C, D] than their own (cosine: by cosine to the normalised means; Euclidean: by
    squared distance). Ties count as not confused."""
    mu = means.to(x.dtype)
    if space == "cosine":
        dist = -(x @ F.normalize(mu, dim=1).T)
    else:
        dist = torch.cdist(x, mu) ** 2
    dist[:, ~present.to(dist.device)] = math.inf
    own = dist.gather(1, y[:, None])[:, 0]
    dist.scatter_(1, y[:, None], math.inf)
    return float((dist.min(dim=1).values < own).double().sum())


def centroid_confusion(embeddings, labels, *, space: str = "cosine") -> tuple[float, float]:
    """(count, fraction) of samples nearer another class's centroid than their own.

    Centroids are the class means of the rows in the metric space (unit rows in cosine space,
    compared by cosine to the normalised means). Range: count in [0, N], fraction in [0, 1];
    lower is better. nan with fewer than two classes.
    """
    x, idx, k = _geometry_inputs(embeddings, labels, space)
    counts, sums, _ = _class_sums_update(x, idx, k)
    present = counts > 0
    if int(present.sum()) < 2:
        return NAN, NAN
    confused = _centroid_confusion_compute(
        x.double(), idx, sums / counts.clamp_min(1)[:, None], present, space
    )
    return confused, confused / len(idx)
