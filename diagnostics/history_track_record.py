"""Each trend rule's track record on held-out data, written by
``python benchmarks/history_check.py --write`` (docs/history.md has the table and the method).

A rule whose verdicts were confirmed on the held-out half of the validation set in at least 90%
of the runs where it was conclusive is a warning when broken; the others are information.
"""

TRACK_RECORD: dict = {}
