"""Forward + backward time of embscope's margin heads against pytorch-metric-learning.

For each number of classes C it times one training step of the loss (forward, cross-entropy,
backward into the embeddings and the class weights) for

- embscope ``ArcFaceHead`` / ``CosFaceHead`` + ``F.cross_entropy`` (column "head+CE"),
- embscope ``head.loss(x, y)``, the same loss fused (column "head.loss"),
- pytorch-metric-learning ``ArcFaceLoss`` / ``CosFaceLoss`` on the same weights,
- the three-GEMM floor: ``cos = x_n @ w_n.T`` plus the two backward products
  ``g.T @ x_n`` and ``g @ w_n`` on pre-normalised inputs, timed directly: no margin head can
  beat it, since it does at least these three matrix products.

Candidates run round-robin (one step of each in turn) so that a noisy shared machine slows all
of them alike; each cell is the median over the timed rounds, after warm-up rounds. Before any
timing the script asserts that embscope's and PML's losses agree on the same weights.

Usage::

    python benchmarks/bench_losses.py                  # CPU, float32 and bfloat16 autocast
    python benchmarks/bench_losses.py --device cuda    # the same on a GPU
    python benchmarks/bench_losses.py --overhead       # host overhead: B 8, D 8, C 2, 1 thread

The ``--overhead`` table is the CPU proxy for a GPU's launch-bound regime: at tiny shapes every
step's time is Python, dispatcher and autograd bookkeeping, which is what a GPU step at batch
512 costs whatever C (every GPU cell in benchmarks/README.md is 1.5 to 2.5 ms).

Goals (performance issue): ArcFace within 1.2x of the floor at C = 10000 and at most 0.7x of
PML's time at C = 2 (and in the overhead table).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ArcFaceLoss, CosFaceLoss

from embscope.losses import ArcFaceHead, CosFaceHead

M_ARC, M_COS, SCALE = 0.5, 0.35, 64.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_models(dim: int, classes: int, device: torch.device):
    torch.manual_seed(0)
    ours = {
        "arcface": ArcFaceHead(dim, classes, m=M_ARC, s=SCALE).to(device),
        "cosface": CosFaceHead(dim, classes, m=M_COS, s=SCALE).to(device),
    }
    pml = {
        "arcface": ArcFaceLoss(classes, dim, margin=math.degrees(M_ARC), scale=SCALE),
        "cosface": CosFaceLoss(classes, dim, margin=M_COS, scale=SCALE),
    }
    for name, ref in pml.items():
        ref.to(device)
        ref.W.data = ours[name].weight.data.T.contiguous().clone()
    return ours, pml


def check_agreement(ours, pml, x, y) -> None:
    """Losses and weight gradients of embscope (both forms) and PML must agree before timing."""
    for name in ours:
        head, ref = ours[name], pml[name]
        ref.W.grad = None
        b = ref(x, y)
        b.backward()
        for form in ("head+CE", "head.loss"):
            head.weight.grad = None
            a = F.cross_entropy(head(x, y), y) if form == "head+CE" else head.loss(x, y)
            a.backward()
            if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
                sys.exit(f"{name} {form}: embscope loss {a.item()} != PML loss {b.item()}")
            if not torch.allclose(head.weight.grad, ref.W.grad.T, rtol=1e-3, atol=1e-6):
                err = (head.weight.grad - ref.W.grad.T).abs().max().item()
                sys.exit(
                    f"{name} {form}: weight gradients differ from PML's (max abs diff {err:.3g})"
                )


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype``, or no context at all for float32 (entering a disabled
    autocast costs microseconds, which the overhead table would count)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def step_ours(head, x, y, autocast: torch.dtype | None, fused: bool) -> Callable[[], None]:
    def run() -> None:
        head.weight.grad = None
        x.grad = None
        with autocast_context(x.device, autocast):
            loss = head.loss(x, y) if fused else F.cross_entropy(head(x, y), y)
        loss.backward()

    return run


def step_pml(ref, x, y, autocast: torch.dtype | None) -> Callable[[], None]:
    def run() -> None:
        ref.W.grad = None
        x.grad = None
        with autocast_context(x.device, autocast):
            loss = ref(x, y)
        loss.backward()

    return run


def step_floor(x, weight, autocast: torch.dtype | None) -> Callable[[], None]:
    dtype = autocast or x.dtype
    xn = F.normalize(x.detach(), dim=1).to(dtype)
    wn = F.normalize(weight.detach(), dim=1).to(dtype)
    g = torch.randn(x.shape[0], weight.shape[0], device=x.device, dtype=dtype)

    def run() -> None:
        torch.mm(xn, wn.T)
        torch.mm(g.T, xn)
        torch.mm(g, wn)

    return run


def time_round_robin(
    steps: dict[str, Callable[[], None]], device: torch.device, warmup: int, repeats: int
) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(warmup + repeats):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


# aten calls that launch no kernel: views, metadata, allocation, dtype queries
_NO_KERNEL = frozenset(
    "aten::" + name
    for name in (
        "view as_strided unsqueeze squeeze permute t transpose numpy_T expand expand_as select "
        "slice detach alias reshape _reshape_alias empty empty_like empty_strided to "
        "lift_fresh result_type promote_types resolve_conj resolve_neg item "
        "_local_scalar_dense _has_compatible_shallow_copy_type"
    ).split()
)


def count_ops(step: Callable[[], None]) -> int:
    """Top-level aten operators that one call of ``step`` dispatches, leaving out those that
    launch no kernel: roughly the kernel launches of the same step on a GPU (a composite such
    as ``cross_entropy_loss`` counts once but launches two or three)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    count = 0
    for event in prof.events():
        if not event.name.startswith("aten::") or event.name in _NO_KERNEL:
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        count += parent is None
    return count


def overhead(args: argparse.Namespace) -> int:
    """The host-overhead table: a tiny step on one CPU thread, where the time is all Python,
    dispatcher and autograd bookkeeping, the part that bounds a GPU step at any C; with the
    number of operators each step dispatches (see ``count_ops``)."""
    torch.set_num_threads(1)
    device = torch.device("cpu")
    batch, dim, classes = args.overhead_shape
    print(
        f"# margin heads, host overhead: forward + backward, batch {batch}, D {dim}, "
        f"C {classes}, CPU, 1 thread, torch {torch.__version__}; median of "
        f"{args.overhead_repeats} rounds after {args.overhead_warmup} warm-up; us"
    )
    print()
    print(
        "| head | head+CE | head.loss | PML | head+CE / PML | head.loss / PML "
        "| ops head+CE | ops head.loss | ops PML |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ours, pml = make_models(dim, classes, device)
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(batch, dim, generator=g).requires_grad_(True)
    y = torch.randint(0, classes, (batch,), generator=g)
    check_agreement(ours, pml, x, y)
    steps: dict[str, Callable[[], None]] = {}
    for name in ours:
        steps[f"ce:{name}"] = step_ours(ours[name], x, y, None, fused=False)
        steps[f"loss:{name}"] = step_ours(ours[name], x, y, None, fused=True)
        steps[f"pml:{name}"] = step_pml(pml[name], x, y, None)
    ms = time_round_robin(steps, device, args.overhead_warmup, args.overhead_repeats)
    ops = {key: count_ops(step) for key, step in steps.items()}
    for name in ours:
        a, fused, b = ms[f"ce:{name}"], ms[f"loss:{name}"], ms[f"pml:{name}"]
        print(
            f"| {name} | {1e3 * a:.0f} | {1e3 * fused:.0f} | {1e3 * b:.0f} | {a / b:.2f} | "
            f"{fused / b:.2f} | {ops[f'ce:{name}']} | {ops[f'loss:{name}']} | "
            f"{ops[f'pml:{name}']} |"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 1000, 10000])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 rows")
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="time only the host-overhead proxy: tiny shapes, CPU, one thread",
    )
    parser.add_argument(
        "--overhead-shape", type=int, nargs=3, default=[8, 8, 2], metavar=("B", "D", "C")
    )
    parser.add_argument("--overhead-warmup", type=int, default=30)
    parser.add_argument("--overhead-repeats", type=int, default=300)
    args = parser.parse_args(argv)
    if args.overhead:
        return overhead(args)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"# margin heads, forward + backward, batch {args.batch}, D {args.dim}, {where}, "
        f"torch {torch.__version__}; median of {args.repeats} rounds after {args.warmup} "
        f"warm-up; ms"
    )
    print()
    print(
        "| C | dtype | head | head+CE | head.loss | PML | floor | head+CE / PML "
        "| head.loss / PML | head+CE / floor | head.loss / floor |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    dtypes: list[torch.dtype | None] = [None] if args.no_bf16 else [None, torch.bfloat16]
    for classes in args.classes:
        ours, pml = make_models(args.dim, classes, device)
        g = torch.Generator(device="cpu").manual_seed(1)
        x = torch.randn(args.batch, args.dim, generator=g).to(device).requires_grad_(True)
        y = torch.randint(0, classes, (args.batch,), generator=g).to(device)
        check_agreement(ours, pml, x, y)
        for autocast in dtypes:
            steps: dict[str, Callable[[], None]] = {
                "floor": step_floor(x, ours["arcface"].weight, autocast)
            }
            for name in ours:
                steps[f"ce:{name}"] = step_ours(ours[name], x, y, autocast, fused=False)
                steps[f"loss:{name}"] = step_ours(ours[name], x, y, autocast, fused=True)
                steps[f"pml:{name}"] = step_pml(pml[name], x, y, autocast)
            ms = time_round_robin(steps, device, args.warmup, args.repeats)
            label = "float32" if autocast is None else "bf16 autocast"
            for name in ours:
                a, fused = ms[f"ce:{name}"], ms[f"loss:{name}"]
                b, f = ms[f"pml:{name}"], ms["floor"]
                print(
                    f"| {classes} | {label} | {name} | {a:.2f} | {fused:.2f} | {b:.2f} | "
                    f"{f:.2f} | {a / b:.2f} | {fused / b:.2f} | {a / f:.2f} | "
                    f"{fused / f:.2f} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
