"""Embedding-space diagnostics: streaming metrics, reports and recommendations.

>>> from embscope.diagnostics import diagnose
>>> report = diagnose(embeddings, labels, logits)          # doctest: +SKIP
>>> report.metrics["fisher_ratio"], report.recommendations  # doctest: +SKIP
"""

from .advice import (
    DEFAULT_THRESHOLDS,
    Comparison,
    Regression,
    adacos_scale,
    check_regression,
    compare,
    normface_scale,
    recommend,
)
from .calibration import CalibrationResult, calibration_metrics
from .diagnoser import Diagnoser, diagnose
from .errors import InputError
from .heads import find_margin_head, head_params, is_margin_head, probe_margin_leak
from .metrics import (
    Geometry,
    HardExamples,
    ScoreSeparation,
    classification_scores,
    fisher_ratio,
    fisher_score,
    geometry,
    hard_examples,
    hellinger_distance,
    hellinger_from_counts,
    intra_inter,
    ks_distance,
    logit_column_stats,
    nc1,
    prediction_margins,
    score_separation,
)
from .model import diagnose_model, embed
from .report import Recommendation, Report, direction

__all__ = [
    "DEFAULT_THRESHOLDS",
    "CalibrationResult",
    "Comparison",
    "Diagnoser",
    "Geometry",
    "HardExamples",
    "InputError",
    "Recommendation",
    "Regression",
    "Report",
    "ScoreSeparation",
    "adacos_scale",
    "calibration_metrics",
    "check_regression",
    "classification_scores",
    "compare",
    "diagnose",
    "diagnose_model",
    "direction",
    "embed",
    "find_margin_head",
    "fisher_ratio",
    "fisher_score",
    "geometry",
    "hard_examples",
    "head_params",
    "hellinger_distance",
    "hellinger_from_counts",
    "intra_inter",
    "is_margin_head",
    "ks_distance",
    "logit_column_stats",
    "nc1",
    "normface_scale",
    "prediction_margins",
    "probe_margin_leak",
    "recommend",
    "score_separation",
]
