"""Regenerate ``baseline.json``: train the model, diagnose it with the ``diagnose`` command and
keep its report.json as the baseline the CI checks compare against.

Run it after an intended change of the model or the data, and commit the new baseline.json:
``python examples/ci_regression/make_baseline.py [--work build/baseline]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from train_model import train_and_save  # noqa: E402


def diagnose(args: list[str]) -> int:
    """Run the ``diagnose`` command (as the CI workflow does) and return its exit status."""
    return subprocess.run([sys.executable, "-m", "embscope.cli.main", *args]).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("build/baseline"), help="scratch folder")
    parser.add_argument("--baseline", type=Path, default=HERE / "baseline.json")
    args = parser.parse_args()
    train_and_save(args.work)
    code = diagnose(
        [
            str(args.work / "model.pt"),
            str(args.work / "val.npz"),
            "--model",
            f"{HERE / 'digits_model.py'}:build",
            "--out",
            str(args.work / "report"),
            "--force",
        ]
    )
    if code != 0:
        sys.exit(code)
    shutil.copyfile(args.work / "report" / "report.json", args.baseline)
    print(f"baseline: {args.baseline}")


if __name__ == "__main__":
    main()
