"""`diagnose CHECKPOINT IMAGES` against a bare `for x, y in loader: model(x)` loop.

An image folder of upscaled scikit-learn digits (RGB, --size pixels, two classes as in the
eye-state task) and a small CNN. Both sides run as fresh processes that import torch, read every
image with Pillow and run the model in eval mode without gradients, batch 256; the bare loop uses
a torch DataLoader with 2 workers, as a user's validation loop would. embscope adds the
diagnostics and writes report.json/md/html and the plots. Goal: overhead <= 15%.

    python benchmarks/bench_image_folder.py --images 8000 --size 64 --runs 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MODEL = '''
import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv stack -> 64-d embedding -> 2 logits; returns (embedding, logits)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 64),
        )
        self.classifier = nn.Linear(64, 2)

    def forward(self, x):
        e = self.features(x)
        return e, self.classifier(e)


def build(width: int = 32):
    return SmallCNN(width)
'''

BARE = r"""
import sys, time, numpy as np, torch
from pathlib import Path
from PIL import Image
sys.path.insert(0, sys.argv[2])
from bench_model import build
root = Path(sys.argv[1])
files, labels = [], []
for k, d in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
    for f in sorted(d.glob("*.png")):
        files.append(f); labels.append(k)

class Images(torch.utils.data.Dataset):
    def __len__(self): return len(files)
    def __getitem__(self, i):
        with Image.open(files[i]) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(a.transpose(2, 0, 1).copy()), labels[i]

model = build()
model.load_state_dict(torch.load(sys.argv[3], weights_only=True))
model.eval()
loader = torch.utils.data.DataLoader(Images(), batch_size=256, num_workers=2)
with torch.no_grad():
    for x, y in loader:
        model(x)
"""


def make_folder(root: Path, n: int, size: int) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    g = np.random.default_rng(0)
    for k in ("even", "odd"):
        (root / k).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        j = i % len(digits.target)
        img = digits.images[j] / 16.0
        big = np.kron(img, np.ones((size // 8, size // 8)))
        rgb = np.stack([big, big * 0.8, big * 0.6], -1) + 0.05 * g.normal(size=(size, size, 3))
        arr = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(arr).save(
            root / ("odd" if digits.target[j] % 2 else "even") / f"{i:06d}.png"
        )


def timed(cmd: list[str], cwd: Path) -> float:
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%e", *cmd], capture_output=True, text=True, cwd=cwd
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return float(proc.stderr.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=8000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the images and model here")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="embscope-bench-img-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        import torch

        (work / "bench_model.py").write_text(MODEL)
        sys.path.insert(0, str(work))
        from bench_model import build

        torch.manual_seed(0)
        torch.save(build().state_dict(), work / "model.pt")
        if not (work / "images").exists():
            make_folder(work / "images", args.images, args.size)
        bare = [sys.executable, "-c", BARE, str(work / "images"), str(work), str(work / "model.pt")]
        diag = [
            shutil.which("diagnose") or "diagnose",
            str(work / "model.pt"),
            str(work / "images"),
            "--model",
            str(work / "bench_model.py") + ":build",
            "--out",
            str(work / "report"),
            "--force",
            "--batch-size",
            "256",
        ]
        timed(bare, work)  # warm the page cache
        timed(diag, work)
        t_bare, t_diag = [], []
        for _ in range(args.runs):
            t_bare.append(timed(bare, work))
            t_diag.append(timed(diag, work))
        b, d = statistics.median(t_bare), statistics.median(t_diag)
        print(
            f"# diagnose on an image folder: {args.images} PNGs {args.size}x{args.size}, medians of {args.runs}"
        )
        print("| bare loop s | diagnose s | overhead (goal <= 15%) |")
        print("|---:|---:|---:|")
        print(f"| {b:.2f} | {d:.2f} | {100 * (d / b - 1):+.1f}% |")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
