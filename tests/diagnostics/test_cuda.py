"""The CUDA path gives the CPU's numbers (runs only where a GPU is present)."""

import numpy as np
import pytest
import torch

from embscope.diagnostics import Diagnoser

from .conftest import blobs, same_metrics

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("k", [2, 5, 40])
def test_cuda_report_equals_cpu_report(k):
    from embscope.losses import ArcFaceHead

    x, y = blobs(n=3000, d=32, k=k, seed=k)
    g = np.random.default_rng(0)
    z = g.normal(size=(3000, k)).astype(np.float32)
    z[np.arange(3000), y] += 2
    torch.manual_seed(0)
    head = ArcFaceHead(32, k, m=0.3, s=16.0)
    reports = []
    for device in ("cpu", "cuda"):
        d = Diagnoser(head=head.to(device), reservoir_size=2000)
        for a in range(0, 3000, 700):
            d.update(
                torch.as_tensor(x[a : a + 700], device=device),
                torch.as_tensor(y[a : a + 700], device=device),
                torch.as_tensor(z[a : a + 700], device=device),
            )
        reports.append(d.compute())
    assert reports[1].metrics["n"] == 3000
    same_metrics(reports[0].metrics, reports[1].metrics, rel=1e-4, abs_=1e-5)
