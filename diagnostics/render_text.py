"""Words and numbers shared by the renderers (Markdown, HTML, plots): number formats, intervals,
evidence lines, the report's title and provenance, and which metrics each part shows.

Everything reads only the report's data, so a report loaded from JSON renders the same.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import PurePath

from .registry import direction as _direction
from .registry import headline_keys, info
from .sections import ClassMargins, ClassTable

KEY_METRICS = headline_keys()  # the summary's metrics, from the registry

# the metrics each question of the report shows next to its plots (in this order, when present)
SEPARATION_METRICS = (
    "score_ks",
    "score_hellinger",
    "score_fisher",
    "fisher_ratio",
    "intra_inter_ratio",
    "centroid_confusion_fraction",
    "nc1",
)
LOGIT_METRICS = (
    "margin_median",
    "margin_p05",
    "saturation_fraction",
    "ece",
    "brier",
    "nll",
    "fitted_temperature",
    "ece_at_fitted_temperature",
    "fitted_scale",
    "angle_true_mean",
    "angle_nearest_other_mean",
    "fallback_fraction",
    "head.s",
    "head.m",
    "head.margin_leak",
)
GRAY_METRICS = (
    "gray_zone_fraction",
    "gray_zone_count",
    "negative_margin_fraction",
    "confident_error_count",
)
RETRIEVAL_METRICS = (
    "recall_at_1",
    "recall_at_5",
    "map_at_r",
    "eer",
    "roc_auc",
    "tar_at_far_1e-2",
    "tar_at_far_1e-3",
    "pair_ks",
    "pair_hellinger",
)

# one line under every plot: how to read it
GUIDES = {
    "scores": "Each class's scores as a share of that class. Two humps far apart: the classes "
    "are separated; mass around 0.5 is the gray zone.",
    "scores_ovr": "One-vs-rest: each sample's probability for its own class (should sit near 1) "
    "against its probabilities for the other classes (near 0); overlap is confusion.",
    "margins": "Margin = true-class logit minus the best other. Right of the dotted 0 line: "
    "correct, the further right the safer; just left of it: near misses; far left: "
    "confident errors.",
    "class_margins": "One row per class: dot = median margin, thick bar = middle half, thin "
    "line = 5th to 95th percentile. Rows whose bars cross the red 0 line hold the errors.",
    "class_margins_ranked": "Each curve ranks the classes by one statistic of their margins. "
    "Left of where a curve crosses the red 0 line are the classes with more than 5% (5th "
    "percentile) or half (median) of their samples misclassified; the classes table lists them.",
    "logit_columns": "Mean logit of each column for the samples of each true class. A healthy "
    "head stands highest (reddest) in the true class's own column on every row.",
    "reliability": "Points on the diagonal: calibrated. Below it: overconfident (divide the "
    "logits by the fitted T); above it: underconfident. Bars: accuracy per bin.",
    "confusion": "Rows: true class; columns: predicted class; colour: share of the true class. "
    "The diagonal is each class's recall; off-diagonal cells are the errors.",
    "angles": "Angles of each embedding to its own class weight (should be small) and to the "
    "nearest other class weight (should be large); little overlap is good.",
    "pairs": "Cosine similarity of same-class (genuine) and different-class (impostor) pairs. "
    "Overlap is where verification errs (EER).",
    "pca": "The embeddings projected on their two leading directions: a 2-D shadow, so overlap "
    "here need not mean overlap in the full space.",
}

# the registry's metric groups, in the order the full table folds them, with their titles
GROUP_TITLES = {
    "task": "Task",
    "separation": "Score separation",
    "geometry": "Embedding geometry",
    "logits": "Logits and margins",
    "calibration": "Calibration",
    "verification": "Verification (pairs)",
    "retrieval": "Retrieval",
    "head": "Margin head",
    "views": "Views",
    "segmentation": "Segmentation",
    "data": "Data",
}
LOGIT_COLUMN_GROUP = "logit columns"  # logits.colJ.* keys: folded apart, they can be hundreds


def fmt(v) -> str:
    """A number for people: integers plainly, others with 4 significant digits."""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == int(v) and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4g}"
    return str(v)


def finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def interval_text(report, name: str) -> str:
    """ "[low, high]" of a metric's interval, or "" when it has none."""
    iv = getattr(report, "intervals", {}).get(name)
    if not iv:
        return ""
    method = (getattr(report, "interval_methods", None) or {}).get(name, "")
    if iv[0] == iv[1] and method.startswith("exact"):
        return "exact"  # a count or a setting, not an estimate
    return f"[{fmt(float(iv[0]))}, {fmt(float(iv[1]))}]"


def level_text(report) -> str:
    level = getattr(report, "interval_level", None)
    return f"{level:.0%} interval" if level else "interval"


def direction_text(name: str) -> str:
    """ "higher" / "lower" (is better) or "" for a descriptive metric."""
    return _direction(name) or ""


def arrow(name: str) -> str:
    return {"higher": "\u2191", "lower": "\u2193"}.get(_direction(name) or "", "")


def meaning(name: str) -> str:
    m = info(name)
    return m.meaning if m is not None else ""


def group_of(name: str) -> str:
    if name.startswith("logits.col"):
        return LOGIT_COLUMN_GROUP
    m = info(name)
    return m.group if m is not None else "other"


def group_title(group: str) -> str:
    if group == LOGIT_COLUMN_GROUP:
        return "Logit columns (per column and true class)"
    return GROUP_TITLES.get(group, group.replace("_", " ").capitalize())


def grouped_metrics(report) -> list[tuple[str, list[str]]]:
    """The report's metric names by registry group, groups in GROUP_TITLES order (then others,
    then the logit column statistics), names in report order."""
    groups: dict[str, list[str]] = {}
    for name in report.metrics:
        groups.setdefault(group_of(name), []).append(name)
    order = [g for g in GROUP_TITLES if g in groups]
    order += [g for g in groups if g not in GROUP_TITLES and g != LOGIT_COLUMN_GROUP]
    if LOGIT_COLUMN_GROUP in groups:
        order.append(LOGIT_COLUMN_GROUP)
    return [(g, groups[g]) for g in order]


def sampled_text(report, name: str) -> str:
    """ "sampled 2000 of 5000" for a metric computed on a sample, else ""."""
    s = report.sampled.get(name)
    if s and not s.get("exact", True):
        return f"sampled {fmt(s['sample_size'])} of {fmt(s['population'])}"
    return ""


def note_text(report, name: str) -> str:
    """Why a metric is nan or how it was obtained, and whether it was computed on a sample."""
    note = report.reasons.get(name, "")
    sampled = sampled_text(report, name)
    if sampled:
        note = (note + "; " if note else "") + sampled
    return note


def shown_metrics(report, names) -> tuple[list[str], dict[str, list[str]]]:
    """Of ``names``, those in the report with a finite value, and the others present (nan)
    grouped by their reason: a report does not show an undefined metric as a number."""
    shown, undefined = [], {}
    for name in names:
        if name not in report.metrics:
            continue
        if finite(report.metrics[name]):
            shown.append(name)
        else:
            why = report.reasons.get(name) or "undefined on this data"
            undefined.setdefault(why, []).append(name)
    return shown, undefined


def undefined_line(undefined: dict[str, list[str]]) -> str:
    """ "Not defined here: f1, pred_positive_rate (defined for binary models only)." or ""."""
    if not undefined:
        return ""
    parts = [f"{', '.join(names)} ({why})" for why, names in undefined.items()]
    return "Not defined here: " + "; ".join(parts) + "."


def evidence_text(e) -> str:
    """One line of a recommendation's or a trend verdict's evidence: value (or values),
    interval, standard error, epochs, rule, baseline; or a rule's track record."""
    if not isinstance(e, dict):
        return fmt(e)
    if "fired" in e and "confirmed" in e:  # a trend rule's track record
        return (
            f"conclusive in {fmt(e['fired'])} runs, confirmed on held-out data in "
            f"{fmt(e['confirmed'])}"
        )
    if "fired" in e:  # a recommendation rule's track record
        return (
            f"fired in {fmt(e['fired'])} models; {e.get('target') or 'target'} improved in "
            f"{fmt(e.get('target_improved'))}, task metric not worse in "
            f"{fmt(e.get('task_not_worse'))}"
        )
    parts = []
    if "values" in e:
        parts.append(", ".join(fmt(v) for v in e["values"]))
    if "value" in e or not parts:
        parts.append(fmt(e.get("value")))
    if isinstance(e.get("interval"), (list, tuple)) and len(e["interval"]) == 2:
        parts.append(f"[{fmt(e['interval'][0])}, {fmt(e['interval'][1])}]")
    if "se" in e:
        parts.append(f"(se {fmt(e['se'])})")
    if "epoch" in e:
        parts.append(f"at epoch {e['epoch']}")
    if "epochs" in e and e["epochs"]:
        parts.append(f"over epochs {e['epochs'][0]}-{e['epochs'][-1]}")
    if "threshold" in e:
        parts.append(f"(rule: {e.get('op', '')} {fmt(e['threshold'])})")
    if "baseline" in e:
        parts.append(f"(baseline {fmt(e['baseline'])})")
    if "how" in e:
        parts.append(f"[{e['how']}]")
    return " ".join(parts)


def class_columns(report):
    """The classes table as text, for the page and report.md: ``(table, header, cells,
    by_label)`` where ``cells(row)`` is one class's cells and ``by_label`` maps a label to its
    (median margin, share of negative margins) when the report has them; None without classes."""
    table = report.sections.get("classes")
    if not isinstance(table, ClassTable) or not table.rows:
        return None
    margins = report.sections.get("class_margins")
    by_label = {}
    if isinstance(margins, ClassMargins):
        by_label = {
            v: (margins.median[i], margins.negative_fraction[i])
            for i, v in enumerate(margins.label)
        }
    logits = table.rows[0].recall is not None
    header = ["class", "samples", "mean norm", "spread"]
    header += ["recall", "predicted"] if logits else []
    header += ["median margin", "negative margins"] if by_label else []

    def cells(r) -> list[str]:
        row = [str(r.label), str(r.count), fmt(r.mean_norm), fmt(r.spread)]
        if logits:
            row += [fmt(r.recall), fmt(r.predicted)]
        if by_label:
            med, neg = by_label.get(r.label, (float("nan"), float("nan")))
            row += [fmt(med), fmt(neg)]
        return row

    return table, header, cells, by_label


# ----------------------------------------------------------------------------------------------
# where the report came from
# ----------------------------------------------------------------------------------------------


def _name(path) -> str:
    return PurePath(str(path)).name or str(path)


def report_title(report) -> str:
    """What the report is about: the model's name when known (``meta["model"]``, set by whoever
    made the report, like ``meta["dataset"]`` for the data), else the checkpoint's or the
    embedding file's name, else the model's class, else its classes and dimension."""
    meta = report.meta if isinstance(report.meta, dict) else {}
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    if meta.get("model"):
        return str(meta["model"])
    if source.get("checkpoint"):
        return _name(source["checkpoint"])
    if source.get("model"):
        return str(source["model"])
    if source.get("embeddings"):
        return f"Embeddings {_name(source['embeddings'])}"
    k = report.metrics.get("num_classes")
    what = f"{fmt(k)} classes" if finite(k) else "a model"
    dim = meta.get("dim")
    return f"Embeddings of {what}" + (f", D = {dim}" if dim else "")


def provenance(report, created: str | None = None) -> list[tuple[str, str]]:
    """(label, text) lines of the report's header: model, data, samples and classes, logits
    and head, options, when it was written and by which embscope."""
    meta = report.meta if isinstance(report.meta, dict) else {}
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    m = report.metrics
    rows: list[tuple[str, str]] = []
    if source.get("checkpoint"):
        kind = source.get("checkpoint_kind")
        rows.append(("checkpoint", str(source["checkpoint"]) + (f" ({kind})" if kind else "")))
    if source.get("model"):
        rows.append(("model", str(source["model"])))
    if source.get("embedding"):
        rows.append(("embedding", str(source["embedding"])))
    data = meta.get("dataset") or source.get("data") or source.get("embeddings")
    if data:
        rows.append(("data", str(data)))
    n, k = m.get("n"), m.get("num_classes")
    counts = (
        (meta.get("data") or {}).get("class_counts") if isinstance(meta.get("data"), dict) else None
    )
    samples = f"n = {fmt(n)}" if finite(n) else "n unknown"
    if finite(k):
        samples += f", {fmt(k)} classes"
    if counts and len(counts) <= 10:
        samples += " (" + ", ".join(f"{c}: {v}" for c, v in counts.items()) + ")"
    dropped = sum(
        m.get(key, 0.0) for key in ("nonfinite_count", "zero_norm_count") if finite(m.get(key))
    )
    if dropped:
        samples += f"; {fmt(dropped)} rows skipped (NaN/Inf or all-zero)"
    rows.append(("samples", samples))
    outputs = []
    if meta.get("dim"):
        outputs.append(f"embeddings D = {meta['dim']} ({meta.get('space', 'cosine')} space)")
    cols = meta.get("logit_columns")
    if cols:
        outputs.append("one binary logit" if cols == 1 else f"{cols} logit columns")
    head = report.sections.get("head")
    if head is not None and getattr(head, "kind", None):
        settings = [
            f"{key} = {fmt(float(v))}"
            for key, v in (("s", head.s), ("m", head.m))
            if v is not None and finite(float(v))
        ]
        outputs.append(
            f"{head.kind} margin head" + (f" ({', '.join(settings)})" if settings else "")
        )
    if outputs:
        rows.append(("outputs", "; ".join(outputs)))
    written = created or meta.get("created") or _first_rendered(report)
    version = meta.get("embscope_version")
    rows.append(("written", written + (f" by embscope {version}" if version else "")))
    return rows


def now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _first_rendered(report) -> str:
    """When this report object was first rendered: every page and summary of one report says
    the same time, whichever minute it is rendered again in."""
    stamp = getattr(report, "_rendered_at", None)
    if stamp is None:
        stamp = now_text()
        try:
            object.__setattr__(report, "_rendered_at", stamp)
        except (AttributeError, TypeError):  # an object without a __dict__: no cache
            pass
    return stamp
