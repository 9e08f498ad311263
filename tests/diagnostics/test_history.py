"""History: the table round trip, the trend rules on constructed runs (expectations derived by
hand or by numpy's polyfit), and order independence."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embscope.diagnostics import History, InputError, Report, diagnose
from embscope.diagnostics.history_rules import (
    judge,
    values_for_fail_on,
    weighted_slope,
    z_of,
)

from .conftest import blobs

Z = z_of(0.95)


def _report(values: dict, half_widths: dict | None = None, n: int = 500) -> Report:
    """A report of these metric values, each with the interval value +- half-width * 1.96
    (so its standard error is the half-width argument)."""
    half_widths = half_widths or {}
    metrics = {"n": float(n), **{k: float(v) for k, v in values.items()}}
    intervals = {
        k: [v - Z * half_widths[k], v + Z * half_widths[k]]
        for k, v in values.items()
        if k in half_widths
    }
    return Report(metrics=metrics, intervals=intervals, interval_level=0.95)


def _run(metric: str, values, se, *, split="val", history=None) -> History:
    history = history or History()
    for epoch, v in enumerate(values, start=1):
        history.append(_report({metric: v}, {metric: se}), epoch=epoch, split=split)
    return history


def _trend(history, rule, **options):
    found = [t for t in judge(history, **options) if t.rule == rule]
    assert len(found) == 1, [t.rule for t in judge(history, **options)]
    return found[0]


# -- the table -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_history():
    x, y = blobs(n=200, d=6, k=3, seed=0)
    g = np.random.default_rng(0)
    history = History()
    for epoch in (1, 2, 3):
        logits = g.normal(size=(200, 3)).astype(np.float32)
        logits[np.arange(200), y] += epoch
        history.append(diagnose(x, y, logits, reservoir_size=100), epoch=epoch)
    history.append(diagnose(x, y, logits, reservoir_size=100), epoch=3, split="train", step=30)
    return history


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_save_load_round_trip(real_history, tmp_path, suffix):
    path = real_history.save(tmp_path / f"history{suffix}")
    loaded = History.load(path)
    pd.testing.assert_frame_equal(loaded.to_frame(), real_history.to_frame())
    assert [t.to_dict() for t in loaded.judge()] == [t.to_dict() for t in real_history.judge()]


def test_table_keeps_every_metric_with_its_interval(real_history):
    frame = real_history.to_frame()
    assert list(frame["epoch"]) == [1, 2, 3, 3]
    assert list(frame["split"]) == ["val", "val", "val", "train"]
    assert frame["step"].iloc[-1] == 30
    report = diagnose(*blobs(n=200, d=6, k=3, seed=0), reservoir_size=100)
    for name in report.metrics:
        assert {name, f"{name}.low", f"{name}.high"} <= set(frame.columns), name
    row = frame.iloc[0]
    assert row["accuracy.low"] <= row["accuracy"] <= row["accuracy.high"]


def test_load_refuses_what_is_not_a_history(tmp_path):
    with pytest.raises(InputError, match="suffix"):
        History.load(tmp_path / "history.txt")
    with pytest.raises(InputError, match="does not exist"):
        History.load(tmp_path / "missing.csv")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not an embscope history"):
        History.load(tmp_path / "other.csv")


def test_append_checks_its_arguments():
    history = History()
    history.append(_report({"f1": 0.5}))
    history.append(_report({"f1": 0.6}))
    assert history.epochs() == [1, 2]  # default: one after the split's last epoch
    with pytest.raises(ValueError, match="already in the history"):
        history.append(_report({"f1": 0.6}), epoch=2)
    with pytest.raises(ValueError, match="split"):
        history.append(_report({"f1": 0.6}), split="test")
    with pytest.raises(TypeError, match="Report"):
        history.append({"f1": 0.6})


@settings(max_examples=30, deadline=None)
@given(st.permutations(list(range(1, 7))), st.lists(st.booleans(), min_size=6, max_size=6))
def test_append_order_does_not_change_the_table(order, with_train):
    """Appending epochs (and training reports) in any order gives the table in epoch order."""
    values = {e: 0.5 + 0.05 * e for e in range(1, 7)}

    def build(epochs):
        history = History()
        for e in epochs:
            history.append(_report({"macro_f1": values[e]}, {"macro_f1": 0.01}), epoch=e)
            if with_train[e - 1]:
                history.append(
                    _report({"macro_f1": values[e] + 0.1}, {"macro_f1": 0.01}),
                    epoch=e,
                    split="train",
                )
        return history

    in_order, shuffled = build(range(1, 7)), build(order)
    pd.testing.assert_frame_equal(shuffled.to_frame(), in_order.to_frame())
    assert list(shuffled.to_frame()["epoch"]) == sorted(shuffled.to_frame()["epoch"])
    assert [t.to_dict() for t in shuffled.judge()] == [t.to_dict() for t in in_order.judge()]


# -- slopes ----------------------------------------------------------------------------------


def test_weighted_slope_matches_numpy_polyfit():
    g = np.random.default_rng(3)
    t = np.arange(1, 9)
    se = g.uniform(0.05, 0.2, size=8)
    v = 0.3 * t + g.normal(size=8) * se
    slope = weighted_slope(t, v, se)
    (p, _), unscaled = np.polyfit(t, v, 1, w=1 / se, cov="unscaled")
    _, scaled = np.polyfit(t, v, 1, w=1 / se, cov=True)
    assert slope.slope == pytest.approx(p)
    assert slope.se == pytest.approx(math.sqrt(max(unscaled[0, 0], scaled[0, 0])))


def test_slope_of_a_wandering_run_is_not_trusted():
    """Tiny intervals but a zigzag: the scatter, not the intervals, sets the noise."""
    t = np.arange(1, 7)
    v = np.array([0.0, 2.0, 0.5, 2.5, 1.0, 3.0])
    slope = weighted_slope(t, v, np.full(6, 1e-3))
    _, scaled = np.polyfit(t, v, 1, cov=True)
    assert slope.se == pytest.approx(math.sqrt(scaled[0, 0]))


# -- the rules -------------------------------------------------------------------------------


def test_margins_rising_holds_falls_and_is_inconclusive():
    rising = _trend(_run("margin_median", [1, 2, 3, 4, 5], 0.1), "margins_rising")
    assert rising.verdict == "holds" and rising.value == pytest.approx(1.0)
    falling = _trend(_run("margin_median", [5, 4, 3, 2, 1], 0.1), "margins_rising")
    assert falling.verdict == "broken"
    # slope 0.1 per epoch with se 0.5 each: sd of the slope 0.5 / sqrt(10) = 0.158 > 0.1 / 1.96
    flat = _trend(_run("margin_median", [1.0, 1.1, 1.2, 1.3, 1.4], 0.5), "margins_rising")
    assert flat.verdict == "inconclusive"


def test_a_recent_fall_breaks_a_rising_run():
    values = [1, 2, 3, 4, 5, 6, 7, 8, 7, 6, 5, 4]  # up 7 epochs, down the last 5
    trend = _trend(_run("margin_median", values, 0.05), "margins_rising")
    assert trend.verdict == "broken" and "last 5 epochs" in trend.reason


def test_hard_examples_falling():
    gray = _trend(_run("gray_zone_fraction", [0.3, 0.2, 0.1, 0.05], 0.01), "gray_zone_falling")
    assert gray.verdict == "holds"
    history = History()
    for epoch, count in enumerate([10, 20, 30, 40], start=1):  # confident errors grow
        history.append(
            _report({"confident_error_count": count}, {"confident_error_count": 2.0}, n=500),
            epoch=epoch,
        )
    trend = _trend(history, "confident_errors_falling")
    assert trend.verdict == "broken"
    assert trend.value == pytest.approx(10 / 500)  # the rate's slope: 10 more per epoch of 500


def test_threshold_crossing_since_epoch():
    # KS intervals +- 1.96 * 0.02: epoch 2's low bound 0.51 - 0.039 < 0.5, epoch 3's > 0.5
    trend = _trend(_run("score_ks", [0.40, 0.51, 0.60, 0.70], 0.02), "ks_above_threshold")
    assert trend.verdict == "holds" and trend.value == 3
    below = _trend(_run("fisher_ratio", [0.2, 0.4, 0.5], 0.05), "fisher_above_threshold")
    assert below.verdict == "broken"
    near = _trend(_run("fisher_ratio", [0.2, 0.6, 0.98], 0.05), "fisher_above_threshold")
    assert near.verdict == "inconclusive"
    intra = _trend(_run("intra_inter_ratio", [0.9, 0.7, 0.5], 0.05), "intra_below_inter")
    assert intra.verdict == "holds" and intra.value == 1  # epoch 1's high bound 0.998 < 1
    intra = _trend(_run("intra_inter_ratio", [0.97, 0.7, 0.5], 0.05), "intra_below_inter")
    assert intra.value == 2  # epoch 1's high bound 1.068 > 1
    assert intra.evidence["intra_inter_ratio"]["threshold"] == 1.0


def test_train_val_gap():
    history = _run("macro_f1", [0.70, 0.78, 0.80], 0.01)
    history = _run("macro_f1", [0.75, 0.88, 0.95], 0.01, split="train", history=history)
    gap = _trend(history, "train_val_gap")
    # 0.95 - 0.80 = 0.15; 0.15 - 0.1 > 1.96 * sqrt(2) * 0.01
    assert gap.verdict == "broken" and gap.value == pytest.approx(0.15)
    history = _run("macro_f1", [0.70, 0.78, 0.80], 0.01)
    history = _run("macro_f1", [0.72, 0.80, 0.84], 0.01, split="train", history=history)
    assert _trend(history, "train_val_gap").verdict == "holds"
    assert not [t for t in judge(_run("macro_f1", [0.7, 0.8], 0.01)) if t.rule == "train_val_gap"]


def test_oscillation_of_the_task_metric():
    swings = _trend(_run("macro_f1", [0.8, 0.9, 0.8, 0.9, 0.8, 0.9], 0.005), "steady_task_metric")
    assert swings.verdict == "broken" and swings.value == 4  # five moves, four reversals
    steady = _trend(
        _run("macro_f1", [0.8, 0.82, 0.84, 0.85, 0.85, 0.86], 0.005), "steady_task_metric"
    )
    assert steady.verdict == "holds"
    # swings of 0.1 whose intervals (se 0.1) make none of them beyond noise
    noisy = _trend(_run("macro_f1", [0.8, 0.9, 0.8, 0.9, 0.8, 0.9], 0.1), "steady_task_metric")
    assert noisy.verdict == "inconclusive"
    # only the last oscillation_window epochs count
    early = [0.5, 0.7, 0.5, 0.7, 0.80, 0.81, 0.82, 0.83, 0.84, 0.85]
    assert _trend(_run("macro_f1", early, 0.005), "steady_task_metric").verdict == "holds"


def test_best_epoch():
    past = _trend(_run("f1", [0.7, 0.9, 0.75], 0.01), "best_epoch")
    assert past.verdict == "broken" and past.value == 2
    last = _trend(_run("f1", [0.7, 0.8, 0.9], 0.01), "best_epoch")
    assert last.verdict == "holds" and last.value == 3
    close = _trend(_run("f1", [0.7, 0.9, 0.89], 0.01), "best_epoch")
    assert close.verdict == "holds" and close.value == 2
    # a metric where lower is better: eer as the task metric
    history = History(task_metric="eer")
    for epoch, v in enumerate([0.3, 0.1, 0.2], start=1):
        history.append(_report({"eer": v}, {"eer": 0.01}), epoch=epoch)
    best = _trend(history, "best_epoch")
    assert best.verdict == "broken" and best.value == 2


def test_fail_on_values():
    history = _run("f1", [0.7, 0.9, 0.75], 0.01)
    trends = judge(history)
    values = values_for_fail_on(trends, history)
    assert values["best_epoch"] == -1.0 and values["best_epoch.value"] == 2.0
    assert values["f1"] == pytest.approx(0.75) and values["epochs"] == 3.0
    assert values["f1.low"] == pytest.approx(0.75 - Z * 0.01)


def test_rules_without_their_metric_are_left_out():
    trends = judge(_run("accuracy", [0.5, 0.6], 0.01))
    assert {t.rule for t in trends} <= {"steady_task_metric", "best_epoch"}
    assert judge(History()) == []


def test_options_are_checked():
    history = _run("f1", [0.7, 0.8, 0.9], 0.01)
    with pytest.raises(ValueError, match="unknown options"):
        judge(history, windw=3)
    with pytest.raises(ValueError, match="recent"):
        judge(history, recent=1)


def test_html_page(real_history):
    page = real_history.to_html()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    for trend in real_history.judge():
        assert trend.rule in page


def test_severity_and_evidence_from_the_track_record():
    from embscope.diagnostics.history_rules import track_records

    TRACK_RECORD = track_records()
    assert TRACK_RECORD  # the shipped package data is found
    history = History()
    for epoch, count in enumerate([10, 20, 30, 40], start=1):
        history.append(
            _report(
                {"confident_error_count": count, "margin_median": 5.0 - epoch},
                {"confident_error_count": 2.0, "margin_median": 0.1},
            ),
            epoch=epoch,
        )
    trends = {t.rule: t for t in judge(history)}
    for rule in ("confident_errors_falling", "margins_rising"):
        assert trends[rule].verdict == "broken"
        assert trends[rule].severity == TRACK_RECORD[rule]["severity"]
        assert trends[rule].evidence["track_record"] == TRACK_RECORD[rule]["counts"]
    # a broken rule is a warning only with at least 10 firings, 90% of them confirmed
    for record in TRACK_RECORD.values():
        counts = record["counts"]
        strong = counts["broken_fired"] >= 10
        strong = strong and counts["broken_confirmed"] >= 0.9 * counts["broken_fired"]
        assert record["severity"] == ("warning" if strong else "info")
    assert trends["confident_errors_falling"].as_recommendation().action == (
        "confident_errors_falling"
    )
