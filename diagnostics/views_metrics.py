"""The metrics of several views of the same samples: attention health and cross-view agreement,
and the paired bootstrap behind the fusion gain's intervals.

Plain functions on aligned arrays (row i of every view is sample i); the streaming
`ViewsDiagnoser` (views.py) feeds them its state and its joint sample of rows.

- Attention (weights ``[N, V]``, one row per sample, rows summing to 1): per view the mean and
  the population standard deviation of its weight, the balance gap ``sum_v |mean_v - 1/V|``
  (0: every view gets its share on average; ``2 (V - 1) / V`` at most, one view always), the
  share of samples whose largest weight exceeds 0.9 (degenerate: one view decides alone) and
  the mean weight per class.
- Agreement of two views a and b, on the same rows (cosine similarities, leave-one-out):
  ``nn_agreement`` the share of samples whose nearest neighbour is the same sample in both;
  ``knn_overlap`` the mean share of the 10 nearest neighbours the two have in common;
  ``spearman`` the rank correlation of the two views' similarities over the pairs of the
  first ``SPEARMAN_ROWS`` rows; ``only_first_right`` / ``only_second_right`` the shares of
  samples (those with a classmate) whose nearest neighbour has their class in one view and not
  in the other, and ``complementarity`` their sum: what the second view can add to the first.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata

NAN = float("nan")
DEGENERATE = 0.9  # a sample's attention is degenerate when its largest weight exceeds this
KNN = 10  # neighbours compared by knn_overlap
SPEARMAN_ROWS = 400  # spearman: every pair of the first 400 joint rows (79,800 pairs)
BOOT_PAIR_ROWS = 200  # paired bootstrap of pair metrics: the pairs of the first 200 rows
REPLICATES = 100
ATTENTION_BINS = 20  # histogram of each view's weight over [0, 1]


# ----------------------------------------------------------------------------------------------
# Attention.
# ----------------------------------------------------------------------------------------------


def attention_update(w: torch.Tensor, labels: torch.Tensor) -> dict:
    """Sums of one batch of weights ``[B, V]`` (float64): count, the first four powers and the
    cross products per view, degenerate rows, a histogram per view, and per label value the
    count, sums and sums of squares (``by_label``: value -> tensor [1 + 2V])."""
    w = w.double().cpu()
    v = w.shape[1]
    bins = torch.clamp((w * ATTENTION_BINS).long(), 0, ATTENTION_BINS - 1)
    hist = torch.zeros(v, ATTENTION_BINS, dtype=torch.float64)
    hist.scatter_add_(1, bins.T.contiguous(), torch.ones_like(w.T))
    by_label = {}
    y = labels.cpu()
    for value in torch.unique(y).tolist():
        rows = w[y == value]
        by_label[int(value)] = torch.cat(
            [torch.tensor([float(len(rows))], dtype=torch.float64), rows.sum(0), (rows**2).sum(0)]
        )
    return {
        "count": torch.tensor(float(len(w)), dtype=torch.float64),
        "sum": w.sum(0),
        "sum2": (w**2).sum(0),
        "sum3": (w**3).sum(0),
        "sum4": (w**4).sum(0),
        "cross": w.T @ w,
        "degenerate": (w.max(1).values > DEGENERATE).sum().double(),
        "hist": hist,
        "by_label": by_label,
    }


def attention_merge(dst: dict | None, src: dict | None) -> dict | None:
    """Sum of two attention states (either may be None); ``dst`` is updated and returned."""
    if src is None:
        return dst
    if dst is None:
        return {
            k: ({kk: t.clone() for kk, t in v.items()} if k == "by_label" else v.clone())
            for k, v in src.items()
        }
    for key, value in src.items():
        if key == "by_label":
            for label, t in value.items():
                dst[key][label] = dst[key][label] + t if label in dst[key] else t.clone()
        else:
            dst[key] += value
    return dst


def attention_compute(state: dict) -> dict:
    """Means, standard deviations, balance gap, degenerate share and class means from the
    sums, with the standard errors their intervals use (``se_*``, delta method)."""
    n = float(state["count"])
    v = state["sum"].numel()
    m1 = (state["sum"] / n).numpy()
    m2, m3, m4 = (state[k].numpy() / n for k in ("sum2", "sum3", "sum4"))
    var = np.maximum(m2 - m1**2, 0.0)
    std = np.sqrt(var)
    mu4 = np.maximum(m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4, 0.0)  # central moment
    cov = state["cross"].numpy() / n - np.outer(m1, m1)
    gap_sign = np.sign(m1 - 1.0 / v)
    out = {
        "n": n,
        "mean": m1,
        "std": std,
        "balance_gap": float(np.abs(m1 - 1.0 / v).sum()),
        "degenerate": float(state["degenerate"]),
        "se_mean": np.sqrt(var / max(n - 1, 1)),
        # Var(s^2) ~ (mu4 - sigma^4) / n, and ds = d(s^2) / (2 s)
        "se_std": np.where(
            std > 0, np.sqrt(np.maximum(mu4 - var**2, 0) / n) / (2 * np.where(std > 0, std, 1)), 0
        ),
        "se_gap": float(math.sqrt(max(gap_sign @ cov @ gap_sign, 0.0) / max(n - 1, 1))),
        "hist": state["hist"].numpy(),
        "edges": np.linspace(0.0, 1.0, ATTENTION_BINS + 1),
        "by_label": {},
    }
    for label in sorted(state["by_label"]):
        t = state["by_label"][label].numpy()
        c = t[0]
        mean = t[1 : 1 + v] / c
        cvar = np.maximum(t[1 + v :] / c - mean**2, 0.0)
        out["by_label"][label] = {"n": c, "mean": mean, "se": np.sqrt(cvar / max(c - 1, 1))}
    return out


# ----------------------------------------------------------------------------------------------
# Agreement between two views.
# ----------------------------------------------------------------------------------------------


def neighbours(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[m, k]`` of each row's k most similar other rows (cosine: rows unit length),
    most similar first; ties go to the lower index."""
    sim = x.double() @ x.double().T
    sim.fill_diagonal_(-math.inf)
    # stable descending order: sort by (-sim, index)
    order = torch.sort(-sim, dim=1, stable=True).indices
    return order[:, :k]


def one_nn_correct(nn1: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Whether each row's nearest neighbour has its label, and which rows have a classmate
    (queries, as in recall@1)."""
    y = labels.numpy()
    _, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    query = counts[codes] >= 2
    return y[nn1.numpy()] == y, query


def agreement(
    xa: torch.Tensor, xb: torch.Tensor, labels: torch.Tensor, nn_a=None, nn_b=None
) -> dict:
    """Agreement of views a and b on the same m rows (unit rows in cosine space): the module
    docstring's quantities and what their intervals use (``m``, ``queries``, ``overlap``
    per row, and the Spearman pairs' ranks)."""
    m = len(labels)
    k = min(KNN, m - 1)
    nn_a = neighbours(xa, k) if nn_a is None else nn_a
    nn_b = neighbours(xb, k) if nn_b is None else nn_b
    same_nn = (nn_a[:, 0] == nn_b[:, 0]).numpy()
    overlap = np.array(
        [len(np.intersect1d(a, b)) / k for a, b in zip(nn_a.numpy(), nn_b.numpy(), strict=True)]
    )
    right_a, query = one_nn_correct(nn_a[:, 0], labels)
    right_b, _ = one_nn_correct(nn_b[:, 0], labels)
    q = int(query.sum())
    only_a = int((right_a & ~right_b & query).sum())
    only_b = int((right_b & ~right_a & query).sum())
    p = min(SPEARMAN_ROWS, m)
    i, j = np.triu_indices(p, 1)
    sa = (xa[:p].double() @ xa[:p].double().T).numpy()[i, j]
    sb = (xb[:p].double() @ xb[:p].double().T).numpy()[i, j]
    ra, rb = rankdata(sa), rankdata(sb)
    return {
        "m": m,
        "queries": q,
        "nn_agreement": float(same_nn.mean()),
        "nn_same": int(same_nn.sum()),
        "knn_overlap": float(overlap.mean()),
        "overlap": overlap,
        "knn": k,
        "spearman": _pearson(ra, rb),
        "spearman_rows": p,
        "ranks": (ra, rb, i, j),
        "only_first": only_a,
        "only_second": only_b,
        "only_first_right": only_a / q if q else NAN,
        "only_second_right": only_b / q if q else NAN,
        "complementarity": (only_a + only_b) / q if q else NAN,
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / denom) if denom > 0 else NAN


def spearman_replicates(ra, rb, i, j, labels: np.ndarray, seed: int) -> np.ndarray:
    """Bootstrap replicates of the Spearman correlation: rows drawn with replacement (stratified
    by class), each pair weighted by how often both its rows were drawn; the ranks of the full
    sample are held."""
    w = stratified_weights(labels, REPLICATES, seed)
    wp = w[:, i] * w[:, j]
    feats = np.stack([np.ones_like(ra), ra, rb, ra * ra, rb * rb, ra * rb], axis=1)
    s = wp @ feats
    tot = s[:, 0]
    ma, mb = s[:, 1] / tot, s[:, 2] / tot
    va, vb = s[:, 3] / tot - ma**2, s[:, 4] / tot - mb**2
    cab = s[:, 5] / tot - ma * mb
    with np.errstate(invalid="ignore", divide="ignore"):
        return cab / np.sqrt(va * vb)


# ----------------------------------------------------------------------------------------------
# Paired bootstrap of the fusion gain.
# ----------------------------------------------------------------------------------------------


def stratified_weights(labels: np.ndarray, reps: int, seed: int) -> np.ndarray:
    """Bootstrap weights ``[reps, m]``: within each class, how often each row is drawn when as
    many rows as the class holds are drawn with replacement."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 18])
    w = np.zeros((reps, len(labels)))
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        w[:, rows] = rng.multinomial(len(rows), np.full(len(rows), 1.0 / len(rows)), size=reps)
    return w


def pair_replicates(x: torch.Tensor, labels: np.ndarray, w: np.ndarray) -> dict:
    """Per replicate (rows of ``w``): EER, ROC AUC and KS of the genuine/impostor cosine
    similarities of every pair of x's rows, each pair weighted by w_i w_j."""
    m = len(labels)
    i, j = np.triu_indices(m, 1)
    sim = (x.double() @ x.double().T).numpy()[i, j]
    gen = labels[i] == labels[j]
    order = np.argsort(-sim, kind="stable")
    sim, gen, i, j = sim[order], gen[order], i[order], j[order]
    last = np.concatenate([sim[1:] != sim[:-1], [True]])  # thresholds between distinct values
    w = w.astype(np.float32)  # small integer counts: exact in float32
    wp = w[:, i] * w[:, j]
    tp = np.cumsum(wp * gen, axis=1, dtype=np.float64)[:, last]
    fp = np.cumsum(wp * ~gen, axis=1, dtype=np.float64)[:, last]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / tp[:, -1:]
        fpr = fp / fp[:, -1:]
    zeros = np.zeros((len(w), 1))
    tpr0, fpr0 = np.concatenate([zeros, tpr], 1), np.concatenate([zeros, fpr], 1)
    auc = np.sum(np.diff(fpr0, axis=1) * (tpr0[:, 1:] + tpr0[:, :-1]) / 2, axis=1)
    ks = np.max(np.abs(tpr0 - fpr0), axis=1)
    dd = fpr0 - (1 - tpr0)  # rises from -1 to 1 along the curve
    k = np.clip(np.argmax(dd >= 0, axis=1), 1, dd.shape[1] - 1)
    rows = np.arange(len(w))
    d0, d1 = dd[rows, k - 1], dd[rows, k]
    t = np.where(d1 != d0, -d0 / np.where(d1 != d0, d1 - d0, 1), 0.0)
    eer = fpr0[rows, k - 1] + t * (fpr0[rows, k] - fpr0[rows, k - 1])
    return {"eer": eer, "roc_auc": auc, "pair_ks": ks}


def retrieval_per_query(x: torch.Tensor, labels: torch.Tensor) -> dict:
    """Leave-one-out hit@1 and AP@R of every query (a row with a classmate) among x's rows:
    R = the query's classmates, AP@R = (1/R) sum_{k<=R} P@k rel_k (Musgrave et al. 2020)."""
    y = labels.numpy()
    m = len(y)
    order = neighbours(x, m - 1).numpy()
    rel = y[order] == y[:, None]
    _, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    r = counts[codes] - 1
    query = r >= 1
    k = np.arange(1, m)
    prec = np.cumsum(rel, axis=1) / k
    within = k[None, :] <= r[:, None]
    ap = np.where(query, (prec * rel * within).sum(1) / np.maximum(r, 1), np.nan)
    return {"recall_at_1": rel[:, 0].astype(float)[query], "map_at_r": ap[query]}
