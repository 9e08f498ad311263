"""Errors of the model path and the report writer that say what is wrong and what to do.

Each carries ``subject`` (the argument or object at fault), ``what`` and ``fix``, and reads
``subject: what (fix)``. The fix may name parameters as ``{name}`` fields: ``str()`` writes
them as Python keywords (``embedding_layer=NAME``), and the ``diagnose`` command as its flags
(``--embedding-layer NAME``), so both speak the caller's language.
"""

from __future__ import annotations

from collections.abc import Mapping

# How the fields of a fix read in Python; the command line passes its flags instead.
PYTHON_NAMES = {
    "embedding_layer": "embedding_layer=NAME",
    "batch_size": "batch_size",
    "device_cpu": "device='cpu'",
    "folder": "folder",
    "force": "force=True",
}


class _Explained:
    """``subject: what (fix)``, with ``argument`` the parameter at fault (or None)."""

    def __init__(
        self, subject: object, what: str, fix: str = "", *, argument: str | None = None
    ) -> None:
        self.subject = str(subject)
        self.what = what
        self.fix_template = fix
        self.argument = argument
        super().__init__(str(self))

    def fix(self, names: Mapping[str, str] = PYTHON_NAMES) -> str:
        """The fix with its parameter fields written as ``names`` says."""
        try:
            return self.fix_template.format_map(dict(PYTHON_NAMES, **names))
        except (KeyError, IndexError, ValueError):  # braces that are not fields: as written
            return self.fix_template

    def __str__(self) -> str:
        fix = self.fix()
        return f"{self.subject}: {self.what}" + (f" ({fix})" if fix else "")


class InputError(_Explained, ValueError):
    """A model, data, option or folder that cannot be used as given (a ``ValueError``)."""


class ReplaceError(_Explained, OSError):
    """Replacing a report folder failed and so did undoing it: the message says where the
    files are; nothing was deleted (an ``OSError``)."""
