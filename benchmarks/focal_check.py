"""Does the focal-loss rule for segmentation hold up? (issue 17 item 3)

The rule under test, from a focal-loss plan for imbalanced segmentation: where the
cross-entropy is dominated by easy pixels, train with focal loss, gamma from the imbalance
ratio (largest to smallest class pixel fraction): gamma = 1 for 10:1, 2 for 100:1, 3 for
1000:1 (round(log10(ratio)) clipped to [1, 3]), with or without alpha as per-class weights.

Task: the digit-stroke segmentation of `embscope.segdemo` (11 classes, the rare digits' strokes
under 1% of the pixels) at two rarities (``rare_keep`` 0.1 and 0.3), a tiny fully-convolutional
model, seeds 0-4. The advice is read on the validation part (imbalance ratio and the share of
the cross-entropy from easy pixels, p_true > 0.9, of the CE model) and judged on the test
part: each setting's pixel F1 of the rare classes against plain cross-entropy's, paired by
seed.

Settings: ``ce``; ``focal`` (the rule's gamma, no alpha); ``focal_alpha`` (the rule's gamma,
alpha = inverse square root of the class pixel fraction, normalised to pixel-weighted mean 1);
``ce_weighted`` (cross-entropy with those weights, the rule's alternative).

Run: ``nice -n 10 python benchmarks/focal_check.py [--seeds 0 1 2 3 4] [--epochs 30]
[--out focal_check.json]``. Prints the markdown tables of docs/recommendations.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from embscope.losses import FocalLoss
from embscope.segdemo import (
    NUM_CLASSES,
    TinyFCN,
    class_frequencies,
    digit_strokes,
    pixel_criterion,
    train_fcn,
)

EASY = 0.9


def rule_gamma(ratio: float) -> float:
    return float(min(3, max(1, round(math.log10(ratio)))))


def inverse_sqrt_weights(freq: np.ndarray) -> list[float]:
    w = np.where(freq > 0, 1.0 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
    return (w / float((w * freq).sum())).tolist()


def pixel_f1(model, x, y) -> np.ndarray:
    with torch.no_grad():
        pred = model(x).argmax(1).reshape(-1)
    t = y.reshape(-1)
    cm = torch.bincount(t * NUM_CLASSES + pred, minlength=NUM_CLASSES**2).reshape(
        NUM_CLASSES, NUM_CLASSES
    )
    tp = cm.diag().double()
    denom = cm.sum(0).double() + cm.sum(1).double()
    return torch.where(denom > 0, 2 * tp / denom, torch.nan).numpy()


def easy_share(model, x, y) -> tuple[float, np.ndarray]:
    """Share of the summed cross-entropy from pixels with p_true > 0.9, overall and per class."""
    with torch.no_grad():
        logp = F.log_softmax(model(x).double(), 1)
    lt = logp.gather(1, y[:, None]).reshape(-1)
    t = y.reshape(-1)
    ce, easy = -lt, (lt.exp() > EASY)
    per = np.full(NUM_CLASSES, np.nan)
    for c in range(NUM_CLASSES):
        sel = t == c
        if sel.any():
            per[c] = float(ce[sel & easy].sum() / ce[sel].sum())
    return float(ce[easy].sum() / ce.sum()), per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--keeps", type=float, nargs="+", default=[0.1, 0.3])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", default="focal_check.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = []
    for keep in args.keeps:
        for seed in args.seeds:
            split = digit_strokes(seed=seed, rare_keep=keep)
            freq_train = class_frequencies(split.y_train)
            freq_val = class_frequencies(split.y_val)
            present = freq_val[freq_val > 0]
            ratio = float(present.max() / present.min())
            gamma = rule_gamma(ratio)
            weights = inverse_sqrt_weights(freq_train)
            settings = {
                "ce": torch.nn.CrossEntropyLoss(),
                "focal": FocalLoss(alpha=None, gamma=gamma, task="multiclass"),
                "focal_alpha": FocalLoss(alpha=weights, gamma=gamma, task="multiclass"),
                "ce_weighted": torch.nn.CrossEntropyLoss(
                    weight=torch.as_tensor(weights, dtype=torch.float32)
                ),
            }
            row = {"keep": keep, "seed": seed, "ratio": ratio, "gamma": gamma}
            rare = list(split.rare_classes)
            common = [c for c in range(1, NUM_CLASSES) if c not in rare]
            for name, loss in settings.items():
                torch.manual_seed(seed)
                model = TinyFCN()
                train_fcn(
                    model,
                    split.x_train,
                    split.y_train,
                    pixel_criterion(loss),
                    epochs=args.epochs,
                    seed=seed,
                )
                f1 = pixel_f1(model, split.x_test, split.y_test)
                row[name] = {
                    "rare_f1": float(np.nanmean(f1[rare])),
                    "common_f1": float(np.nanmean(f1[common])),
                    "background_f1": float(f1[0]),
                    "mean_f1": float(np.nanmean(f1)),
                }
                if name == "ce":
                    share, per = easy_share(model, split.x_val, split.y_val)
                    row["easy_share"] = share
                    row["easy_share_background"] = float(per[0])
                    row["easy_share_rare"] = float(np.nanmean(per[rare]))
                    row["easy_share_common"] = float(np.nanmean(per[common]))
            rows.append(row)
            print(
                f"keep {keep} seed {seed} ratio {ratio:.0f}:1 gamma {gamma:g} easy share "
                f"{row['easy_share']:.3f} | "
                + " ".join(f"{n} {row[n]['rare_f1']:.3f}" for n in settings),
                flush=True,
            )
    wall = time.perf_counter() - start
    with open(args.out, "w") as fh:
        json.dump({"rows": rows, "wall_s": wall, "epochs": args.epochs}, fh, indent=1)
    _tables(rows, list(settings))


def _tables(rows: list[dict], names: list[str]) -> None:
    print(
        "\n| rare_keep | ratio (median) | gamma | easy CE share: all / background / common / rare |"
    )
    print("|---|---|---|---|")
    for keep in sorted({r["keep"] for r in rows}):
        rs = [r for r in rows if r["keep"] == keep]
        print(
            f"| {keep} | {np.median([r['ratio'] for r in rs]):.0f}:1 | "
            f"{sorted({r['gamma'] for r in rs})} | "
            + " / ".join(
                f"{np.mean([r[k] for r in rs]):.3f}"
                for k in (
                    "easy_share",
                    "easy_share_background",
                    "easy_share_common",
                    "easy_share_rare",
                )
            )
            + " |"
        )
    print(
        "\n| rare_keep | setting | rare F1 (mean) | diff vs CE (mean, min, max) | better than CE "
        "| common F1 diff | background F1 diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for keep in sorted({r["keep"] for r in rows}):
        rs = [r for r in rows if r["keep"] == keep]
        for name in names:
            d = np.array([r[name]["rare_f1"] - r["ce"]["rare_f1"] for r in rs])
            dc = np.mean([r[name]["common_f1"] - r["ce"]["common_f1"] for r in rs])
            db = np.mean([r[name]["background_f1"] - r["ce"]["background_f1"] for r in rs])
            print(
                f"| {keep} | {name} | {np.mean([r[name]['rare_f1'] for r in rs]):.3f} | "
                f"{d.mean():+.3f} ({d.min():+.3f}, {d.max():+.3f}) | {(d > 0).sum()}/{len(d)} | "
                f"{dc:+.3f} | {db:+.3f} |"
            )


if __name__ == "__main__":
    main()
