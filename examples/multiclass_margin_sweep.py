"""Ten-class ArcFace and CosFace on digits over a small m/s grid, and where embscope's advice
points on that grid.

Every cell of the grid (ArcFace m in {0.1, 0.3, 0.5}, CosFace m in {0.1, 0.35}; s in {4, 16, 64})
is trained on the ten digits with pixel noise 0.2 and diagnosed on the validation set. For each
cell the table lists macro-F1, the Fisher ratio, recall@1, embscope's recommendations and the
(m, s) they suggest ("-> m, s", the cell's own value where nothing is suggested); the picture
draws an arrow from each cell to the (m, s) its report suggests, over a heat map of macro-F1.
Whether following the arrows pays is measured in benchmarks/advice_check.py, not assumed here.

Writes into ``--out`` (default ``margin_sweep_out/``): ``sweep.csv`` (one row per cell),
``sweep.md`` (the table) and ``sweep.png`` (heat maps with the arrows).

Run: ``python examples/multiclass_margin_sweep.py [--epochs 20] [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from embscope.demo import DigitsNet, digits_multiclass, train  # noqa: E402
from embscope.diagnostics import diagnose_model  # noqa: E402
from embscope.losses import ArcFaceHead, CosFaceHead  # noqa: E402

HEADS = {"arcface": ArcFaceHead, "cosface": CosFaceHead}


def suggested(report, m: float, s: float) -> tuple[float, float]:
    """The (m, s) the report's recommendations point to (unchanged where none applies)."""
    for rec in report.recommendations:
        if rec.action in ("decrease_scale", "increase_scale"):
            s = float(rec.value)
        elif rec.action in ("decrease_margin", "increase_margin"):
            m = float(rec.value)
    return m, s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="2 epochs, 2 x 2 grids (CI smoke)")
    parser.add_argument("--out", type=Path, default=Path("margin_sweep_out"))
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs
    torch.set_num_threads(1)  # tiny models: threads cost more than they save
    grid = {
        "arcface": {"m": [0.1, 0.3, 0.5], "s": [4.0, 16.0, 64.0]},
        "cosface": {"m": [0.1, 0.35], "s": [4.0, 16.0, 64.0]},
    }
    if args.quick:
        grid = {h: {"m": g["m"][::2], "s": g["s"][::2]} for h, g in grid.items()}

    split = digits_multiclass(seed=0, noise=0.2)
    rows = []
    for head_name, g in grid.items():
        for m in g["m"]:
            for s in g["s"]:
                torch.manual_seed(0)
                model = DigitsNet(HEADS[head_name](16, 10, m=m, s=s))
                train(model, split, epochs=epochs, seed=0)
                report = diagnose_model(model, (split.x_val, split.y_val))
                new_m, new_s = suggested(report, m, s)
                actions = [
                    r.action + ("" if r.value is None else f" {r.value:g}")
                    for r in report.recommendations
                ]
                rows.append(
                    {
                        "head": head_name,
                        "m": m,
                        "s": s,
                        "macro_f1": report.metrics["macro_f1"],
                        "fisher_ratio": report.metrics["fisher_ratio"],
                        "recall_at_1": report.metrics["recall_at_1"],
                        "recommendations": "; ".join(actions),
                        "suggested_m": new_m,
                        "suggested_s": new_s,
                    }
                )
                print(
                    f"{head_name} m={m:g} s={s:g}: macro-F1 {rows[-1]['macro_f1']:.3f}, {actions}"
                )

    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "sweep.csv", index=False)
    lines = [
        "| head | m | s | macro-F1 | Fisher | recall@1 | recommendations | -> m, s |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['head']} | {r['m']:g} | {r['s']:g} | {r['macro_f1']:.3f} | "
            f"{r['fisher_ratio']:.3f} | {r['recall_at_1']:.3f} | {r['recommendations']} | "
            f"{r['suggested_m']:g}, {r['suggested_s']:g} |"
        )
    best = table.loc[table["macro_f1"].idxmax()]
    lines += [
        "",
        f"Best cell by macro-F1: {best['head']} m={best['m']:g} s={best['s']:g} "
        f"({best['macro_f1']:.3f}).",
    ]
    (args.out / "sweep.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, len(grid), figsize=(5.5 * len(grid), 4.2), squeeze=False)
    for ax, head_name in zip(axes[0], grid, strict=True):
        cells = table[table["head"] == head_name]
        heat = cells.pivot(index="m", columns="s", values="macro_f1")
        log_s = np.log2(heat.columns.to_numpy(dtype=float))
        ms = heat.index.to_numpy(dtype=float)
        mesh = ax.pcolormesh(
            _edges(log_s),
            _edges(ms),
            heat.to_numpy(),
            cmap="viridis",
            shading="flat",
            vmin=table["macro_f1"].min(),
            vmax=table["macro_f1"].max(),
        )
        fig.colorbar(mesh, ax=ax, label="macro-F1 (validation)")
        for _, r in cells.iterrows():
            x0, y0 = math.log2(r["s"]), r["m"]
            x1, y1 = math.log2(r["suggested_s"]), r["suggested_m"]
            ax.annotate(f"{r['macro_f1']:.3f}", (x0, y0), color="w", ha="center", va="bottom")
            if (x0, y0) != (x1, y1):
                ax.annotate(
                    "", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "color": "orange"}
                )
        ax.set_xticks(log_s, [f"{v:g}" for v in heat.columns])
        ax.set_yticks(ms, [f"{v:g}" for v in ms])
        ax.set_xlabel("s (log scale)")
        ax.set_ylabel("m")
        ax.set_title(f"{head_name}: macro-F1, arrows = embscope's suggested m/s", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out / "sweep.png", dpi=90)
    print(
        f"\nbest: {best['head']} m={best['m']:g} s={best['s']:g}; table, csv and picture in {args.out}/"
    )


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (half-way between neighbours)."""
    c = np.asarray(centres, dtype=float)
    if len(c) == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


if __name__ == "__main__":
    main()
