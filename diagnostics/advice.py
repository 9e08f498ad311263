"""Recommendations with their evidence, A/B comparison of two reports, and regression checks.

The rules, their thresholds, the papers behind them and each rule's measured track record are
documented in docs/recommendations.md; every threshold can be overridden through ``thresholds``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist

import numpy as np

from .calibration import T_MAX, T_MIN
from .compare import _finite, _get
from .report import Recommendation, Report

NAN = float("nan")

ACTIONS = (
    "fix_eval_margin",
    "check_head",
    "calibrate_temperature",
    "disable_arcface",
    "enable_arcface",
    "decrease_scale",
    "increase_scale",
    "decrease_margin",
    "increase_margin",
    "no_change",
)

# The rules, each with the name its track record is filed under (track_record.json).
RULES = (
    "fix_eval_margin",
    "check_head",
    "collapse",
    "collapse_after_probe",
    "collapse_to_prior",
    "calibrate_temperature",
    "decrease_scale",
    "increase_scale",
    "decrease_margin",
    "increase_margin",
    "disable_arcface",
    "disable_arcface_task_tied",
    "enable_arcface",
)

DEFAULT_THRESHOLDS = {
    # the usual reading of separation: KS and Hellinger above 0.5, Fisher above 1, intra < inter
    "score_ks": 0.5,  # KS > 0.5: class score distributions are separated
    "score_hellinger": 0.5,
    "fisher_ratio": 1.0,  # Fisher > 1: between-class scatter exceeds within-class scatter
    "intra_inter_ratio": 1.0,  # intra < inter
    "poor_ks": 0.3,  # KS < 0.3: severe overlap (reported; see no_change)
    # heads, logits and collapse
    "collapse_rate": 0.95,  # one class takes more than this share of the predictions ...
    # calibration and scale: every share below must clear its threshold beyond sampling noise
    "interval_level": 0.95,  # two-sided level of the intervals the rules read
    "calibration_gap": 0.02,  # miscalibrated: confidence misses accuracy by this beyond noise
    "temperature_ratio": 1.25,  # calibrate_temperature: fitted T above this or below 1 / this
    "scale_factor": 2.0,  # decrease_scale: s over this factor of the calibrated scale s / T
    "increase_factor": 1.25,  # increase_scale: the calibrated scale s / T over this factor of s
    "saturation_fraction": 0.5,  # decrease_scale: saturated share above this
    "gray_zone_fraction": 0.1,  # increase_scale: gray-zone share above this
    "target_probability": 0.99,  # NormFace: a suggested scale must make this probability reachable
    "max_scale": 64.0,
    "fallback_fraction": 0.05,  # share of samples with theta + m > pi (ArcFace fallback)
    "untrained_angle_gap": 15.0,  # degrees; two-class heads: see _untrained_evidence_holds
    "compare_tolerance": None,  # None: each metric's gate tolerance, as diagnose --baseline
}

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}

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
    rel = report.sections.get("reliability") if isinstance(report.sections, dict) else None
    mean = var = 0.0
    if isinstance(rel, dict) and rel.get("count") and rel.get("accuracy"):
        counts = np.asarray(rel["count"], dtype=float)
        acc = np.nan_to_num(np.asarray(rel["accuracy"], dtype=float))
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
    rel = report.sections.get("reliability") if isinstance(report.sections, dict) else None
    if not (isinstance(rel, dict) and rel.get("count") and rel.get("confidence")):
        return None
    counts = np.asarray(rel["count"], dtype=float)
    conf = np.nan_to_num(np.asarray(rel["confidence"], dtype=float))
    acc = np.nan_to_num(np.asarray(rel["accuracy"], dtype=float))
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
    try:
        data = json.loads(TRACK_RECORD_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    rules = data.get("rules") if isinstance(data, dict) else None
    return rules if isinstance(rules, dict) else {}


def _track_record(rule: str) -> dict:
    found = track_records().get(rule) or {}
    record = {"rule": rule}
    for key in ("fired", "target", "target_improved", "task_not_worse"):
        record[key] = found.get(key, "" if key == "target" else 0)
    return record


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


# ----------------------------------------------------------------------------------------------
# Rules.
# ----------------------------------------------------------------------------------------------


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
# that learned little beyond the class prior does
PRIOR = 1.5


def _collapse(report: Report, t: dict) -> dict | None:
    """Evidence that predictions collapsed onto one class while the labels did not: the
    predicted share beyond ``collapse_rate`` by its Wilson interval; ``onto_commonest_label``
    is 1 when that class is the commonest label by a factor of ``PRIOR`` over the next."""
    rate, level = t["collapse_rate"], t["interval_level"]
    pred, lab = _get(report, "pred_positive_rate"), _get(report, "label_positive_rate")
    n = _get(report, "n")
    if _finite(pred, lab):
        low, high = wilson_interval(pred, n, level) if _finite(n) else (pred, pred)
        if (low > rate or high < 1 - rate) and 1 - rate < lab < rate:
            return {
                "pred_positive_rate": {
                    "value": pred,
                    "interval": [low, high],
                    "threshold": rate,
                    "op": "> or < 1 -",
                },
                "label_positive_rate": {"value": lab},
                "onto_commonest_label": {
                    "value": float(
                        (pred > 0.5) == (lab > 0.5)
                        and max(lab, 1 - lab) >= PRIOR * min(lab, 1 - lab)
                    )
                },
            }
        return None
    rows = report.sections.get("classes") or []
    if rows and all("predicted" in r for r in rows):
        total = sum(r["count"] for r in rows)
        predicted = max(rows, key=lambda r: r["predicted"])
        counts = sorted((r["count"] for r in rows), reverse=True)
        commonest = counts[0]
        clear = len(counts) < 2 or commonest >= PRIOR * counts[1]
        top_pred = predicted["predicted"] / total if total else 0
        top_label = commonest / total if total else 0
        low, high = wilson_interval(top_pred, total, level)
        if low > rate and top_label < rate:
            return {
                "top_predicted_share": {
                    "value": top_pred,
                    "interval": [low, high],
                    "threshold": rate,
                    "op": ">",
                },
                "top_label_share": {"value": top_label},
                "onto_commonest_label": {"value": float(predicted["count"] == commonest and clear)},
            }
    return None


def _temperature_usable(report: Report) -> bool:
    """A fitted temperature inside the search range (an end of it is only a bound)."""
    temp = _get(report, "fitted_temperature")
    return _finite(temp) and T_MIN * (1 + 1e-6) < temp < T_MAX * (1 - 1e-6)


def _miscalibrated(report: Report, t: dict, over: bool) -> tuple[bool, dict]:
    """Whether the outputs are over- (``over``) or underconfident beyond sampling noise by more
    than ``calibration_gap``, and the evidence: the pooled gap (:func:`calibration_gap`), or
    without a reliability section the ECE's lower bound (:func:`ece_lower_bound`)."""
    level, threshold = t["interval_level"], t["calibration_gap"]
    gap = calibration_gap(report, level)
    if gap is not None:
        ok = (gap["value"] > 0) == over and gap["beyond_noise"] > threshold
        return ok, {"calibration_gap": {**gap, "threshold": threshold, "op": ">" if over else "<"}}
    low = ece_lower_bound(report, level)
    ece = {"value": _get(report, "ece"), "lower_bound": low, "threshold": threshold, "op": ">"}
    return bool(low > threshold), {"ece": ece}


def _calibrate(report: Report, t: dict, unsure: _Unsure, has_head: bool) -> Recommendation | None:
    """calibrate_temperature: a fitted temperature away from 1 and outputs that miss the
    accuracy in that direction by more than ``calibration_gap`` beyond sampling noise."""
    temp, ece, nll = _get(report, "fitted_temperature"), _get(report, "ece"), _get(report, "nll")
    ratio = t["temperature_ratio"]
    if not (_finite(ece) and _temperature_usable(report)):
        return None
    if 1 / ratio <= temp <= ratio or ece <= t["calibration_gap"]:
        return None
    over = temp > 1
    ok, gap_ev = _miscalibrated(report, t, over)
    if not ok:
        unsure.add(
            f"the outputs look {'over' if over else 'under'}confident (ECE {ece:.3f}, fitted "
            f"temperature {temp:.2f}), but not by more than {t['calibration_gap']:g} beyond "
            f"sampling noise on {_get(report, 'n'):.0f} samples",
            **gap_ev,
        )
        return None
    evidence = {
        **gap_ev,
        "ece": {"value": ece},
        "nll": {"value": nll},
        "fitted_temperature": {
            "value": temp,
            "threshold": ratio if over else 1 / ratio,
            "op": ">" if over else "<",
        },
    }
    after = ""
    ece_t = _get(report, "ece_at_fitted_temperature")
    nll_t = _get(report, "nll_at_fitted_temperature")
    if _finite(ece_t, nll_t):
        evidence["ece_at_fitted_temperature"] = {"value": ece_t}
        evidence["nll_at_fitted_temperature"] = {"value": nll_t}
        after = f" ({ece_t:.3f} and {nll_t:.3f} once divided by T, on this data)"
    s = _get(report, "head.s")
    if has_head and _finite(_get(report, "fitted_scale")):
        evidence["fitted_scale"] = _ev(report, "fitted_scale")
        how = (
            f"for the margin head, compute probabilities with s / T = {s / temp:.3g} in place "
            f"of s = {s:g}; training is unchanged"
        )
    elif report.meta.get("logit_columns") == 1:
        how = "for one logit, P = sigmoid(z / T); equivalently, scale the last layer by 1 / T"
    else:
        how = "equivalently, scale the last layer's weight and bias by 1 / T"
    g = evidence.get("calibration_gap")
    symptom = (
        f"mean confidence {g['confidence']:.3f} against accuracy {g['accuracy']:.3f}"
        if g
        else f"ECE at least {evidence['ece']['lower_bound']:.3f}"
    )
    reason = (
        f"The outputs are {'over' if over else 'under'}confident beyond sampling noise "
        f"({symptom}); ECE {ece:.3f} and NLL {nll:.3f}{after}. The temperature that fits this "
        f"data best is T = {temp:.3g}: divide the logits by T before the softmax at inference "
        f"({how}); the predicted classes do not change. Fit T on data the model was not "
        f"trained on. {_record_phrase('calibrate_temperature')}"
    )
    return _rec(
        "calibrate_temperature",
        "calibrate_temperature",
        SEVERITY["calibrate_temperature"],
        reason,
        value=float(f"{temp:.3g}"),
        evidence=evidence,
    )


def _scale(report: Report, t: dict, unsure: _Unsure, c_head: int) -> Recommendation | None:
    """decrease_scale / increase_scale from the measured symptom: saturated outputs that are
    sharper than the data supports, or a gray zone with outputs blunter than it supports. The
    suggested value is s / T, the scale at which these outputs would be calibrated (not below
    the NormFace bound when decreasing)."""
    s, temp = _get(report, "head.s"), _get(report, "fitted_temperature")
    if not (_finite(s) and s > 0 and _temperature_usable(report)):
        return None
    calibrated = s / temp
    floor = normface_scale(c_head, t["target_probability"])
    base = {
        "head.s": {"value": s},
        "fitted_temperature": {"value": temp},
        "fitted_scale": {"value": calibrated},
        "normface_scale": {"value": floor},
    }
    if temp > t["scale_factor"]:
        sat = _get(report, "saturation_fraction")
        if not (_finite(sat) and sat > t["saturation_fraction"]):
            return None
        value = min(max(calibrated, floor), t["max_scale"])
        if not s > t["scale_factor"] * value:
            return None
        sat_ev = _share_evidence(report, "saturation_fraction", t["saturation_fraction"], t)
        ok, gap_ev = _miscalibrated(report, t, over=True)
        if not (ok and sat_ev["interval"][0] > t["saturation_fraction"]):
            unsure.add(
                f"{sat:.0%} of the outputs are saturated at fitted temperature {temp:.2f}, but "
                "the saturated share or the overconfidence is within sampling noise of its "
                "threshold",
                saturation_fraction=sat_ev,
                **gap_ev,
            )
            return None
        base["fitted_temperature"].update(threshold=t["scale_factor"], op=">")
        floor_note = (
            f" (NormFace's least scale for P = {t['target_probability']:g})"
            if value == floor
            else ""
        )
        reason = (
            f"{sat:.0%} of the outputs are saturated (P within 0.001 of 0 or 1) and the fitted "
            f"temperature is {temp:.2f}: the softmax is far sharper than this data's overlap "
            f"supports. These outputs would be calibrated at s / T = {calibrated:.1f}; retrain "
            f"with s = {round(value, 1):g}{floor_note}. For calibrated probabilities without "
            f"retraining, divide the logits by T. {_record_phrase('decrease_scale')}"
        )
        return _rec(
            "decrease_scale",
            "decrease_scale",
            SEVERITY["decrease_scale"],
            reason,
            value=round(value, 1),
            evidence={**base, "saturation_fraction": sat_ev, **gap_ev},
        )
    if temp < 1 / t["increase_factor"]:
        gz = _get(report, "gray_zone_fraction")
        if not (_finite(gz) and gz > t["gray_zone_fraction"]):
            return None
        value = min(calibrated, t["max_scale"])
        if not value > s * t["increase_factor"]:
            return None
        gz_ev = _share_evidence(report, "gray_zone_fraction", t["gray_zone_fraction"], t)
        ok, gap_ev = _miscalibrated(report, t, over=False)
        if not (ok and gz_ev["interval"][0] > t["gray_zone_fraction"]):
            unsure.add(
                f"{gz:.0%} of the samples are in the gray zone at fitted temperature "
                f"{temp:.2f}, but the gray-zone share or the underconfidence is within "
                "sampling noise of its threshold",
                gray_zone_fraction=gz_ev,
                **gap_ev,
            )
            return None
        base["fitted_temperature"].update(threshold=1 / t["increase_factor"], op="<")
        reason = (
            f"{gz:.0%} of the samples are in the gray zone while the outputs are "
            f"underconfident (fitted temperature {temp:.2f} < 1: sharper probabilities fit "
            f"this data better): at s = {s:g} the softmax cannot become as confident as the "
            f"classes allow. These outputs would be calibrated at s / T = {calibrated:.1f}; "
            f"retrain with s = {round(value, 1):g}. {_record_phrase('increase_scale')}"
        )
        return _rec(
            "increase_scale",
            "increase_scale",
            SEVERITY["increase_scale"],
            reason,
            value=round(value, 1),
            evidence={**base, "gray_zone_fraction": gz_ev, **gap_ev},
        )
    return None


def _decrease_margin(report: Report, t: dict, unsure: _Unsure, m: float) -> Recommendation | None:
    fb = _get(report, "fallback_fraction")
    if not (_finite(fb) and fb > t["fallback_fraction"]):
        return None
    fb_ev = _share_evidence(report, "fallback_fraction", t["fallback_fraction"], t)
    if not fb_ev["interval"][0] > t["fallback_fraction"]:
        unsure.add(
            f"{fb:.1%} of samples are in ArcFace's fallback region, within sampling noise of "
            f"{t['fallback_fraction']:.0%}",
            fallback_fraction=fb_ev,
        )
        return None
    return _rec(
        "decrease_margin",
        "decrease_margin",
        SEVERITY["decrease_margin"],
        f"{fb:.1%} of samples have theta + m > pi, where ArcFace falls back to a linear "
        "penalty; a smaller m keeps them in the angular regime. "
        + _record_phrase("decrease_margin"),
        value=round(_margin_for_fallback(report, m), 3),
        evidence={"fallback_fraction": fb_ev, "head.m": {"value": m}},
    )


def _increase_margin(report: Report, t: dict, unsure: _Unsure, m: float) -> Recommendation | None:
    """Classes fail a separation threshold beyond sampling noise (KS by its critical value,
    Fisher and intra/inter by a 20% margin) while almost no sample is near the fallback region
    and m < 0.5."""
    fb = _get(report, "fallback_fraction")
    if m >= 0.5 or (_finite(fb) and fb >= 0.01) or _separated(report, t) is not False:
        return None
    ks_up = _ks_upper(report, "score_ks", t["interval_level"])
    fisher, ratio = _get(report, "fisher_ratio"), _get(report, "intra_inter_ratio")
    clear = (
        (_finite(ks_up) and ks_up < t["score_ks"])
        or (_finite(fisher) and fisher < 0.8 * t["fisher_ratio"])
        or (_finite(ratio) and ratio > 1.2 * t["intra_inter_ratio"])
    )
    evidence = _separation_evidence(report, t)
    if "score_ks" in evidence:
        evidence["score_ks"]["upper_bound"] = ks_up
    if not clear:
        unsure.add(
            "the classes miss a separation threshold by less than its sampling noise", **evidence
        )
        return None
    return _rec(
        "increase_margin",
        "increase_margin",
        SEVERITY["increase_margin"],
        "Classes overlap while almost no sample is near ArcFace's fallback region; a larger "
        "angular margin (the ArcFace paper's 0.5) asks for more separation. "
        + _record_phrase("increase_margin"),
        value=0.5,
        evidence=evidence,
    )


def _verdict(rec: Recommendation, comp, report: Report) -> Recommendation:
    """The comparison's recommendation with its track record. ``disable_arcface`` stays a
    warning only when the comparison judged the task metric (F1, else macro-F1) worse than the
    baseline's, beyond its tolerance and sampling noise; otherwise the margin head loses only on
    other metrics, or on none, and the advice is information, with its own record."""
    rule = rec.action
    evidence = dict(rec.evidence)
    note = ""
    if rule == "disable_arcface":
        name = next((k for k in ("f1", "macro_f1") if _finite(_get(report, k))), None)
        decision = comp.decisions.get(name) if name is not None else None
        if decision is not None:
            evidence[name] = {
                "baseline": decision.a,
                "value": decision.b,
                "decision": decision.outcome,
            }
        if decision is None or decision.outcome != "worse":
            rule = "disable_arcface_task_tied"
            note = (
                f" Its {name or 'task metric'} is not measurably worse than the baseline's "
                "(within tolerance and sampling noise): the margin head costs m and s to tune "
                "without a measured gain."
            )
    evidence["track_record"] = _track_record(rule)
    return replace(
        rec,
        severity=SEVERITY.get(rule, rec.severity),
        reason=f"{rec.reason}{note} {_record_phrase(rule)}",
        evidence=evidence,
    )


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


def recommend(
    report: Report, *, baseline: Report | None = None, thresholds: dict | None = None
) -> list[Recommendation]:
    """Advice from a report, most severe first. With ``baseline`` (e.g. the BCE model's report
    when ``report`` is the ArcFace model's), the comparison's verdict is added; a baseline of
    other classes, logits or space raises `IncomparableReports` (see `compare`).

    Every recommendation's evidence holds the measurements it used (value, threshold, op, and
    the interval where the measurement is a sampled share) and ``track_record``: how often
    following that rule improved its target on held-out data (docs/recommendations.md).
    """
    t = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    unknown = set(thresholds or {}) - set(DEFAULT_THRESHOLDS)
    if unknown:
        raise ValueError(
            f"thresholds has unknown keys {sorted(unknown)}; known: {sorted(DEFAULT_THRESHOLDS)}"
        )
    _z(t["interval_level"])
    recs: list[Recommendation] = []
    unsure = _Unsure()
    has_head = _finite(_get(report, "head.m")) and _finite(_get(report, "head.s"))
    kind = report.meta.get("head_kind")
    c_head = int(_get(report, "head.num_classes")) if has_head else 0
    leak = _get(report, "head.margin_leak")

    if leak == 1.0:
        evidence = {"head.margin_leak": {"value": 1.0, "threshold": 0.0, "op": ">"}}
        # the damage, where diagnose_model scored both ways (diagnostics/leak.py)
        score = "f1" if _finite(_get(report, "head.leak_f1_with_labels")) else "macro_f1"
        keys = [
            f"head.leak_{n}_{w}_labels" for n in (score, "accuracy") for w in ("with", "without")
        ]
        damage = ""
        if _finite(*(_get(report, k) for k in keys)):
            evidence.update({k: _ev(report, k) for k in keys})
            v, name = [_get(report, k) for k in keys], "F1" if score == "f1" else "macro-F1"
            damage = (
                f" (your validation loop, if it passes labels, reports {name} {v[0]:.3f} and "
                f"accuracy {v[2]:.3f}; the deployed model scores {name} {v[1]:.3f} and accuracy "
                f"{v[3]:.3f}, as this report's label-free metrics do)"
            )
        recs.append(
            _rec(
                "fix_eval_margin",
                "fix_eval_margin",
                "error",
                "The model's eval-mode logits change when labels are passed: the margin is "
                "applied at evaluation, so a validation loop that passes labels reports a "
                f"margin-penalised model, not the one you deploy{damage}; apply the margin only "
                "when training and labels are given.",
                evidence=evidence,
            )
        )
    if _get(report, "head.looks_untrained") == 1.0 and _untrained_evidence_holds(report, t):
        evidence = {"head.centroid_alignment": _ev(report, "head.centroid_alignment")}
        if c_head == 2:
            evidence["angle_gap"] = {
                "value": _angle_gap(report),
                "threshold": t["untrained_angle_gap"],
                "op": "<",
            }
        recs.append(
            _rec(
                "check_head",
                "check_head",
                "error",
                "The head's class weights look untrained "
                f"({report.reasons.get('head.looks_untrained', 'at their initial statistics')}); "
                "check that the checkpoint holds the trained head and that it is loaded.",
                evidence=evidence,
            )
        )
    broken = any(r.action == "check_head" for r in recs)  # the logits are not the model's
    collapse = _collapse(report, t)
    if collapse is not None and not recs:
        broken = True
        if leak == 0.0 and collapse["onto_commonest_label"]["value"] == 1.0:
            # no margin at evaluation (probed), and the class predicted is the commonest label:
            # what a model that learned little beyond the class prior does; checking a head
            # that collapsed in training does not put it right
            recs.append(
                _rec(
                    "collapse_to_prior",
                    "check_head",
                    SEVERITY["collapse_to_prior"],
                    "Predictions collapsed onto the commonest class while the labels did not, "
                    "and evaluation applies no margin (probed): the model learned little beyond "
                    "the class prior. Check that the head is the trained one; if it is, look at "
                    "the class balance, the loss, m and s. " + _record_phrase("collapse_to_prior"),
                    evidence=collapse,
                )
            )
        elif leak == 0.0:
            # no margin at evaluation (probed), and a class the labels do not favour: the head
            recs.append(
                _rec(
                    "collapse_after_probe",
                    "check_head",
                    SEVERITY["collapse_after_probe"],
                    "Predictions collapsed onto one class while the labels did not, although "
                    "evaluation applies no margin (probed): check that the head (its weights and "
                    "bias) is the trained one.",
                    evidence=collapse,
                )
            )
        elif has_head:
            recs.append(
                _rec(
                    "collapse",
                    "fix_eval_margin",
                    "error",
                    "Predictions collapsed onto one class while the labels did not; with a margin "
                    "head this is the signature of a margin applied at evaluation or a scale too "
                    "large: probe the model with probe_margin_leak and check s.",
                    evidence=collapse,
                )
            )
        else:
            recs.append(
                _rec(
                    "collapse",
                    "fix_eval_margin",
                    "warning",
                    "Predictions collapsed onto one class while the labels did not (nearly every "
                    "sample gets the same class); check that evaluation runs without the training "
                    "margin and that the head is the trained one.",
                    evidence=collapse,
                )
            )

    if not broken:
        rec = _calibrate(report, t, unsure, has_head)
        if rec is not None:
            recs.append(rec)
    two_class_margin = False
    if has_head and c_head >= 2 and not broken:
        m = _get(report, "head.m")
        rec = _scale(report, t, unsure, c_head)
        if rec is not None:
            recs.append(rec)
        if kind == "angular":
            for rule in (_decrease_margin, _increase_margin):
                if rule is _increase_margin and c_head < 3:
                    continue
                rec = rule(report, t, unsure, m)
                if rec is not None:
                    recs.append(rec)
        # No disable_arcface from one report: retraining with BCE where the two classes were
        # already separated lowered F1 (docs/recommendations.md); only the measured comparison
        # against a BCE baseline (``baseline=``, below) recommends dropping the margin.
        two_class_margin = c_head == 2
    # Overlap without a margin head gets no enable_arcface from one report: on inputs whose
    # classes overlap (noisy digits), retraining with ArcFace lowered macro-F1 and Fisher
    # (docs/recommendations.md). The overlap is reported with no_change; only a measured
    # comparison (``baseline=``) recommends keeping a margin head.
    overlap = _poorly_separated(report, t) if not has_head else None

    if baseline is not None:
        comp = compare(baseline, report, tolerance=t["compare_tolerance"])
        if comp.recommendation is not None:
            recs.append(_verdict(comp.recommendation, comp, report))

    if not any(r.severity in ("error", "warning") for r in recs):
        reason = (
            "No rule fired at warning level: the measured separation, calibration and logits "
            "give no reason to change the loss, m or s."
        )
        if overlap:
            reason = (
                "Classes overlap (Fisher < 1 or intra >= inter, and KS under 0.3), but no loss "
                "change is known to fix that: margin heads retrained on overlapping data did not "
                "do better (docs/recommendations.md), so the overlap is likely in the inputs; "
                "look at the hardest samples, or train a margin head and keep it only if "
                "compare() with this report as the baseline says so."
            )
        elif two_class_margin and baseline is None:
            reason += (
                " Two classes: a margin head adds m and s to tune for what one logit with BCE "
                "gives; keep it only if it beats a BCE baseline (recommend(report, "
                "baseline=bce_report) or diagnose compare)."
            )
        if unsure.phrases:
            reason += " Inconclusive: " + "; ".join(unsure.phrases) + "."
        evidence = overlap or _separation_evidence(report, t)
        recs.append(
            Recommendation("no_change", "info", reason, evidence={**evidence, **unsure.evidence})
        )
    elif unsure.phrases:
        # what else was seen but not told apart from sampling noise
        recs.append(
            Recommendation(
                "no_change",
                "info",
                "Besides the advice above, inconclusive: " + "; ".join(unsure.phrases) + ".",
                evidence=dict(unsure.evidence),
            )
        )
    recs.sort(key=lambda r: SEVERITY_ORDER[r.severity])
    return recs


def _angle_gap(report: Report) -> float:
    """Mean angle to the nearest other class weight minus mean angle to the true one, degrees."""
    return _get(report, "angle_nearest_other_mean") - _get(report, "angle_true_mean")


def _untrained_evidence_holds(report: Report, t: dict) -> bool:
    """Whether a low centroid alignment means an untrained head.

    With two classes the softmax depends on w_1 - w_0 only and leaves w_0 + w_1 free, so trained
    heads can point away from their class means (some trained binary heads fall under the
    alignment threshold: docs/recommendations.md). There the head must also fail to order
    the classes: a mean angle gap (nearest other minus true) under ``untrained_angle_gap``
    (the measured ranges of trained and fresh heads are in docs/recommendations.md). Weights
    missing from the checkpoint always count.
    """
    if (report.meta.get("head_info") or {}).get("missing_from_checkpoint"):
        return True
    if _get(report, "head.num_classes") != 2:
        return True
    gap = _angle_gap(report)
    return not _finite(gap) or gap < t["untrained_angle_gap"]


def _margin_for_fallback(report: Report, m: float) -> float:
    """A margin leaving about 1% of samples with theta + m > pi: pi minus the 99th percentile of
    the angle to the true class (``angle_true_p99``); m / 2 when that is no smaller."""
    candidate = m / 2
    p99 = _get(report, "angle_true_p99")
    if _finite(p99):
        theta99 = math.radians(p99)
        if 0 < math.pi - theta99 < m:
            candidate = math.pi - theta99
    return max(0.05, candidate)


def _separation_evidence(report: Report, t: dict) -> dict:
    ev = {}
    for name, op in (
        ("score_ks", ">"),
        ("score_hellinger", ">"),
        ("fisher_ratio", ">"),
        ("intra_inter_ratio", "<"),
    ):
        if _finite(_get(report, name)):
            ev[name] = _ev(report, name, t[name], op)
    return ev


def _separated(report: Report, t: dict) -> bool | None:
    """True when the separation thresholds all hold, False when one fails, None if unknown."""
    checks = []
    for name, op in (("score_ks", ">"), ("fisher_ratio", ">"), ("intra_inter_ratio", "<")):
        v = _get(report, name)
        if _finite(v):
            checks.append(v > t[name] if op == ">" else v < t[name])
    return all(checks) if checks else None


def _poorly_separated(report: Report, t: dict) -> dict | None:
    fisher, ratio = _get(report, "fisher_ratio"), _get(report, "intra_inter_ratio")
    geometry_bad = (_finite(fisher) and fisher < t["fisher_ratio"]) or (
        _finite(ratio) and ratio >= t["intra_inter_ratio"]
    )
    ks_name = "score_ks" if _finite(_get(report, "score_ks")) else "pair_ks"
    ks = _get(report, ks_name)
    if geometry_bad and _finite(ks) and ks < t["poor_ks"]:
        return {
            "fisher_ratio": _ev(report, "fisher_ratio", t["fisher_ratio"], "<"),
            "intra_inter_ratio": _ev(report, "intra_inter_ratio", t["intra_inter_ratio"], ">="),
            ks_name: _ev(report, ks_name, t["poor_ks"], "<"),
        }
    return None


# ----------------------------------------------------------------------------------------------
# Comparison and regression: one decision rule, in compare.py; its names are re-exported here.
# ----------------------------------------------------------------------------------------------

from .compare import (  # noqa: E402, F401
    COMPARE_KEYS,
    Comparison,
    DifferentData,
    IncomparableReports,
    Regression,
    check_regression,
    compare,
    data_differences,
    differences,
)
