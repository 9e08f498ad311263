"""``diagnose CHECKPOINT DATA`` on a model whose forward returns named embeddings (two views, a
fused one, attention and logits) writes the views report: the same numbers as
`diagnose_views` on the model's outputs, and the page's views section."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from embscope.diagnostics import diagnose_views
from tests.cli.conftest import run_diagnose

MODEL = textwrap.dedent(
    '''
    import torch
    from torch import nn


    class TwoViews(nn.Module):
        """Left and right halves of an 8x8 digit, a gate, a fused embedding and logits."""

        def __init__(self, dim=8, attention=True):
            super().__init__()
            self.left = nn.Linear(32, dim)
            self.right = nn.Linear(32, dim)
            self.gate = nn.Linear(2 * dim, 2)
            self.classifier = nn.Linear(dim, 10)
            self.attention = attention

        def forward(self, x):
            x = x.reshape(len(x), 8, 8)
            a = self.left(x[:, :, :4].reshape(len(x), 32))
            b = self.right(x[:, :, 4:].reshape(len(x), 32))
            w = torch.softmax(self.gate(torch.cat([a, b], 1)), 1)
            fused = w[:, :1] * a + w[:, 1:] * b
            out = {"left": a, "right": b, "fused": fused, "logits": self.classifier(fused)}
            if self.attention:
                out["attention"] = w
            return out


    def build(attention=True):
        return TwoViews(attention=attention)


    def bad_attention():
        net = TwoViews()
        inner = net.forward

        def forward(x):
            out = inner(x)
            out["attention"] = out["attention"] * 3  # not weights summing to 1
            return out

        net.forward = forward
        return net
    '''
)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("views")
    (root / "two_views.py").write_text(MODEL)
    digits = load_digits()
    x = (digits.data[:240] / 16.0).astype(np.float32)
    y = digits.target[:240].astype(np.int64)
    np.savez(root / "val.npz", x=x, y=y)
    import importlib.util

    spec = importlib.util.spec_from_file_location("two_views_test_model", root / "two_views.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.build()
    torch.save(model.state_dict(), root / "model.pt")
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    (root / "expected.json").write_text(
        diagnose_views(
            {k: out[k] for k in ("left", "right", "fused")},
            y,
            logits=out["logits"],
            attention=out["attention"],
        ).to_json()
    )
    return root


def test_a_model_returning_named_embeddings_gets_the_views_report(files: Path, tmp_path: Path):
    out = tmp_path / "report"
    result = run_diagnose(
        files / "model.pt",
        files / "val.npz",
        "--model",
        f"{files / 'two_views.py'}:build",
        "--out",
        out,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    expected = json.loads((files / "expected.json").read_text())["metrics"]
    for key in (
        "views.left.eer",
        "views.right.recall_at_1",
        "fusion_gain.eer",
        "agreement.left.right.spearman",
        "attention.balance_gap",
        "macro_f1",
    ):
        assert report["metrics"][key] == pytest.approx(expected[key], rel=1e-6), key
    assert "named embeddings" in report["meta"]["source"]["embedding"]
    page = (out / "report.html").read_text()
    assert "Fusion gain" in page and "plot-views_attention" in page


def test_attention_that_is_not_weights_is_a_one_line_error(files: Path, tmp_path: Path):
    result = run_diagnose(
        files / "model.pt",
        files / "val.npz",
        "--model",
        f"{files / 'two_views.py'}:bad_attention",
        "--out",
        tmp_path / "report",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "attention" in lines[0] and "summing to 1" in lines[0]
    assert not (tmp_path / "report").exists()
