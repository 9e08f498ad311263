"""Models trained once per session on scikit-learn's digits, saved the ways users save them.

The model code is the *user's*: it is written into a temporary folder as ``digits_model.py``
(with its own ArcFace-like head, not embscope's), imported from there, trained for a second,
and saved as a state dict, a dict with a config, a torch.export archive and a pickled module.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, calinski_harabasz_score, f1_score

MODEL_SOURCE = textwrap.dedent(
    '''
    """A user's models for 8x8 digits."""
    import torch
    import torch.nn.functional as F
    from torch import nn


    def body(hidden):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, hidden))


    class DigitNet(nn.Module):
        """Returns logits only; the embedding is the classifier's input."""

        def __init__(self, hidden=16, num_classes=10):
            super().__init__()
            self.body = body(hidden)
            self.classifier = nn.Linear(hidden, num_classes)

        def forward(self, x):
            return self.classifier(self.body(x))


    def make_net(hidden=16, num_classes=10):
        return DigitNet(hidden, num_classes)


    class RenamedNet(nn.Module):
        """Same shapes as DigitNet, different names: a state dict of DigitNet does not fit."""

        def __init__(self, hidden=16, num_classes=10):
            super().__init__()
            self.body = body(hidden)
            self.fc = nn.Linear(hidden, num_classes)

        def forward(self, x):
            return self.fc(self.body(x))


    class WrongShapeNet(DigitNet):
        def forward(self, x):
            return super().forward(x).reshape(x.shape[0], 2, 5)


    class ArcHead(nn.Module):
        """The user's ArcFace head: cos(theta + m) on the target class, times s.

        With leak=True it applies the margin whenever labels are given, in eval mode too
        (the bug of the seed notes)."""

        def __init__(self, dim, num_classes, m=0.2, s=16.0, leak=False):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.1)
            self.m = m
            self.s = s
            self.leak = leak

        def forward(self, embedding, labels=None):
            cos = F.linear(F.normalize(embedding), F.normalize(self.weight))
            if labels is not None and (self.training or self.leak):
                theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
                target = F.one_hot(labels, cos.shape[1]).bool()
                cos = torch.where(target, torch.cos(theta + self.m), cos)
            return self.s * cos


    class ArcDigitNet(nn.Module):
        """forward(x, labels=None) -> (embedding, logits)."""

        def __init__(self, hidden=16, num_classes=10, m=0.2, s=16.0, leak=False):
            super().__init__()
            self.body = body(hidden)
            self.head = ArcHead(hidden, num_classes, m=m, s=s, leak=leak)

        def forward(self, x, labels=None):
            embedding = self.body(x)
            return embedding, self.head(embedding, labels)


    def make_arc(**kwargs):
        return ArcDigitNet(**kwargs)
    '''
)


@dataclass
class Digits:
    """Everything the CLI tests share; paths live in one session-wide folder."""

    root: Path
    module: Any  # the imported digits_model
    x: torch.Tensor  # [N, 1, 8, 8] in [0, 1]
    y: torch.Tensor  # [N]
    net: torch.nn.Module  # trained DigitNet
    weak: torch.nn.Module  # DigitNet after 3 steps
    images: Path  # class folders of PNGs
    tensors_pt: Path  # {"x", "y"}
    tensors_npz: Path  # inputs / labels
    state_dict: Path  # DigitNet state dict (needs --model-kwargs or defaults)
    with_config: Path  # {"model": sd, "config": {...}, "epoch": 3}
    weak_with_config: Path
    exported: Path  # .pt2 traced with a static batch of 32
    pickled: Path  # torch.save(net)
    leaky: Path  # ArcDigitNet(leak=True) with config
    binary_s64: Path  # two-class ArcDigitNet with s = 64, with config
    binary_x: Path  # tensors of the two-class task


def train(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, labels: bool = False
):
    """Full-batch Adam; the model's logits are the last element of its output."""
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead on a shared machine
    try:
        for _ in range(steps):
            optimiser.zero_grad()
            out = model(x, y) if labels else model(x)
            logits = out[-1] if isinstance(out, tuple) else out
            torch.nn.functional.cross_entropy(logits, y).backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def write_pngs(x: np.ndarray, y: np.ndarray, folder: Path) -> None:
    from PIL import Image

    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        target = folder / f"digit_{label}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8), mode="L").save(
            target / f"{i:04d}.png"
        )


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    (root / "digits_model.py").write_text(MODEL_SOURCE)
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("digits_model")
    finally:
        sys.path.remove(str(root))

    data = load_digits()
    # Pixel values 0..16 -> multiples of 1/255 in [0, 1], so PNGs hold exactly the same inputs.
    x_np = (np.round(data.images / 16.0 * 255) / 255).astype(np.float32)[:, None]
    y_np = data.target.astype(np.int64)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)

    # Trained on the even-numbered samples, diagnosed on all: accuracy is high but not 1.
    xt, yt = x[::2], y[::2]
    torch.manual_seed(0)
    net = train(module.make_net(hidden=16), xt, yt, steps=60)
    torch.manual_seed(1)
    weak = train(module.make_net(hidden=16), xt, yt, steps=4)

    images = root / "images"
    write_pngs(x_np, y_np, images)
    torch.save({"x": x, "y": y}, root / "digits.pt")
    np.savez(root / "digits.npz", inputs=x_np, labels=y_np)
    torch.save(net.state_dict(), root / "state_dict.pt")
    config = {"hidden": 16, "num_classes": 10}
    torch.save({"model": net.state_dict(), "config": config, "epoch": 3}, root / "with_config.pt")
    torch.save(
        {"state_dict": weak.state_dict(), "hparams": {**config, "lr": 0.02}}, root / "weak.pt"
    )
    program = torch.export.export(net, (x[:32],))  # batch size 32 is baked in
    torch.export.save(program, root / "net.pt2")
    torch.save(net, root / "pickled.pt")

    torch.manual_seed(2)
    leaky = train(
        module.make_arc(hidden=16, num_classes=10, s=16.0, leak=True), xt, yt, 60, labels=True
    )
    leaky_config = {"hidden": 16, "num_classes": 10, "s": 16.0, "leak": True}
    torch.save({"model": leaky.state_dict(), "config": leaky_config}, root / "leaky.pt")

    binary = (y == 0) | (y == 1)
    xb, yb = x[binary], y[binary]
    torch.manual_seed(3)
    arc64 = train(module.make_arc(hidden=16, num_classes=2, s=64.0), xb, yb, 30, labels=True)
    arc64_config = {"hidden": 16, "num_classes": 2, "s": 64.0, "m": 0.2}
    torch.save({"model": arc64.state_dict(), "config": arc64_config}, root / "arc64.pt")
    torch.save({"x": xb, "y": yb}, root / "binary.pt")

    return Digits(
        root=root,
        module=module,
        x=x,
        y=y,
        net=net,
        weak=weak,
        images=images,
        tensors_pt=root / "digits.pt",
        tensors_npz=root / "digits.npz",
        state_dict=root / "state_dict.pt",
        with_config=root / "with_config.pt",
        weak_with_config=root / "weak.pt",
        exported=root / "net.pt2",
        pickled=root / "pickled.pt",
        leaky=root / "leaky.pt",
        binary_s64=root / "arc64.pt",
        binary_x=root / "binary.pt",
    )


def reference(digits: Digits, model: torch.nn.Module) -> dict[str, float]:
    """Accuracy, macro F1 and cosine-space Fisher ratio computed here, independently."""
    with torch.no_grad():
        embedding = model.body(digits.x)
        predicted = model.classifier(embedding).argmax(1).numpy()
    y = digits.y.numpy()
    unit = torch.nn.functional.normalize(embedding, dim=1).double().numpy()
    n, k = len(y), len(np.unique(y))
    return {
        "accuracy": accuracy_score(y, predicted),
        "macro_f1": f1_score(y, predicted, average="macro"),
        # tr(S_B) / tr(S_W) = Calinski-Harabasz * (k - 1) / (n - k)
        "fisher_ratio": calinski_harabasz_score(unit, y) * (k - 1) / (n - k),
    }


def diagnose_script() -> list[str]:
    """The installed console script next to this interpreter (the venv's bin)."""
    script = Path(sys.executable).parent / "diagnose"
    if script.exists():
        return [str(script)]
    found = shutil.which("diagnose")
    if found is None:
        pytest.fail("the diagnose console script is not installed (pip install -e .)")
    return [found]


def run_diagnose(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed ``diagnose`` with ``args`` in ``cwd``; stderr is not a terminal."""
    # One thread: the tiny models only pay thread overhead on a shared 2-core machine.
    env = {**os.environ, "PYTHONWARNINGS": "default", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*diagnose_script(), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
