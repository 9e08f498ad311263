"""Thread control for small dense linear algebra."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def one_thread():
    """Run small LAPACK calls (eigh, pinv, svd) on one thread: for matrices this small,
    threads cost more in synchronisation than they save, and on a busy machine they spin
    against each other (measurements in benchmarks/README.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
