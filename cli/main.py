"""Entry point of the ``diagnose`` console script."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("diagnose: not built yet")


if __name__ == "__main__":
    sys.exit(main())
