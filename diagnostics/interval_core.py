"""The building blocks of the report's intervals: the normal quantile, Wilson's interval, the
collector that checks and clips each interval, and stratified bootstrap weights and standard
errors. intervals.py (the state's metrics) and interval_extras.py (fitted, head and exact ones)
both build on these, and neither imports the other's internals.
"""

from __future__ import annotations

import math
import re
from statistics import NormalDist

import numpy as np
import torch

from .calibration import N_BINS, bin_edges
from .registry import info

NAN = float("nan")
LEVEL = 0.95


def z_value(level: float = LEVEL) -> float:
    """The two-sided normal quantile of ``level`` (1.959964 at 0.95)."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(successes: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``.

    (k + z^2/2) / (n + z^2) +- z sqrt(k (n - k) / n + z^2 / 4) / (n + z^2), with z the normal
    quantile of ``level``; the same as ``scipy.stats.binomtest(k, n).proportion_ci(level,
    method="wilson")``. Always within [0, 1] and holding k / n. (nan, nan) when n = 0.
    """
    if not n > 0:
        return NAN, NAN
    z = z_value(level)
    k = min(max(float(successes), 0.0), float(n))
    denom = n + z * z
    centre = (k + z * z / 2) / denom
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)  # the ends exactly, as scipy's
    return low, 1.0 if k == n else min(1.0, centre + half)


def metric_range(name: str) -> tuple[float, float]:
    """The (low, high) bounds of a metric's range in the registry ((-inf, inf) if unknown)."""
    record = info(name)
    if record is None:
        return -math.inf, math.inf
    parts = re.findall(r"-?inf|-?\d+(?:\.\d+)?", record.range)
    if len(parts) < 2:
        return -math.inf, math.inf
    return float(parts[0]), float(parts[-1])


class _Intervals:
    """Collects intervals and methods; every helper checks the value it is given."""

    def __init__(self, metrics: dict, level: float):
        self.metrics = metrics
        self.level = level
        self.z = z_value(level)
        self.intervals: dict[str, list[float]] = {}
        self.methods: dict[str, str] = {}

    def has(self, name: str) -> bool:
        v = self.metrics.get(name)
        return v is not None and math.isfinite(v)

    def normal(self, name: str, se: float, method: str) -> None:
        """value +- z se, clipped to the metric's range."""
        if not self.has(name):
            return
        if not (isinstance(se, float) or isinstance(se, (int, np.floating))) or not math.isfinite(
            se
        ):
            self.none(name, f"none: {method} gave no finite standard error")
            return
        v = float(self.metrics[name])
        lo, hi = metric_range(name)
        half = self.z * max(float(se), 0.0)
        self.intervals[name] = [float(max(lo, min(v, v - half))), float(min(hi, max(v, v + half)))]
        self.methods[name] = method

    def wilson(self, name: str, successes: float, n: float, method: str, times: float = 1.0):
        """Wilson interval of successes / n, times ``times`` (a count's n)."""
        if not self.has(name) or not n > 0:
            return
        lo, hi = wilson(successes, n, self.level)
        v = float(self.metrics[name])
        self.intervals[name] = [float(min(v, lo * times)), float(max(v, hi * times))]
        self.methods[name] = method

    def none(self, name: str, why: str) -> None:
        if name in self.metrics and name not in self.intervals:
            self.methods[name] = why


def _sd(values: np.ndarray) -> float:
    """Standard deviation of bootstrap replicates (nan when fewer than half are finite)."""
    v = np.asarray(values, dtype=np.float64)
    ok = v[np.isfinite(v)]
    if len(ok) < max(2, len(v) // 2):
        return NAN
    return float(np.std(ok, ddof=1))


def _weights(strata: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified bootstrap weights [reps, m] (float32, small integers): within each stratum,
    how often each row is drawn when as many rows as it holds are drawn with replacement."""
    w = np.zeros((reps, len(strata)), dtype=np.float32)
    _, codes = np.unique(strata, return_inverse=True)
    for c in range(codes.max() + 1 if len(codes) else 0):
        rows = np.flatnonzero(codes == c)
        m = len(rows)
        draws = rng.integers(0, m, size=(reps, m)) + (np.arange(reps) * m)[:, None]
        w[:, rows] = np.bincount(draws.ravel(), minlength=reps * m).reshape(reps, m)
    return w


def _stratified_se(values: np.ndarray, strata: np.ndarray) -> float:
    """Standard error of the mean of ``values`` when the class sizes are fixed:
    sqrt(sum_c n_c var_c) / n (population variances within each class)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return NAN
    _, codes = np.unique(strata, return_inverse=True)
    n_c = np.bincount(codes).astype(np.float64)
    s1 = np.bincount(codes, weights=v)
    s2 = np.bincount(codes, weights=v * v)
    var_c = np.maximum(s2 / n_c - (s1 / n_c) ** 2, 0.0)
    return float(math.sqrt(np.sum(n_c * var_c)) / len(v))


def _boot(reps: int, pool: int, n: int, what: str = "samples") -> str:
    scaled = f" on {pool} of {n} {what}, scaled to n" if pool < n else ""
    return f"bootstrap ({reps}, stratified by class){scaled}"


def calibration_replicates(top, correct, w) -> dict[str, np.ndarray]:
    """Per replicate (rows of weights ``w``): ECE and MCE over the 15 bins of the top
    probability ``top`` (binned as the report bins it), ``correct`` 1 for a right prediction."""
    edges = bin_edges(N_BINS)
    conf_bin = torch.from_numpy(np.asarray(top, dtype=np.float64)).float()
    b = (torch.bucketize(conf_bin, edges, right=True) - 1).clamp_(0, N_BINS).numpy()
    k = N_BINS + 1
    onehot = np.zeros((len(top), k), dtype=np.float32)
    onehot[np.arange(len(top)), b] = 1.0
    feats = np.concatenate([onehot, onehot * top[:, None], onehot * correct[:, None]], axis=1)
    sums = (w @ feats.astype(w.dtype)).astype(np.float64)  # [reps, 3k]
    count, conf, acc = sums[:, :k], sums[:, k : 2 * k], sums[:, 2 * k :]
    gap = np.abs(acc - conf)
    return {"ece": gap.sum(1) / count.sum(1), "mce": (gap / np.maximum(count, 1)).max(1)}
