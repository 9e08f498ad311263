"""``diagnose ... --distributed`` under ``torchrun --nproc-per-node 2`` on the CPU (gloo) gives
the report of one process; sharding helpers split the samples exactly once."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from embscope.cli import distributed as dcli
from embscope.cli.main import main

MODEL_SOURCE = textwrap.dedent(
    '''
    """A user's net for 6x6 grey images: forward(x, labels=None) -> (embedding, logits)."""
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Head(nn.Module):
        def __init__(self, dim, num_classes, m=0.3, s=8.0):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(num_classes, dim))
            self.m, self.s = m, s

        def forward(self, embedding, labels=None):
            cos = F.linear(F.normalize(embedding), F.normalize(self.weight))
            if labels is not None and self.training:
                theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
                target = F.one_hot(labels, cos.shape[1]).bool()
                cos = torch.where(target, torch.cos(theta + self.m), cos)
            return self.s * cos


    class Net(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(36, 5))
            self.head = Head(5, num_classes)

        def forward(self, x, labels=None):
            embedding = self.body(x)
            return embedding, self.head(embedding, labels)


    def make(num_classes=3):
        return Net(num_classes)
    '''
)
N_IMAGES = 45  # 23 + 22 per rank
N_ROWS = 45  # chunks of 16: 16 + 16 on rank 0, 13 on rank 1


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model file and its state dict, an image folder, and a folder of embeddings."""
    from PIL import Image

    root = tmp_path_factory.mktemp("distributed")
    (root / "tiny_model.py").write_text(MODEL_SOURCE)
    sys.path.insert(0, str(root))
    try:
        import tiny_model
    finally:
        sys.path.remove(str(root))
    torch.manual_seed(0)
    torch.save(tiny_model.make().state_dict(), root / "net.pt")
    g = np.random.default_rng(0)
    labels = g.integers(0, 3, N_IMAGES)
    for i, label in enumerate(labels):
        folder = root / "images" / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = g.integers(0, 256, (6, 6)) // (label + 1)
        Image.fromarray(pixels.astype(np.uint8), mode="L").save(folder / f"{i:03d}.png")
    emb = root / "embeddings"
    emb.mkdir()
    y = g.integers(0, 2, N_ROWS)
    np.save(emb / "embeddings.npy", (g.normal(size=(N_ROWS, 4)) + y[:, None]).astype(np.float32))
    np.save(emb / "labels.npy", y)
    np.save(emb / "logits.npy", (g.normal(size=N_ROWS) + 2 * y - 1).astype(np.float32))
    (emb / "ids.txt").write_text("".join(f"row-{i}\n" for i in range(N_ROWS)))
    return root


def torchrun(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(cwd), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    return subprocess.run(
        [*command, "2", "-m", "embscope.cli.main", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def close(a: object, b: object, path: str = "") -> None:
    """Nested equality: numbers to float tolerance (nan equals nan), the rest exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for key in a:
            close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            close(u, v, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        if a is None or b is None or math.isnan(a) or math.isnan(b):
            assert (a is None or math.isnan(a)) and (b is None or math.isnan(b)), path
        else:
            assert a == pytest.approx(b, rel=1e-6, abs=1e-9), (path, a, b)
    else:
        assert a == b, path


def same_report(distributed: dict, single: dict) -> None:
    assert distributed["meta"].pop("distributed") == {"world_size": 2, "backend": "gloo"}
    for part in ("metrics", "reasons", "sampled", "sections", "recommendations", "meta"):
        close(distributed[part], single[part], part)


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("model", id="checkpoint-image-folder"),
        pytest.param("embeddings", id="precomputed-embeddings"),
    ],
)
def test_torchrun_two_processes_give_the_single_process_report(
    files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    if kind == "model":
        inputs = [
            "net.pt",
            "images",
            "--model",
            "tiny_model:make",
            "--grayscale",
            "--device",
            "cpu",
        ]
    else:
        inputs = ["embeddings"]
    common = [*inputs, "--batch-size", "16"]
    done = torchrun(*common, "--distributed", "--out", tmp_path / "dist", cwd=files)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("report: ") == 1  # rank 0 alone prints
    monkeypatch.chdir(files)
    monkeypatch.setattr(sys, "path", [str(files), *sys.path])
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    single = json.loads((tmp_path / "single" / "report.json").read_text())
    distributed = json.loads((tmp_path / "dist" / "report.json").read_text())
    assert distributed["metrics"]["n"] == (N_IMAGES if kind == "model" else N_ROWS)
    assert distributed["sampled"]["recall_at_1"]["exact"] is True
    same_report(distributed, single)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist", "single"]


def test_distributed_without_torchrun_is_a_usage_error(
    files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for name in dcli.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    code = main([str(files / "embeddings"), "--distributed", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "diagnose: error: --distributed: needs the environment torchrun sets up, but RANK, "
        "WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set (launch with torchrun"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("n", [0, 1, 2, 7, 45])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_bounds_are_the_blocks_of_array_split(n: int, world: int) -> None:
    blocks = np.array_split(np.arange(n), world)
    for rank, block in enumerate(blocks):
        start, stop = dcli.shard_bounds(n, rank, world)
        assert list(range(start, stop)) == block.tolist()


def test_shard_bounds_rejects_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size = 2\), got 2"):
        dcli.shard_bounds(10, 2, 2)


def test_outside_distributed_nothing_is_sharded() -> None:
    assert dcli.active() is None
    assert list(dcli.shard_chunks(iter("abc"), 3)) == ["a", "b", "c"]
    data = object()
    assert dcli.shard_inputs(data) is data
