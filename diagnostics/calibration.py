"""Calibration of the logits: expected and maximum calibration error, Brier score, NLL, and the
temperature that minimises the NLL (fitted in temperature.py).

The error, Brier and NLL state is a few exact float64 sums (per confidence bin: count, sum of
confidence, sum of correctness; the Brier and NLL sums), so it streams and merges exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ._threads import one_thread
from ._validation import check_batch, check_label_range
from .temperature import (  # noqa: F401  (T_MIN, T_MAX re-exported)
    _NARROW,
    T_MAX,
    T_MIN,
    TemperatureFit,
    _binary_margins,
    _fit_temperature,
)

NAN = float("nan")
N_BINS = 15

STATE_KEYS = ("count", "conf_sum", "correct_sum", "brier_sum", "nll_sum")


# ----------------------------------------------------------------------------------------------
# Streaming state: exact sums.
# ----------------------------------------------------------------------------------------------


def bin_edges(n_bins: int = N_BINS) -> torch.Tensor:
    """The bin boundaries torchmetrics uses: ``linspace(0, 1, n_bins + 1)`` in float32."""
    return torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)


def _calibration_zeros(n_bins: int = N_BINS) -> dict[str, torch.Tensor]:
    """The empty state: n_bins + 1 bins (the last holds confidences of exactly 1.0, as in
    torchmetrics) and the two scalar sums, float64 on the CPU."""
    zeros = torch.zeros(n_bins + 1, dtype=torch.float64)
    return {
        "count": zeros.clone(),
        "conf_sum": zeros.clone(),
        "correct_sum": zeros.clone(),
        "brier_sum": torch.zeros(1, dtype=torch.float64),
        "nll_sum": torch.zeros(1, dtype=torch.float64),
    }


def _calibration_update(
    logits: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = N_BINS,
    hardness: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Calibration sums of one batch: float64 tensors on the CPU (see :func:`_calibration_zeros`).

    logits [B] (one binary logit, P(positive) = sigmoid(z)) or [B, C]; labels [B] class indices
    in [0, 2) or [0, C); ``hardness`` optionally what :func:`metrics._hardness_update` returned
    for these rows (wide logits reuse its log-sum-exp, prediction and top probability).
    Top-label confidence: max(p, 1 - p) for one logit, the largest softmax probability
    otherwise; the prediction is z >= 0 for one logit, the argmax otherwise. Every
    sum is float64; NLL and Brier come from the margin z_y - z_other for one logit or two
    columns, from exp(z - max z) in float64 up to 16 columns, and from the log-sum-exp in the
    logits' dtype beyond (never the log of an underflowed probability).

    A sample's bin is chosen as torchmetrics' ``MulticlassCalibrationError`` chooses it: the top
    softmax probability in the logits' dtype, as float32, against float32 boundaries (a right-
    closed search: a confidence of exactly 1.0 lands in an extra bin of its own). Which near-
    saturated samples round to 1.0 depends on that arithmetic, hence the imitation.
    """
    z, y = logits, labels
    if z.ndim == 2 and z.shape[1] > _NARROW:
        return _wide_update(z, y, n_bins, hardness)
    # small per-row work on one thread: on a busy machine an op split across two threads waits
    # for a descheduled one (the 470,000 rows of [N, 2] logits of bench_diagnose, under load:
    # 0.18 s on one thread, 1.6-2.9 s on two)
    with one_thread():
        if z.ndim == 1:
            return _binary_update(z, y, z >= 0, n_bins)
        if z.shape[1] == 2:  # argmax: the tie goes to the first column
            d = z[:, 1] - z[:, 0]
            return _binary_update(d, y, d > 0, n_bins)
        z_y = z.gather(1, y[:, None])[:, 0].double()
        conf_bin, pred = torch.softmax(z, dim=1).max(dim=1)
        z = z.double()
        top = z.amax(dim=1)
        e = torch.exp(z - top[:, None])  # <= 1, exactly 1 at the argmax
        s = e.sum(dim=1)  # >= 1
        e_y = e.gather(1, y[:, None])[:, 0]
        nll = torch.log(s) + (top - z_y)  # log-sum-exp minus z_y, both terms >= 0
        # sum_c (p_c - onehot_c)^2 = ((s - e_y)^2 + sum_{c != y} e_c^2) / s^2
        sq_others = (e.square().sum(dim=1) - e_y.square()).clamp_min(0)
        brier = ((s - e_y).square() + sq_others) / s.square()
        return _binned(1.0 / s, conf_bin, pred == y, brier, nll, n_bins)


def _wide_update(z, y, n_bins: int, hardness: dict | None) -> dict[str, torch.Tensor]:
    """More than 16 columns: one softmax over [B, C] (for the Brier score), the rest per row,
    in the logits' dtype with float64 sums."""
    p = torch.softmax(z, dim=1)
    sum_sq = torch.linalg.vector_norm(p, dim=1).double().square()  # sum_c p_c^2
    if hardness is None:
        conf_bin, pred = p.max(dim=1)
        lse = torch.logsumexp(z, dim=1)
    else:  # exp(top - log-sum-exp): the softmax's maximum but near 1.0, where it decides
        pred, lse = hardness["pred"], hardness["lse"].to(z.dtype)
        conf_bin = hardness["top_prob"].to(z.dtype)
        near = torch.nonzero(conf_bin >= 1 - 2.0**-21)[:, 0]
        conf_bin[near] = p.index_select(0, near).amax(dim=1)
    with one_thread():
        z_y = z.gather(1, y[:, None])[:, 0].double()
        lse64 = lse.double()
        brier = (sum_sq - 2 * torch.exp(z_y - lse64) + 1).clamp_min(0)
        return _binned(conf_bin.double(), conf_bin, pred == y, brier, lse64 - z_y, n_bins)


def _binary_update(
    d: torch.Tensor, y: torch.Tensor, positive: torch.Tensor, n_bins: int
) -> dict[str, torch.Tensor]:
    """The state of a binary model from its log-odds ``d`` = log P(1) / P(0) (in the logits'
    dtype) and its predictions ``positive`` (the tie d = 0 goes to class 1 for one logit, to
    the first column for two, as argmax does). Only [B] vectors: no [B, 2] softmax.

    sigmoid(|d|) in d's dtype is, bit for bit, the top probability of a two-column softmax
    (checked on 2 million float32 rows at logit scales 0.3 to 100), so the bins match
    torchmetrics' without computing the softmax."""
    conf_bin = torch.sigmoid(d.abs())
    d = d.double()
    margin = (2 * y - 1).to(d.dtype) * d  # log P(true) / P(other)
    nll = -F.logsigmoid(margin)
    brier = 2 * torch.sigmoid(-margin).square()  # (p - y)^2 + ((1 - p) - (1 - y))^2
    conf = torch.sigmoid(margin.abs())
    return _binned(conf, conf_bin, positive == (y == 1), brier, nll, n_bins)


def _binned(conf, conf_bin, correct, brier, nll, n_bins: int) -> dict[str, torch.Tensor]:
    edges = bin_edges(n_bins).to(conf.device)
    idx = (torch.bucketize(conf_bin.float(), edges, right=True) - 1).clamp_(0, n_bins)
    k = n_bins + 1
    return {
        "count": torch.bincount(idx, minlength=k).to("cpu", torch.float64),
        "conf_sum": torch.bincount(idx, weights=conf, minlength=k).to("cpu"),
        "correct_sum": torch.bincount(idx, weights=correct.double(), minlength=k).to("cpu"),
        "brier_sum": brier.sum().reshape(1).to("cpu", torch.float64),
        "nll_sum": nll.sum().reshape(1).to("cpu", torch.float64),
    }


# ----------------------------------------------------------------------------------------------
# Result.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationResult:
    """How well the predicted probabilities match the observed frequencies.

    ece: top-label expected calibration error, sum_b (n_b / N) |acc_b - conf_b| over 15 equal-
        width bins of the top probability (Guo et al., "On Calibration of Modern Neural
        Networks", ICML 2017; equal to torchmetrics' ``MulticlassCalibrationError(n_bins=15,
        norm="l1")``). [0, 1], lower is better; 0 is perfectly calibrated.
    mce: the largest bin gap max_b |acc_b - conf_b| (``norm="max"``). [0, 1], lower is better.
    brier: mean over samples of sum_c (p_c - onehot_c)^2 (one binary logit: the two-class form,
        2 (p - y)^2). [0, 2], lower is better.
    nll: mean -log p(true class), from log-sum-exp / log-sigmoid. [0, inf), lower is better.
    fitted_temperature: the T > 0 minimising the NLL of softmax(z / T) on these logits; > 1 means
        the outputs are overconfident (divide the logits by T), < 1 underconfident. A value at
        the end of the search range [0.01, 100] is a bound (see ``reasons``).
    fitted_scale: s / T for a margin head whose logits are s cos(theta): the scale at which
        these outputs would be calibrated; nan without such a head.
    reliability: per bin "edges" (n_bins + 1), "confidence" and "accuracy" (means; nan in empty
        bins) and "count"; confidences of exactly 1.0, which torchmetrics (and ``ece``) keep in
        a bin of their own, are shown in the last bin.
    reasons: why a value is nan or a bound.
    """

    ece: float
    mce: float
    brier: float
    nll: float
    fitted_temperature: float
    fitted_scale: float
    n: int
    reliability: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "ece": self.ece,
            "mce": self.mce,
            "brier": self.brier,
            "nll": self.nll,
            "fitted_temperature": self.fitted_temperature,
            "fitted_scale": self.fitted_scale,
        }


NO_SCALE = "needs a margin head whose logits are s * cos(theta) (its s)"


def _calibration_compute(
    state: dict[str, torch.Tensor],
    fit: TemperatureFit | None = None,
    scale: float | None = None,
    scale_reason: str = NO_SCALE,
) -> CalibrationResult:
    """ECE, MCE, Brier, NLL and the reliability diagram from the summed state, with the
    temperature ``fit`` (nan when None) and ``fitted_scale`` = ``scale`` / T when given."""
    count = state["count"].double()
    conf, correct = state["conf_sum"].double(), state["correct_sum"].double()
    n = float(count.sum())
    reasons: dict[str, str] = {}
    n_bins = len(count) - 1
    if n > 0:
        gap = (correct - conf).abs()  # n_b |acc_b - conf_b|
        ece = float(gap.sum() / n)
        mce = float((gap / count.clamp_min(1)).max())  # empty bins: gap 0, as torchmetrics
        brier = float(state["brier_sum"].sum() / n)
        nll = float(state["nll_sum"].sum() / n)
    else:
        ece = mce = brier = nll = NAN
        for key in ("ece", "mce", "brier", "nll"):
            reasons[key] = "no samples"
    # the reliability diagram: the bin of confidences == 1.0 joins the last bin
    shown = {
        "count": torch.cat([count[: n_bins - 1], count[n_bins - 1 :].sum().reshape(1)]),
        "confidence": torch.cat([conf[: n_bins - 1], conf[n_bins - 1 :].sum().reshape(1)]),
        "accuracy": torch.cat([correct[: n_bins - 1], correct[n_bins - 1 :].sum().reshape(1)]),
    }
    c = shown["count"]
    empty = c == 0
    reliability = {
        "edges": torch.linspace(0, 1, n_bins + 1, dtype=torch.float64).tolist(),
        "confidence": (shown["confidence"] / c).masked_fill(empty, NAN).tolist(),
        "accuracy": (shown["accuracy"] / c).masked_fill(empty, NAN).tolist(),
        "count": c.tolist(),
    }
    fit = fit or TemperatureFit(NAN, reason="not fitted")
    t = fit.temperature
    if fit.reason:
        reasons["fitted_temperature"] = fit.reason
    if scale is None:
        s_over_t = NAN
        reasons["fitted_scale"] = scale_reason
    elif math.isnan(t):
        s_over_t = NAN
        reasons["fitted_scale"] = f"no fitted temperature ({fit.reason})"
    else:
        s_over_t = scale / t
        if fit.at_edge:
            reasons["fitted_scale"] = f"s / T with T at the end of the search: a bound ({t:g})"
    return CalibrationResult(
        ece, mce, brier, nll, t, s_over_t, int(n), reliability=reliability, reasons=reasons
    )


def calibration_metrics(
    logits, labels, *, n_bins: int = N_BINS, scale: float | None = None
) -> CalibrationResult:
    """ECE, MCE, Brier score, NLL and the NLL-optimal temperature of logits (see
    :class:`CalibrationResult` for the formulas, ranges and directions).

    Parameters
    ----------
    logits : [N] one binary logit (P(positive) = sigmoid(z)) or [N, C]; rows with NaN/Inf are
        ignored.
    labels : [N] class indices, in {0, 1} for one logit and in [0, C) otherwise.
    n_bins : equal-width confidence bins of ECE, MCE and the reliability diagram.
    scale : the s of a margin head whose logits are s * cos(theta); ``fitted_scale`` = s / T.

    The temperature is fitted on every row (exactly; see :func:`_fit_temperature`).
    """
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if scale is not None and not (
        isinstance(scale, (int, float)) and not isinstance(scale, bool) and 0 < scale < math.inf
    ):
        raise ValueError(f"scale must be a positive finite number or None, got {scale!r}")
    if logits is None:
        raise ValueError("logits are required")
    b = check_batch(torch.zeros(len(labels), 1), labels, logits)
    z, y = b.logits, b.labels.to(b.logits.device)
    check_label_range(y, 2 if z.ndim == 1 else z.shape[1], "classes of the logits")
    state = _calibration_update(z, y, n_bins)
    if z.ndim == 1 or z.shape[1] == 2:
        fit = _fit_temperature(margins=_binary_margins(z, y))
    else:
        fit = _fit_temperature(logits=z, labels=y)
    return _calibration_compute(state, fit, None if scale is None else float(scale))
