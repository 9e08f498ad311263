"""Recommendations with their evidence, from one report or against a baseline.

The rules, their thresholds, the papers behind them and each rule's measured track record are
documented in docs/recommendations.md; every threshold can be overridden through ``thresholds``.
The rules live in advice_rules.py, what they read besides the metrics (sampling noise, scales,
track records) in advice_evidence.py; comparison and regression in compare.py. Their public
names are re-exported here.
"""

from __future__ import annotations

from dataclasses import replace

from .advice_evidence import (  # noqa: F401  (re-exported)
    SEVERITY,
    TRACK_RECORD_FILE,
    _ev,
    _rec,
    _record_phrase,
    _track_record,
    _Unsure,
    _z,
    adacos_scale,
    calibration_gap,
    ece_lower_bound,
    normface_scale,
    track_records,
    wilson_interval,
)
from .advice_inputs import _probability_outputs, _relabelled
from .advice_rules import (
    _angle_gap,
    _calibrate,
    _collapse,
    _decrease_margin,
    _increase_margin,
    _poorly_separated,
    _scale,
    _separation_evidence,
    _untrained_evidence_holds,
)
from .compare import (  # noqa: F401  (re-exported)
    COMPARE_KEYS,
    Comparison,
    DifferentData,
    IncomparableReports,
    Regression,
    _finite,
    _get,
    check_regression,
    compare,
    data_differences,
    differences,
)
from .report import Recommendation, Report

NAN = float("nan")

ACTIONS = (
    "fix_eval_margin",
    "check_outputs",
    "check_labels",
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
    probabilities = _probability_outputs(report)
    if probabilities is not None:
        recs.append(
            Recommendation(
                "check_outputs",
                "error",
                f"The model's outputs all lie in [0, 1]{probabilities.pop('_what')}: they look "
                "like probabilities, not logits. They are read as logits (the sigmoid or softmax "
                "applied again), so accuracy, calibration and any advice from them describe other "
                "numbers: return the logits (before the sigmoid or softmax) from forward.",
                evidence=probabilities,
            )
        )
    # a margin found applied at evaluation moves every sample off its class: that, not the
    # labels, explains a swapped confusion matrix (fix_eval_margin above says so)
    relabelled = _relabelled(report) if probabilities is None and leak != 1.0 else None
    if relabelled is not None:
        also = (
            " With a margin head whose evaluation was not probed, a margin applied at evaluation "
            "can do the same: run diagnose_model (or the diagnose command) on the model itself."
            if has_head and leak != 0.0
            else ""
        )
        recs.append(
            Recommendation(
                "check_labels",
                "error",
                "Predictions are consistent but under other class indices: "
                f"{relabelled.pop('_what')}. Accuracy is {_get(report, 'accuracy'):.3f} with the "
                f"labels as given and {relabelled['accuracy_if_renamed']['value']:.3f} with the "
                "classes renamed: the labels and the model's outputs use different class orders "
                "(folder names, a label encoder, a class-index map). Fix the labels before "
                f"reading any metric here.{also}",
                evidence=relabelled,
            )
        )
    # the logits are not the model's, or not the labels' classes
    broken = any(r.action in ("check_head", "check_outputs", "check_labels") for r in recs)
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
