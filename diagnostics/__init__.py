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
from .history import History
from .metrics import (
    Geometry,
    HardExamples,
    ScoreSeparation,
    centroid_confusion,
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
    margin_summary,
    nc1,
    ovr_score_separation,
    prediction_margins,
    score_separation,
)
from .model import diagnose_model, embed
from .pairs import PairSample, pair_similarities
from .ranking import Ranking, compare_many
from .report import Recommendation, Report, direction
from .retrieval import RetrievalResult, knn_retrieval
from .segmentation_model import diagnose_segmentation_model
from .verification import VerificationResult, verification_metrics
from .views import ViewsDiagnoser, diagnose_views

__all__ = [
    "CalibrationResult",
    "Comparison",
    "DEFAULT_THRESHOLDS",
    "Diagnoser",
    "Geometry",
    "HardExamples",
    "History",
    "InputError",
    "PairSample",
    "Ranking",
    "Recommendation",
    "Regression",
    "Report",
    "RetrievalResult",
    "ScoreSeparation",
    "VerificationResult",
    "ViewsDiagnoser",
    "adacos_scale",
    "calibration_metrics",
    "centroid_confusion",
    "check_regression",
    "classification_scores",
    "compare",
    "compare_many",
    "diagnose",
    "diagnose_model",
    "diagnose_segmentation_model",
    "diagnose_views",
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
    "knn_retrieval",
    "ks_distance",
    "logit_column_stats",
    "margin_summary",
    "nc1",
    "normface_scale",
    "ovr_score_separation",
    "pair_similarities",
    "prediction_margins",
    "probe_margin_leak",
    "recommend",
    "score_separation",
    "verification_metrics",
]
