"""Recommendations with their evidence, A/B comparison of two reports, and regression checks.

The rules, their thresholds and the papers behind them are documented in
docs/recommendations.md; every threshold can be overridden through ``thresholds``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .registry import compared_keys
from .report import Recommendation, Report, direction

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
    "compare_tolerance": 0.01,  # deltas smaller than this (absolute, or relative above 1) tie
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
# Comparison and regression.
# ----------------------------------------------------------------------------------------------

# scale-free metrics that a change of loss head leaves comparable
COMPARE_KEYS = compared_keys()  # scale-free quality metrics, from the registry


class IncomparableReports(ValueError):
    """Two reports whose metrics do not measure the same thing (other classes, logits or space).

    ``differences`` holds one phrase per difference, e.g. ``"classes: A has 10 (0..9), B has 2
    (0, 1)"``; ``str()`` joins them into one message.
    """

    def __init__(self, differences: Sequence[str], sides: tuple[str, str]) -> None:
        self.differences = list(differences)
        self.sides = sides
        super().__init__(
            f"reports {sides[0]} and {sides[1]} cannot be compared: {'; '.join(self.differences)}"
            " (pass metrics=[...] to compare the metrics you name anyway)"
        )


def differences(
    report_a: Report, report_b: Report, sides: tuple[str, str] = ("A", "B")
) -> list[str]:
    """Why the metrics of two reports are not comparable one to one; empty when they are.

    Reports differ when their class sets (the label values present), the number of classes their
    logits score (one binary logit [N] scores two, like [N, 2]; no logits at all differs from any
    logits) or their metric space (cosine, euclidean) differ. What a report does not record (a
    hand-built report without ``meta`` or class table) is not held against it.
    """
    a_name, b_name = sides
    found = []
    labels_a, labels_b = _labels(report_a), _labels(report_b)
    if labels_a is not None and labels_b is not None:
        if labels_a != labels_b:
            found.append(
                f"classes: {a_name} has {_describe_labels(labels_a)}, "
                f"{b_name} has {_describe_labels(labels_b)}"
            )
    else:
        count_a, count_b = _class_count(report_a, labels_a), _class_count(report_b, labels_b)
        if count_a is not None and count_b is not None and count_a != count_b:
            found.append(f"classes: {a_name} has {count_a:g}, {b_name} has {count_b:g}")
    meta_a, meta_b = _meta(report_a), _meta(report_b)
    if "logit_columns" in meta_a and "logit_columns" in meta_b:
        columns_a, columns_b = meta_a["logit_columns"], meta_b["logit_columns"]
        if _scored(columns_a) != _scored(columns_b):
            found.append(
                f"logits: {a_name} has {_describe_logits(columns_a)}, "
                f"{b_name} has {_describe_logits(columns_b)}"
            )
    space_a, space_b = meta_a.get("space"), meta_b.get("space")
    if space_a is not None and space_b is not None and space_a != space_b:
        found.append(f"metric space: {a_name} is {space_a}, {b_name} is {space_b}")
    return found


def _meta(report: Report) -> dict:
    return report.meta if isinstance(report.meta, dict) else {}


def _labels(report: Report) -> list | None:
    """The sorted label values of the report's class table; None without one."""
    rows = report.sections.get("classes") if isinstance(report.sections, dict) else None
    if not isinstance(rows, list) or not rows:
        return None
    if not all(isinstance(r, dict) and isinstance(r.get("label"), int) for r in rows):
        return None
    return sorted({r["label"] for r in rows})


def _class_count(report: Report, labels: list | None) -> float | None:
    if labels is not None:
        return float(len(labels))
    count = _get(report, "num_classes")
    return count if _finite(count) else None


def _describe_labels(labels: list) -> str:
    if len(labels) <= 4:
        return f"{len(labels)} ({', '.join(map(str, labels))})"
    contiguous = labels == list(range(labels[0], labels[-1] + 1))
    middle = ".." if contiguous else ", ..., "
    return f"{len(labels)} ({labels[0]}{middle}{labels[-1]})"


def _scored(columns) -> int | None:
    """Classes scored by logits of this width: None without logits, 2 for one binary logit."""
    if columns is None:
        return None
    return 2 if columns == 1 else columns


def _describe_logits(columns) -> str:
    if columns is None:
        return "no logits"
    if columns == 1:
        return "one binary logit [N]"
    return f"logits [N, {columns}]"


def _check_comparable(
    report_a: Report, report_b: Report, metrics: Sequence[str] | None, sides: tuple[str, str]
) -> list[str] | None:
    """The metrics chosen by the caller (each in both reports), or None to compare them all.

    Raises IncomparableReports when ``metrics`` is None and the reports differ (see
    `differences`), ValueError when a chosen metric is missing from a report.
    """
    if metrics is None:
        found = differences(report_a, report_b, sides)
        if found:
            raise IncomparableReports(found, sides)
        return None
    chosen = list(dict.fromkeys(metrics))
    if not chosen:
        raise ValueError("metrics is empty; name at least one metric, or pass None for all")
    for report, side in ((report_a, sides[0]), (report_b, sides[1])):
        _require_metrics(chosen, report.metrics, side)
    return chosen


def _require_metrics(names: Iterable[str], available, side: str) -> None:
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(str(name), list(available), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"report {side} has no metric {name!r}{hint}")


def _tolerance_for(name: str, base: float, tolerance) -> float:
    tol = (
        tolerance.get(name, tolerance.get("*", 0.02)) if isinstance(tolerance, dict) else tolerance
    )
    return float(tol) * max(1.0, abs(base))


@dataclass(frozen=True)
class Comparison:
    """Metric deltas B - A with the better side per metric, and a verdict.

    verdict: "keep_arcface" / "disable_arcface" when B adds a margin head over A, otherwise
    "b_better", "a_better" or "no_difference" (counting the scale-free metrics of COMPARE_KEYS,
    or the metrics the caller named).
    """

    deltas: dict
    verdict: str
    reason: str
    recommendation: Recommendation | None = None
    wins: list = field(default_factory=list)
    losses: list = field(default_factory=list)

    def to_dict(self) -> dict:
        from .report import _clean

        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "wins": self.wins,
            "losses": self.losses,
            "deltas": _clean(self.deltas),
            "recommendation": self.recommendation.to_dict() if self.recommendation else None,
        }

    def to_markdown(self) -> str:
        lines = [
            f"**Verdict: {self.verdict}**: {self.reason}",
            "",
            "| metric | A | B | B - A | better |",
            "|---|---:|---:|---:|---|",
        ]
        for k, d in self.deltas.items():
            delta = f"{d['delta']:+.4g}" if _finite(d["delta"]) else "nan"
            lines.append(f"| {k} | {d['a']:.4g} | {d['b']:.4g} | {delta} | {d['better']} |")
        return "\n".join(lines) + "\n"


def compare(
    report_a: Report,
    report_b: Report,
    *,
    tolerance: float = 0.01,
    metrics: Sequence[str] | None = None,
) -> Comparison:
    """Compare two reports (A = baseline, e.g. BCE; B = candidate, e.g. ArcFace).

    Reports of other classes, logit widths or metric spaces (see `differences`) raise
    `IncomparableReports` unless ``metrics`` names the metrics to compare; the verdict then
    counts those (with a direction) instead of COMPARE_KEYS.
    """
    chosen = _check_comparable(report_a, report_b, metrics, ("A", "B"))
    names = sorted(set(report_a.metrics) & set(report_b.metrics)) if chosen is None else chosen
    counted = set(COMPARE_KEYS) if chosen is None else set(chosen)
    deltas = {}
    wins, losses = [], []
    for name in names:
        a, b = _get(report_a, name), _get(report_b, name)
        d = direction(name)
        if not _finite(a, b):
            if chosen is not None:  # asked for: shown, never counted
                deltas[name] = {"a": a, "b": b, "delta": NAN, "direction": d, "better": "undefined"}
            continue
        better = "same"
        if d is not None and abs(b - a) > _tolerance_for(name, a, tolerance):
            better = "b" if (b > a) == (d == "higher") else "a"
        deltas[name] = {"a": a, "b": b, "delta": b - a, "direction": d, "better": better}
        if name in counted:
            (wins if better == "b" else losses if better == "a" else []).append(name)
    head_a = _finite(_get(report_a, "head.m")) and _get(report_a, "head.m") > 0
    head_b = _finite(_get(report_b, "head.m")) and _get(report_b, "head.m") > 0
    primary = next((k for k in ("f1", "macro_f1", "map_at_r") if k in deltas), None)
    primary_worse = primary is not None and deltas[primary]["better"] == "a"
    summary = f"B better on {wins or 'nothing'}, worse on {losses or 'nothing'}"
    rec = None
    if head_b and not head_a:
        keep = len(wins) > len(losses) and not primary_worse
        verdict = "keep_arcface" if keep else "disable_arcface"
        reason = (
            f"the margin head {'improves' if keep else 'does not improve'} the scale-free metrics "
            f"({summary}; tolerance {tolerance})"
        )
        rec = Recommendation(
            "enable_arcface" if keep else "disable_arcface",
            "info" if keep else "warning",
            f"Against the baseline, {reason}.",
            evidence={
                k: {"baseline": deltas[k]["a"], "value": deltas[k]["b"]} for k in wins + losses
            },
        )
    else:
        verdict = (
            "b_better"
            if len(wins) > len(losses) and not primary_worse
            else "a_better"
            if len(losses) > len(wins) or primary_worse
            else "no_difference"
        )
        reason = summary
    return Comparison(deltas, verdict, reason, rec, wins, losses)


@dataclass(frozen=True)
class Regression:
    """A metric worse than the baseline beyond its tolerance, by its direction."""

    name: str
    value: float
    baseline: float
    direction: str
    delta: float
    tolerance: float

    def to_dict(self) -> dict:
        from .report import _clean

        return _clean(self.__dict__)

    def __str__(self) -> str:
        return (
            f"{self.name}: {self.value:.4g} vs baseline {self.baseline:.4g} "
            f"({self.delta:+.4g}, {self.direction} is better, tolerance {self.tolerance:.3g})"
        )


def check_regression(
    report: Report, baseline: Report, tolerance=0.02, *, metrics: Sequence[str] | None = None
) -> list[Regression]:
    """Metrics of ``report`` worse than ``baseline`` by more than the tolerance.

    tolerance: a float, or a dict of metric -> float (key "*" for the rest). It is absolute for
    metrics whose baseline lies in [-1, 1] and relative to |baseline| beyond. A metric that was
    finite in the baseline and is nan now counts as a regression. Descriptive metrics (no
    direction) are never regressions.

    A baseline of other classes, logit widths or metric space (see `differences`) raises
    `IncomparableReports` unless ``metrics`` names the metrics to check; each named metric must
    be in both reports and have a direction (ValueError otherwise).
    """
    chosen = _check_comparable(report, baseline, metrics, ("report", "baseline"))
    if chosen is not None:
        undirected = [name for name in chosen if direction(name) is None]
        if undirected:
            raise ValueError(
                f"metrics {undirected} have no better direction, so they cannot regress"
            )
    out = []
    for name, base in baseline.metrics.items():
        if chosen is not None and name not in chosen:
            continue
        d = direction(name)
        if d is None or not _finite(base) or name not in report.metrics:
            continue
        value = _get(report, name)
        tol = _tolerance_for(name, base, tolerance)
        if not _finite(value):
            out.append(Regression(name, value, base, d, NAN, tol))
            continue
        worse = (base - value) if d == "higher" else (value - base)
        if worse > tol:
            out.append(Regression(name, value, base, d, value - base, tol))
    return out
