"""Recommendations with their evidence, A/B comparison of two reports, and regression checks.

The rules, their thresholds and the papers behind them are documented in
docs/recommendations.md; every threshold can be overridden through ``thresholds``.
"""

from __future__ import annotations

import math

from .report import Recommendation, Report

NAN = float("nan")

ACTIONS = (
    "fix_eval_margin",
    "check_head",
    "disable_arcface",
    "enable_arcface",
    "decrease_scale",
    "increase_scale",
    "decrease_margin",
    "increase_margin",
    "no_change",
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
    "target_probability": 0.99,  # NormFace / AdaCos: probability the scale must make reachable
    "scale_factor": 2.0,  # s beyond this factor of the suggested scale is flagged
    "fallback_fraction": 0.05,  # share of samples with theta + m > pi (ArcFace fallback)
    "max_scale": 64.0,
    "untrained_angle_gap": 15.0,  # degrees; two-class heads: see _untrained_evidence_holds
    "compare_tolerance": None,  # None: each metric's gate tolerance, as diagnose --baseline
}

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def _get(report: Report, name: str) -> float:
    v = report.metrics.get(name, NAN)
    return float(v) if v is not None else NAN


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _ev(report: Report, name: str, threshold=None, op: str | None = None) -> dict:
    e = {"value": _get(report, name)}
    if threshold is not None:
        e["threshold"] = threshold
        e["op"] = op
    return e


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


def suggested_scale(report: Report, target_probability: float = 0.99) -> tuple[float, str]:
    """The scale at which a sample at the measured mean angles (to its class weight, and to the
    nearest other) gets probability P when the other C - 1 classes sit at that nearest angle:
    s = log((C - 1) P / (1 - P)) / (cos theta_true - cos theta_other), AdaCos's idea of sizing
    s from the observed angles; bounded below by the NormFace scale."""
    c = int(_get(report, "head.num_classes")) if _finite(_get(report, "head.num_classes")) else 0
    if c < 2:
        return NAN, "needs a head with at least two classes"
    floor = normface_scale(c, target_probability)
    t, o = _get(report, "angle_true_mean"), _get(report, "angle_nearest_other_mean")
    if _finite(t, o):
        gap = math.cos(math.radians(t)) - math.cos(math.radians(o))
        if gap > 0.05:
            s = math.log((c - 1) * target_probability / (1 - target_probability)) / gap
            return max(floor, s), (
                f"log((C-1)P/(1-P)) / (cos {t:.1f} deg - cos {o:.1f} deg) with P = {target_probability}"
            )
    return max(floor, adacos_scale(c)), "NormFace bound (angles do not separate the classes)"


def _collapse(report: Report, t: dict) -> dict | None:
    """Evidence that predictions collapsed onto one class while the labels did not."""
    rate = t["collapse_rate"]
    pred, lab = _get(report, "pred_positive_rate"), _get(report, "label_positive_rate")
    if _finite(pred, lab):
        if (pred > rate or pred < 1 - rate) and 1 - rate < lab < rate:
            return {
                "pred_positive_rate": {"value": pred, "threshold": rate, "op": "> or < 1 -"},
                "label_positive_rate": {"value": lab},
            }
        return None
    rows = report.sections.get("classes") or []
    if rows and all("predicted" in r for r in rows):
        n = sum(r["count"] for r in rows)
        top_pred = max(r["predicted"] for r in rows) / n if n else 0
        top_label = max(r["count"] for r in rows) / n if n else 0
        if top_pred > rate and top_label < rate:
            return {
                "top_predicted_share": {"value": top_pred, "threshold": rate, "op": ">"},
                "top_label_share": {"value": top_label},
            }
    return None


def recommend(
    report: Report, *, baseline: Report | None = None, thresholds: dict | None = None
) -> list[Recommendation]:
    """Advice from a report, most severe first. With ``baseline`` (e.g. the BCE model's report
    when ``report`` is the ArcFace model's), the comparison's verdict is added; a baseline of
    other classes, logits or space raises `IncomparableReports` (see `compare`)."""
    t = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    unknown = set(thresholds or {}) - set(DEFAULT_THRESHOLDS)
    if unknown:
        raise ValueError(
            f"thresholds has unknown keys {sorted(unknown)}; known: {sorted(DEFAULT_THRESHOLDS)}"
        )
    recs: list[Recommendation] = []
    has_head = _finite(_get(report, "head.m")) and _finite(_get(report, "head.s"))
    kind = report.meta.get("head_kind")
    c_head = int(_get(report, "head.num_classes")) if has_head else 0
    leak = _get(report, "head.margin_leak")
    two_class_margin = False

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
            Recommendation(
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
            Recommendation(
                "check_head",
                "error",
                "The head's class weights look untrained "
                f"({report.reasons.get('head.looks_untrained', 'at their initial statistics')}); "
                "check that the checkpoint holds the trained head and that it is loaded.",
                evidence=evidence,
            )
        )
    collapse = _collapse(report, t)
    if collapse is not None and not recs:
        if has_head and leak != 0.0:
            recs.append(
                Recommendation(
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
                Recommendation(
                    "fix_eval_margin" if leak != 0.0 else "check_head",
                    "warning",
                    "Predictions collapsed onto one class while the labels did not (nearly every "
                    "sample gets the same class); check that evaluation runs without the training "
                    "margin and that the head is the trained one.",
                    evidence=collapse,
                )
            )

    if has_head and c_head >= 2:
        s, m = _get(report, "head.s"), _get(report, "head.m")
        s_star, how = suggested_scale(report, t["target_probability"])
        s_star = min(s_star, t["max_scale"])
        ev = {
            "head.s": {"value": s},
            "suggested_scale": {"value": s_star, "how": how},
            "normface_scale": {"value": normface_scale(c_head, t["target_probability"])},
            "adacos_scale": {"value": adacos_scale(c_head)},
            "saturation_fraction": _ev(report, "saturation_fraction"),
        }
        if _finite(s_star) and s > t["scale_factor"] * s_star:
            recs.append(
                Recommendation(
                    "decrease_scale",
                    "warning",
                    f"s = {s:g} is over {t['scale_factor']:g}x the scale the measured angles need "
                    f"({s_star:.1f}); an oversized scale saturates the softmax and hides the gray "
                    "zone"
                    + (" (AdaCos's scale is 0 for two classes)" if c_head == 2 else "")
                    + ".",
                    value=round(s_star, 1),
                    evidence=ev,
                )
            )
        elif _finite(s_star) and s < s_star / t["scale_factor"]:
            recs.append(
                Recommendation(
                    "increase_scale",
                    "warning",
                    f"s = {s:g} is under 1/{t['scale_factor']:g} of the scale needed to reach "
                    f"P = {t['target_probability']} at the measured angles ({s_star:.1f}); the loss "
                    "cannot become confident and keeps pulling every sample.",
                    value=round(s_star, 1),
                    evidence=ev,
                )
            )
        fb = _get(report, "fallback_fraction")
        if kind == "angular" and _finite(fb) and fb > t["fallback_fraction"]:
            recs.append(
                Recommendation(
                    "decrease_margin",
                    "warning",
                    f"{fb:.1%} of samples have theta + m > pi, where ArcFace falls back to a "
                    "linear penalty; a smaller m keeps them in the angular regime.",
                    value=round(_margin_for_fallback(report, m), 3),
                    evidence={
                        "fallback_fraction": _ev(
                            report, "fallback_fraction", t["fallback_fraction"], ">"
                        ),
                        "head.m": {"value": m},
                    },
                )
            )
        separated = _separated(report, t)
        # No disable_arcface from one report: retraining with BCE where the two classes were
        # already separated lowered F1 (benchmarks/advice_check.py); only the measured comparison
        # against a BCE baseline (``baseline=``, below) recommends dropping the margin.
        two_class_margin = c_head == 2
        if (
            kind == "angular"
            and c_head >= 3
            and separated is False
            and (not _finite(fb) or fb < 0.01)
            and m < 0.5
        ):
            recs.append(
                Recommendation(
                    "increase_margin",
                    "warning",
                    "Classes overlap while almost no sample is near ArcFace's fallback region; a "
                    "larger angular margin (the ArcFace paper's 0.5) asks for more separation.",
                    value=0.5,
                    evidence=_separation_evidence(report, t),
                )
            )
    # Overlap without a margin head gets no enable_arcface from one report: on inputs whose
    # classes overlap (noisy digits), retraining with ArcFace lowered macro-F1 and Fisher
    # (benchmarks/advice_check.py). The overlap is reported with no_change; only a measured
    # comparison (``baseline=``) recommends keeping a margin head.
    overlap = _poorly_separated(report, t) if not has_head else None

    if baseline is not None:
        comp = compare(baseline, report, tolerance=t["compare_tolerance"])
        if comp.recommendation is not None:
            recs.append(comp.recommendation)

    if not any(r.severity in ("error", "warning") for r in recs):
        reason = (
            "No rule fired at warning level: the measured separation and logits give no "
            "reason to change the loss, m or s."
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
        recs.append(
            Recommendation(
                "no_change",
                "info",
                reason,
                evidence=overlap or _separation_evidence(report, t),
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
