"""Rendering a Report: Markdown (render_md.py), a self-contained HTML page (render_html.py) and
PNG plots (render_plots.py), with the words and numbers they share in render_text.py.

Everything reads only the report's data, so a report loaded from JSON renders the same.
"""

from __future__ import annotations

from .render_html import register_section, report_html
from .render_md import report_markdown
from .render_plots import report_plots
from .render_segmentation import segmentation_html  # noqa: F401  (registers its section)
from .render_text import KEY_METRICS, fmt, interval_text, report_title
from .render_views import views_html  # noqa: F401  (registers its section)

__all__ = [
    "KEY_METRICS",
    "fmt",
    "interval_text",
    "key_metrics",
    "register_section",
    "report_html",
    "report_markdown",
    "report_plots",
    "report_title",
]


def key_metrics(report) -> list[tuple[str, float]]:
    """(name, value) of the headline metrics the report holds, in table order."""
    return [(k, report.metrics[k]) for k in KEY_METRICS if k in report.metrics]
