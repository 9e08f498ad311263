"""Metrics as plain functions, each built from an ``_update`` (batch -> state) and a
``_compute`` (state -> result) pair that the streaming :class:`Diagnoser` shares, by topic:
``geometry`` (embeddings by class), ``scores`` (score distributions), ``logits`` (predictions,
margins, column statistics, hard examples). This module gathers them under one name.

Geometry is measured in cosine space by default (rows L2-normalised), Euclidean on request.
Every function accepts torch tensors or numpy arrays; labels may be any integers.
"""

from __future__ import annotations

from ._threads import one_thread  # noqa: F401
from .geometry_metrics import (  # noqa: F401
    _DENSE_CLASSES,
    _NC1_BLOCK,
    Geometry,
    _centroid_confusion_compute,
    _class_sums_update,
    _geometry_compute,
    _geometry_inputs,
    _nc1_compute,
    centroid_confusion,
    fisher_ratio,
    geometry,
    intra_inter,
    nc1,
    prepare_embeddings,
)
from .logits import (  # noqa: F401
    CONFIDENT,
    GRAY_ZONE_BINARY,
    GRAY_ZONE_MULTICLASS,
    HardExamples,
    _column_stats_compute,
    _column_stats_update,
    _confusion_update,
    _f1_from_confusion,
    _hard_compute,
    _hardness_update,
    _margin_summary,
    _margins,
    classification_scores,
    flatten_column_stats,
    hard_examples,
    logit_column_stats,
    margin_summary,
    prediction_margins,
    probabilities,
)
from .scores import (  # noqa: F401
    ScoreSeparation,
    _histogram_update,
    _ovr_from_rows,
    _ovr_separation,
    _ovr_state,
    fisher_score,
    hellinger_distance,
    hellinger_from_counts,
    histogram_edges,
    ks_distance,
    ovr_score_separation,
    positive_log_odds,
    score_separation,
)

NAN = float("nan")
