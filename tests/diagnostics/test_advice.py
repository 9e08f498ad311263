import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from embscope.diagnostics import (
    DEFAULT_THRESHOLDS,
    Report,
    adacos_scale,
    calibration_metrics,
    check_regression,
    compare,
    normface_scale,
    recommend,
)
from embscope.diagnostics.advice import (
    RULES,
    SEVERITY,
    TRACK_RECORD_FILE,
    calibration_gap,
    ece_lower_bound,
    track_records,
    wilson_interval,
)

NAN = float("nan")


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
    c = compare(bce, arc_better)
    # each metric against its gate tolerance: Fisher (+0.3 < 0.5) and EER (-0.02 < 0.03) tie
    assert c.verdict == "keep_arcface" and set(c.wins) == {"f1", "score_ks"}
    assert set(compare(bce, arc_better, tolerance=0.01).wins) == {
        "f1",
        "score_ks",
        "fisher_ratio",
        "eer",
    }
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


def _calibrated_report(
    n,
    confidence,
    accuracy,
    temperature,
    *,
    ece=None,
    head=None,
    classes=2,
    meta=None,
    **metrics,
):
    """A report whose reliability section holds all n samples in the bin of ``confidence``,
    with a fitted temperature and, for ``head=(m, s)``, an ArcFace head's settings."""
    index = min(int(confidence * 15), 14)
    counts = [0.0] * 15
    counts[index] = float(n)
    conf = [NAN] * 15
    conf[index] = confidence
    acc = [NAN] * 15
    acc[index] = accuracy
    values = {
        "n": n,
        "num_classes": classes,
        "accuracy": accuracy,
        "ece": abs(confidence - accuracy) if ece is None else ece,
        "nll": 0.5,
        "fitted_temperature": temperature,
        **metrics,
    }
    meta = {"head_kind": None, **(meta or {})}
    if head is not None:
        m, s = head
        values.update({"head.m": m, "head.s": s, "head.num_classes": classes})
        values["fitted_scale"] = s / temperature
        meta["head_kind"] = "angular"
    sections = {"reliability": {"edges": [], "count": counts, "confidence": conf, "accuracy": acc}}
    return Report(metrics={k: float(v) for k, v in values.items()}, sections=sections, meta=meta)


def _by_action(recs):
    return {r.action: r for r in recs}


def test_wilson_interval_equals_scipy():
    from scipy.stats import binomtest

    for k, n in ((0, 10), (3, 10), (50, 100), (477, 480), (12, 1000)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        low, high = wilson_interval(k / n, n, 0.95)
        assert low == pytest.approx(ci.low, abs=1e-9)
        assert high == pytest.approx(ci.high, abs=1e-9)
    # by hand: 0 of 10 at 95%: upper z^2 / (n + z^2)
    z = 1.959963984540054
    assert wilson_interval(0.0, 10)[1] == pytest.approx(z * z / (10 + z * z))
    assert all(math.isnan(v) for v in wilson_interval(0.5, 0))


def test_calibration_gap_pools_the_bins():
    r = _calibrated_report(400, 0.99, 0.85, 5.0)
    gap = calibration_gap(r)
    assert gap["value"] == pytest.approx(0.14)
    low, high = wilson_interval(0.85, 400)
    assert gap["accuracy_interval"] == pytest.approx([low, high])
    assert gap["beyond_noise"] == pytest.approx(0.99 - high)
    under = calibration_gap(_calibrated_report(400, 0.4, 0.7, 0.5))
    assert under["value"] == pytest.approx(-0.3)
    assert under["beyond_noise"] == pytest.approx(wilson_interval(0.7, 400)[0] - 0.4)
    assert calibration_gap(_report(ece=0.1, n=100)) is None


def test_ece_lower_bound_keeps_a_calibrated_model_under_the_threshold():
    # outcomes drawn at their stated confidence: a calibrated model; its ECE is noise, and the
    # bound must stay under the rules' threshold in nearly every draw
    rng = np.random.default_rng(0)
    threshold = DEFAULT_THRESHOLDS["calibration_gap"]
    above = 0
    for _ in range(100):
        p = rng.uniform(0.5, 1.0, 300)
        correct = rng.random(300) < p
        z = torch.as_tensor(np.log(p / (1 - p)) * np.where(correct, 1, -1))
        res = calibration_metrics(z, torch.ones(300, dtype=torch.long))
        r = Report(metrics={"ece": res.ece, "n": 300.0}, sections={"reliability": res.reliability})
        assert ece_lower_bound(r) < res.ece
        above += ece_lower_bound(r) > threshold
    assert above <= 5


def test_calibrate_temperature_when_overconfident_beyond_noise():
    r = _calibrated_report(500, 0.99, 0.85, 4.0, head=(0.2, 8.0))
    rec = _by_action(recommend(r))["calibrate_temperature"]
    assert rec.value == pytest.approx(4.0)
    assert rec.severity == SEVERITY["calibrate_temperature"]
    assert "overconfident" in rec.reason and "s / T = 2" in rec.reason
    gap = rec.evidence["calibration_gap"]
    assert gap["value"] == pytest.approx(0.14) and gap["op"] == ">"
    assert rec.evidence["fitted_temperature"] == {"value": 4.0, "threshold": 1.25, "op": ">"}
    # a model without a head: the logit scale of the last layer
    plain = _by_action(recommend(_calibrated_report(500, 0.99, 0.85, 4.0)))
    assert "last layer" in plain["calibrate_temperature"].reason
    # underconfident outputs: T < 1
    under = _calibrated_report(500, 0.4, 0.7, 0.5, classes=10)
    rec = _by_action(recommend(under))["calibrate_temperature"]
    assert "underconfident" in rec.reason and rec.value == pytest.approx(0.5)


def test_calibrate_temperature_abstains_on_a_small_sample_and_near_one():
    small = recommend(_calibrated_report(20, 0.95, 0.85, 4.0))
    assert [r.action for r in small] == ["no_change"]
    assert "Inconclusive" in small[0].reason and "20 samples" in small[0].reason
    assert "calibration_gap" in small[0].evidence
    near_one = recommend(_calibrated_report(5000, 0.95, 0.85, 1.2))
    assert "calibrate_temperature" not in _by_action(near_one)
    assert "Inconclusive" not in near_one[-1].reason
    # the end of the temperature search is a bound, not a temperature to divide by
    edge = recommend(_calibrated_report(500, 0.99, 0.5, 100.0))
    assert "calibrate_temperature" not in _by_action(edge)


def test_decrease_scale_needs_saturation_beyond_what_the_data_allows():
    # a binary ArcFace head at s = 64 with saturated, overconfident outputs
    r = _calibrated_report(480, 0.995, 0.86, 12.0, head=(0.2, 64.0), saturation_fraction=0.93)
    rec = _by_action(recommend(r))["decrease_scale"]
    assert rec.value == pytest.approx(round(64 / 12.0, 1))
    assert rec.value < 32
    assert rec.evidence["saturation_fraction"]["interval"][0] > 0.5
    assert rec.evidence["fitted_scale"]["value"] == pytest.approx(64 / 12.0)
    # never below the NormFace bound: at T = 40, s / T = 1.6 < 2.3
    floor = _by_action(
        recommend(
            _calibrated_report(480, 0.995, 0.86, 40.0, head=(0.2, 64.0), saturation_fraction=0.93)
        )
    )["decrease_scale"]
    assert floor.value == pytest.approx(round(normface_scale(2), 1))
    # overconfident but not saturated: calibrate at inference only
    soft = _calibrated_report(480, 0.95, 0.80, 3.0, head=(0.9, 16.0), saturation_fraction=0.0)
    actions = _by_action(recommend(soft))
    assert "decrease_scale" not in actions and "calibrate_temperature" in actions


def test_calibrated_s8_gets_no_scale_advice():
    r = _calibrated_report(480, 0.93, 0.91, 1.1, head=(0.2, 8.0), saturation_fraction=0.2)
    actions = [x.action for x in recommend(r)]
    assert not {"decrease_scale", "increase_scale", "calibrate_temperature"} & set(actions)


def test_scale_rules_abstain_when_the_share_is_within_noise():
    # 55% saturated on 30 samples: the Wilson interval reaches below 50%
    r = _calibrated_report(30, 0.999, 0.6, 12.0, head=(0.2, 64.0), saturation_fraction=0.55)
    recs = recommend(r)
    assert "decrease_scale" not in _by_action(recs)
    no_change = recs[-1]
    assert no_change.action == "no_change" and "saturated" in no_change.reason
    assert no_change.evidence["saturation_fraction"]["interval"][0] < 0.5


def test_increase_scale_needs_underconfidence_not_only_a_gray_zone():
    under = _calibrated_report(
        700, 0.35, 0.6, 0.5, head=(0.3, 2.0), classes=10, gray_zone_fraction=0.4
    )
    rec = _by_action(recommend(under))["increase_scale"]
    assert rec.value == pytest.approx(4.0)
    assert rec.evidence["gray_zone_fraction"]["interval"][0] > 0.1
    # a wide gray zone from overlapping classes, outputs already overconfident: not a scale issue
    overlap = _calibrated_report(
        700, 0.45, 0.25, 1.8, head=(0.2, 2.0), classes=10, gray_zone_fraction=0.85
    )
    assert "increase_scale" not in _by_action(recommend(overlap))


def test_decrease_margin_needs_the_fallback_share_beyond_noise():
    def report(fb, n):
        return Report(
            metrics={
                "n": float(n),
                "head.m": 1.2,
                "head.s": 16.0,
                "head.num_classes": 10.0,
                "fallback_fraction": fb,
            },
            meta={"head_kind": "angular"},
        )

    rec = _by_action(recommend(report(0.2, 500)))["decrease_margin"]
    assert rec.value < 1.2 and rec.evidence["fallback_fraction"]["interval"][0] > 0.05
    unsure = recommend(report(0.08, 40))
    assert "decrease_margin" not in _by_action(unsure)
    assert "fallback" in unsure[-1].reason


def test_increase_margin_needs_a_clear_separation_failure():
    def report(fisher, ks):
        return Report(
            metrics={
                "n": 700.0,
                "num_classes": 10.0,
                "head.m": 0.1,
                "head.s": 32.0,
                "head.num_classes": 10.0,
                "fallback_fraction": 0.0,
                "fisher_ratio": fisher,
                "score_ks": ks,
                "intra_inter_ratio": 0.8,
            },
            meta={"head_kind": "angular"},
        )

    assert _by_action(recommend(report(0.4, 0.3)))["increase_margin"].value == 0.5
    close = recommend(report(0.95, 0.48))
    assert "increase_margin" not in _by_action(close)
    assert "Inconclusive" in close[-1].reason


def test_collapse_after_a_probe_points_at_the_head_unless_it_is_onto_the_prior():
    def collapsed(label_rate):
        metrics = {"n": 400.0, "pred_positive_rate": 1.0, "label_positive_rate": label_rate}
        return Report(metrics={**metrics, "head.margin_leak": 0.0}, meta={})

    balanced = _by_action(recommend(collapsed(0.505)))["check_head"]
    assert balanced.severity == "warning"
    assert balanced.evidence["track_record"]["rule"] == "collapse_after_probe"
    assert balanced.evidence["pred_positive_rate"]["interval"][0] > 0.95
    prior = _by_action(recommend(collapsed(0.75)))["check_head"]
    assert prior.severity == "info" and "class prior" in prior.reason
    assert prior.evidence["track_record"]["rule"] == "collapse_to_prior"
    # not probed: the margin at evaluation is the first suspect
    unprobed = Report(metrics={"n": 400.0, "pred_positive_rate": 1.0, "label_positive_rate": 0.5})
    assert recommend(unprobed)[0].action == "fix_eval_margin"


def test_every_recommendation_carries_its_track_record():
    shipped = json.loads(TRACK_RECORD_FILE.read_text(encoding="utf-8"))["rules"]
    reports = [
        _calibrated_report(480, 0.995, 0.86, 12.0, head=(0.2, 64.0), saturation_fraction=0.93),
        _calibrated_report(
            700, 0.35, 0.6, 0.5, head=(0.3, 2.0), classes=10, gray_zone_fraction=0.4
        ),
        Report(metrics={"head.margin_leak": 1.0, "score_ks": 0.9}, meta={}),
    ]
    seen = set()
    for r in reports:
        for rec in recommend(r):
            if rec.action == "no_change":
                assert "track_record" not in rec.evidence
                continue
            record = rec.evidence["track_record"]
            rule = record["rule"]
            seen.add(rule)
            for key in ("fired", "target_improved", "task_not_worse"):
                assert record[key] == shipped[rule][key]
            assert "track record" in rec.reason.lower() or rec.severity == "error"
            for word in ("seed", "notes", "benchmark"):
                assert word not in rec.reason.lower()
    assert {"decrease_scale", "increase_scale", "calibrate_temperature", "fix_eval_margin"} <= seen
    bce = _report(f1=0.80, score_ks=0.60)
    arc = _report(f1=0.70, score_ks=0.50, **{"head.m": 0.2, "head.s": 8, "head.num_classes": 2})
    verdict = _by_action(recommend(arc, baseline=bce))["disable_arcface"]
    assert verdict.evidence["track_record"]["fired"] == shipped["disable_arcface"]["fired"]


def test_warning_rules_meet_the_goal_of_their_track_record():
    """A rule that fires at warning or error level improved its target in at least 90% of the
    models where it fired and left the task metric not worse in at least 80% (the others are
    info); every rule has a record, written by benchmarks/advice_check.py --write."""
    shipped = json.loads(TRACK_RECORD_FILE.read_text(encoding="utf-8"))
    assert set(shipped["rules"]) == set(RULES)
    assert "--quick" not in shipped["command"]
    for rule, record in shipped["rules"].items():
        severity = SEVERITY.get(rule, "error")
        if severity == "info" or record["fired"] == 0:
            continue
        assert record["target_improved"] >= 0.9 * record["fired"], rule
        assert record["task_not_worse"] >= 0.8 * record["fired"], rule


def test_the_track_records_ship_with_the_package():
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert "track_record.json" in pyproject
    assert TRACK_RECORD_FILE.is_file() and track_records()


def _train_binary_arcface(s, noise, epochs=20):
    from embscope.demo import DigitsNet, digits_binary, train
    from embscope.diagnostics import diagnose
    from embscope.losses import ArcFaceHead

    split = digits_binary(seed=0, noise=noise)
    torch.manual_seed(0)
    model = DigitsNet(ArcFaceHead(16, 2, m=0.2, s=s))
    train(model, split, epochs=epochs, seed=0)
    model.eval()
    with torch.no_grad():
        embedding, logits = model(split.x_val)
    return diagnose(
        embedding,
        split.y_val,
        logits,
        head=model.head,
        margin_leak=False,
        pair_rows=2,
        retrieval_rows=2,
    )


def test_trained_binary_arcface_s64_saturated_gets_decrease_scale_under_32():
    r = _train_binary_arcface(64.0, noise=0.35)
    assert r.metrics["saturation_fraction"] > 0.8
    rec = _by_action(r.recommendations)["decrease_scale"]
    assert 0 < rec.value < 32


def test_trained_binary_arcface_s8_calibrated_gets_no_scale_advice():
    r = _train_binary_arcface(8.0, noise=0.0)
    assert 0.8 < r.metrics["fitted_temperature"] < 1.25
    actions = {x.action for x in r.recommendations}
    assert not {"decrease_scale", "increase_scale"} & actions


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


# ------------------------------------------------------------------------ probabilities as logits


@pytest.mark.parametrize("columns", [1, 3])
def test_probabilities_passed_as_logits_are_an_error_and_stop_the_other_rules(columns):
    """A forward that ends in a sigmoid or softmax: every output in [0, 1] (rows summing to 1).
    Read as logits they look collapsed; the advice names the cause, not the head."""
    from embscope.diagnostics import diagnose

    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 8, generator=g)
    y = torch.arange(300) % max(columns, 2)
    raw = (
        torch.randn(300, columns, generator=g)
        + 2.0 * torch.nn.functional.one_hot(y, max(columns, 2))[:, :columns]
    )
    probs = torch.sigmoid(raw[:, 0]) if columns == 1 else torch.softmax(raw, 1)
    recs = diagnose(x, y, probs, reservoir_size=0).recommendations
    assert [r.action for r in recs] == ["check_outputs"]
    assert recs[0].severity == "error"
    assert recs[0].evidence["logits.max"]["value"] <= 1.0
    # the same model's logits, or log-probabilities, are not flagged
    for z in (raw[:, 0] if columns == 1 else raw, torch.log_softmax(raw, 1)):
        if columns == 1 and z.ndim == 2:
            continue
        actions = [r.action for r in diagnose(x, y, z, reservoir_size=0).recommendations]
        assert "check_outputs" not in actions


# ------------------------------------------------------------------------ labels of other classes


def test_labels_numbered_unlike_the_outputs_are_an_error():
    """Classes 3 and 7 labelled 0 and 1 (a folder subset numbered from 0), and three classes
    whose labels are shifted by one: accuracy 0 with every class predicted consistently as
    another is the labels' class order, not the model."""
    from embscope.diagnostics import diagnose

    g = torch.Generator().manual_seed(0)
    n = 200
    y = torch.tensor([3, 7]).repeat(n // 2)
    x = torch.randn(n, 8, generator=g) + 3 * torch.nn.functional.one_hot(y, 8)
    z = torch.randn(n, 10, generator=g) + 5 * torch.nn.functional.one_hot(y, 10)
    recs = diagnose(x, (y == 7).long(), z, reservoir_size=0).recommendations
    assert [r.action for r in recs] == ["check_labels"]
    assert recs[0].evidence["accuracy_if_renamed"]["value"] > 0.95
    assert "0 as 3" in recs[0].reason and "1 as 7" in recs[0].reason
    # the right labels: no such error
    assert "check_labels" not in [r.action for r in diagnose(x, y, z).recommendations]
    y3 = torch.arange(n) % 3
    z3 = torch.randn(n, 3, generator=g) + 5 * torch.nn.functional.one_hot((y3 + 1) % 3, 3)
    assert [r.action for r in diagnose(x, y3, z3).recommendations] == ["check_labels"]
    # a collapse (every class predicted as one) is not a renaming
    z1 = torch.randn(n, 3, generator=g) + 5 * torch.nn.functional.one_hot(torch.zeros_like(y3), 3)
    assert "check_labels" not in [r.action for r in diagnose(x, y3, z1).recommendations]
    # a poor model at chance is not a renaming either
    zr = torch.randn(n, 3, generator=g)
    assert "check_labels" not in [r.action for r in diagnose(x, y3, zr).recommendations]


def test_a_margin_at_evaluation_is_not_taken_for_relabelled_classes():
    """A two-class margin head applied at evaluation pushes every sample to the other class: a
    swapped confusion matrix whose cause is the leak (fix_eval_margin), not the labels."""
    from embscope.diagnostics import Diagnoser, diagnose, probe_margin_leak
    from embscope.losses import ArcFaceHead

    g = torch.Generator().manual_seed(1)
    n = 200
    y = torch.arange(n) % 2
    w = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.75**0.5, 0.0, 0.0]])  # 60 degrees apart
    x = torch.nn.functional.normalize(w[y] + 0.05 * torch.randn(n, 4, generator=g), dim=1)
    head = ArcFaceHead(4, 2, m=1.2, s=16.0)
    with torch.no_grad():
        head.weight.copy_(w)
    z = head(x, y)  # the margin applied: every sample's own class penalised
    assert float((z.argmax(1) == y).float().mean()) < 0.2
    d = Diagnoser(head=head, margin_leak=True, reservoir_size=0)
    d.update(x, y, z)
    actions = [r.action for r in d.compute().recommendations]
    assert "fix_eval_margin" in actions and "check_labels" not in actions
    # without the probe's finding, the same logits are named with both explanations
    recs = diagnose(x, y, z, head=head, reservoir_size=0).recommendations
    labels = [r for r in recs if r.action == "check_labels"]
    assert not labels or "margin applied at evaluation" in labels[0].reason
    assert probe_margin_leak is not None
