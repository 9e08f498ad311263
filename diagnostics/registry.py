"""Every metric a report can hold, described once.

One record per metric (or family of metrics, by pattern): its direction, range, group, whether
it is a headline metric (the summary and the report's key metrics), whether it is a scale-free
quality metric (``compared``), whether the regression gate and ``compare``'s verdict judge it by
default (``gated``), whether it is computed on a bounded subset of the reservoir, a one-line
meaning, and the independent reference the tests check it against. ``direction()``, the
summary, ``compare``, the gate and the renderers read this table; a test checks the README's
metric table against it.

Over 400 lines because it is the table: one record per metric, kept in one place on purpose
(splitting it by topic would bring back the scattered lists it replaced).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class MetricInfo:
    """What is known about one report key (``key`` is a regex for families)."""

    key: str
    group: (
        str  # task, separation, geometry, verification, retrieval, logits, calibration, head, data
    )
    direction: str | None  # "higher", "lower" or None (descriptive)
    range: str
    meaning: str
    oracle: str = ""
    headline: bool = False
    compared: bool = False  # scale-free quality metrics (the summary's comparison counts)
    gated: bool = False  # judged by default by the regression gate and compare's verdict
    # the gate's tolerance for this metric when none is given for it (None: the global 0.02);
    # about 2.5 seed-to-seed standard deviations of small digits models (docs/cli.md)
    tolerance: float | None = None
    subset: str | None = None  # "pair" / "retrieval": computed on that bounded reservoir subset

    def matches(self, name: str) -> bool:
        return re.fullmatch(self.key, name) is not None


def _m(key, group, direction, range_, meaning, oracle="", **flags) -> MetricInfo:
    return MetricInfo(key, group, direction, range_, meaning, oracle, **flags)


METRICS: tuple[MetricInfo, ...] = (
    # the data
    _m("n", "data", None, "[0, inf)", "samples used", headline=True),
    _m("num_classes", "data", None, "[0, inf)", "classes present", headline=True),
    _m("nonfinite_count", "data", "lower", "[0, inf)", "rows with NaN/Inf (skipped)"),
    _m("zero_norm_count", "data", "lower", "[0, inf)", "all-zero rows in cosine space (skipped)"),
    # the task
    _m(
        "accuracy",
        "task",
        "higher",
        "[0, 1]",
        "share of argmax / P >= 0.5 predictions that are right",
        "scikit-learn accuracy_score",
        headline=True,
        compared=True,
        gated=True,
    ),
    _m(
        "f1",
        "task",
        "higher",
        "[0, 1]",
        "F1 of the positive class (binary)",
        "scikit-learn f1_score",
        headline=True,
        compared=True,
        gated=True,
    ),
    _m(
        "macro_f1",
        "task",
        "higher",
        "[0, 1]",
        "F1 averaged over classes",
        "scikit-learn f1_score(average='macro')",
        headline=True,
        compared=True,
        gated=True,
    ),
    # score separation
    _m(
        "score_ks",
        "separation",
        "higher",
        "[0, 1]",
        "KS statistic between the scores of the classes (one-vs-rest, macro, beyond two)",
        "scipy.stats.ks_2samp",
        headline=True,
        compared=True,
        gated=True,
        tolerance=0.05,
    ),
    _m(
        "score_hellinger",
        "separation",
        "higher",
        "[0, 1]",
        "Hellinger distance between the score histograms",
        "hand-derived",
        headline=True,
        compared=True,
        gated=True,
        tolerance=0.05,
    ),
    _m(
        "score_fisher",
        "separation",
        "higher",
        "[0, inf)",
        "(m1 - m0)^2 / (v1 + v0) of the scores",
        "numpy",
    ),
    # embedding geometry
    _m(
        "fisher_ratio",
        "geometry",
        "higher",
        "[0, inf)",
        "tr(S_B) / tr(S_W) of the embeddings",
        "scikit-learn calinski_harabasz_score",
        headline=True,
        compared=True,
        gated=True,
        tolerance=0.5,
    ),
    _m(
        "intra_mean",
        "geometry",
        "lower",
        "[0, 2]",
        "mean cosine distance over same-class pairs",
        "brute force over pairs",
    ),
    _m(
        "inter_mean",
        "geometry",
        "higher",
        "[0, 2]",
        "mean cosine distance over different-class pairs",
        "brute force over pairs",
    ),
    _m(
        "intra_inter_ratio",
        "geometry",
        "lower",
        "[0, inf)",
        "intra_mean / inter_mean",
        "brute force over pairs",
        headline=True,
        compared=True,
    ),
    _m("nc1", "geometry", "lower", "[0, inf)", "neural collapse Tr(S_W S_B^+) / C", "numpy pinv"),
    _m(
        "centroid_confusion_count",
        "geometry",
        "lower",
        "[0, inf)",
        "samples nearer another class's centroid than their own",
        "brute force",
    ),
    _m(
        "centroid_confusion_fraction",
        "geometry",
        "lower",
        "[0, 1]",
        "share of samples nearer another class's centroid",
        "brute force",
    ),
    # verification over pairs
    _m(
        "pair_ks",
        "verification",
        "higher",
        "[0, 1]",
        "KS between genuine and impostor cosine similarities",
        "scikit-learn roc_curve",
        headline=True,
        compared=True,
        gated=True,
        tolerance=0.05,
        subset="pair",
    ),
    _m(
        "pair_hellinger",
        "verification",
        "higher",
        "[0, 1]",
        "Hellinger between genuine and impostor similarity histograms",
        "brute force",
        subset="pair",
    ),
    _m(
        "eer",
        "verification",
        "lower",
        "[0, 1]",
        "equal error rate over genuine/impostor pairs",
        "scikit-learn roc_curve",
        headline=True,
        compared=True,
        gated=True,
        tolerance=0.03,
        subset="pair",
    ),
    _m(
        r"tar_at_far_1e-\d",
        "verification",
        "higher",
        "[0, 1]",
        "true accept rate at a false accept rate",
        "scikit-learn roc_curve",
        subset="pair",
    ),
    _m(
        "roc_auc",
        "verification",
        "higher",
        "[0, 1]",
        "area under the verification ROC",
        "scikit-learn roc_auc_score",
        subset="pair",
    ),
    # retrieval
    _m(
        "recall_at_1",
        "retrieval",
        "higher",
        "[0, 1]",
        "leave-one-out recall@1",
        "pytorch-metric-learning AccuracyCalculator",
        headline=True,
        compared=True,
        gated=True,
        tolerance=0.04,
        subset="retrieval",
    ),
    _m(
        r"recall_at_\d+",
        "retrieval",
        "higher",
        "[0, 1]",
        "leave-one-out recall@k",
        "pytorch-metric-learning AccuracyCalculator",
        subset="retrieval",
    ),
    _m(
        "map_at_r",
        "retrieval",
        "higher",
        "[0, 1]",
        "MAP@R (Musgrave et al. 2020)",
        "pytorch-metric-learning AccuracyCalculator",
        headline=True,
        compared=True,
        gated=True,
        tolerance=0.04,
        subset="retrieval",
    ),
    # logits
    _m(
        "margin_mean",
        "logits",
        "higher",
        "(-inf, inf)",
        "mean logit margin (true minus largest other)",
        "brute force",
    ),
    _m(
        "margin_median",
        "logits",
        "higher",
        "(-inf, inf)",
        "median logit margin",
        "brute force",
        headline=True,
    ),
    _m(
        "margin_p05",
        "logits",
        "higher",
        "(-inf, inf)",
        "5th percentile of the logit margin",
        "numpy percentile",
    ),
    _m(
        "negative_margin_fraction",
        "logits",
        "lower",
        "[0, 1]",
        "share of samples with a negative margin",
        "brute force",
    ),
    _m(
        "gray_zone_fraction",
        "logits",
        "lower",
        "[0, 1]",
        "share of samples near the decision boundary",
        "brute force",
        headline=True,
        compared=True,
    ),
    _m(
        "gray_zone_count",
        "logits",
        "lower",
        "[0, inf)",
        "samples near the decision boundary",
        "brute force",
    ),
    _m(
        "confident_error_count",
        "logits",
        "lower",
        "[0, inf)",
        "wrong with probability >= 0.9",
        "brute force",
    ),
    _m(
        "saturation_fraction",
        "logits",
        "lower",
        "[0, 1]",
        "share of saturated probabilities",
        "brute force",
    ),
    _m(
        "prob_mean",
        "logits",
        None,
        "[0, 1]",
        "mean P(positive) (multi-class: mean top probability)",
        headline=True,
    ),
    _m("pred_positive_rate", "logits", None, "[0, 1]", "share predicted positive", headline=True),
    _m("label_positive_rate", "logits", None, "[0, 1]", "share labelled positive"),
    _m(
        r"logits\.col\d+\.(class\d+\.)?(mean|std|min|max)",
        "logits",
        None,
        "(-inf, inf)",
        "per logit column (and per true class) statistics",
        "numpy",
    ),
    # calibration
    _m(
        "ece",
        "calibration",
        "lower",
        "[0, 1]",
        "top-label expected calibration error, 15 bins",
        "torchmetrics MulticlassCalibrationError(norm='l1')",
        gated=True,
        tolerance=0.03,
    ),
    _m(
        "mce",
        "calibration",
        "lower",
        "[0, 1]",
        "top-label maximum calibration error, 15 bins",
        "torchmetrics MulticlassCalibrationError(norm='max')",
    ),
    _m(
        "brier",
        "calibration",
        "lower",
        "[0, 2]",
        "Brier score",
        "brute force",
        gated=True,
        tolerance=0.05,
    ),
    _m(
        "nll",
        "calibration",
        "lower",
        "[0, inf)",
        "mean negative log-likelihood",
        "scikit-learn log_loss",
    ),
    _m(
        "fitted_temperature",
        "calibration",
        None,
        "(0, inf)",
        "NLL-optimal temperature",
        "scipy minimize_scalar",
    ),
    _m(
        "fitted_scale",
        "calibration",
        None,
        "(0, inf)",
        "s / T of a cosine-logit margin head",
        "scipy minimize_scalar",
    ),
    _m(
        r"(ece|nll)_at_fitted_temperature",
        "calibration",
        None,
        "[0, inf)",
        "ECE / NLL of these logits divided by the fitted temperature (in-sample)",
        "torchmetrics / scikit-learn on the divided logits",
    ),
    # margin heads
    _m(
        "angle_true_mean",
        "head",
        "lower",
        "[0, 180]",
        "mean angle to the own class weight (degrees)",
        "brute force",
    ),
    _m(
        "angle_true_p99",
        "head",
        "lower",
        "[0, 180]",
        "99th percentile of the angle to the own class weight (degrees)",
        "numpy percentile",
    ),
    _m(
        "angle_nearest_other_mean",
        "head",
        "higher",
        "[0, 180]",
        "mean angle to the nearest other class weight",
        "brute force",
    ),
    _m(
        "fallback_fraction",
        "head",
        "lower",
        "[0, 1]",
        "share with theta + m > pi (ArcFace's fallback)",
        "brute force",
    ),
    _m(
        r"head\.(s|m)",
        "head",
        None,
        "(0, inf)",
        "the margin head's scale s and margin m (radians)",
        headline=True,
    ),
    _m("head.num_classes", "head", None, "[1, inf)", "the margin head's number of classes"),
    _m(
        "head.margin_leak",
        "head",
        "lower",
        "{0, 1}",
        "1 when eval-mode logits change if labels are passed",
    ),
    _m(
        r"head\.leak_(accuracy|f1|macro_f1)_(with|without)_labels",
        "head",
        None,
        "[0, 1]",
        "accuracy / F1 / macro-F1 of the eval-mode logits with labels passed to forward (what "
        "a validation loop that passes them reports) and without (the deployed model), when "
        "the margin leaks",
        "scikit-learn accuracy_score / f1_score",
    ),
    _m(
        "head.centroid_alignment",
        "head",
        "higher",
        "[-1, 1]",
        "class weights against class means, each centred",
        "brute force",
    ),
    _m(
        "head.looks_untrained",
        "head",
        "lower",
        "{0, 1}",
        "the head looks untrained (or weights missing)",
    ),
    _m("head.dead_class_count", "head", "lower", "[0, inf)", "classes present but never predicted"),
    _m(
        "head.min_weight_angle",
        "head",
        "higher",
        "[0, 180]",
        "smallest angle between class weights (degrees)",
        "brute force",
    ),
    _m(
        "head.weight_norm_cv",
        "head",
        "lower",
        "[0, inf)",
        "spread of weight norms (std / mean)",
        "numpy",
    ),
    # dense predictions (segmentation_metrics.py): exact over the labelled pixels
    _m(
        r"seg\.class\d+\.(iou|f1|precision|recall)",
        "segmentation",
        "higher",
        "[0, 1]",
        "per class, over the labelled pixels: TP / (TP + FP + FN), 2 TP / (2 TP + FP + FN), "
        "TP / (TP + FP), TP / (TP + FN)",
        "scikit-learn jaccard_score / f1_score / precision_score / recall_score (average=None)",
    ),
    _m(
        r"seg\.class\d+\.pixel_fraction",
        "segmentation",
        None,
        "[0, 1]",
        "the class's share of the labelled pixels",
        "numpy",
    ),
    _m(
        r"seg\.class\d+\.presence_recall",
        "segmentation",
        "higher",
        "[0, 1]",
        "of the images containing the class, the share where >= 1 of its pixels is predicted right",
        "brute force",
    ),
    _m(
        r"seg\.(class\d+\.)?easy_loss_share",
        "segmentation",
        None,
        "[0, 1]",
        "share of the (class's) summed cross-entropy from easy pixels (p_true > 0.9)",
        "brute force",
    ),
    _m(
        "miou",
        "segmentation",
        "higher",
        "[0, 1]",
        "mean IoU over the classes present in the masks",
        "torchmetrics JaccardIndex(task='multiclass', average='none'), averaged",
        headline=True,
        compared=True,
        gated=True,
    ),
    _m(
        "mean_f1",
        "segmentation",
        "higher",
        "[0, 1]",
        "mean pixel F1 (Dice) over the classes present in the masks",
        "scikit-learn f1_score(average=None), averaged",
        headline=True,
        compared=True,
        gated=True,
    ),
    _m(
        "fw_iou",
        "segmentation",
        "higher",
        "[0, 1]",
        "IoU weighted by each class's pixel fraction",
        "scikit-learn jaccard_score(average='weighted') on labelled pixels",
        compared=True,
    ),
    _m(
        "imbalance_ratio",
        "segmentation",
        None,
        "[1, inf)",
        "pixels of the largest class over those of the smallest (classes present)",
        "numpy",
        headline=True,
    ),
    _m("seg.images", "segmentation", None, "[0, inf)", "images (masks) seen"),
    _m("seg.ignored_count", "segmentation", None, "[0, inf)", "mask pixels equal to ignore_index"),
    _m(
        "seg.nonfinite_count",
        "segmentation",
        "lower",
        "[0, inf)",
        "labelled pixels whose logits or embeddings hold NaN/Inf (skipped)",
    ),
    # several views of the same samples (views_report.py); views.* and fusion_gain.* below
    _m(
        r"agreement\.[\w-]+\.[\w-]+\.(nn_agreement|knn_overlap)",
        "views",
        None,
        "[0, 1]",
        "share of samples with the same nearest neighbour in two views / mean share of their "
        "10 nearest neighbours in common",
        "brute force",
    ),
    _m(
        r"agreement\.[\w-]+\.[\w-]+\.spearman",
        "views",
        None,
        "[-1, 1]",
        "Spearman correlation of two views' cosine similarities over pairs",
        "scipy.stats.spearmanr",
    ),
    _m(
        r"agreement\.[\w-]+\.[\w-]+\.(only_first_right|only_second_right|complementarity)",
        "views",
        None,
        "[0, 1]",
        "share of samples whose nearest neighbour has their class in one view and not the other",
        "brute force",
    ),
    _m(
        r"attention\.[\w-]+\.(class-?\d+\.)?(mean|std)",
        "views",
        None,
        "[0, 1]",
        "a view's mean attention weight (per class) and its standard deviation",
        "numpy",
    ),
    _m(
        "attention.balance_gap",
        "views",
        "lower",
        "[0, 2]",
        "sum over views of |mean weight - 1/V|",
        "numpy",
    ),
    _m(
        "attention.degenerate_fraction",
        "views",
        "lower",
        "[0, 1]",
        "share of samples whose largest attention weight exceeds 0.9",
        "numpy",
    ),
)

# Families whose records derive from another metric's: ``views.<name>.<metric>`` is a view's own
# <metric>; ``fusion_gain.<metric>`` the fused view's <metric> minus the best other view's.
_DERIVED = (
    (r"views\.[\w-]+\.", "views", "of one view: "),
    (r"fusion_gain\.", "views", "fused minus the best single view: "),
)


def info(name: str) -> MetricInfo | None:
    """The record of report key ``name`` (the first whose pattern matches), or None."""
    for m in METRICS:
        if m.matches(name):
            return m
    for prefix, group, meaning in _DERIVED:
        head = re.match(prefix, name)
        inner = info(name[head.end() :]) if head else None
        if inner is not None:
            span = inner.range
            if prefix.startswith("fusion"):  # a difference of two values of the metric
                span = "[-1, 1]" if inner.range == "[0, 1]" else "(-inf, inf)"
            return replace(
                inner,
                key=prefix + inner.key,
                group=group,
                range=span,
                meaning=meaning + inner.meaning,
                headline=False,
                compared=False,
                gated=False,
                tolerance=None,
            )
    return None


def direction(name: str) -> str | None:
    """ "higher" or "lower" when that is better for metric ``name``; None for descriptive ones."""
    m = info(name)
    return None if m is None else m.direction


def _plain(keys) -> tuple[str, ...]:
    out = []
    for key in keys:
        out += (
            [key.replace("\\", "")]
            if "(" not in key
            else [key.replace(r"head\.(s|m)", "head.s"), key.replace(r"head\.(s|m)", "head.m")]
        )
    return tuple(out)


def headline_keys() -> tuple[str, ...]:
    """Keys of the headline metrics, in table order."""
    return _plain(m.key for m in METRICS if m.headline)


def compared_keys() -> tuple[str, ...]:
    """Keys of the scale-free quality metrics (``compared``)."""
    return _plain(m.key for m in METRICS if m.compared)


def gated_keys() -> tuple[str, ...]:
    """Keys the regression gate and ``compare``'s verdict judge by default: the task (accuracy,
    F1), score separation (KS, Hellinger), the embeddings' Fisher ratio, verification (pair KS,
    EER), retrieval (recall@1, MAP@R) and calibration (ECE, Brier). Not NLL: a few confident
    errors move it more than retraining with another seed does on its own (``--gate nll``)."""
    return _plain(m.key for m in METRICS if m.gated)


def gate_tolerance(name: str) -> float | None:
    """The gate's default tolerance of metric ``name`` (None: the global default applies)."""
    m = info(name)
    return None if m is None else m.tolerance


def is_count(name: str) -> bool:
    """Whether metric ``name`` counts samples (``*_count`` with a direction): the gate judges it
    as a rate, count / n."""
    m = info(name)
    return m is not None and m.direction is not None and name.endswith("_count")


def subset_of(name: str) -> str | None:
    """ "pair" / "retrieval" for metrics computed on that bounded reservoir subset, else None."""
    m = info(name)
    return None if m is None else m.subset


# the metrics that need the vectors (computed on the reservoir), and those over its pairs
VECTOR_KEYS = (
    "nc1",
    "centroid_confusion_count",
    "pair_ks",
    "pair_hellinger",
    "eer",
    "tar_at_far_1e-2",
    "tar_at_far_1e-3",
    "tar_at_far_1e-4",
    "roc_auc",
    "recall_at_1",
    "recall_at_5",
    "map_at_r",
)
PAIR_KEYS = tuple(k for k in VECTOR_KEYS if subset_of(k) == "pair")
