"""Each trend rule's track record on held-out data, written by
``python benchmarks/history_check.py --write`` (docs/history.md has the table and the method).

A rule whose verdicts were confirmed on the held-out half of the validation set in at least 90%
of the runs where it was conclusive is a warning when broken; the others are information.
"""

TRACK_RECORD: dict = {
    "margins_rising": {
        "severity": "info",
        "counts": {"fired": 53, "confirmed": 53, "broken_fired": 4, "broken_confirmed": 4},
    },
    "gray_zone_falling": {
        "severity": "info",
        "counts": {"fired": 36, "confirmed": 36, "broken_fired": 6, "broken_confirmed": 6},
    },
    "confident_errors_falling": {
        "severity": "warning",
        "counts": {"fired": 30, "confirmed": 30, "broken_fired": 28, "broken_confirmed": 28},
    },
    "ks_above_threshold": {
        "severity": "info",
        "counts": {"fired": 60, "confirmed": 59, "broken_fired": 1, "broken_confirmed": 1},
    },
    "fisher_above_threshold": {
        "severity": "warning",
        "counts": {"fired": 55, "confirmed": 55, "broken_fired": 24, "broken_confirmed": 24},
    },
    "intra_below_inter": {
        "severity": "info",
        "counts": {"fired": 71, "confirmed": 71, "broken_fired": 0, "broken_confirmed": 0},
    },
    "train_val_gap": {
        "severity": "warning",
        "counts": {"fired": 29, "confirmed": 29, "broken_fired": 23, "broken_confirmed": 23},
    },
    "steady_task_metric": {
        "severity": "info",
        "counts": {"fired": 58, "confirmed": 56, "broken_fired": 0, "broken_confirmed": 0},
    },
    "best_epoch": {
        "severity": "info",
        "counts": {"fired": 3, "confirmed": 3, "broken_fired": 3, "broken_confirmed": 3},
    },
}
