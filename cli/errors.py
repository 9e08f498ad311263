"""The one exception type for anticipated failures of the ``diagnose`` command."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def one_line(text: str, limit: int = 400) -> str:
    """Collapse ``text`` to a single line without terminal escapes, cut to ``limit`` characters."""
    flat = " ".join(_ANSI.sub("", str(text)).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class UsageError(Exception):
    """Bad usage or bad input: reported as one line on stderr, exit status 2.

    Parameters
    ----------
    subject : str
        The file or option at fault (``"data/cats"``, ``"--model"``).
    what : str
        What is wrong with it.
    fix : str, optional
        What the user can do about it.
    """

    def __init__(self, subject: object, what: str, fix: str | None = None) -> None:
        self.subject = str(subject)
        self.what = what
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.subject}: {self.what}"
        if self.fix:
            text += f" ({self.fix})"
        return one_line(text, limit=1000)
