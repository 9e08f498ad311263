"""Comparing reports with one decision rule: ``compare``, ``check_regression``, the command's
``--baseline`` gate and ``recommend(baseline=...)`` all judge a metric with :func:`decide`.

(Over 400 lines: what can be compared, the rule, the paired bootstrap and the two public
verdicts are read together; several models side by side are in ranking.py.)

A metric of B is worse than A's when the difference, in its worse direction, exceeds its
tolerance AND exceeds z standard errors of the difference (z = 1.96 at the 95% level):

- when both reports keep per-sample values of the same samples (``Report.samples``: matched by
  hashed ids, or by position when neither has ids and the label sequences are equal), the
  standard error comes from a paired bootstrap of those samples (both models resampled on the
  same draws), which is far more sensitive than comparing two intervals;
- otherwise from the two reports' intervals (each side's half-width towards the other, over z);
- against several baselines (the same recipe trained with other seeds), from the baselines'
  spread: a prediction interval of a new run, t_{k-1} sd sqrt(1 + 1/k) (Student's t with k - 1
  degrees of freedom, for sd is estimated from k runs), plus the new report's evaluation noise;
- a report without intervals (older reports, hand-built ones) adds no uncertainty: the
  tolerance alone decides, as before intervals existed.

Tolerances are absolute within [-1, 1] and relative beyond; a metric without one given gets
its registry default (wider where seeds of one recipe spread wider, e.g. score_ks 0.05, ECE
0.03), else 0.02. Count metrics (``*_count``) are judged as rates, count / n. A metric finite in the baseline and
undefined (nan) now is worse. Better is the mirror image. By default the gate and ``compare``'s
verdict judge the registry's gated metrics (`registry.gated_keys`): the task, score
separation, the Fisher ratio, verification, retrieval and calibration.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import t as student_t

from .intervals import (
    LEVEL,
    POOL_ROWS,
    REPLICATES,
    _pool,
    _value_keys,
    _weights,
    calibration_replicates,
    score_replicates,
    z_value,
)
from .provenance import checkpoint_phrase
from .registry import compared_keys, gate_tolerance, gated_keys, info, is_count
from .report import Recommendation, Report, direction
from .sections import ClassTable

NAN = float("nan")
DEFAULT_TOLERANCE = 0.02  # the gate's (check_regression, --baseline)
GATED_KEYS = gated_keys()  # what the gate and compare's verdict judge by default
COMPARE_KEYS = compared_keys()  # the scale-free quality metrics (registry "compared")
PAIRED_SEED = 20240  # the paired bootstrap's draws (fixed: a comparison is reproducible)


def _get(report: Report, name: str) -> float:
    v = report.metrics.get(name, NAN)
    return float(v) if v is not None else NAN


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


# ----------------------------------------------------------------------------------------------
# What can be compared.
# ----------------------------------------------------------------------------------------------


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


class DifferentData(IncomparableReports):
    """Two reports of the same kind computed on different data (their fingerprints,
    ``meta["data"]``, differ): a difference between them is not a difference between models."""

    def __init__(self, differences: Sequence[str], sides: tuple[str, str]) -> None:
        self.differences = list(differences)
        self.sides = sides
        ValueError.__init__(
            self,
            f"reports {sides[0]} and {sides[1]} were computed on different data: "
            f"{'; '.join(self.differences)} (pass allow_different_data=True to compare them "
            "anyway)",
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


def data_differences(
    report_a: Report, report_b: Report, sides: tuple[str, str] = ("A", "B")
) -> list[str]:
    """Why two reports were computed on different data; empty when their fingerprints
    (``meta["data"]``: n, class counts, hashes of the ids and of the (id, label) pairs) agree
    or a report has none (older reports are not held to it)."""
    fa, fb = _meta(report_a).get("data"), _meta(report_b).get("data")
    if not isinstance(fa, dict) or not isinstance(fb, dict):
        return []
    a_name, b_name = sides
    found = []
    if fa.get("n") != fb.get("n"):
        found.append(f"samples: {a_name} has {fa.get('n')}, {b_name} has {fb.get('n')}")
    elif fa.get("class_counts") != fb.get("class_counts"):
        found.append(f"class counts: {a_name} has {_counts(fa)}, {b_name} has {_counts(fb)}")
    if "ids_sha256" in fa and "ids_sha256" in fb:
        if fa["ids_sha256"] != fb["ids_sha256"]:
            found.append("sample ids differ")
        elif fa.get("id_labels_sha256") != fb.get("id_labels_sha256"):
            found.append("the same ids carry other labels")
    return found


def _counts(fp: dict) -> str:
    counts = fp.get("class_counts") or {}
    shown = ", ".join(f"{k}: {v}" for k, v in list(counts.items())[:4])
    return "{" + shown + (", ..." if len(counts) > 4 else "") + "}"


def _meta(report: Report) -> dict:
    return report.meta if isinstance(report.meta, dict) else {}


def _labels(report: Report) -> list | None:
    """The sorted label values of the report's class table; None without one."""
    table = report.sections.get("classes") if isinstance(report.sections, dict) else None
    if not isinstance(table, ClassTable) or not table.rows:
        return None
    return sorted({r.label for r in table.rows})


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


def not_comparable(report_a: Report, report_b: Report) -> set[str]:
    """Metrics both reports hold that do not measure the same quantity in the two models:
    logit column statistics of other logit widths or heads (a BCE logit against an ArcFace
    head's class-0 column), margins on other logit scales (another width, or a margin head's
    s, m or kind against another's or none), the head's own facts when the heads differ."""
    ma, mb = _meta(report_a), _meta(report_b)
    head_a = (ma.get("head_kind"), _get(report_a, "head.s"), _get(report_a, "head.m"))
    head_b = (mb.get("head_kind"), _get(report_b, "head.s"), _get(report_b, "head.m"))
    same_head = str(head_a) == str(head_b)  # nan == nan as text
    same_width = ma.get("logit_columns") == mb.get("logit_columns")
    common = set(report_a.metrics) & set(report_b.metrics)
    out = set()
    for name in common:
        if name.startswith("logits.col") and not (same_width and same_head):
            out.add(name)
        elif name in ("margin_mean", "margin_median", "margin_p05") and not (
            same_width and same_head
        ):
            out.add(name)
        elif (name.startswith("head.") or name == "fitted_scale") and not same_head:
            out.add(name)
    return out


def _check_comparable(
    report_a: Report,
    report_b: Report,
    metrics: Sequence[str] | None,
    sides: tuple[str, str],
    allow_different_data: bool = False,
) -> list[str] | None:
    """The metrics chosen by the caller (each in both reports), or None to compare them all.

    Raises IncomparableReports when ``metrics`` is None and the reports differ (see
    `differences`), DifferentData when they are of the same kind but on other data (unless
    ``allow_different_data``), ValueError when a chosen metric is missing from a report.
    """
    if metrics is None:
        found = differences(report_a, report_b, sides)
        if found:
            raise IncomparableReports(found, sides)
        if not allow_different_data:
            found = data_differences(report_a, report_b, sides)
            if found:
                raise DifferentData(found, sides)
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


def tolerance_for(name: str, base: float, tolerance) -> float:
    """The tolerance of metric ``name`` at baseline value ``base``; absolute for values in
    [-1, 1], relative to |base| beyond.

    ``tolerance``: a number (every metric), a dict of metric -> number (key ``"*"`` for the
    rest), or None. A metric it does not name gets its default from the registry
    (`registry.gate_tolerance`: wider for metrics whose seed-to-seed spread is wider, e.g.
    score_ks 0.05), else ``DEFAULT_TOLERANCE`` (0.02).
    """
    if isinstance(tolerance, dict):
        tol = tolerance.get(name, tolerance.get("*"))
    else:
        tol = tolerance
    if tol is None:
        tol = gate_tolerance(name)
    tol = DEFAULT_TOLERANCE if tol is None else tol
    return float(tol) * max(1.0, abs(base)) if _finite(base) else float(tol)


def _uniform(tolerance, metrics) -> object:
    """Named metrics (``metrics=``, reports of other kinds compared anyway) are judged with one
    tolerance: the one given, else the global default."""
    return DEFAULT_TOLERANCE if tolerance is None and metrics is not None else tolerance


# ----------------------------------------------------------------------------------------------
# The decision rule.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """How metric ``name`` of B compares with the baseline A (the mean of several baselines).

    outcome: "worse", "better", "same" (within the tolerance, or not significant), "undefined"
        (nan in the baseline) or "descriptive" (no better direction: not judged).
    a, b: the values compared (rates count / n for count metrics: ``rate``).
    tolerance: the absolute tolerance used; se: the standard error of b - a (nan: none known,
        the tolerance alone decides); noise: z * se; test: where se came from.
    a_interval, b_interval: the reports' intervals of the values compared (None without).
    """

    name: str
    a: float
    b: float
    direction: str | None
    tolerance: float
    se: float
    noise: float
    test: str
    outcome: str
    rate: bool = False
    a_interval: tuple | None = None
    b_interval: tuple | None = None

    @property
    def delta(self) -> float:
        return self.b - self.a if _finite(self.a, self.b) else NAN

    @property
    def better(self) -> str:
        """ "a", "b", "same" or "undefined": the side that is better, as in Comparison.deltas."""
        return {"worse": "a", "better": "b", "undefined": "undefined"}.get(self.outcome, "same")

    def to_dict(self) -> dict:
        from .report import _clean

        return _clean(
            {
                "name": self.name,
                "a": self.a,
                "b": self.b,
                "delta": self.delta,
                "direction": self.direction,
                "tolerance": self.tolerance,
                "se": self.se,
                "noise": self.noise,
                "test": self.test,
                "outcome": self.outcome,
                "rate": self.rate,
                "a_interval": list(self.a_interval) if self.a_interval else None,
                "b_interval": list(self.b_interval) if self.b_interval else None,
            }
        )


def decide(
    name: str,
    a_values: Sequence[float],
    b: float,
    *,
    tolerance,
    a_intervals: Sequence[tuple | None] = (),
    b_interval: tuple | None = None,
    paired_se: float | None = None,
    paired_how: str = "paired",
    level: float = LEVEL,
) -> Decision:
    """The one decision: is B's ``name`` worse (or better) than the baseline(s)' values?

    ``a_values`` one baseline value, or several (one per baseline, e.g. seeds of a recipe);
    ``a_intervals``/``b_interval`` their intervals (None: unknown); ``paired_se`` the standard
    error of b - a from a paired bootstrap when there is one; ``tolerance`` as in
    `tolerance_for`. Worse: the difference in the worse direction exceeds the tolerance and
    z * se (z of ``level``); see the module's docstring for se.
    """
    d = direction(name)
    values = [float(v) for v in a_values]
    finite = [v for v in values if _finite(v)]
    a = float(np.mean(finite)) if finite and len(finite) == len(values) else NAN
    tol = tolerance_for(name, a, tolerance)
    z = z_value(level)
    a_iv = tuple(a_intervals[0]) if len(values) == 1 and a_intervals and a_intervals[0] else None
    if d is None:
        return Decision(
            name, a, b, d, tol, NAN, NAN, "not judged", "descriptive", False, a_iv, b_interval
        )
    if not _finite(a):
        return Decision(
            name, a, b, d, tol, NAN, NAN, "baseline undefined", "undefined", False, a_iv, b_interval
        )
    if not _finite(b):
        return Decision(
            name, a, b, d, tol, NAN, NAN, "undefined now", "worse", False, a_iv, b_interval
        )
    gap = (b - a) if d == "higher" else (a - b)  # > 0: B is better
    if paired_se is not None and _finite(paired_se):
        se, test = paired_se, paired_how
    elif len(values) > 1:
        # a new run of the recipe lies within t sd sqrt(1 + 1/k) of the baselines' mean (a
        # prediction interval, t with k - 1 degrees of freedom), B's evaluation noise added
        k = len(values)
        spread = float(np.std(values, ddof=1))
        se_b = _side_se(b_interval, b, a, z)
        t = float(student_t.ppf(0.5 + level / 2, k - 1))
        se = math.sqrt((t / z * spread) ** 2 * (1 + 1 / k) + (se_b if _finite(se_b) else 0.0) ** 2)
        test = f"spread of {k} baselines (sd {spread:.3g}, t {t:.3g}) and B's interval"
    else:
        se_a = _side_se(a_iv, a, b, z)
        se_b = _side_se(b_interval, b, a, z)
        known = [s for s in (se_a, se_b) if _finite(s)]
        se = math.sqrt(sum(s * s for s in known)) if known else NAN
        test = "intervals" if len(known) == 2 else "one interval" if known else "tolerance only"
    noise = z * se if _finite(se) else 0.0
    if -gap > tol and -gap > noise:
        outcome = "worse"
    elif gap > tol and gap > noise:
        outcome = "better"
    else:
        outcome = "same"
    return Decision(name, a, b, d, tol, se, noise, test, outcome, False, a_iv, b_interval)


def _side_se(interval, value: float, toward: float, z: float) -> float:
    """The standard error an interval implies on the side of ``value`` facing ``toward``."""
    if not interval or not _finite(value, *interval):
        return NAN
    lo, hi = float(interval[0]), float(interval[1])
    return (value - lo) / z if toward < value else (hi - value) / z


def _judge(
    name: str,
    baselines: Sequence[Report],
    report: Report,
    tolerance,
    paired: dict,
    level: float,
) -> Decision:
    """`decide` for one metric of ``report`` against ``baselines`` (counts as rates)."""
    rate = is_count(name)

    def value(r: Report) -> float:
        v = _get(r, name)
        if rate:
            n = _get(r, "n")
            return v / n if _finite(v, n) and n > 0 else NAN
        return v

    def interval(r: Report) -> tuple | None:
        iv = r.intervals.get(name) if isinstance(r.intervals, dict) else None
        if not iv:
            return None
        if rate:
            n = _get(r, "n")
            return (iv[0] / n, iv[1] / n) if _finite(n) and n > 0 else None
        return (float(iv[0]), float(iv[1]))

    se, how = paired.get(name, (None, ""))
    decision = decide(
        name,
        [value(b) for b in baselines],
        value(report),
        tolerance=tolerance,
        a_intervals=[interval(b) for b in baselines],
        b_interval=interval(report),
        paired_se=se if len(baselines) == 1 else None,
        paired_how=how,
        level=level,
    )
    if rate:
        from dataclasses import replace

        decision = replace(decision, rate=True)
    return decision


# ----------------------------------------------------------------------------------------------
# Paired comparisons on the same samples.
# ----------------------------------------------------------------------------------------------


def pairing(report_a: Report, report_b: Report) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Positions that align the two reports' per-sample values (A's, B's) and how they were
    matched: by hashed id when both have ids (the same set, each once, the same labels), by
    position when neither has ids and the label sequences are equal; None otherwise."""
    sa, sb = report_a.samples, report_b.samples
    if not sa or not sb or "label" not in sa or "label" not in sb:
        return None
    if len(sa["label"]) != len(sb["label"]) or len(sa["label"]) < 2:
        return None
    if "id_hash" in sa and "id_hash" in sb:
        ia, ib = np.argsort(sa["id_hash"], kind="stable"), np.argsort(sb["id_hash"], kind="stable")
        ha, hb = sa["id_hash"][ia], sb["id_hash"][ib]
        if not np.array_equal(ha, hb) or (ha[1:] == ha[:-1]).any():
            return None
        if not np.array_equal(sa["label"][ia], sb["label"][ib]):
            return None
        return ia, ib, f"paired by id (n = {len(ia)})"
    if "id_hash" in sa or "id_hash" in sb:
        return None
    if not np.array_equal(sa["label"], sb["label"]):
        return None
    n = len(sa["label"])
    return np.arange(n), np.arange(n), f"paired by position (no ids, equal labels; n = {n})"


_PAIRED = (
    "accuracy",
    "f1",
    "macro_f1",
    "negative_margin_fraction",
    "gray_zone_fraction",
    "gray_zone_count",
    "confident_error_count",
    "saturation_fraction",
    "ece",
    "mce",
    "brier",
    "nll",
    "score_ks",
    "score_hellinger",
    "score_fisher",
)


def paired_standard_errors(
    report_a: Report, report_b: Report, names: Iterable[str]
) -> dict[str, tuple[float, str]]:
    """Standard errors of B - A for the metrics of ``names`` computable from both reports'
    per-sample values, by a bootstrap that resamples the same samples (stratified by class)
    for both models: {name: (se, how)}; empty when the reports cannot be paired."""
    wanted = [n for n in names if n in _PAIRED]
    match = pairing(report_a, report_b) if wanted else None
    if match is None:
        return {}
    ia, ib, how = match
    sa = {k: np.asarray(v)[ia] for k, v in report_a.samples.items()}
    sb = {k: np.asarray(v)[ib] for k, v in report_b.samples.items()}
    if "pred" not in sa or "pred" not in sb:
        return {}
    labels = sa["label"].astype(np.int64)
    n = len(labels)
    columns = [labels, sa["margin"], sb["margin"], sa["top_prob"], sb["top_prob"]]
    idx = _pool(labels, POOL_ROWS, _value_keys(columns, PAIRED_SEED, "pool"))
    w = _weights(labels[idx], REPLICATES, np.random.default_rng(PAIRED_SEED))
    binary_a = _binary(report_a, sa)
    binary_b = _binary(report_b, sb)
    va = _sample_metrics({k: v[idx] for k, v in sa.items()}, w, binary_a)
    vb = _sample_metrics({k: v[idx] for k, v in sb.items()}, w, binary_b)
    scale = math.sqrt(len(idx) / n)
    pool = f", bootstrap {REPLICATES} on {len(idx)} of {n}" if len(idx) < n else ""
    out = {}
    for name in wanted:
        key = {"gray_zone_count": "gray_zone_fraction"}.get(name, name)
        if key in va and key in vb:
            diff = vb[key] - va[key]
            ok = diff[np.isfinite(diff)]
            if len(ok) >= len(diff) // 2 and len(ok) > 1:
                out[name] = (float(np.std(ok, ddof=1)) * scale, how + pool)
    return out


def _binary(report: Report, s: dict) -> bool:
    columns = _meta(report).get("logit_columns")
    return columns in (1, 2) or (columns is None and set(np.unique(s["label"])) <= {0, 1})


def _sample_metrics(s: dict, w: np.ndarray, binary: bool) -> dict[str, np.ndarray]:
    """Per replicate (rows of ``w``): the metrics that per-sample values determine."""
    y = s["label"].astype(np.int64)
    pred = s["pred"].astype(np.int64)
    top = s["top_prob"].astype(np.float64)
    margin = s["margin"].astype(np.float64)
    correct = pred == y
    w64 = w.astype(np.float64)
    tot = w64.sum(1)
    out = {
        "accuracy": (w64 @ correct) / tot,
        "negative_margin_fraction": (w64 @ (margin < 0)) / tot,
        "saturation_fraction": (w64 @ (top > 1 - 1e-3)) / tot,
        "confident_error_count": (w64 @ (~correct & (top >= 0.9))) / tot,
    }
    if "gray" in s:
        out["gray_zone_fraction"] = (w64 @ s["gray"].astype(bool)) / tot
    out.update(calibration_replicates(top, correct.astype(np.float64), w))
    values, codes = np.unique(np.concatenate([y, pred]), return_inverse=True)
    k = len(values)
    if k <= 64:
        cells = codes[: len(y)] * k + codes[len(y) :]
        cm = np.stack([np.bincount(cells, weights=r, minlength=k * k) for r in w64]).reshape(
            -1, k, k
        )
        tp = np.diagonal(cm, axis1=1, axis2=2)
        denom = 2 * tp + (cm.sum(1) - tp) + (cm.sum(2) - tp)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)
        present = denom.sum(0) > 0  # classes with a sample or a prediction
        out["macro_f1"] = np.nanmean(np.where(present, f1, np.nan), axis=1)
        if binary and list(values) == [0, 1]:
            out["f1"] = f1[:, 1]
    if binary:
        p = np.where(pred == 1, top, 1 - top)
        out["nll"] = (w64 @ np.logaddexp(0.0, -margin)) / tot
        out["brier"] = (w64 @ (2.0 / (1.0 + np.exp(margin)) ** 2)) / tot
        pos = y == 1
        if pos.any() and not pos.all():
            out.update(score_replicates(p, p, pos, w, 50))
    return out


# ----------------------------------------------------------------------------------------------
# Comparison and regression.
# ----------------------------------------------------------------------------------------------


def _baselines(report_a) -> list[Report]:
    if isinstance(report_a, Report):
        return [report_a]
    baselines = list(report_a)
    if not baselines or not all(isinstance(r, Report) for r in baselines):
        raise TypeError("the baseline must be a Report or a non-empty sequence of Reports")
    return baselines


def _decisions(
    baselines: Sequence[Report],
    report: Report,
    names: Sequence[str],
    tolerance,
    level: float,
) -> dict[str, Decision]:
    paired = paired_standard_errors(baselines[0], report, names) if len(baselines) == 1 else {}
    return {name: _judge(name, baselines, report, tolerance, paired, level) for name in names}


def _checked(
    baselines: Sequence[Report],
    report: Report,
    metrics,
    gate_sides: bool,
    allow_different_data: bool,
) -> list[str] | None:
    """`_check_comparable` for each baseline: sides ("A", "B") for compare, ("report",
    "baseline") for the gate, numbered (A1, baseline2, ...) when there are several."""
    chosen = None
    for i, base in enumerate(baselines):
        number = str(i + 1) if len(baselines) > 1 else ""
        if gate_sides:
            pair, sides = (report, base), ("report", f"baseline{number}")
        else:
            pair, sides = (base, report), (f"A{number}", "B")
        chosen = _check_comparable(*pair, metrics, sides, allow_different_data)
    return chosen


def _gate(gate: Sequence[str] | None, chosen: list[str] | None, common: set[str]) -> list[str]:
    """The metrics a verdict counts: the named ones, else ``gate``, else the registry's gated
    metrics; those both reports hold, in order."""
    if chosen is not None:
        return chosen
    if gate is not None:
        unknown = [g for g in gate if info(g) is None or direction(g) is None]
        if unknown:
            raise ValueError(
                f"gate {unknown} names metrics without a better direction (or unknown ones)"
            )
        return [g for g in dict.fromkeys(gate) if g in common]
    return [g for g in GATED_KEYS if g in common]


@dataclass(frozen=True)
class Comparison:
    """How B compares with A (or with several baselines A1..Ak): a decision per metric, a
    verdict from the gated ones, and the deltas B - A.

    verdict: "keep_arcface" / "disable_arcface" when B adds a margin head over A, otherwise
    "a_better" (B worse on a gated metric: what the gate fails on), "b_better" (better on one,
    worse on none) or "no_difference".
    decisions: metric -> `Decision`; gated: the metrics the verdict counts, in order; wins and
    losses: the gated metrics on which B is better / worse; regressions: the losses as the
    gate reports them (`check_regression` on the same reports and tolerance gives the same);
    omitted: metrics both hold that do not measure the same thing in the two models.
    """

    deltas: dict
    verdict: str
    reason: str
    recommendation: Recommendation | None = None
    wins: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    decisions: dict = field(default_factory=dict)
    gated: list = field(default_factory=list)
    regressions: list = field(default_factory=list)
    omitted: list = field(default_factory=list)
    checkpoints: str = ""

    def to_dict(self) -> dict:
        from .report import _clean

        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "checkpoints": self.checkpoints,
            "wins": self.wins,
            "losses": self.losses,
            "gated": self.gated,
            "omitted": self.omitted,
            "deltas": _clean(self.deltas),
            "decisions": {k: d.to_dict() for k, d in self.decisions.items()},
            "recommendation": self.recommendation.to_dict() if self.recommendation else None,
        }

    def to_markdown(self) -> str:
        """The verdict, then the counted (gated) metrics with their intervals and decisions,
        then the other comparable metrics, grouped as the registry groups them (task,
        separation, geometry, ...)."""
        head = "| metric | A | B | B - A | better | A interval | B interval | decision |"
        rule = "|---|---:|---:|---:|---|---:|---:|---|"
        lines = [f"**Verdict: {self.verdict}**: {self.reason}", ""]
        if self.checkpoints:
            lines += [f"{self.checkpoints[0].upper()}{self.checkpoints[1:]}.", ""]
        lines += ["Judged metrics:", "", head, rule]
        first = [k for k in self.gated if k in self.deltas]
        rest = [k for k in self.deltas if k not in first]
        lines += [self._row(k) for k in first]
        if rest:
            lines += ["", "Other metrics (not in the verdict), by group:"]
            for group, names in _grouped(rest):
                lines += ["", f"*{group}*", "", head, rule]
                lines += [self._row(k) for k in names]
        if self.omitted:
            lines += [
                "",
                f"Not compared (not the same quantity in the two models): "
                f"{', '.join(self.omitted)}",
            ]
        return "\n".join(lines) + "\n"

    def _row(self, k: str) -> str:
        d = self.deltas[k]
        delta = f"{d['delta']:+.4g}" if _finite(d["delta"]) else "nan"
        dec = self.decisions.get(k)
        return (
            f"| {k} | {_num(d['a'])} | {_num(d['b'])} | {delta} | {d['better']} | "
            f"{_iv(d.get('a_interval'))} | {_iv(d.get('b_interval'))} | "
            f"{_decision_text(dec) if dec else ''} |"
        )


def _grouped(names: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``names`` by their registry group, groups in the registry's order, names sorted."""
    from .registry import METRICS

    order = list(dict.fromkeys(m.group for m in METRICS))
    groups: dict[str, list[str]] = {}
    for name in names:
        record = info(name)
        groups.setdefault(record.group if record else "other", []).append(name)
    ranked = sorted(groups, key=lambda g: order.index(g) if g in order else len(order))
    return [(g, sorted(groups[g])) for g in ranked]


def _num(v: float) -> str:
    return f"{v:.4g}" if _finite(v) else "nan"


def _iv(iv) -> str:
    if not iv:
        return ""
    # a zero-width interval is a count or a setting (intervals.py's 'exact' method)
    return "exact" if iv[0] == iv[1] else f"[{iv[0]:.4g}, {iv[1]:.4g}]"


def _decision_text(d: Decision) -> str:
    if d.outcome in ("descriptive", "undefined"):
        return d.outcome
    unit = " (as a rate)" if d.rate else ""
    noise = f"noise {d.noise:.3g} ({d.test})" if _finite(d.se) else d.test
    return f"{d.outcome}{unit}: tolerance {d.tolerance:.3g}, {noise}"


def compare(
    report_a,
    report_b: Report,
    *,
    tolerance=None,
    metrics: Sequence[str] | None = None,
    gate: Sequence[str] | None = None,
    allow_different_data: bool = False,
    level: float = LEVEL,
) -> Comparison:
    """Compare two reports (A = baseline, e.g. BCE; B = candidate, e.g. ArcFace), or B with
    several baselines A1..Ak (a sequence of reports: the same recipe with other seeds).

    Every metric is judged by `decide`; the verdict counts the gated metrics (``gate``, or the
    registry's default), or the metrics named in ``metrics``. ``tolerance`` None (each
    metric's default, as the gate: `check_regression` on the same pair and tolerance decides
    the same), a number or a dict of metric -> number (``"*"`` for the rest). Reports of other
    classes, logit widths or
    metric spaces (see `differences`) raise `IncomparableReports` unless ``metrics`` names the
    metrics to compare; reports on other data (see `data_differences`) raise `DifferentData`
    unless ``allow_different_data`` or ``metrics``.
    """
    baselines = _baselines(report_a)
    tolerance = _uniform(tolerance, metrics)
    chosen = _checked(baselines, report_b, metrics, False, allow_different_data)
    common = set(report_b.metrics).intersection(*(set(b.metrics) for b in baselines))
    omitted = (
        set()
        if chosen is not None
        else set().union(*(not_comparable(b, report_b) for b in baselines))
    )
    names = sorted(common - omitted) if chosen is None else chosen
    counted = _gate(gate, chosen, common - omitted)
    decisions = _decisions(
        baselines, report_b, list(dict.fromkeys([*counted, *names])), tolerance, level
    )
    deltas = {}
    for name in [*counted, *[n for n in names if n not in counted]]:
        dec = decisions[name]
        a_raw = float(np.mean([_get(b, name) for b in baselines]))
        b_raw = _get(report_b, name)
        if not _finite(a_raw, b_raw) and chosen is None and name not in counted:
            continue  # undefined in a report: shown only when asked for or counted
        deltas[name] = {
            "a": a_raw,
            "b": b_raw,
            "delta": b_raw - a_raw if _finite(a_raw, b_raw) else NAN,
            "direction": dec.direction,
            "better": dec.better if _finite(a_raw, b_raw) else "undefined",
            "a_interval": _raw_interval(baselines[0], name) if len(baselines) == 1 else None,
            "b_interval": _raw_interval(report_b, name),
            "decision": dec.outcome,
        }
    wins = [k for k in counted if decisions[k].outcome == "better"]
    losses = [k for k in counted if decisions[k].outcome == "worse"]
    regressions = [_regression(decisions[k]) for k in losses]
    head_b = _finite(_get(report_b, "head.m")) and _get(report_b, "head.m") > 0
    summary = (
        f"B better on {', '.join(wins) or 'nothing'}, worse on {', '.join(losses) or 'nothing'}"
    )
    summary += f" (of {len(counted)} metrics judged; tolerance {_tol_text(tolerance)})"
    rec = None
    no_head_a = not any(_finite(_get(b, "head.m")) and _get(b, "head.m") > 0 for b in baselines)
    if head_b and no_head_a:
        keep = bool(wins) and not losses
        verdict = "keep_arcface" if keep else "disable_arcface"
        reason = (
            f"the margin head {'improves' if keep else 'does not improve'} the judged metrics "
            f"({summary})"
        )
        rec = Recommendation(
            "enable_arcface" if keep else "disable_arcface",
            "info" if keep else "warning",
            f"Against the baseline, {reason}.",
            evidence={
                k: {"baseline": decisions[k].a, "value": decisions[k].b} for k in wins + losses
            },
        )
    else:
        verdict = "a_better" if losses else "b_better" if wins else "no_difference"
        reason = summary
    checkpoints = "; ".join(
        checkpoint_phrase(b, report_b, (f"A{i + 1}" if len(baselines) > 1 else "A", "B"))
        for i, b in enumerate(baselines)
    )
    return Comparison(
        deltas,
        verdict,
        reason,
        rec,
        wins,
        losses,
        decisions,
        list(counted),
        regressions,
        sorted(omitted),
        checkpoints,
    )


def _raw_interval(report: Report, name: str) -> tuple | None:
    iv = report.intervals.get(name) if isinstance(report.intervals, dict) else None
    return (float(iv[0]), float(iv[1])) if iv else None


def _tol_text(tolerance) -> str:
    if tolerance is None:
        return "per metric"
    if isinstance(tolerance, dict):
        return ", ".join(f"{k}={v:g}" for k, v in tolerance.items())
    return f"{tolerance:g}"


@dataclass(frozen=True)
class Regression:
    """A metric worse than the baseline beyond its tolerance and its noise, by its direction
    (``decision`` holds the whole judgement)."""

    name: str
    value: float
    baseline: float
    direction: str
    delta: float
    tolerance: float
    decision: Decision | None = None

    def to_dict(self) -> dict:
        from .report import _clean

        out = {k: v for k, v in self.__dict__.items() if k != "decision"}
        if self.decision is not None:
            out.update(
                se=self.decision.se,
                noise=self.decision.noise,
                test=self.decision.test,
                rate=self.decision.rate,
            )
        return _clean(out)

    def __str__(self) -> str:
        d = self.decision
        rate = " (rate, count / n)" if d is not None and d.rate else ""
        noise = ""
        if d is not None and _finite(d.se):
            noise = f", beyond the noise {d.noise:.3g} ({d.test})"
        elif d is not None:
            noise = f" ({d.test})"
        return (
            f"{self.name}{rate}: {self.value:.4g} vs baseline {self.baseline:.4g}{noise} "
            f"({self.delta:+.4g}, {self.direction} is better, tolerance {self.tolerance:.3g})"
        )


def _regression(d: Decision) -> Regression:
    return Regression(d.name, d.b, d.a, d.direction, d.delta, d.tolerance, d)


def check_regression(
    report: Report,
    baseline,
    tolerance=None,
    *,
    metrics: Sequence[str] | None = None,
    gate: Sequence[str] | None = None,
    allow_different_data: bool = False,
    level: float = LEVEL,
) -> list[Regression]:
    """Metrics of ``report`` worse than ``baseline`` (a report, or several: the same recipe
    with other seeds), judged by `decide`: beyond the tolerance and significant.

    tolerance: None (each metric's default: `registry.gate_tolerance`, else 0.02), a float (every
    metric), or a dict of metric -> float (key "*" for the rest; others their default). It is
    absolute for metrics whose baseline lies in [-1, 1] and relative to |baseline| beyond; named
    ``metrics`` get 0.02 when None. Counts are judged as rates. A metric that was finite in the baseline and is nan now counts as a regression.
    The metrics judged: ``metrics`` (named: each must be in both reports and have a direction,
    ValueError otherwise), else ``gate``, else the registry's gated metrics.

    A baseline of other classes, logit widths or metric space (see `differences`) raises
    `IncomparableReports` unless ``metrics`` names the metrics to check; one on other data
    raises `DifferentData` unless ``allow_different_data``.
    """
    baselines = _baselines(baseline)
    tolerance = _uniform(tolerance, metrics)
    chosen = _checked(baselines, report, metrics, True, allow_different_data)
    if chosen is not None:
        undirected = [name for name in chosen if direction(name) is None]
        if undirected:
            raise ValueError(
                f"metrics {undirected} have no better direction, so they cannot regress"
            )
    common = set(report.metrics).intersection(*(set(b.metrics) for b in baselines))
    omitted = (
        set()
        if chosen is not None
        else set().union(*(not_comparable(b, report) for b in baselines))
    )
    counted = _gate(gate, chosen, common - omitted)
    decisions = _decisions(baselines, report, counted, tolerance, level)
    return [_regression(decisions[k]) for k in counted if decisions[k].outcome == "worse"]
