"""report.html as a reader sees it: rendered by headless Chromium.

A copy of the page gets a small script that, once the page has loaded, measures what a reader
would see and writes it into the DOM as JSON; Chromium's ``--dump-dom`` hands that back. The
page itself has no script: the measuring one exists only in the copy. Skips where no Chromium is
installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from embscope.diagnostics import Report
from embscope.diagnostics.sections import (
    ClassMargins,
    ClassRow,
    ClassTable,
    Confusion,
    Hardest,
    HardSample,
    Histogram,
    Histograms,
)

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (Debian: apt-get install chromium)",
)

# Runs in the copy once the page has loaded; every <details> is opened first, so folded tables
# are measured too.
MEASURE = """
<script>
window.addEventListener('load', function () {
  document.querySelectorAll('details').forEach(function (d) { d.open = true; });
  var root = document.documentElement, width = root.clientWidth, out = {};
  out.width = width;
  out.scrollWidth = root.scrollWidth;
  out.sections = Array.from(document.querySelectorAll('section')).map(function (s) {
    return s.id; });
  out.headings = Array.from(document.querySelectorAll('h1, h2, h3')).map(function (h) {
    return h.textContent; });
  out.images = Array.from(document.images).map(function (i) {
    return {alt: i.alt, cls: i.className, w: i.naturalWidth, h: i.naturalHeight,
            shown: i.getBoundingClientRect().width}; });
  out.captions = Array.from(document.querySelectorAll('figure.plot')).map(function (f) {
    var c = f.querySelector('figcaption'); return c ? c.textContent.length : 0; });
  out.wide = [];
  document.body.querySelectorAll('*').forEach(function (el) {
    if (el.parentElement && el.parentElement.closest('.scroll')) return;  // scrolls in its box
    var r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > width + 1 || r.left < -1))
      out.wide.push(el.tagName + '.' + el.className + ' ' + Math.round(r.left) + '-' +
                    Math.round(r.right));
  });
  out.covered = [];
  var plots = Array.from(document.querySelectorAll('figure.plot img'));
  plots.forEach(function (img) {
    img.scrollIntoView({block: 'center'});
    var r = img.getBoundingClientRect();
    var at = [.02, .15, .3, .45, .6, .75, .9, .98];  // an 8 x 8 grid over the plot
    at.forEach(function (fx) { at.forEach(function (fy) {
      var hit = document.elementFromPoint(r.left + fx * r.width, r.top + fy * r.height);
      if (hit !== img) out.covered.push(img.alt + ' at ' + fx + ',' + fy + ': ' +
                                        (hit ? hit.tagName + '.' + hit.className : 'nothing'));
    }); });
  });
  window.scrollTo(0, 0);
  out.overlapping = [];
  var boxes = Array.from(document.querySelectorAll('figure.plot')).map(function (f) {
    return [f.id, f.getBoundingClientRect()]; });
  boxes.forEach(function (a, i) { boxes.slice(i + 1).forEach(function (b) {
    var x = Math.min(a[1].right, b[1].right) - Math.max(a[1].left, b[1].left);
    var y = Math.min(a[1].bottom, b[1].bottom) - Math.max(a[1].top, b[1].top);
    if (x > 1 && y > 1) out.overlapping.push(a[0] + ' / ' + b[0]); }); });
  var pre = document.createElement('pre');
  pre.id = 'embscope-measured';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def chromium_args(width: int, height: int) -> list[str]:
    """Headless Chromium without a sandbox (CI runs as root), GPU or network."""
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--window-size={width},{height}",
    ]


def measure(page: Path, tmp: Path, width: int = 1200) -> dict:
    """What a reader sees in ``page`` at ``width`` CSS pixels (see MEASURE)."""
    html = page.read_text(encoding="utf-8")
    assert "<script" not in html  # the report itself is readable without JavaScript
    copy = tmp / f"measured-{width}.html"
    copy.write_text(html.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    profile = tmp / f"profile-{width}"
    run = subprocess.run(
        [
            *chromium_args(width, 1000),
            f"--user-data-dir={profile}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            copy.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp)},
    )
    found = re.search(r"<pre id=\"embscope-measured\">(.*?)</pre>", run.stdout, re.S)
    assert found, f"Chromium returned no measurements (rc {run.returncode}): {run.stderr[-800:]}"
    return json.loads(
        found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    )


def check_page(seen: dict, *, plots: int) -> None:
    assert seen["scrollWidth"] <= seen["width"], "the page scrolls sideways"
    assert seen["wide"] == [], seen["wide"]  # no element wider than the page
    assert seen["covered"] == [], seen["covered"]  # nothing drawn over a plot
    assert seen["overlapping"] == [], seen["overlapping"]
    plotted = [i for i in seen["images"] if i["cls"] != "thumb"]
    assert len(plotted) >= plots
    for image in seen["images"]:  # every image decoded and shown
        assert image["w"] > 0 and image["h"] > 0 and image["shown"] > 0, image
    assert all(length > 40 for length in seen["captions"])  # every plot has its reading guide


QUESTIONS = {
    "recommendations",
    "key-metrics",
    "separation",
    "logits",
    "gray-zone",
    "retrieval",
    "all-metrics",
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from embscope.cli.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    run_demo(out)
    return out


@pytest.mark.parametrize("width", [1200, 560])
def test_the_demo_report_reads_in_a_browser(demo: Path, tmp_path: Path, width: int) -> None:
    seen = measure(demo / "arcface" / "report.html", tmp_path, width)
    assert QUESTIONS <= set(seen["sections"])
    assert seen["headings"][0].startswith("ArcFace")  # the title names the model
    headings = " | ".join(seen["headings"]).lower()
    for heading in ("recommendations", "key metrics", "confusion", "classes", "hardest samples"):
        assert heading in headings, heading
    # scores, margins, class margins, logit columns, reliability, confusion, angles, pairs, PCA
    check_page(seen, plots=9)
    alts = {i["alt"] for i in seen["images"]}
    assert {"reliability", "confusion", "class_margins", "logit_columns", "pca"} <= alts


def _many_classes(k: int, thumbnails: bool) -> Report:
    """A rendered-only report of ``k`` classes (sections as a computed report holds them)."""
    g = np.random.default_rng(0)
    labels = np.arange(k)
    med = g.normal(1.0, 0.6, k)
    cm = np.diag(np.full(k, 5))
    for i in range(min(k, 40)):
        cm[i, (i + 1) % k] = g.integers(1, 4)
    margins = ClassMargins(
        tuple(labels.tolist()),
        (6,) * k,
        *(tuple((med + d).tolist()) for d in (-1.5, -0.5, 0.0, 0.5, 1.5)),
        tuple(g.uniform(0, 0.3, k).tolist()),
    )
    rows = tuple(ClassRow(int(c), 6, 0.8, 0.3, float(g.uniform(0.5, 1)), 6) for c in labels)
    hardest = tuple(
        HardSample(f"sample-{i}", int(i % k), -1.0 + i / 10, int((i + 1) % k), 0.7)
        for i in range(8)
    )
    edges = np.linspace(-3, 3, 41)
    hists = Histograms(margin=Histogram.of("margin", edges, {"all": g.integers(0, 50, 40)}))
    sections = {
        "class_margins": margins,
        "classes": ClassTable(rows),
        "confusion": Confusion.of(cm, labels),
        "hardest": Hardest(hardest),
        "histograms": hists,
    }
    if thumbnails:
        from embscope.diagnostics.render_plots import _figure, _png

        fig, ax = _figure(0.4, 0.4)
        ax.imshow(g.random((8, 8)), cmap="gray")
        thumb = __import__("base64").b64encode(_png(fig)).decode()
        sections["thumbnails"] = {h.id: thumb for h in hardest}
    metrics = {"n": 6.0 * k, "num_classes": float(k), "accuracy": 0.8, "f1": float("nan")}
    reasons = {"f1": "defined for binary models only"}
    return Report(metrics=metrics, reasons=reasons, sections=sections)


@pytest.mark.parametrize("k", [10, 1000])
def test_many_classes_stay_readable(k: int, tmp_path: Path) -> None:
    report = _many_classes(k, thumbnails=True)
    report.save(tmp_path / "report")
    seen = measure(tmp_path / "report" / "report.html", tmp_path, 900)
    check_page(seen, plots=2)  # margins, class margins (and the confusion matrix up to 30)
    thumbs = [i for i in seen["images"] if i["cls"] == "thumb"]
    assert len(thumbs) == 8  # the hardest samples as images
    assert any("Classes" in h for h in seen["headings"])
