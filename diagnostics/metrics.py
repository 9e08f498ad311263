"""Metrics as plain functions, each built from an ``_update`` (batch -> state) and a
``_compute`` (state -> result) pair that the streaming :class:`Diagnoser` shares.

Geometry is measured in cosine space by default (rows L2-normalised), Euclidean on request.
Every function accepts torch tensors or numpy arrays; labels may be any integers.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ._validation import as_tensor, check_batch, check_label_range, check_space

NAN = float("nan")


@contextmanager
def one_thread():
    """Run small LAPACK calls (eigh, pinv, svd) on one thread: for matrices this small,
    threads cost more in synchronisation than they save, and on a busy machine they spin
    against each other (measurements in benchmarks/README.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
    better separated classes (above 1: between-class scatter exceeds within-class scatter). nan with fewer than two classes.
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


# ----------------------------------------------------------------------------------------------
# Score distributions.
# ----------------------------------------------------------------------------------------------


def ks_distance(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup_x |F_a(x) - F_b(x)|.

    The same number as ``scipy.stats.ks_2samp(a, b).statistic``. Range [0, 1]; 1 means the two
    samples do not overlap, 0 identical empirical distributions. nan if either is empty.
    """
    a = np.sort(np.asarray(as_tensor(a, "a").double().cpu().numpy(), dtype=np.float64).ravel())
    b = np.sort(np.asarray(as_tensor(b, "b").double().cpu().numpy(), dtype=np.float64).ravel())
    if a.size == 0 or b.size == 0:
        return NAN
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def histogram_edges(bins: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return np.linspace(lo, hi, bins + 1)


def _histogram_update(values: torch.Tensor, bins: int, lo: float = 0.0, hi: float = 1.0):
    """Counts over ``bins`` equal bins on [lo, hi], numpy's convention (last bin closed);
    values outside are clipped into the end bins."""
    v = values.double()
    idx = ((v - lo) / (hi - lo) * bins).floor().clamp(0, bins - 1).long()
    return torch.bincount(idx, minlength=bins).to("cpu", torch.float64)


def hellinger_from_counts(p_counts, q_counts) -> float:
    """Hellinger distance sqrt(1 - sum_b sqrt(p_b q_b)) of two histograms over shared bins.

    Range [0, 1]; 0 identical, 1 disjoint supports. nan if either histogram is empty.
    """
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return NAN
    bc = np.sum(np.sqrt(p / p.sum() * q / q.sum()))
    return float(math.sqrt(max(0.0, 1.0 - bc)))


def hellinger_distance(a, b, *, bins: int = 50, range: tuple[float, float] = (0.0, 1.0)) -> float:
    """Hellinger distance between the histograms of two samples over ``bins`` equal bins on
    ``range`` (values outside are clipped into the end bins). See :func:`hellinger_from_counts`.
    """
    lo, hi = range
    ta = as_tensor(a, "a").reshape(-1)
    tb = as_tensor(b, "b").reshape(-1)
    return hellinger_from_counts(
        _histogram_update(ta, bins, lo, hi), _histogram_update(tb, bins, lo, hi)
    )


def fisher_score(a, b) -> float:
    """(m1 - m0)^2 / (v1 + v0) of two samples (population variances). Higher separates more."""
    a = np.asarray(as_tensor(a, "a").double().cpu().numpy()).ravel()
    b = np.asarray(as_tensor(b, "b").double().cpu().numpy()).ravel()
    if a.size == 0 or b.size == 0:
        return NAN
    v = a.var() + b.var()
    return float((a.mean() - b.mean()) ** 2 / v) if v > 0 else NAN


def positive_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """log P(pos) / P(neg) of a binary model: the logit itself ([N]) or z1 - z0 ([N, 2]).

    Monotone in P(positive), so rank statistics (KS) on it equal those on the probability, but
    it does not saturate at 0 or 1 in floating point.
    """
    return logits if logits.ndim == 1 else logits[:, 1] - logits[:, 0]


@dataclass(frozen=True)
class ScoreSeparation:
    """How well the positive-class score separates the two classes (binary models).

    ks: KS statistic between scores of class 1 and class 0 (higher better, seeds: > 0.5).
    hellinger: Hellinger distance of their histograms (higher better, seeds: > 0.5).
    fisher: (m1 - m0)^2 / (v1 + v0) of the scores (higher better).
    """

    ks: float
    hellinger: float
    fisher: float
    bin_edges: tuple

    def to_dict(self) -> dict:
        return {"score_ks": self.ks, "score_hellinger": self.hellinger, "score_fisher": self.fisher}


def score_separation(logits, labels, *, bins: int = 50) -> ScoreSeparation:
    """Separation of P(positive) between the classes of a binary model.

    logits: [N] single logits (P = sigmoid) or [N, 2] (P = softmax column 1); labels in {0, 1}.
    """
    b = check_batch(torch.zeros(len(labels), 1), labels, logits)
    if b.logits is None or (b.logits.ndim == 2 and b.logits.shape[1] != 2):
        raise ValueError("logits must be [N] or [N, 2] for a binary score; use macro one-vs-rest")
    check_label_range(b.labels, 2, "two classes of a binary model")
    odds = positive_log_odds(b.logits).double()
    p = torch.sigmoid(odds)
    pos, neg = b.labels == 1, b.labels == 0
    return ScoreSeparation(
        ks_distance(odds[pos], odds[neg]),
        hellinger_distance(p[pos], p[neg], bins=bins),
        fisher_score(p[pos], p[neg]),
        tuple(histogram_edges(bins)),
    )


# ----------------------------------------------------------------------------------------------
# Logits: column statistics, predictions, margins.
# ----------------------------------------------------------------------------------------------


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """[N] -> P(positive) by sigmoid; [N, C] -> softmax rows."""
    z = logits.double()
    return torch.sigmoid(z) if z.ndim == 1 else torch.softmax(z, dim=1)


def prediction_margins(logits, labels) -> np.ndarray:
    """Logit margin per sample: true-class logit minus the largest other logit.

    For one binary logit z: (2y - 1) z. Positive means correct; larger is more confident.
    Returns float64 [N].
    """
    b = check_batch(torch.zeros(len(labels), 1), labels, logits)
    if b.logits is None:
        raise ValueError("logits are required")
    return _margins(b.logits, b.labels).cpu().numpy()


def _margins(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if z.ndim == 1:
        check_label_range(y, 2, "two classes of a single binary logit")
        return (2 * y - 1).to(z.dtype) * z
    check_label_range(y, z.shape[1], "logit columns")
    true = z.gather(1, y[:, None])[:, 0]
    other = z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return true - other


def _column_stats_update(
    z: torch.Tensor, y: torch.Tensor, num_classes: int, by_class: bool = True
) -> dict:
    """Per column (and, when ``by_class``, per column per true class): count, sum, sum of
    squares, min, max. Narrow logits are reduced in float64; wide ones (``by_class=False``)
    per batch in their own dtype with one row of state."""
    z2 = z[:, None] if z.ndim == 1 else z
    if not by_class:
        return {
            "by_class": False,
            "count": torch.tensor([float(z2.shape[0])], dtype=torch.float64),
            "sum": z2.sum(0, keepdim=True).to("cpu", torch.float64),
            "sumsq": torch.linalg.vector_norm(z2, dim=0, keepdim=True).to("cpu", torch.float64)
            ** 2,
            "min": z2.amin(0, keepdim=True).to("cpu", torch.float64),
            "max": z2.amax(0, keepdim=True).to("cpu", torch.float64),
        }
    z2 = z2.double()
    c = z2.shape[1]
    cnt = torch.bincount(y, minlength=num_classes).double()
    s = torch.zeros(num_classes, c, dtype=torch.float64, device=z.device).index_add_(0, y, z2)
    ss = torch.zeros_like(s).index_add_(0, y, z2 * z2)
    index = y[:, None].expand_as(z2)
    lo = torch.full_like(s, math.inf).scatter_reduce_(0, index, z2, "amin")
    hi = torch.full_like(s, -math.inf).scatter_reduce_(0, index, z2, "amax")
    return {"count": cnt.cpu(), "sum": s.cpu(), "sumsq": ss.cpu(), "min": lo.cpu(), "max": hi.cpu()}


def _column_stats_compute(st: dict) -> dict:
    """-> {"col": [C] dicts of mean/std/min/max, "by_class": [K][C] dicts (empty when the state
    was kept without classes)}, population std."""
    cnt, s, ss, lo, hi = st["count"], st["sum"], st["sumsq"], st["min"], st["max"]

    def stats(n, s_, ss_, lo_, hi_):
        if n <= 0:
            return {"mean": NAN, "std": NAN, "min": NAN, "max": NAN}
        mean = s_ / n
        var = max(ss_ / n - mean * mean, 0.0)
        return {"mean": mean, "std": math.sqrt(var), "min": lo_, "max": hi_}

    n_all = float(cnt.sum())
    cols = [
        stats(
            n_all,
            float(s[:, j].sum()),
            float(ss[:, j].sum()),
            float(lo[:, j].min()),
            float(hi[:, j].max()),
        )
        for j in range(s.shape[1])
    ]
    by_class = (
        [
            [
                stats(
                    float(cnt[k]), float(s[k, j]), float(ss[k, j]), float(lo[k, j]), float(hi[k, j])
                )
                for j in range(s.shape[1])
            ]
            for k in range(s.shape[0])
        ]
        if st.get("by_class", True)
        else []
    )
    return {"col": cols, "by_class": by_class}


def logit_column_stats(logits, labels) -> dict[str, float]:
    """Mean, std (population), min and max of every logit column, overall and per true class.

    Keys: ``logits.col{j}.{stat}`` and ``logits.col{j}.class{k}.{stat}``. A collapse onto one
    class reads, e.g., ``logits.col0.mean = -4.06, logits.col1.mean = 0.443`` for both classes.
    """
    b = check_batch(torch.zeros(len(labels), 1), labels, logits)
    if b.logits is None:
        raise ValueError("logits are required")
    k = 2 if b.logits.ndim == 1 else b.logits.shape[1]
    check_label_range(b.labels, k, "logit columns")
    return flatten_column_stats(_column_stats_compute(_column_stats_update(b.logits, b.labels, k)))


def flatten_column_stats(cs: dict) -> dict[str, float]:
    out = {}
    for j, col in enumerate(cs["col"]):
        for stat, v in col.items():
            out[f"logits.col{j}.{stat}"] = v
        for k, row in enumerate(cs["by_class"]):
            for stat, v in row[j].items():
                out[f"logits.col{j}.class{k}.{stat}"] = v
    return out


# ----------------------------------------------------------------------------------------------
# Classification quality from a confusion matrix (fixed-size, mergeable state).
# ----------------------------------------------------------------------------------------------


def _confusion_update(pred: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bincount(y * k + pred, minlength=k * k).reshape(k, k).to("cpu", torch.float64)


def _f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2 TP / (2 TP + FP + FN); nan where the class is neither true nor predicted."""
    tp = np.diag(cm)
    denom = 2 * tp + (cm.sum(0) - tp) + (cm.sum(1) - tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), NAN)


def classification_scores(cm: np.ndarray) -> dict[str, float]:
    """accuracy, f1 (binary: class 1 positive) and macro_f1 (over classes that occur)."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum()
    f1 = _f1_from_confusion(cm)
    out = {"accuracy": float(np.trace(cm) / n) if n else NAN}
    out["macro_f1"] = float(np.nanmean(f1)) if np.isfinite(f1).any() else NAN
    if cm.shape[0] == 2:
        # F1 of the positive class; 0 (not nan) when positives exist but none is predicted
        tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]
        out["f1"] = float(2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) > 0 else NAN
    return out


# ----------------------------------------------------------------------------------------------
# Hard examples.
# ----------------------------------------------------------------------------------------------

GRAY_ZONE_BINARY = 0.1  # |P(pos) - 0.5| < 0.1
GRAY_ZONE_MULTICLASS = 0.2  # top-1 minus top-2 probability < 0.2
CONFIDENT = 0.9


def _hardness_update(z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample scalars from logits: prediction, its probability, gray-zone flag, margin.

    For [N, C] logits only the top two logits and the log-sum-exp of each row are needed
    (no softmax matrix); ``lse`` is returned for callers that want the probabilities.
    """
    if z.ndim == 1:
        p = torch.sigmoid(z.double())
        pred = (p >= 0.5).long()
        return {
            "pred": pred,
            "top_prob": torch.where(pred == 1, p, 1 - p),
            "gray": (p - 0.5).abs() < GRAY_ZONE_BINARY,
            "margin": _margins(z, y).double(),
        }
    check_label_range(y, z.shape[1], "logit columns")
    top, idx = z.topk(2, dim=1)
    if z.shape[1] == 2:  # both logits are in ``top``: skip the general (slower) reduction
        lse = top[:, 0] + torch.log1p(torch.exp(top[:, 1] - top[:, 0]))
    else:
        lse = torch.logsumexp(z, dim=1)
    p1, p2 = torch.exp(top[:, 0] - lse).double(), torch.exp(top[:, 1] - lse).double()
    pred = idx[:, 0]
    true = z.gather(1, y[:, None])[:, 0]
    other = torch.where(pred == y, top[:, 1], top[:, 0])
    return {
        "pred": pred,
        "top_prob": p1,
        "gray": (p1 - p2) < GRAY_ZONE_MULTICLASS,
        "margin": (true - other).double(),
        "lse": lse,
    }


@dataclass(frozen=True)
class HardExamples:
    """gray_zone: undecided samples; confident_error: wrong with probability >= 0.9;
    hardest: indices (or ids) of the smallest logit margins, hardest first."""

    gray_zone_count: int
    gray_zone_fraction: float
    confident_error_count: int
    hardest: list

    def to_dict(self) -> dict:
        return {
            "gray_zone_count": self.gray_zone_count,
            "gray_zone_fraction": self.gray_zone_fraction,
            "confident_error_count": self.confident_error_count,
        }


def hard_examples(logits, labels, *, ids=None, k: int = 20) -> HardExamples:
    """Gray zone (binary |P(pos) - 0.5| < 0.1; multi-class top-1 minus top-2 probability < 0.2),
    confident errors (wrong with probability >= 0.9) and the k samples with the smallest margins."""
    b = check_batch(torch.zeros(len(labels), 1), labels, logits, ids)
    if b.logits is None:
        raise ValueError("logits are required")
    h = _hardness_update(b.logits, b.labels)
    return _hard_compute(h, b.labels, b.ids, k)


def _hard_compute(h: dict, y: torch.Tensor, ids, k: int) -> HardExamples:
    n = len(y)
    wrong = h["pred"] != y
    margin = h["margin"].cpu().numpy()
    names = np.asarray(ids if ids is not None else np.arange(n)).astype(str)
    order = np.lexsort((names, margin))[:k]  # ties broken by id: independent of sample order
    hardest = [{"id": str(names[i]), "label": int(y[i]), "margin": float(margin[i])} for i in order]
    gray = int(h["gray"].sum())
    return HardExamples(
        gray,
        gray / n if n else NAN,
        int((wrong & (h["top_prob"] >= CONFIDENT)).sum()),
        hardest,
    )
