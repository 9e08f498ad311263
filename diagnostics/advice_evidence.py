"""What the recommendation rules read besides the metrics: scales from the literature, the
sampling noise of a share or a KS statistic, and each rule's measured track record."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist

import numpy as np

from .compare import _finite, _get
from .report import Recommendation, Report
from .sections import Reliability
from .track_records import read_rules, rule_counts

NAN = float("nan")

TRACK_RECORD_FILE = Path(__file__).with_name("track_record.json")


def _ev(report: Report, name: str, threshold=None, op: str | None = None) -> dict:
    e = {"value": _get(report, name)}
    if threshold is not None:
        e["threshold"] = threshold
        e["op"] = op
    return e


# ----------------------------------------------------------------------------------------------
# Scales from the literature.
# ----------------------------------------------------------------------------------------------


def normface_scale(num_classes: int, target_probability: float = 0.99) -> float:
    """Smallest scale at which a softmax over normalised features and weights can reach
    ``target_probability`` for C classes: s >= (C - 1) / C * log((C - 1) P / (1 - P))
    (Wang et al., NormFace, ACM MM 2017, Proposition 2)."""
    c, p = num_classes, target_probability
    if c < 2:
        return NAN
    return (c - 1) / c * math.log((c - 1) * p / (1 - p))


def adacos_scale(num_classes: int) -> float:
    """AdaCos fixed scale sqrt(2) * log(C - 1) (Zhang et al., CVPR 2019). It is 0 at C = 2:
    the rule that sizes s for many classes has nothing to say for a binary task."""
    return math.sqrt(2) * math.log(num_classes - 1) if num_classes > 2 else 0.0


# ----------------------------------------------------------------------------------------------
# Sampling noise: the rules fire only when a threshold is cleared beyond it.
# ----------------------------------------------------------------------------------------------


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"thresholds['interval_level'] must lie in (0, 1), got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson_interval(share: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion observed as ``share`` of ``n`` samples.

    centre (p + z^2 / 2n) / (1 + z^2 / n), half-width z sqrt(p (1 - p) / n + z^2 / 4n^2) /
    (1 + z^2 / n), with z the two-sided normal quantile of ``level`` (Wilson, JASA 1927). Within
    [0, 1]; (nan, nan) when n or the share is undefined.
    """
    if not (_finite(share, n) and n > 0):
        return NAN, NAN
    z = _z(level)
    p = min(max(share, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def ece_lower_bound(report: Report, level: float = 0.95) -> float:
    """A lower confidence bound on the calibration error behind the report's ``ece``.

    ECE = sum_b w_b |acc_b - conf_b| over the confidence bins, with acc_b the mean of n_b
    correct/incorrect outcomes. By the triangle inequality the error the model would show on
    unlimited data is at least ECE - sum_b w_b |acc_b - E acc_b|; under a normal approximation
    each term has mean sigma_b sqrt(2 / pi) and variance sigma_b^2 (1 - 2 / pi), sigma_b^2 =
    a_b (1 - a_b) / n_b (a_b = (k_b + 1) / (n_b + 2), so that a bin of all-correct samples
    still counts its noise). The bound is ECE minus that sum's mean plus z standard deviations.
    Bins come from the report's reliability section; without one, every bin is taken at its
    worst (a_b = 1/2, 15 bins), which bounds the noise from above. nan without ``ece``/``n``.
    """
    ece, n = _get(report, "ece"), _get(report, "n")
    if not (_finite(ece, n) and n > 0):
        return NAN
    z = _z(level)
    rel = report.sections.get("reliability")
    mean = var = 0.0
    if isinstance(rel, Reliability) and rel.count and rel.accuracy:
        counts = np.asarray(rel.count, dtype=float)
        acc = np.nan_to_num(np.asarray(rel.accuracy, dtype=float))
        used = counts > 0
        nb, a = counts[used], (acc[used] * counts[used] + 1) / (counts[used] + 2)
        sigma = np.sqrt(a * (1 - a) / nb)
        w = nb / nb.sum()
        mean = float((w * sigma).sum()) * math.sqrt(2 / math.pi)
        var = float((w * w * sigma * sigma).sum()) * (1 - 2 / math.pi)
    else:
        mean = 0.5 * math.sqrt(2 / math.pi) * math.sqrt(15 / n)
        var = 0.25 * (1 - 2 / math.pi) / n
    return ece - mean - z * math.sqrt(var)


def calibration_gap(report: Report, level: float = 0.95) -> dict | None:
    """Calibration in the large: mean top-label confidence minus accuracy, with the accuracy's
    Wilson interval; from the report's reliability section (the bins' counts, mean confidences
    and accuracies). Positive: overconfident. None without a reliability section.

    Unlike ECE, whose sparse bins each add their own noise, this pools every sample: a gap that
    clears a threshold beyond the accuracy's interval is a miscalibration that a temperature can
    fix, measured as precisely as the accuracy itself.
    """
    rel = report.sections.get("reliability")
    if not (isinstance(rel, Reliability) and rel.count and rel.confidence):
        return None
    counts = np.asarray(rel.count, dtype=float)
    conf = np.nan_to_num(np.asarray(rel.confidence, dtype=float))
    acc = np.nan_to_num(np.asarray(rel.accuracy, dtype=float))
    n = float(counts.sum())
    if not n > 0:
        return None
    confidence = float((counts * conf).sum() / n)
    accuracy = float((counts * acc).sum() / n)
    low, high = wilson_interval(accuracy, n, level)
    return {
        "value": confidence - accuracy,
        "confidence": confidence,
        "accuracy": accuracy,
        "accuracy_interval": [low, high],
        # the gap's distance from 0 beyond the accuracy's interval, in the gap's direction
        "beyond_noise": max(confidence - high, low - confidence, 0.0),
    }


def _ks_upper(report: Report, name: str, level: float) -> float:
    """KS plus its two-sample critical value c(alpha) sqrt((n1 + n2) / (n1 n2)), c(alpha) =
    sqrt(-log(alpha / 2) / 2): a KS that stays under a threshold by this much is below it beyond
    sampling noise. One-vs-rest for C classes: n1 = n / C."""
    ks, n = _get(report, name), _get(report, "n")
    c = _get(report, "num_classes")
    if not (_finite(ks, n) and n > 0):
        return NAN
    c = c if _finite(c) and c >= 2 else 2
    n1 = n / c
    n2 = n - n1
    alpha = 1 - level
    return ks + math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n1 + n2) / (n1 * n2))


# ----------------------------------------------------------------------------------------------
# Track records.
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def track_records() -> dict:
    """Each rule's measured track record, as the advice benchmark wrote it to the package's
    ``track_record.json``: rule -> {"fired", "target", "target_improved", "task_not_worse"}
    (fired: models where the rule fired; target_improved: where following it moved its target
    metric the right way on held-out data; task_not_worse: where F1 / macro-F1 fell by no more
    than 0.01). Empty when the file is missing or unreadable.
    """
    return read_rules(TRACK_RECORD_FILE)


def _track_record(rule: str) -> dict:
    return rule_counts(track_records(), rule)


def _record_phrase(rule: str) -> str:
    r = _track_record(rule)
    if not r["fired"]:
        return "It has no track record yet."
    if rule.startswith(("disable_arcface", "enable_arcface")):
        return (
            f"Track record: of {r['fired']} models where it fired, a comparison on held-out "
            f"data agreed for {r['target_improved']}, and following it left the task metric "
            f"not worse for {r['task_not_worse']}."
        )
    return (
        f"Track record: of {r['fired']} models where it fired, following it improved "
        f"{r['target'] or 'its target'} for {r['target_improved']} and left the task metric "
        f"not worse for {r['task_not_worse']}."
    )


def _rec(
    rule: str, action: str, severity: str, reason: str, value=None, evidence=None
) -> Recommendation:
    evidence = dict(evidence or {})
    evidence["track_record"] = _track_record(rule)
    return Recommendation(action, severity, reason, value, evidence)


# The severity of each rule's advice (fix_eval_margin, check_head and collapse are errors, set
# where they fire), decided from its track record (docs/recommendations.md): warning where
# following it improved its target in at least 90% of the models where it fired and left the
# task metric not worse in at least 80%; info where it missed either (the retraining rules move
# their target but leave F1 / macro-F1 not worse in only 55-66% of the cases).
SEVERITY = {
    "calibrate_temperature": "warning",
    "decrease_scale": "info",
    "increase_scale": "info",
    "decrease_margin": "info",
    "increase_margin": "info",
    "disable_arcface": "warning",
    "disable_arcface_task_tied": "info",
    "enable_arcface": "info",
    "collapse_after_probe": "warning",
    "collapse_to_prior": "info",
}


@dataclass
class _Unsure:
    """What a rule saw at its point estimate but could not tell from sampling noise."""

    phrases: list = field(default_factory=list)
    evidence: dict = field(default_factory=dict)

    def add(self, phrase: str, **evidence) -> None:
        self.phrases.append(phrase)
        self.evidence.update(evidence)


def _share_evidence(report: Report, name: str, threshold: float, t: dict) -> dict:
    v, n = _get(report, name), _get(report, "n")
    low, high = wilson_interval(v, n, t["interval_level"])
    return {"value": v, "interval": [low, high], "threshold": threshold, "op": ">"}


# a collapse onto a class whose labels outnumber the next class's by this factor is what a model
