import math

import pytest

from embscope.diagnostics import (
    DEFAULT_THRESHOLDS,
    Report,
    adacos_scale,
    check_regression,
    compare,
    normface_scale,
    recommend,
)


def _report(**metrics):
    return Report(metrics={k: float(v) for k, v in metrics.items()}, meta={"head_kind": None})


def test_normface_and_adacos_by_hand():
    # C = 2, P = 0.99: (1/2) log(99)
    assert normface_scale(2, 0.99) == pytest.approx(0.5 * math.log(99))
    assert normface_scale(10, 0.9) == pytest.approx(0.9 * math.log(81))
    assert adacos_scale(2) == 0.0
    assert adacos_scale(1001) == pytest.approx(math.sqrt(2) * math.log(1000))


def test_regression_uses_direction_and_tolerance():
    base = _report(f1=0.90, eer=0.05, n=100, fisher_ratio=3.0)
    same = _report(f1=0.895, eer=0.055, n=50, fisher_ratio=2.95)
    assert check_regression(same, base, tolerance=0.02) == []
    worse = _report(f1=0.80, eer=0.10, n=100, fisher_ratio=2.0)
    names = {r.name for r in check_regression(worse, base, tolerance=0.02)}
    assert names == {"f1", "eer", "fisher_ratio"}  # n has no direction
    # fisher 3.0 -> 2.0: relative tolerance 0.5 * 3 = 1.5 lets it pass
    assert "fisher_ratio" not in {r.name for r in check_regression(worse, base, tolerance=0.5)}
    per_metric = check_regression(worse, base, tolerance={"*": 0.5, "eer": 0.01})
    assert {r.name for r in per_metric} == {"eer"}
    gone = check_regression(_report(f1=float("nan")), _report(f1=0.9))
    assert gone[0].name == "f1" and "f1" in str(gone[0])


def test_better_metrics_are_no_regression():
    base = _report(f1=0.5, eer=0.3)
    assert check_regression(_report(f1=0.9, eer=0.1), base) == []


def test_compare_verdicts():
    bce = _report(f1=0.80, score_ks=0.60, fisher_ratio=1.2, eer=0.10)
    arc_better = _report(
        f1=0.86, score_ks=0.70, fisher_ratio=1.5, eer=0.08, **{"head.m": 0.2, "head.s": 8}
    )
    arc_worse = _report(
        f1=0.70, score_ks=0.62, fisher_ratio=1.1, eer=0.12, **{"head.m": 0.2, "head.s": 8}
    )
    c = compare(bce, arc_better, tolerance=0.01)
    assert c.verdict == "keep_arcface" and set(c.wins) == {"f1", "score_ks", "fisher_ratio", "eer"}
    # by default each metric's gate tolerance: fisher_ratio (+0.3 of 1.2, tolerance 0.5
    # relative) and eer (-0.02, tolerance 0.03) move less than another seed would
    default = compare(bce, arc_better)
    assert default.verdict == "keep_arcface" and set(default.wins) == {"f1", "score_ks"}
    assert compare(bce, arc_worse).verdict == "disable_arcface"
    assert compare(bce, arc_worse).recommendation.action == "disable_arcface"
    assert compare(bce, bce).verdict == "no_difference"
    assert (
        compare(
            arc_worse.__class__(metrics=dict(bce.metrics)), _report(f1=0.9, score_ks=0.7)
        ).verdict
        == "b_better"
    )
    assert "| f1 |" in c.to_markdown()
    assert c.to_dict()["deltas"]["f1"]["delta"] == pytest.approx(0.06)


def test_recommend_with_baseline_adds_the_verdict():
    bce = _report(f1=0.80, score_ks=0.60)
    arc = _report(f1=0.70, score_ks=0.50, **{"head.m": 0.2, "head.s": 8, "head.num_classes": 2})
    actions = [r.action for r in recommend(arc, baseline=bce)]
    assert "disable_arcface" in actions


def test_no_change_when_all_thresholds_hold():
    good = _report(score_ks=0.9, fisher_ratio=3.0, intra_inter_ratio=0.4, num_classes=2)
    (rec,) = recommend(good)
    assert rec.action == "no_change" and rec.severity == "info"
    assert rec.evidence["score_ks"] == {"value": 0.9, "threshold": 0.5, "op": ">"}


def test_overlap_without_a_head_is_reported_not_fixed_with_arcface():
    # benchmarks/advice_check.py: ArcFace retrained on overlapping (noisy) classes did worse, so
    # one report recommends no margin head; the overlap and its thresholds are the evidence
    poor = _report(score_ks=0.2, fisher_ratio=0.3, intra_inter_ratio=1.05, num_classes=10)
    (rec,) = recommend(poor)
    assert rec.action == "no_change" and rec.severity == "info"
    assert "overlap" in rec.reason
    assert rec.evidence["score_ks"]["threshold"] == DEFAULT_THRESHOLDS["poor_ks"]
    # the thresholds are configurable
    (loose,) = recommend(poor, thresholds={"poor_ks": 0.1})
    assert "overlap" not in loose.reason
    assert loose.evidence["score_ks"]["threshold"] == DEFAULT_THRESHOLDS["score_ks"]
    with pytest.raises(ValueError, match="thresholds has unknown keys"):
        recommend(poor, thresholds={"ks": 0.1})


def test_two_class_margin_head_is_compared_not_disabled_from_one_report():
    arc = _report(
        score_ks=0.9,
        fisher_ratio=3.0,
        intra_inter_ratio=0.4,
        **{"head.m": 0.2, "head.s": 4, "head.num_classes": 2},  # s within 2x of NormFace's 2.3
    )
    actions = [r.action for r in recommend(arc)]
    assert "disable_arcface" not in actions
    assert "BCE baseline" in recommend(arc)[-1].reason


def test_scale_rules_follow_the_measured_angles():
    base = {
        "head.m": 0.2,
        "head.num_classes": 2,
        "angle_true_mean": 30.0,
        "angle_nearest_other_mean": 120.0,
    }
    # s* = log(99) / (cos 30 - cos 120) = 4.595 / 1.366 = 3.36
    s_star = math.log(99) / (math.cos(math.radians(30)) - math.cos(math.radians(120)))
    big = recommend(_report(**base, **{"head.s": 64}))
    dec = next(r for r in big if r.action == "decrease_scale")
    assert dec.value == pytest.approx(round(s_star, 1))
    small = recommend(
        _report(
            **{
                **base,
                "head.num_classes": 1000,
                "angle_true_mean": 60.0,
                "angle_nearest_other_mean": 80.0,
            },
            **{"head.s": 2},
        )
    )
    assert any(r.action == "increase_scale" for r in small)
    fine = recommend(_report(**base, **{"head.s": 4}))
    assert not any(r.action in ("decrease_scale", "increase_scale") for r in fine)


def test_margin_leak_is_an_error_first():
    r = Report(metrics={"head.margin_leak": 1.0, "score_ks": 0.9}, meta={})
    first = recommend(r)[0]
    assert (first.action, first.severity) == ("fix_eval_margin", "error")


def test_check_head_on_two_classes_needs_unordered_angles_too():
    # a trained two-class head may point away from its class means (only w1 - w0 is trained):
    # low alignment alone is no evidence there, unless the angles do not order the classes
    def head_report(gap, classes=2, missing=False):
        metrics = {
            "head.m": 0.2,
            "head.s": 4.0,
            "head.num_classes": classes,
            "head.looks_untrained": 1.0,
            "head.centroid_alignment": -0.1,
            "angle_true_mean": 80.0,
            "angle_nearest_other_mean": 80.0 + gap,
        }
        meta = {"head_kind": "angular", "head_info": {"missing_from_checkpoint": missing}}
        return Report(metrics=metrics, meta=meta)

    def actions(r):
        return [x.action for x in recommend(r)]

    threshold = DEFAULT_THRESHOLDS["untrained_angle_gap"]
    assert "check_head" not in actions(head_report(threshold + 1))
    flagged = recommend(head_report(threshold - 1))[0]
    assert flagged.action == "check_head"
    assert flagged.evidence["angle_gap"] == {
        "value": pytest.approx(threshold - 1),
        "threshold": threshold,
        "op": "<",
    }
    assert actions(head_report(40.0, missing=True))[0] == "check_head"
    assert actions(head_report(40.0, classes=10))[0] == "check_head"
    loose = recommend(head_report(threshold - 1), thresholds={"untrained_angle_gap": 0.0})
    assert "check_head" not in [x.action for x in loose]
