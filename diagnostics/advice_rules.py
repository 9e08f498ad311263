"""The single-report recommendation rules: collapse, calibration, scale and margin, and the
separation checks they share. `advice.recommend` runs them in order and owns the thresholds."""

from __future__ import annotations

import math

from .advice_evidence import (
    SEVERITY,
    _ev,
    _ks_upper,
    _rec,
    _record_phrase,
    _share_evidence,
    _Unsure,
    calibration_gap,
    ece_lower_bound,
    normface_scale,
    wilson_interval,
)
from .calibration import T_MAX, T_MIN
from .compare import _finite, _get
from .report import Recommendation, Report
from .sections import ClassTable

# that learned little beyond the class prior does
PRIOR = 1.5


def _collapse_evidence(predicted: tuple, rate: float, labels: tuple, onto: bool) -> dict:
    """The collapse rule's evidence, binary or multi-class: ``predicted`` = (key, share,
    interval, op) against ``rate``, ``labels`` = (key, the labels' share), and
    ``onto_commonest_label``."""
    key, share, (low, high), op = predicted
    return {
        key: {"value": share, "interval": [low, high], "threshold": rate, "op": op},
        labels[0]: {"value": labels[1]},
        "onto_commonest_label": {"value": float(onto)},
    }


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
            onto = (pred > 0.5) == (lab > 0.5) and max(lab, 1 - lab) >= PRIOR * min(lab, 1 - lab)
            predicted = ("pred_positive_rate", pred, (low, high), "> or < 1 -")
            return _collapse_evidence(predicted, rate, ("label_positive_rate", lab), onto)
        return None
    table = report.sections.get("classes")
    rows = table.rows if isinstance(table, ClassTable) else ()
    if rows and all(r.predicted is not None for r in rows):
        total = sum(r.count for r in rows)
        predicted = max(rows, key=lambda r: r.predicted)
        counts = sorted((r.count for r in rows), reverse=True)
        commonest = counts[0]
        clear = len(counts) < 2 or commonest >= PRIOR * counts[1]
        top_pred = predicted.predicted / total if total else 0
        top_label = commonest / total if total else 0
        low, high = wilson_interval(top_pred, total, level)
        if low > rate and top_label < rate:
            onto = predicted.count == commonest and clear
            share = ("top_predicted_share", top_pred, (low, high), ">")
            return _collapse_evidence(share, rate, ("top_label_share", top_label), onto)
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
        "ece": {"value": ece},
        **gap_ev,  # without a reliability section, "ece" with its lower bound
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


def _sure_symptom(
    report: Report, t: dict, unsure: _Unsure, key: str, over: bool, seen: str
) -> tuple[dict, dict] | None:
    """(share evidence, calibration-gap evidence) when the share ``key`` exceeds its threshold
    ``t[key]`` by its interval and the outputs are over- (``over``) or underconfident beyond
    noise; otherwise ``seen`` and that evidence go to ``unsure`` and the answer is None."""
    share_ev = _share_evidence(report, key, t[key], t)
    ok, gap_ev = _miscalibrated(report, t, over=over)
    if ok and share_ev["interval"][0] > t[key]:
        return share_ev, gap_ev
    unsure.add(seen, **{key: share_ev}, **gap_ev)
    return None


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
        seen = (
            f"{sat:.0%} of the outputs are saturated at fitted temperature {temp:.2f}, but "
            "the saturated share or the overconfidence is within sampling noise of its threshold"
        )
        sure = _sure_symptom(report, t, unsure, "saturation_fraction", True, seen)
        if sure is None:
            return None
        sat_ev, gap_ev = sure
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
        seen = (
            f"{gz:.0%} of the samples are in the gray zone at fitted temperature {temp:.2f}, "
            "but the gray-zone share or the underconfidence is within sampling noise of its "
            "threshold"
        )
        sure = _sure_symptom(report, t, unsure, "gray_zone_fraction", False, seen)
        if sure is None:
            return None
        gz_ev, gap_ev = sure
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
