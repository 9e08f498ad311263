import base64
import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# ----------------------------------------------------------------------------------------------
# typed sections
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multiclass():
    x, y = blobs(n=160, d=6, k=4, seed=1)
    z = (np.random.default_rng(0).normal(size=(160, 4)) + 2.5 * np.eye(4)[y]).astype(np.float32)
    return x, y, z, diagnose(x, y, z, ids=[f"s{i}" for i in range(160)], reservoir_size=0)


def _json_sections(report) -> dict:
    return json.loads(report.to_json())["sections"]


def test_sections_are_typed_and_round_trip(report, multiclass):
    from embscope.diagnostics import sections as S

    for rep in (report, multiclass[3]):
        for name, value in rep.sections.items():
            assert isinstance(value, S.SECTION_TYPES[name]), name
        back = Report.from_json(rep.to_json())
        assert {k: type(v) for k, v in back.sections.items()} == {
            k: type(v) for k, v in rep.sections.items()
        }
        assert _json_sections(back) == _json_sections(rep)


def test_series_are_named_by_identifiers_not_display_text(report, multiclass):
    from embscope.diagnostics.sections import ROLES

    binary = report.sections["histograms"]
    assert [k for k, _ in binary.score.series] == [0, 1]  # class labels
    assert binary.score.quantity == "probability"
    multi = multiclass[3].sections["histograms"]
    assert multi.score.quantity == "ovr_probability"
    assert [k for k, _ in multi.score.series] == ["true_class", "other_classes"]
    for hist in (binary, multi):
        for _, h in hist.items():
            assert all(isinstance(k, int) or k in ROLES for k, _ in h.series)


def test_a_report_in_the_first_json_shape_loads_and_writes_back_unchanged():
    """Sections as report.json held them before they were typed (display names as keys, no
    "labels" in logit_columns, no confusion or class margins) read and write back as they were."""
    old = {
        "histograms": {
            "score": {
                "edges": [0.0, 0.5, 1.0],
                "counts": {"class 0": [3, 1], "class 1": [1, 4]},
                "xlabel": "P(positive)",
            },
            "margin": {"edges": [-1.0, 0.0, 1.0], "counts": {"class 0": [1, 3], "class 1": [2, 3]}},
            "angle": {
                "edges": [0.0, 90.0, 180.0],
                "counts": {"to true class": [5, 0], "to nearest other": [1, 4]},
                "xlabel": "angle (degrees)",
            },
        },
        "reliability": {
            "edges": [0.0, 0.5, 1.0],
            "confidence": ["nan", 0.8],
            "accuracy": ["nan", 0.7],
            "count": [0.0, 9.0],
        },
        "logit_columns": {
            "col": [{"mean": 0.5, "std": 1.0, "min": -2.0, "max": 3.0}],
            "by_class": [[{"mean": -1.0, "std": 0.5, "min": -2.0, "max": 0.0}]],
        },
        "classes": [
            {
                "label": 0,
                "count": 4,
                "mean_norm": 0.9,
                "spread": 0.1,
                "recall": 0.75,
                "predicted": 5,
            },
            {
                "label": 1,
                "count": 5,
                "mean_norm": 0.8,
                "spread": 0.2,
                "recall": 0.8,
                "predicted": 4,
            },
        ],
        "hardest": [{"id": "a.png", "label": 1, "margin": -2.5}],
        "head": {"kind": "angular", "m": 0.5, "s": 30.0, "num_classes": 2},
        "pca": {"x": [0.1, 0.2], "y": [0.3, 0.4], "label": [0, 1]},
        "thumbnails": {"a.png": "iVBORw0KGgo="},  # another tool's section: kept as given
    }
    data = {"schema": "embscope.report/1", "metrics": {"n": 9.0}, "sections": old}
    report = Report.from_dict(json.loads(json.dumps(data)))
    assert report.sections["histograms"].angle.counts("to_true_class") == (5, 0)
    assert report.sections["logit_columns"].class_labels() == (0,)
    assert report.sections["thumbnails"] == old["thumbnails"]
    assert _json_sections(report) == old
    assert "<h1>" in report.to_html() and report.to_markdown().startswith("# ")


def test_dict_access_to_sections_still_works(report):
    hardest = report.sections["hardest"]
    assert hardest[0]["id"].startswith("img/") and len(hardest) == len(hardest.rows)
    assert [row["id"] for row in hardest] == [h.id for h in hardest.rows]
    score = report.sections["histograms"]["score"]
    assert set(score["counts"]) == {"class 0", "class 1"} and score["xlabel"] == "P(positive)"
    assert set(report.sections["reliability"]) == {"edges", "confidence", "accuracy", "count"}
    assert all("predicted" in row for row in report.sections["classes"])


def test_a_section_of_the_wrong_shape_is_kept_as_given():
    report = Report(metrics={"n": 1.0}, sections={"classes": {"not": "rows"}})
    assert report.sections["classes"] == {"not": "rows"}
    assert "<h1>" in report.to_html()


def test_confusion_matches_scikit_learn(multiclass):
    from sklearn.metrics import confusion_matrix

    _, y, z, rep = multiclass
    conf = rep.sections["confusion"]
    assert conf.labels == (0, 1, 2, 3)
    expected = confusion_matrix(y, z.argmax(1), labels=[0, 1, 2, 3])
    assert np.array_equal(np.asarray(conf.matrix), expected)
    off = expected.copy()
    np.fill_diagonal(off, 0)
    cells = sorted(
        ((int(off[i, j]), i, j) for i in range(4) for j in range(4) if off[i, j]),
        key=lambda c: (-c[0], c[1], c[2]),
    )
    assert list(conf.largest) == [(i, j, n) for n, i, j in cells]


def test_confusion_beyond_the_matrix_limit_keeps_the_largest_cells():
    from embscope.diagnostics.sections import MAX_CONFUSION_MATRIX, MAX_CONFUSIONS, Confusion

    k = MAX_CONFUSION_MATRIX + 5
    cm = np.eye(k, dtype=int) * 3
    cm[7, 2], cm[1, 9], cm[4, 4] = 9, 2, 50
    labels = list(range(100, 100 + k))[::-1]  # slots in another order than the labels
    conf = Confusion.of(cm, labels)
    assert conf.matrix is None and len(conf.largest) <= MAX_CONFUSIONS
    assert conf.largest[:2] == ((labels[7], labels[2], 9), (labels[1], labels[9], 2))


def test_class_margins_match_numpy_per_class(multiclass):
    _, y, z, rep = multiclass
    z = z.astype(np.float64)
    true = z[np.arange(len(y)), y]
    other = np.where(np.eye(4, dtype=bool)[y], -np.inf, z).max(1)
    margin = true - other
    cm = rep.sections["class_margins"]
    assert cm.label == (0, 1, 2, 3)
    for i, c in enumerate(cm.label):
        m = margin[y == c]
        assert cm.count[i] == len(m)
        q = np.percentile(m, [5, 25, 50, 75, 95])
        got = [cm.p05[i], cm.p25[i], cm.median[i], cm.p75[i], cm.p95[i]]
        assert got == pytest.approx(q.tolist(), rel=1e-5, abs=1e-6)
        assert cm.negative_fraction[i] == pytest.approx((m < 0).mean())


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), shift=st.integers(-3, 5))
def test_new_sections_ignore_row_order_batches_and_label_values(seed, shift):
    """Confusion, class margins and the hardest samples do not depend on the order of the
    samples or on how they are batched; shifting every label value shifts only the labels."""
    from embscope.diagnostics import Diagnoser

    g = np.random.default_rng(seed)
    n, k = 60, 3
    y = g.integers(0, k, n)
    x = g.normal(size=(n, 4)).astype(np.float32)
    z = (g.normal(size=(n, k)) + 2 * np.eye(k)[y]).astype(np.float32)
    ids = [f"r{i}" for i in range(n)]
    one = diagnose(x, y, z, ids=ids, reservoir_size=0)
    perm = g.permutation(n)
    d = Diagnoser(reservoir_size=0)
    for part in np.array_split(perm, 3):
        d.update(x[part], y[part], z[part], [ids[i] for i in part])
    other = d.compute()
    assert other.sections["confusion"] == one.sections["confusion"]
    a, b = other.sections["class_margins"], one.sections["class_margins"]
    for field in ("label", "count", "p05", "p25", "median", "p75", "p95", "negative_fraction"):
        assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-12), field
    a, b = other.sections["hardest"].rows, one.sections["hardest"].rows
    assert [(h.id, h.label, h.predicted) for h in a] == [(h.id, h.label, h.predicted) for h in b]
    assert [h.margin for h in a] == pytest.approx([h.margin for h in b], rel=1e-12)
    # labels are logit columns here; without logits labels are any integers
    plain = diagnose(x, y + shift, reservoir_size=0)
    base = diagnose(x, y, reservoir_size=0)
    assert [r.label - shift for r in plain.sections["classes"].rows] == [
        r.label for r in base.sections["classes"].rows
    ]
    assert [r.count for r in plain.sections["classes"].rows] == [
        r.count for r in base.sections["classes"].rows
    ]


# ----------------------------------------------------------------------------------------------
# what the renderers show
# ----------------------------------------------------------------------------------------------


def test_binary_only_metrics_are_not_shown_as_nan_in_a_multiclass_report(multiclass):
    rep = multiclass[3]
    assert math.isnan(rep.metrics["f1"])
    md = rep.to_markdown()
    key = md.split("## Key metrics")[1].split("##")[0]
    assert "| f1 |" not in key and "nan" not in key
    assert "Not defined here: f1, pred_positive_rate" in key
    page = rep.to_html()
    shown = page.split("id='key-metrics'")[1].split("</section>")[0]
    assert "<code>f1</code>" not in shown and ">nan<" not in shown
    assert "defined for binary models only" in shown


def test_the_title_names_the_model():
    from embscope.diagnostics.render import report_title

    base = {"n": 10.0, "num_classes": 2.0}
    named = Report(metrics=base, meta={"model": "ResNet-18, ArcFace m = 0.5"})
    assert report_title(named) == "ResNet-18, ArcFace m = 0.5"
    ckpt = Report(metrics=base, meta={"source": {"checkpoint": "runs/7/best.pt", "model": "Net"}})
    assert report_title(ckpt) == "best.pt"
    assert report_title(Report(metrics=base, meta={"source": {"model": "Net"}})) == "Net"
    assert "<title>best.pt" in ckpt.to_html() and "<h1>best.pt</h1>" in ckpt.to_html()
    assert ckpt.to_markdown().startswith("# best.pt\n")
    assert "embscope report" not in report_title(Report(metrics=base))


def test_the_page_is_self_contained_and_has_the_questions(multiclass):
    page = multiclass[3].to_html()
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    for anchor in ("recommendations", "key-metrics", "separation", "logits", "gray-zone"):
        assert f"<section id='{anchor}'>" in page
    for alt in ("confusion", "reliability", "class_margins"):
        assert f"alt='{alt}'" in page
    assert page.count("<figcaption>") == page.count("<figure class='plot'")
    assert page.count("<details class='group'>") >= 5  # every metric, folded by group


def test_thumbnails_show_next_to_the_hardest_samples(report):
    from dataclasses import replace

    first = report.sections["hardest"].rows[0].id
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nrest").decode()
    page = replace(report, sections={**report.sections, "thumbnails": {first: png}}).to_html()
    assert f"<img class='thumb' alt='{first}' src='data:image/png;base64,{png}'>" in page
    assert "class='thumb'" not in report.to_html()


def test_a_registered_section_is_rendered():
    from embscope.diagnostics.render import register_section
    from embscope.diagnostics.render_html import EXTRA_SECTIONS

    register_section("extra_test", "Is the extra part there?", lambda r: "<p>extra body</p>")
    try:
        page = Report(metrics={"n": 1.0}, sections={"extra_test": {"a": 1}}).to_html()
        assert "<h2>Is the extra part there?</h2><p>extra body</p>" in page
        assert "extra body" not in Report(metrics={"n": 1.0}).to_html()
    finally:
        EXTRA_SECTIONS.pop("extra_test")


@pytest.mark.parametrize("k", [10, 1000])
def test_no_legend_covers_the_axes(k):
    """Every legend lies outside every axes, from 10 classes to 1000."""
    from embscope.diagnostics.render_plots import report_figures
    from embscope.diagnostics.sections import ClassMargins, Pca

    x, y = blobs(n=12 * 10, d=5, k=10, seed=2)
    z = (np.random.default_rng(1).normal(size=(len(y), 10)) + 3 * np.eye(10)[y]).astype(np.float32)
    rep = diagnose(x, y, z, reservoir_size=400)
    if k == 1000:  # the per-class views of a thousand classes, drawn from their sections
        g = np.random.default_rng(0)
        med = g.normal(1, 1, k)
        margins = ClassMargins(
            tuple(range(k)), (3,) * k, *(tuple(med + d) for d in (-2, -1, 0, 1, 2)), (0.1,) * k
        )
        pca = Pca(tuple(g.normal(size=k)), tuple(g.normal(size=k)), tuple(range(k)))
        rep = Report(metrics=rep.metrics, sections={"class_margins": margins, "pca": pca})
    figures = report_figures(rep)
    assert figures
    for name, fig in figures.items():
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent(renderer)), name
