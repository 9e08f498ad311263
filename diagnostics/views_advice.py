"""Advice on multi-view (fusion) models, from a views report (views_report.py).

Two rules, each with the measured track record that benchmarks/views_check.py writes into
``views_track_record.json`` (docs/recommendations.md, "Multi-view and fusion models"):

- ``raise_attention_balance``: the attention has settled on one view (the balance gap,
  sum_v |mean weight - 1/V|, is above ``balance_gap`` beyond its interval) while the neglected
  view, alone, retrieves the right class nearly as well as the favoured one (its recall@1 at
  least ``neglected_recall_ratio`` of the favoured view's): the gate ignores a view that
  carries information. Raise the attention balance/diversity weight (``w_attention`` of
  FusionLoss); the suggested value is ``balance_factor`` times the current one when the caller
  states it (0.05 from 0).
- ``prefer_single_view``: fusion does not measurably help: the fusion gain's interval on EER
  (and on recall@1 when there is one) does not lie on the better side of 0. The best single
  view is as good as the fused model on these data; the simpler model does the same job.

A rule is a warning when its track record, over at least 20 models where it fired, shows 90%
target improved and 80% task not worse; otherwise it is information.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

from .report import Recommendation, Report
from .track_records import read_rules, rule_counts

TRACK_RECORD_FILE = Path(__file__).with_name("views_track_record.json")

VIEW_THRESHOLDS = {
    "balance_gap": 0.4,  # sum_v |mean_v - 1/V| above this beyond its interval (2 views: 0.7/0.3)
    "neglected_recall_ratio": 0.7,  # the neglected view's recall@1 over the favoured view's
    "balance_factor": 4.0,  # suggested w_attention: this times the current one
    "interval_level": 0.95,
}
VIEW_RULES = ("raise_attention_balance", "prefer_single_view")
GOAL_TARGET, GOAL_TASK = 0.9, 0.8  # a warning needs these shares in its track record
SATURATED = 0.95  # share of degenerate samples above which the gate counts as saturated
MIN_FIRED = 20  # ... over at least this many models; fewer are no evidence either way


@lru_cache(maxsize=1)
def track_records() -> dict:
    """rule -> {"fired", "target", "target_improved", "task_not_worse"} as views_check.py
    wrote them; empty when the file is missing or unreadable."""
    return read_rules(TRACK_RECORD_FILE)


def _record(rule: str) -> dict:
    return rule_counts(track_records(), rule)


def severity(rule: str) -> str:
    """warning when the rule's track record meets the goal over at least MIN_FIRED models,
    else info."""
    r = _record(rule)
    if r["fired"] < MIN_FIRED:
        return "info"
    ok = (
        r["target_improved"] >= GOAL_TARGET * r["fired"]
        and r["task_not_worse"] >= GOAL_TASK * r["fired"]
    )
    return "warning" if ok else "info"


def _phrase(rule: str) -> str:
    r = _record(rule)
    if not r["fired"]:
        return "It has no track record yet."
    return (
        f"Track record: of {r['fired']} models where it fired, following it improved "
        f"{r['target'] or 'its target'} on held-out data for {r['target_improved']} and left "
        f"the task not worse for {r['task_not_worse']}."
    )


def _get(report: Report, key: str) -> float:
    v = report.metrics.get(key)
    return float(v) if v is not None and math.isfinite(v) else math.nan


def _ev(report: Report, key: str, threshold=None, op=None) -> dict:
    out = {"value": _get(report, key)}
    if key in report.intervals:
        out["interval"] = list(report.intervals[key])
    if threshold is not None:
        out.update(threshold=threshold, op=op)
    return out


def recommend_views(
    report: Report, *, thresholds: dict | None = None, w_attention: float | None = None
) -> list[Recommendation]:
    """The views rules' advice on a views report (empty for a report without views).
    ``w_attention``: the current attention weight, for the suggested value."""
    t = {**VIEW_THRESHOLDS, **(thresholds or {})}
    unknown = set(thresholds or {}) - set(VIEW_THRESHOLDS)
    if unknown:
        raise ValueError(
            f"thresholds has unknown keys {sorted(unknown)}; known: {sorted(VIEW_THRESHOLDS)}"
        )
    section = report.sections.get("views")
    if not section:
        return []
    recs = []
    rec = attention_rule(report, section, t, w_attention)
    if rec is not None:
        recs.append(rec)
    rec = single_view_rule(report, section)
    if rec is not None:
        recs.append(rec)
    return recs


def attention_rule(report, section, t, w_attention=None) -> Recommendation | None:
    att = section.get("attention")
    if not att or len(att["views"]) < 2:
        return None
    views = att["views"]
    favoured = max(views, key=lambda v: att["mean"][v])
    neglected = min(views, key=lambda v: att["mean"][v])
    gap = att["balance_gap"]
    gap_low = report.intervals.get("attention.balance_gap", (gap, gap))[0]
    r_fav = _get(report, f"views.{favoured}.recall_at_1")
    r_neg = _get(report, f"views.{neglected}.recall_at_1")
    if not gap_low > t["balance_gap"] or not r_neg >= t["neglected_recall_ratio"] * r_fav:
        return None
    rule = "raise_attention_balance"
    value = None if w_attention is None else float(w_attention) * t["balance_factor"]
    if w_attention == 0:
        value = 0.05
    evidence = {
        "attention.balance_gap": _ev(report, "attention.balance_gap", t["balance_gap"], ">"),
        "attention.degenerate_fraction": _ev(report, "attention.degenerate_fraction"),
        f"views.{neglected}.recall_at_1": _ev(report, f"views.{neglected}.recall_at_1"),
        f"views.{favoured}.recall_at_1": _ev(report, f"views.{favoured}.recall_at_1"),
        "neglected_recall_ratio": {
            "value": r_neg / r_fav if r_fav > 0 else math.nan,
            "threshold": t["neglected_recall_ratio"],
            "op": ">=",
        },
        "track_record": _record(rule),
    }
    reason = (
        f"The attention gives {favoured!r} a mean weight of {att['mean'][favoured]:.2f} "
        f"(balance gap {gap:.2f}, beyond {t['balance_gap']:g}; "
        f"{att['degenerate_fraction']:.0%} of samples put over {att['threshold']:g} on one "
        f"view), yet {neglected!r} alone retrieves the right class nearly as well "
        f"(recall@1 {r_neg:.3f} vs {r_fav:.3f}): the gate ignores a view that carries "
        "information. Raise the attention balance weight (FusionLoss w_attention). "
        + (
            "Nearly every sample's weight is saturated on one view: there, a larger weight did "
            "not move the gate in the measurements (its softmax passes almost no gradient). "
            if att["degenerate_fraction"] > SATURATED
            else ""
        )
        + _phrase(rule)
    )
    return Recommendation(rule, severity(rule), reason, value, evidence)


def single_view_rule(report, section) -> Recommendation | None:
    gains = section.get("fusion_gain") or {}
    judged = [k for k in ("eer", "recall_at_1") if k in gains and _finite_interval(gains[k])]
    if "eer" not in judged:
        return None
    if any(gains[k]["verdict"] == "better" for k in judged):
        return None
    rule = "prefer_single_view"
    best = gains["eer"]["best_view"]
    evidence = {
        f"fusion_gain.{k}": {
            **_ev(report, f"fusion_gain.{k}"),
            "best_view": gains[k]["best_view"],
            "verdict": gains[k]["verdict"],
        }
        for k in judged
    }
    evidence["track_record"] = _record(rule)
    shown = ", ".join(
        f"{k} {gains[k]['gain']:+.3f} [{gains[k]['interval'][0]:+.3f}, "
        f"{gains[k]['interval'][1]:+.3f}]"
        for k in judged
    )
    reason = (
        f"Fusion does not measurably beat the best single view ({best!r}): fused minus best "
        f"{shown}, intervals not on the better side of 0. On these data the single view is as "
        "good, and the simpler model does the same job. " + _phrase(rule)
    )
    return Recommendation(rule, severity(rule), reason, None, evidence)


def _finite_interval(g: dict) -> bool:
    lo, hi = g["interval"]
    return math.isfinite(lo) and math.isfinite(hi)
