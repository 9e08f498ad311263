"""Trend rules over a `History`: is the run doing what a healthy run does?

(Over 400 lines: one function per rule with its verdict texts, which read best side by side.)

Each rule returns a `Trend`: ``verdict`` "holds" (the good state, measured beyond noise),
"broken" (the bad state, beyond noise) or "inconclusive", a ``severity`` for a broken rule
(warning only for rules whose measured track record shows their verdicts hold on held-out
data, see docs/history.md), a ``reason`` and its ``evidence`` in the recommendations' form
(metric -> {"value", "interval", "threshold", "op"}, plus the rule's ``track_record``).

Noise: every value's standard error is read off its interval (half-width / z of the
interval's level). A trend is the weighted least-squares slope over epochs (weights 1 / se^2),
its standard error the larger of the one the intervals imply and the one the scatter around the
line implies (a run that wanders more than its intervals say is not trusted to trend); a slope
is a trend when it is more than z standard errors from 0. Values of one validation set are
positively correlated between epochs, so treating them as independent overstates the noise of a
change: the rules err towards "inconclusive".

Rules (``name``: what holds):

- ``margins_rising``: the median logit margin rises over the run (and does not fall over the
  last ``recent`` epochs);
- ``gray_zone_falling``, ``confident_errors_falling``: the gray-zone share and the share of
  confident errors (``confident_error_count / n``) fall likewise;
- ``ks_above_threshold``, ``fisher_above_threshold``, ``intra_below_inter``: at the last epoch
  ``score_ks`` > 0.5, ``fisher_ratio`` > 1, ``intra_inter_ratio`` < 1 (advice's
  ``DEFAULT_THRESHOLDS``) beyond noise; ``value`` is the epoch from which it stayed so;
- ``train_val_gap``: the task metric on the training report minus the validation one, at the
  last epoch with both, is under ``gap`` (0.1) beyond noise (only when train reports exist);
- ``steady_task_metric``: over the last ``oscillation_window`` epochs the task metric does
  not swing up and down: broken when its moves of at least ``amplitude`` (0.05), each beyond
  noise, change direction ``reversals`` (2) times or more;
- ``best_epoch``: ``value`` is the epoch with the best task metric; broken when the last
  epoch is worse than it beyond noise (the run went past its best).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .advice import DEFAULT_THRESHOLDS
from .registry import direction
from .report import Recommendation, _clean
from .track_records import read_rules

TRACK_RECORD_FILE = Path(__file__).with_name("history_track_record.json")
VERDICTS = ("holds", "inconclusive", "broken")
VERDICT_CODE = {"holds": 1.0, "inconclusive": 0.0, "broken": -1.0}  # what --fail-on reads

# name, metric, better direction of the metric
SLOPE_RULES = (
    ("margins_rising", "margin_median", "higher"),
    ("gray_zone_falling", "gray_zone_fraction", "lower"),
    ("confident_errors_falling", "confident_error_rate", "lower"),
)
# name, metric, op, threshold key of DEFAULT_THRESHOLDS
THRESHOLD_RULES = (
    ("ks_above_threshold", "score_ks", ">", "score_ks"),
    ("fisher_above_threshold", "fisher_ratio", ">", "fisher_ratio"),
    ("intra_below_inter", "intra_inter_ratio", "<", "intra_inter_ratio"),
)
RULES = (
    *(r[0] for r in SLOPE_RULES),
    *(r[0] for r in THRESHOLD_RULES),
    "train_val_gap",
    "steady_task_metric",
    "best_epoch",
)
DEFAULTS = {
    "window": None,  # epochs the run's trend is read over (None: all)
    "recent": 5,  # a trend broken over the last epochs breaks the rule
    "gap": 0.1,  # train minus validation task metric
    "oscillation_window": 6,
    "amplitude": 0.05,
    "reversals": 2,
}


@dataclass(frozen=True)
class Trend:
    """One rule's verdict on a run: see the module docstring."""

    rule: str
    verdict: str  # "holds" | "inconclusive" | "broken"
    severity: str  # of a broken rule: "warning" | "info"; "info" otherwise
    reason: str
    value: float | None = None
    evidence: dict = field(default_factory=dict)

    @property
    def code(self) -> float:
        """1 holds, 0 inconclusive, -1 broken (``--fail-on "margins_rising<1"``)."""
        return VERDICT_CODE[self.verdict]

    def to_dict(self) -> dict:
        return _clean(
            {
                "rule": self.rule,
                "verdict": self.verdict,
                "severity": self.severity,
                "value": self.value,
                "reason": self.reason,
                "evidence": self.evidence,
            }
        )

    def as_recommendation(self) -> Recommendation:
        """The verdict as a `Recommendation` (action = the rule's name)."""
        return Recommendation(self.rule, self.severity, self.reason, self.value, self.evidence)

    def __str__(self) -> str:
        value = "" if self.value is None else f" ({_fmt(self.value)})"
        mark = f"[{self.severity}] " if self.verdict == "broken" else ""
        return f"{mark}{self.rule}: {self.verdict}{value}: {self.reason}"

    def __repr__(self) -> str:  # a list of verdicts prints as the lines diagnose history shows
        return f"<Trend {self}>"


@dataclass(frozen=True)
class Slope:
    """Weighted least-squares slope per epoch and its standard error over ``n`` epochs."""

    slope: float
    se: float
    n: int
    first: int
    last: int

    def z(self) -> float:
        return self.slope / self.se if self.se > 0 else math.copysign(math.inf, self.slope)


def z_of(level: float) -> float:
    """The two-sided normal quantile of an interval's level (1.96 at 0.95)."""
    from scipy.stats import norm

    level = 0.95 if not (isinstance(level, float) and 0 < level < 1) else level
    return float(norm.ppf(0.5 + level / 2))


def standard_errors(low: np.ndarray, high: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Half-widths of the intervals over z of their level (nan without an interval)."""
    z = np.array([z_of(float(v)) if math.isfinite(v) else z_of(0.95) for v in level])
    return (high - low) / (2 * z)


def weighted_slope(epochs: np.ndarray, values: np.ndarray, se: np.ndarray) -> Slope | None:
    """The slope of ``values`` over ``epochs`` (weights 1 / se^2; equal weights when any se is
    missing or zero) and its standard error: the larger of the measurement one and the one of
    the residual scatter (``n >= 3``). None with fewer than two finite points."""
    keep = np.isfinite(values)
    t, v, s = epochs[keep].astype(float), values[keep], se[keep]
    if len(t) < 2 or np.ptp(t) == 0:
        return None
    measured = bool(np.all(np.isfinite(s)) and np.all(s > 0))
    w = 1.0 / s**2 if measured else np.ones_like(v)
    tc = t - np.sum(w * t) / np.sum(w)
    sxx = float(np.sum(w * tc**2))
    slope = float(np.sum(w * tc * v) / sxx)
    intercept = float(np.sum(w * v) / np.sum(w))
    residual = v - (intercept + slope * tc)
    variances = []
    if measured:
        variances.append(1.0 / sxx)
    if len(t) >= 3:
        scatter = float(np.sum(w * residual**2)) / (len(t) - 2)
        variances.append(scatter / sxx)
    if not variances:  # two points without intervals: no noise estimate
        return Slope(slope, math.nan, len(t), int(t[0]), int(t[-1]))
    return Slope(slope, math.sqrt(max(variances)), len(t), int(t[0]), int(t[-1]))


# ----------------------------------------------------------------------------------------------


def judge(history, **options) -> list[Trend]:
    """Every rule that applies to ``history`` (rules whose metric it never holds are left out).

    Options (defaults in ``DEFAULTS``): ``window`` (epochs the run's trend is read over, None
    for all), ``recent`` (a trend against the rule over the last epochs breaks it), ``gap``,
    ``oscillation_window``, ``amplitude``, ``reversals``, and ``thresholds`` (overrides of
    advice's ``score_ks``, ``fisher_ratio``, ``intra_inter_ratio``).
    """
    thresholds = {**DEFAULT_THRESHOLDS, **(options.pop("thresholds", None) or {})}
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **options}
    for name in ("recent", "oscillation_window", "reversals"):
        if not isinstance(o[name], int) or o[name] < 2 - (name == "reversals"):
            raise ValueError(f"{name} must be an integer >= 2, got {o[name]!r}")
    if o["window"] is not None and (not isinstance(o["window"], int) or o["window"] < 2):
        raise ValueError(f"window must be an integer >= 2 or None, got {o['window']!r}")
    if not history.epochs("val"):
        return []
    out: list[Trend] = []
    for rule, metric, better in SLOPE_RULES:
        series = _series(history, metric)
        if series is not None:
            out.append(_slope_rule(rule, metric, better, series, o))
    for rule, metric, op, key in THRESHOLD_RULES:
        series = _series(history, metric)
        if series is not None:
            out.append(_threshold_rule(rule, metric, op, float(thresholds[key]), series))
    task = history.task_metric
    val = _series(history, task)
    if val is not None:
        train = _series(history, task, split="train")
        if train is not None:
            out.append(_gap_rule(task, train, val, o["gap"]))
        out.append(_oscillation_rule(task, val, o))
        out.append(_best_rule(task, val))
    return [_with_track_record(t) for t in out]


def values_for_fail_on(trends: list[Trend], history) -> dict[str, float]:
    """What ``diagnose history --fail-on`` rules can name: each rule's verdict code (1 holds,
    0 inconclusive, -1 broken) and ``RULE.value``; every metric of the last validation epoch
    (and ``METRIC.low`` / ``METRIC.high``); ``epochs``."""
    values: dict[str, float] = {}
    last = history.epochs("val")[-1] if history.epochs("val") else None
    if last is not None:
        row = history._rows[(last, "val")]
        for key, value in row.items():
            if key not in ("epoch", "split", "step", "interval_level"):
                values[key] = float(value)
    values["epochs"] = float(len(history.epochs("val")))
    for trend in trends:
        values[trend.rule] = trend.code
        values[f"{trend.rule}.value"] = math.nan if trend.value is None else float(trend.value)
    return values


# ----------------------------------------------------------------------------------------------


def _series(history, metric: str, split: str = "val") -> dict | None:
    """The metric's values and standard errors over the split's epochs; None when no epoch has
    a finite value. ``confident_error_rate`` is ``confident_error_count / n``."""
    if metric == "confident_error_rate":
        s = history.series("confident_error_count", split)
        n = history.series("n", split)["value"]
        s = {**s, "value": s["value"] / n, "low": s["low"] / n, "high": s["high"] / n}
    else:
        s = history.series(metric, split)
    if not np.any(np.isfinite(s["value"])):
        return None
    return {**s, "se": standard_errors(s["low"], s["high"], s["level"]), "z": _z(s)}


def _z(s: dict) -> float:
    levels = [v for v in s["level"] if math.isfinite(v)]
    return z_of(float(levels[-1]) if levels else 0.95)


def _last_finite(s: dict) -> int | None:
    finite = np.flatnonzero(np.isfinite(s["value"]))
    return int(finite[-1]) if len(finite) else None


def _point(s: dict, i: int) -> dict:
    e = {"value": float(s["value"][i]), "epoch": int(s["epoch"][i])}
    if math.isfinite(s["low"][i]):
        e["interval"] = [float(s["low"][i]), float(s["high"][i])]
    return e


def _slope_evidence(slope: Slope | None, better: str) -> dict:
    if slope is None:
        return {"value": math.nan}
    return {
        "value": slope.slope,
        "se": slope.se,
        "epochs": [slope.first, slope.last],
        "threshold": 0.0,
        "op": ">" if better == "higher" else "<",
        "how": "slope per epoch (weighted least squares)",
    }


def _slope_rule(rule: str, metric: str, better: str, s: dict, o: dict) -> Trend:
    sign = 1.0 if better == "higher" else -1.0
    window = len(s["epoch"]) if o["window"] is None else o["window"]
    whole = weighted_slope(s["epoch"][-window:], s["value"][-window:], s["se"][-window:])
    recent = weighted_slope(
        s["epoch"][-o["recent"] :], s["value"][-o["recent"] :], s["se"][-o["recent"] :]
    )
    z = s["z"]
    verb = "rises" if better == "higher" else "falls"
    against = "falls" if better == "higher" else "rises"
    i = _last_finite(s)
    evidence = {
        f"{metric} (last epoch)": _point(s, i),
        f"{metric} slope": _slope_evidence(whole, better),
    }
    if recent is not None and whole is not None and recent.n < whole.n:
        evidence[f"{metric} slope, last {recent.n} epochs"] = _slope_evidence(recent, better)
    if whole is None or not math.isfinite(whole.se):
        return _verdict(
            rule,
            "inconclusive",
            f"{metric} needs two epochs with intervals to trend",
            None,
            evidence,
        )
    value = whole.slope
    if recent is not None and recent.n < whole.n and sign * recent.z() < -z:
        return _verdict(
            rule,
            "broken",
            f"{metric} {against} over the last {recent.n} epochs beyond noise "
            f"({_fmt(recent.slope)} per epoch)",
            value,
            evidence,
        )
    if sign * whole.z() < -z:
        return _verdict(
            rule,
            "broken",
            f"{metric} {against} over epochs {whole.first}-{whole.last} beyond noise "
            f"({_fmt(whole.slope)} per epoch)",
            value,
            evidence,
        )
    if sign * whole.z() > z:
        return _verdict(
            rule,
            "holds",
            f"{metric} {verb} over epochs {whole.first}-{whole.last} beyond noise "
            f"({_fmt(whole.slope)} per epoch)",
            value,
            evidence,
        )
    return _verdict(
        rule,
        "inconclusive",
        f"{metric}'s slope over epochs {whole.first}-{whole.last} ({_fmt(whole.slope)} per "
        f"epoch) is within noise",
        value,
        evidence,
    )


def _threshold_rule(rule: str, metric: str, op: str, threshold: float, s: dict) -> Trend:
    i = _last_finite(s)
    value, low, high = s["value"][i], s["low"][i], s["high"][i]
    if not math.isfinite(low):  # no interval: the point value decides only with no noise known
        low = high = math.nan
    above = op == ">"
    beyond = (low > threshold) if above else (high < threshold)
    against = (high < threshold) if above else (low > threshold)
    # the epoch from which the value stayed beyond the threshold (its interval clear of it)
    clear = (s["low"] > threshold) if above else (s["high"] < threshold)
    since = None
    for j in range(i, -1, -1):
        if not clear[j]:
            break
        since = int(s["epoch"][j])
    evidence = {metric: {**_point(s, i), "threshold": threshold, "op": op}}
    if since is not None:
        evidence[metric]["since_epoch"] = since
    epoch = int(s["epoch"][i])
    if beyond:
        return _verdict(
            rule,
            "holds",
            f"{metric} {_fmt(value)} {op} {_fmt(threshold)} beyond noise at epoch {epoch} "
            f"(since epoch {since})",
            float(since),
            evidence,
        )
    if against:
        return _verdict(
            rule,
            "broken",
            f"{metric} {_fmt(value)} is not {op} {_fmt(threshold)} at epoch {epoch}, beyond noise",
            None,
            evidence,
        )
    return _verdict(
        rule,
        "inconclusive",
        f"{metric} {_fmt(value)} at epoch {epoch}: its interval reaches {_fmt(threshold)}",
        None,
        evidence,
    )


def _gap_rule(task: str, train: dict, val: dict, gap: float) -> Trend:
    common = sorted(set(train["epoch"].tolist()) & set(val["epoch"].tolist()))
    rows = []
    for epoch in common:
        a, b = (
            int(np.flatnonzero(train["epoch"] == epoch)[0]),
            int(np.flatnonzero(val["epoch"] == epoch)[0]),
        )
        if math.isfinite(train["value"][a]) and math.isfinite(val["value"][b]):
            rows.append((epoch, a, b))
    if not rows:
        return _verdict(
            "train_val_gap",
            "inconclusive",
            f"no epoch has both a training and a validation {task}",
        )
    epoch, a, b = rows[-1]
    sign = 1.0 if direction(task) != "lower" else -1.0
    difference = sign * (train["value"][a] - val["value"][b])
    se = math.hypot(train["se"][a], val["se"][b])
    z = val["z"]
    evidence = {
        f"{task} (train)": _point(train, a),
        f"{task} (val)": _point(val, b),
        "train_val_gap": {"value": difference, "se": se, "threshold": gap, "op": "<"},
    }
    if not math.isfinite(se):
        verdict = "inconclusive"
        reason = f"gap {_fmt(difference)} at epoch {epoch}; the reports have no interval of {task}"
    elif difference - gap > z * se:
        verdict = "broken"
        reason = (
            f"the training {task} is {_fmt(difference)} above the validation one at epoch "
            f"{epoch}, more than {_fmt(gap)} beyond noise: the model fits the training set "
            "better than it generalises (regularise, or keep an earlier epoch)"
        )
    elif difference + z * se < gap:
        verdict, reason = (
            "holds",
            f"gap {_fmt(difference)} < {_fmt(gap)} beyond noise at epoch {epoch}",
        )
    else:
        verdict = "inconclusive"
        reason = f"gap {_fmt(difference)} at epoch {epoch}: within noise of {_fmt(gap)}"
    return _verdict("train_val_gap", verdict, reason, difference, evidence)


def _oscillation_rule(task: str, s: dict, o: dict) -> Trend:
    k = o["oscillation_window"]
    keep = np.flatnonzero(np.isfinite(s["value"]))[-k:]
    epochs, v, se = s["epoch"][keep], s["value"][keep], s["se"][keep]
    z, amplitude = s["z"], o["amplitude"]
    moves = []  # (sign, significant) of each move of at least the amplitude
    for j in range(1, len(v)):
        delta = v[j] - v[j - 1]
        if abs(delta) >= amplitude:
            noise = math.hypot(se[j], se[j - 1])
            moves.append((np.sign(delta), math.isfinite(noise) and abs(delta) > z * noise))
    reversals = sum(1 for a, b in zip(moves, moves[1:], strict=False) if a[0] != b[0])
    sure = [m for m in moves if m[1]]
    sure_reversals = sum(1 for a, b in zip(sure, sure[1:], strict=False) if a[0] != b[0])
    span = f"epochs {int(epochs[0])}-{int(epochs[-1])}" if len(epochs) else "no epochs"
    evidence = {
        task: {
            "values": [float(x) for x in v],
            "epochs": [int(e) for e in epochs],
            "threshold": amplitude,
            "op": "swings >=",
        },
        "reversals": {"value": float(sure_reversals), "threshold": o["reversals"], "op": ">="},
    }
    if len(v) < 3:
        return _verdict(
            "steady_task_metric",
            "inconclusive",
            f"{task} needs three epochs to oscillate",
            None,
            evidence,
        )
    if sure_reversals >= o["reversals"]:
        return _verdict(
            "steady_task_metric",
            "broken",
            f"{task} swings up and down by {_fmt(amplitude)} or more over {span} "
            f"({sure_reversals} reversals beyond noise); the usual remedy, a lower learning "
            "rate (or focal gamma), has no measured track record here",
            float(sure_reversals),
            evidence,
        )
    if reversals == 0:
        return _verdict(
            "steady_task_metric",
            "holds",
            f"{task} does not swing by {_fmt(amplitude)} or more over {span}",
            0.0,
            evidence,
        )
    return _verdict(
        "steady_task_metric",
        "inconclusive",
        f"{task} changes direction over {span}, but not {o['reversals']} times beyond noise",
        float(sure_reversals),
        evidence,
    )


def _best_rule(task: str, s: dict) -> Trend:
    sign = 1.0 if direction(task) != "lower" else -1.0
    finite = np.flatnonzero(np.isfinite(s["value"]))
    best = int(finite[np.argmax(sign * s["value"][finite])])
    last = int(finite[-1])
    epoch = int(s["epoch"][best])
    evidence = {f"{task} (best)": _point(s, best), f"{task} (last)": _point(s, last)}
    worse = sign * (s["value"][best] - s["value"][last])
    se = math.hypot(s["se"][best], s["se"][last])
    if best != last and math.isfinite(se) and worse > s["z"] * se:
        return _verdict(
            "best_epoch",
            "broken",
            f"the best {task} is epoch {epoch}'s ({_fmt(s['value'][best])}); the last epoch's "
            f"({_fmt(s['value'][last])}) is worse beyond noise: keep epoch {epoch}'s weights",
            float(epoch),
            evidence,
        )
    if best == last:
        reason = f"the last epoch ({epoch}) has the best {task} ({_fmt(s['value'][best])})"
    else:
        reason = (
            f"the best {task} is epoch {epoch}'s ({_fmt(s['value'][best])}); the last epoch's "
            f"({_fmt(s['value'][last])}) is within noise of it"
        )
    verdict = "holds" if math.isfinite(se) or best == last else "inconclusive"
    return _verdict("best_epoch", verdict, reason, epoch, evidence)


def _verdict(rule: str, verdict: str, reason: str, value=None, evidence=None) -> Trend:
    """A verdict at severity info (`_with_track_record` raises broken rules it has shown to hold)."""
    return Trend(
        rule, verdict, "info", reason, None if value is None else float(value), evidence or {}
    )


@lru_cache(maxsize=1)
def track_records() -> dict:
    """rule -> {"severity", "counts"} as benchmarks/history_check.py --write stored them in the
    package's ``history_track_record.json``; empty when the file is missing or unreadable."""
    return read_rules(TRACK_RECORD_FILE)


def _with_track_record(trend: Trend) -> Trend:
    record = track_records().get(trend.rule)
    if record is None:
        return trend
    severity = record["severity"] if trend.verdict == "broken" else "info"
    evidence = {**trend.evidence, "track_record": dict(record["counts"])}
    return Trend(trend.rule, trend.verdict, severity, trend.reason, trend.value, evidence)


def _fmt(value) -> str:
    value = float(value)
    if math.isnan(value):
        return "nan"
    if abs(value) < 1e-12:  # a slope of exactly equal values, up to rounding
        return "0"
    if value == int(value) and abs(value) < 1e12:
        return str(int(value))
    return f"{value:.3g}"
