"""Train the CI example's model and save what the ``diagnose`` command reads.

Trains ``digits_model.build(**CONFIG)`` on the ten digits (pixel noise 0.2, seed 0, one
thread: the same weights on every run on the same software) and writes into ``--out``
(default ``build/``):

- ``model.pt``: ``{"model": state_dict, "config": CONFIG}`` (the command builds the model from
  the config);
- ``val.npz``: the validation inputs ``x`` ``[N, 64]`` and labels ``y`` ``[N]``.

Run: ``python examples/ci_regression/train_model.py [--epochs 15] [--quick] [--out build]``.
``--quick`` trains 1 epoch: a model worse than the baseline, to see the check fail.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # digits_model.py beside this file

from digits_model import build  # noqa: E402

from embscope.demo import digits_multiclass, train  # noqa: E402

CONFIG = {"hidden": 64, "embedding_dim": 16, "m": 0.3, "s": 16.0}
EPOCHS = 15


def train_and_save(
    out: Path, epochs: int = EPOCHS
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Train, write ``out/model.pt`` and ``out/val.npz``; return the model and the validation set."""
    torch.set_num_threads(1)
    split = digits_multiclass(seed=0, noise=0.2)
    torch.manual_seed(0)
    model = build(**CONFIG)
    train(model, split, epochs=epochs, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": CONFIG}, out / "model.pt")
    np.savez(out / "val.npz", x=split.x_val.numpy(), y=split.y_val.numpy())
    return model, split.x_val, split.y_val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--quick", action="store_true", help="1 epoch (a deliberately worse model)")
    parser.add_argument("--out", type=Path, default=Path("build"))
    args = parser.parse_args()
    train_and_save(args.out, 1 if args.quick else args.epochs)
    print(f"wrote {args.out / 'model.pt'} and {args.out / 'val.npz'}")


if __name__ == "__main__":
    main()
