"""The margin head from the command line: the margin leak quantified in the summary, where s, m
and the kind came from (meta.head_provenance, a warning for factory defaults), --head-s/--head-m/
--head-kind for checkpoints (set on the head before it runs) and precomputed embeddings (a head
known by its settings only: fitted_scale), and what to run to settle ArcFace vs BCE.

The models are written here: a user's own ArcFace-like head whose s and m are plain attributes
(or a buffer), and which, with ``leak``, applies the margin whenever labels are passed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from embscope.cli.main import main

DIM_IN, DIM = 6, 4


class Head(nn.Module):
    """``s * cos``, with ArcFace's ``cos(theta + m)`` on the target class when training with
    labels, or whenever labels are passed when ``leak``."""

    def __init__(self, classes: int, s: float = 30.0, m: float = 0.5, leak: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, DIM) * 0.1)
        self.s, self.m, self.leak = s, m, leak

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor | None = None):
        cos = F.linear(F.normalize(embedding), F.normalize(self.weight))
        if labels is not None and (self.training or self.leak):
            theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
            target = F.one_hot(labels, cos.shape[1]).bool()
            cos = torch.where(target, torch.cos(theta + self.m), cos)
        return self.s * cos


class BufferHead(Head):
    """The same head with s kept as a buffer: it travels in the state dict."""

    def __init__(self, classes: int, s: float = 30.0, m: float = 0.5, leak: bool = False):
        super().__init__(classes, s, m, leak)
        del self.s
        self.register_buffer("s", torch.tensor(float(s)))


class Net(nn.Module):
    """``forward(x, labels=None) -> (embedding, logits)``."""

    def __init__(
        self, classes: int = 2, s: float = 30.0, m: float = 0.5, leak: bool = False, buffer=False
    ):
        super().__init__()
        self.body = nn.Linear(DIM_IN, DIM)
        self.head = (BufferHead if buffer else Head)(classes, s=s, m=m, leak=leak)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        embedding = self.body(x)
        return embedding, self.head(embedding, labels)


def make_net(classes: int = 2, s: float = 30.0, m: float = 0.5, leak: bool = False) -> Net:
    return Net(classes, s=s, m=m, leak=leak)


def make_buffer_net(s: float = 30.0) -> Net:
    return Net(s=s, buffer=True)


def overlapping(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(2, DIM_IN, generator=g)[y] + 1.2 * torch.randn(n, DIM_IN, generator=g)
    return x, y


def trained(model: Net, steps: int = 30) -> Net:
    x, y = overlapping()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        F.cross_entropy(model(x, y)[1], y).backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("heads")
    x, y = overlapping(seed=1)
    torch.save({"x": x, "y": y}, root / "val.pt")
    torch.manual_seed(0)
    leaky = trained(make_net(m=0.5, s=16.0, leak=True))
    torch.save(
        {"model": leaky.state_dict(), "config": {"s": 16.0, "leak": True}}, root / "leaky.pt"
    )
    torch.manual_seed(0)
    s64 = trained(make_net(s=64.0, m=0.2))
    torch.save(s64.state_dict(), root / "s64_no_config.pt")  # s and m: factory defaults
    torch.save({"model": s64.state_dict(), "config": {"s": 64.0}}, root / "s64_config.pt")
    torch.manual_seed(0)
    torch.save(trained(make_buffer_net(s=64.0)).state_dict(), root / "buffer.pt")
    with torch.no_grad():
        embedding, logits = s64(x)
    np.savez(root / "emb.npz", embeddings=embedding.numpy(), labels=y.numpy(), logits=logits)
    return {
        "root": root,
        "val": root / "val.pt",
        "leaky": root / "leaky.pt",
        "no_config": root / "s64_no_config.pt",
        "config": root / "s64_config.pt",
        "buffer": root / "buffer.pt",
        "emb": root / "emb.npz",
    }


def diagnose(*argv: object, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, dict]:
    """Run the command; return its exit status, stdout and the report (or {})."""
    argv = [str(a) for a in argv]
    code = main(argv)
    out = capsys.readouterr()
    folder = Path(argv[argv.index("--out") + 1])
    report = json.loads((folder / "report.json").read_text()) if code != 2 else {}
    return code, out.out if code != 2 else out.err, report


def model(factory: str) -> list[str]:
    return ["--model", f"{__file__}:{factory}"]


# --------------------------------------------------------------------------- item 6


def test_a_leaky_head_shows_both_numbers_in_the_evidence_and_the_summary(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "leaky"
    code, text, report = diagnose(
        files["leaky"], files["val"], *model("make_net"), "--out", out, capsys=capsys
    )
    assert code == 0
    metrics = report["metrics"]
    with_labels, deployed = (
        metrics["head.leak_f1_with_labels"],
        metrics["head.leak_f1_without_labels"],
    )
    assert deployed == pytest.approx(metrics["f1"])  # the report's own metrics: label-free
    assert with_labels < deployed - 0.05
    fix = report["recommendations"][0]
    assert fix["action"] == "fix_eval_margin"
    for way, value in (("with", with_labels), ("without", deployed)):
        assert fix["evidence"][f"head.leak_f1_{way}_labels"]["value"] == pytest.approx(value)
        assert f"head.leak_accuracy_{way}_labels" in fix["evidence"]
    assert f"if it passes labels, reports F1 {with_labels:.3f}" in text
    assert f"the deployed model scores F1 {deployed:.3f}" in text
    assert "nobody deploys" not in text


# --------------------------------------------------------------------------- item 7


def test_plain_attributes_without_a_config_are_factory_defaults_with_a_warning(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text, report = diagnose(
        files["no_config"], files["val"], *model("make_net"), "--out", tmp_path / "r", capsys=capsys
    )
    assert code == 0
    provenance = report["meta"]["head_provenance"]
    assert provenance == {"s": "factory default", "m": "factory default", "kind": "class name"}
    assert report["metrics"]["head.s"] == 30.0  # the factory's, not the 64 it was trained at
    assert "factory's default" in report["reasons"]["head.s"]
    assert "factory's default" in report["reasons"]["head.m"]
    first = text.splitlines()[0]
    assert first.startswith("warning: the head's s = 30 and m = 0.5 are the model factory's")
    assert "--head-s/--head-m" in first
    assert "head: s = 30 (factory default), m = 0.5 (factory default)" in text


def test_head_s_overrides_the_factory_default_and_the_model_runs_with_it(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [files["no_config"], files["val"], *model("make_net")]
    _, _, default = diagnose(*args, "--out", tmp_path / "a", capsys=capsys)
    code, text, report = diagnose(
        *args, "--head-s", "64", "--head-m", "0.2", "--out", tmp_path / "b", capsys=capsys
    )
    assert code == 0
    assert report["meta"]["head_provenance"] == {"s": "user", "m": "user", "kind": "class name"}
    assert (report["metrics"]["head.s"], report["metrics"]["head.m"]) == (64.0, 0.2)
    # no factory-default warning (a recommendation may still warn about s = 64 itself)
    assert "factory's" not in text and "head.s" not in report["reasons"]
    # the logits are those of s = 64 (the checkpoint's own model), not of the default 30
    ratio = report["metrics"]["margin_median"] / default["metrics"]["margin_median"]
    assert ratio == pytest.approx(64 / 30, rel=1e-5)  # float32 logits
    assert "head: s = 64 (user), m = 0.2 (user)" in text


@pytest.mark.parametrize(
    ("name", "factory", "extra", "expected"),
    [
        ("config", "make_net", [], {"s": "checkpoint config", "m": "factory default"}),
        ("no_config", "make_net", ["--model-kwargs", '{"s": 64}'], {"s": "user"}),
        ("buffer", "make_buffer_net", [], {"s": "checkpoint state", "m": "factory default"}),
    ],
)
def test_provenance_names_the_config_the_user_and_the_state_dict(
    name: str,
    factory: str,
    extra: list[str],
    expected: dict[str, str],
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, report = diagnose(
        files[name], files["val"], *model(factory), *extra, "--out", tmp_path / "r", capsys=capsys
    )
    assert code == 0
    provenance = report["meta"]["head_provenance"]
    assert {k: provenance[k] for k in expected} == expected
    assert report["metrics"]["head.s"] == pytest.approx(64.0)


def test_head_kind_is_stated_by_the_user(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, report = diagnose(
        files["config"],
        files["val"],
        *model("make_net"),
        "--head-kind",
        "cosface",
        "--out",
        tmp_path / "r",
        capsys=capsys,
    )
    assert code == 0
    assert (report["meta"]["head_kind"], report["meta"]["head_provenance"]["kind"]) == (
        "cosine",
        "user",
    )
    assert math.isnan(float(report["metrics"]["fallback_fraction"]))  # angular margins only


def test_precomputed_embeddings_with_head_s_get_fitted_scale(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, plain = diagnose(files["emb"], "--out", tmp_path / "a", capsys=capsys)
    assert code == 0 and plain["metrics"]["fitted_scale"] == "nan"
    assert "head.s" not in plain["metrics"] and plain["meta"]["head_provenance"] is None
    code, text, report = diagnose(
        files["emb"], "--head-s", "64", "--head-m", "0.2", "--out", tmp_path / "b", capsys=capsys
    )
    assert code == 0
    metrics = report["metrics"]
    assert metrics["fitted_scale"] == pytest.approx(64.0 / metrics["fitted_temperature"])
    assert metrics["fitted_temperature"] == pytest.approx(plain["metrics"]["fitted_temperature"])
    assert (metrics["head.s"], metrics["head.m"], metrics["head.num_classes"]) == (64.0, 0.2, 2)
    assert report["meta"]["head_provenance"] == {"s": "user", "m": "user", "kind": None}
    assert report["sections"]["head"]["weights"] is False
    assert "angle_true_mean" not in metrics  # needs the weights
    # an s the logits exceed is not theirs: no fitted_scale, and the reason says why
    code, _, small = diagnose(
        files["emb"], "--head-s", "10", "--out", tmp_path / "c", capsys=capsys
    )
    assert small["metrics"]["fitted_scale"] == "nan"
    assert "beyond the head's s = 10" in small["reasons"]["fitted_scale"]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--head-m", "28.6", "--head-m: must be a margin in radians from 0 to pi"),
        ("--head-s", "0", "--head-s: must be a finite number > 0"),
        ("--head-s", "inf", "--head-s: must be a finite number > 0"),
        ("--head-kind", "sphereface", "--head-kind: invalid choice"),
    ],
)
def test_bad_head_values_are_usage_errors(
    flag: str,
    value: str,
    message: str,
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err, _ = diagnose(files["emb"], flag, value, "--out", tmp_path / "r", capsys=capsys)
    assert code == 2
    assert err.startswith(f"diagnose: error: {message}")


# --------------------------------------------------------------------------- item 8


def test_a_two_class_margin_head_is_told_how_to_settle_arcface_vs_bce(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "arcface"
    code, text, _ = diagnose(
        files["config"], files["val"], *model("make_net"), "--out", out, capsys=capsys
    )
    assert code == 0
    assert "ArcFace vs BCE (two classes)" in text
    assert (
        f"diagnose BCE_CHECKPOINT {files['val']} --model FILE.py:FACTORY --out bce-report" in text
    )
    assert f"diagnose compare bce-report/report.json {out / 'report.json'}" in text
    assert "recommend(report, baseline=" in text
    # precomputed embeddings get the command for embeddings
    code, text, _ = diagnose(
        files["emb"], "--head-s", "64", "--head-m", "0.2", "--out", tmp_path / "e", capsys=capsys
    )
    assert "diagnose BCE_EMBEDDINGS --out bce-report" in text
    # without a margin head (no s, m known) there is nothing to settle
    code, text, _ = diagnose(files["emb"], "--out", tmp_path / "plain", capsys=capsys)
    assert "ArcFace vs BCE" not in text
