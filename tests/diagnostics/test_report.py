import base64
import json
import math

import numpy as np
import pandas as pd
import pytest

from embscope.diagnostics import Report, diagnose

from .conftest import blobs, same_metrics


@pytest.fixture(scope="module")
def report():
    x, y = blobs(n=200, d=6, k=2, seed=3)
    z = np.random.default_rng(0).normal(size=200) + 2 * y - 1
    ids = [f"img/{i:03d}.png" for i in range(200)]
    return diagnose(x, y, z, ids=ids, reservoir_size=0)


def test_json_round_trip(report):
    text = report.to_json()
    data = json.loads(text)
    assert data["schema"] == "embscope.report/1"
    back = Report.from_json(text)
    same_metrics(report.metrics, back.metrics, rel=0, abs_=0)
    assert [r.to_dict() for r in back.recommendations] == [
        r.to_dict() for r in report.recommendations
    ]
    assert back.to_json() == text
    assert math.isnan(back.metrics["nc1"])  # nan survives as "nan"


def test_from_json_refuses_other_files():
    with pytest.raises(ValueError, match="not an embscope report"):
        Report.from_json('{"metrics": {}}')


def test_markdown_and_html(report):
    md = report.to_markdown()
    assert "## Recommendations" in md and "| score_ks |" in md and "img/" in md
    page = report.to_html()
    assert page.startswith("<!DOCTYPE html>")
    imgs = page.count("src='data:image/png;base64,")
    assert imgs >= 3  # scores, margins, logit columns
    first = page.split("data:image/png;base64,")[1].split("'")[0]
    assert base64.b64decode(first)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in page.replace("http-equiv", "")  # self-contained
    assert report._repr_html_() == page


def test_frame_has_directions(report):
    f = report.to_frame()
    assert f.loc["score_ks", "direction"] == "higher"
    assert f.loc["eer", "direction"] == "lower"
    assert pd.isna(f.loc["n", "direction"])
    assert f.loc["f1", "value"] == pytest.approx(report.metrics["f1"])
    assert len(f) == len(report.metrics)
