"""The CI check as a pytest test: the model trained now is no worse than ``baseline.json``.

``check_regression`` compares every metric that has a direction (higher or lower is better)
with the baseline's, with a tolerance: absolute for metrics in [-1, 1], relative beyond. Counts
of samples (gray zone, confident errors) move by whole samples, so they get a looser tolerance.

Run: ``python -m pytest examples/ci_regression``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from train_model import train_and_save  # noqa: E402

from embscope.diagnostics import Report, check_regression, diagnose_model  # noqa: E402

TOLERANCE = {"*": 0.02, "gray_zone_count": 0.25, "confident_error_count": 0.25}


def test_model_is_no_worse_than_the_baseline(tmp_path: Path) -> None:
    model, x, y = train_and_save(tmp_path)
    report = diagnose_model(model, (x, y))
    baseline = Report.from_json((HERE / "baseline.json").read_text())
    regressions = check_regression(report, baseline, tolerance=TOLERANCE)
    assert not regressions, "\n".join(str(r) for r in regressions)
