"""The metric registry is the one description of every report key: every key a report can
hold has a record, and the README's metric table agrees with the records."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from embscope.diagnostics import diagnose, direction
from embscope.diagnostics import registry as R
from embscope.losses import ArcFaceHead

from .conftest import blobs

README = Path(__file__).resolve().parents[2] / "README.md"


def _reports():
    g = np.random.default_rng(0)
    x, y = blobs(n=120, d=6, k=3, seed=1)
    yield diagnose(x, y)  # embeddings only
    yb = y % 2
    yield diagnose(x, yb, g.normal(size=120))  # one binary logit
    yield diagnose(x, yb, g.normal(size=(120, 2)), head=ArcFaceHead(6, 2))  # two columns, head
    yield diagnose(x, y, g.normal(size=(120, 3)))  # narrow multi-class
    xw, yw = blobs(n=200, d=6, k=20, seed=2)
    yield diagnose(xw, yw, g.normal(size=(200, 20)))  # wide logits


def test_every_report_key_has_a_record():
    seen = set()
    for report in _reports():
        for key in report.metrics:
            assert R.info(key) is not None, key
            seen.add(key)
    assert len(seen) > 60


def _readme_rows():
    text = README.read_text()
    table = text[text.index("| metric (report key) |") :]
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        keys = re.findall(r"`([^`]+)`", cells[0])
        yield keys, cells[3]


def _concrete(key: str) -> str:
    """A README family name such as logits.colJ.classK.* as one concrete key."""
    key = key.replace("colJ", "col0").replace("classK", "class1")
    return re.sub(r"\{[^}]*\}|\*", "mean", key)


def test_readme_metric_table_agrees_with_the_registry():
    documented = set()
    for keys, better in _readme_rows():
        words = [w.strip() for w in better.split("/")]
        wanted = [None if "descriptive" in w else w for w in words]
        if len(wanted) == 1:
            wanted = wanted * len(keys)
        assert len(wanted) == len(keys), (keys, better)
        for key, want in zip(keys, wanted, strict=True):
            concrete = _concrete(key)
            record = R.info(concrete)
            assert record is not None, key
            assert direction(concrete) == want, (key, want)
            documented.add(record.key)
    missing = {m.key for m in R.METRICS} - documented
    assert not missing, f"registry records without a README row: {sorted(missing)}"


@pytest.mark.parametrize("key", ["accuracy", "eer", "recall_at_1", "gray_zone_fraction"])
def test_compare_and_summary_read_the_registry(key):
    from embscope.diagnostics.advice import COMPARE_KEYS
    from embscope.diagnostics.render import KEY_METRICS

    assert key in COMPARE_KEYS and key in KEY_METRICS
    assert R.info(key).compared and R.info(key).headline
