"""embscope: embedding-space diagnostics for PyTorch models (`embscope.diagnostics`), the
margin and metric-learning losses they are about (`embscope.losses`), and the ``diagnose``
command (`embscope.cli`)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("embscope")
except PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
