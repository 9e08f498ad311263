"""Triplet loss with random triplets vs batch-hard mining, diagnosed as an embedding model.

A typical first-stage model learns an embedding with a triplet loss (cosine distance, margin 0.3)
and no classifier. Here the same MLP embedding (64 -> 64 -> 16) is trained on the ten digits
(pixel noise 0.2) three ways:

- ``random``: for each anchor in a batch, a random positive (same digit) and a random negative,
  ``TripletLoss(mining="none")`` on those triplets;
- ``hard``: batch-hard mining, the farthest positive and the nearest negative of each anchor
  (Hermans et al., 2017), ``TripletLoss(mining="hard")``;
- ``warmup_hard``: random triplets for the first half of the epochs, batch-hard for the rest.

On these noisy digits batch-hard mining came out worse than random triplets on every embedding
metric (30 epochs, the default: recall@1 0.62 vs 0.93), from scratch and after a warm-up: the
hardest pair of a batch is mostly noise here, which is why FaceNet mines semi-hard negatives
instead. The reports show it without a look at the loss curve.

Without logits the diagnostics are those of the embedding space: Fisher ratio, intra/inter
distances, genuine vs impostor pair distributions (pair KS, EER) and retrieval (recall@1,
MAP@R).

Writes into ``--out`` (default ``triplet_out/``): ``random/``, ``hard/`` and ``warmup_hard/``
with report.json, report.md and report.html each, and ``comparison.md`` (random as A, hard as
B).

Run: ``python examples/triplet_hard_mining.py [--epochs 30] [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from embscope.demo import DigitsNet, digits_multiclass, train
from embscope.diagnostics import compare, diagnose, embed
from embscope.losses import TripletLoss


def random_triplets(margin: float):
    criterion = TripletLoss(margin=margin, mining="none", distance="cosine")

    def loss(model, x, y):
        embedding, _ = model(x)
        same = y[:, None] == y[None, :]
        positive_ok = same & ~torch.eye(len(y), dtype=torch.bool)
        anchors = positive_ok.any(dim=1) & (~same).any(dim=1)
        positive = torch.multinomial(positive_ok[anchors].float(), 1)[:, 0]
        negative = torch.multinomial((~same)[anchors].float(), 1)[:, 0]
        value, _, _ = criterion(embedding[anchors], embedding[positive], embedding[negative])
        return value

    return loss


def batch_hard(margin: float):
    criterion = TripletLoss(margin=margin, mining="hard", distance="cosine")

    def loss(model, x, y):
        embedding, _ = model(x)
        value, _, _ = criterion(embedding, y)
        return value

    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="2 epochs (for CI smoke tests)")
    parser.add_argument("--out", type=Path, default=Path("triplet_out"))
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs
    torch.set_num_threads(1)  # tiny models: threads cost more than they save

    split = digits_multiclass(seed=0, noise=0.2)
    reports = {}
    schedules = {
        "random": [(epochs, random_triplets(0.3))],
        "hard": [(epochs, batch_hard(0.3))],
        "warmup_hard": [
            (epochs // 2, random_triplets(0.3)),
            (epochs - epochs // 2, batch_hard(0.3)),
        ],
    }
    for name, schedule in schedules.items():
        torch.manual_seed(0)
        model = DigitsNet(nn.Identity())  # an embedding model: no classifier
        for stage, (stage_epochs, loss) in enumerate(schedule):
            train(model, split, epochs=stage_epochs, seed=stage, loss=loss, batch_size=128)
        # DigitsNet's identity head returns the embedding twice: keep the embedding only
        embedding = torch.cat([e for e, _, _ in embed(model, (split.x_val, split.y_val))])
        report = diagnose(embedding, split.y_val, ids=split.ids_val)
        reports[name] = report
        report.save(args.out / name, force=True)  # this script's own folder
        m = report.metrics
        print(
            f"{name}: recall@1 {m['recall_at_1']:.3f}, MAP@R {m['map_at_r']:.3f}, "
            f"pair KS {m['pair_ks']:.3f}, EER {m['eer']:.3f}, Fisher {m['fisher_ratio']:.3f}, "
            f"intra/inter {m['intra_inter_ratio']:.3f}"
        )
    comparison = compare(reports["random"], reports["hard"])
    (args.out / "comparison.md").write_text(
        "# random triplets (A) vs batch-hard mining (B)\n\n" + comparison.to_markdown()
    )
    print(f"\n{comparison.verdict}: {comparison.reason}\nreports in {args.out}/")


if __name__ == "__main__":
    main()
