"""Regenerate docs/report.png: the top of the demo's ArcFace report.html, as headless Chromium
draws it.

    python docs/report_png.py            # writes docs/report.png
    python docs/report_png.py OUT.png    # elsewhere

Needs Chromium (Debian: ``apt-get install chromium``). The demo is trained and diagnosed into a
temporary folder, so nothing else is written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

WIDTH, HEIGHT = 1100, 1500  # CSS pixels of the window: the header, advice and key metrics


def main(out: Path) -> None:
    from embscope.cli.demo import run_demo

    chromium = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    if chromium is None:
        sys.exit("report_png.py: no Chromium found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.devnull, "w") as quiet, redirect_stdout(quiet):
            run_demo(Path(tmp) / "demo")
        page = Path(tmp) / "demo" / "arcface" / "report.html"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={Path(tmp) / 'profile'}",
                f"--window-size={WIDTH},{HEIGHT}",
                f"--screenshot={out.absolute()}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
            env={**os.environ, "HOME": tmp},
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("report.png"))
