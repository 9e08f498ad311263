"""The one exception type for anticipated failures of the ``diagnose`` command."""

from __future__ import annotations

import re
from typing import Any

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


# How the parameters named in the library's fixes read on the command line.
FLAGS = {
    "embedding_layer": "--embedding-layer NAME",
    "batch_size": "--batch-size",
    "device_cpu": "--device cpu",
    "folder": "--out",
    "force": "--force",
}


# The flag of each library parameter that an error can be about.
OPTIONS = {
    "embedding_layer": "--embedding-layer",
    "batch_size": "--batch-size",
    "device": "--device",
    "folder": "--out",
    "force": "--force",
}


def from_library(error: Any, subject: object, fix: str | None = None) -> UsageError:
    """The `UsageError` of a library error (`embscope.diagnostics.errors`) about ``subject``,
    its fix in flags (or ``fix``)."""
    return UsageError(subject, error.what, error.fix(FLAGS) if fix is None else fix)
