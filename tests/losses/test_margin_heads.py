"""ArcFace / CosFace heads against the paper formulas, pytorch-metric-learning and autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ArcFaceLoss, CosFaceLoss
from torch.func import functional_call

from embscope.losses import ArcFaceHead, CosFaceHead, MarginHead

D, C, B = 6, 4, 10


def margin_heads(dtype=torch.float32):
    """Every margin head configuration, as (id, head) pairs."""
    torch.manual_seed(0)
    heads = {
        "arcface": ArcFaceHead(D, C, m=0.5, s=16.0),
        "arcface-easy": ArcFaceHead(D, C, m=0.5, s=16.0, easy_margin=True),
        "cosface": CosFaceHead(D, C, m=0.35, s=16.0),
    }
    return [(name, head.to(dtype)) for name, head in heads.items()]


HEAD_IDS = [name for name, _ in margin_heads()]


@pytest.fixture(params=HEAD_IDS)
def head(request):
    return dict(margin_heads())[request.param]


def batch(dtype=torch.float32, n=B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=dtype), torch.randint(0, C, (n,), generator=g)


# ---------------------------------------------------------------- paper formulas, by hand (numpy)


def reference_logits(head, x, y, *, margin: bool) -> np.ndarray:
    """Logits from the papers' definitions in float64 numpy, using arccos and the angle itself."""
    x = x.detach().double().numpy()
    w = head.weight.detach().double().numpy()
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (
        w / np.linalg.norm(w, axis=1, keepdims=True)
    ).T
    out = cos.copy()
    if margin:
        for i, j in enumerate(y.tolist()):
            c = cos[i, j]
            theta = math.acos(min(max(c, -1.0), 1.0))
            if isinstance(head, CosFaceHead):
                out[i, j] = c - head.m
            elif head.easy_margin:
                out[i, j] = math.cos(theta + head.m) if c > 0 else c
            elif theta + head.m <= math.pi:
                out[i, j] = math.cos(theta + head.m)
            else:  # ArcFace paper / insightface: cos(theta) - m sin(m) beyond pi - m
                out[i, j] = c - head.m * math.sin(head.m)
    return head.s * out


def fallback_batch(head, n=8, seed=3):
    """Embeddings near minus their target weight: theta close to pi, past pi - m."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    w = F.normalize(head.weight.detach(), dim=1)
    x = -w[y] + 0.05 * torch.randn(n, D, generator=g, dtype=w.dtype)
    return x, y


def test_train_logits_match_paper_formula(head):
    head = head.double().train()
    x, y = batch(torch.float64)
    xf, yf = fallback_batch(head)
    x, y = torch.cat([x, xf]), torch.cat([y, yf])
    cos_y = head.cosine(x).gather(1, y[:, None]).squeeze(1)
    if not isinstance(head, CosFaceHead) and not head.easy_margin:
        assert (cos_y < math.cos(math.pi - head.m)).sum() >= 4, "fallback region not exercised"
    got = head(x, y).detach().numpy()
    want = reference_logits(head, x, y, margin=True)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_eval_logits_are_scaled_cosine(head):
    head = head.double().eval()
    x, y = batch(torch.float64)
    want = reference_logits(head, x, y, margin=False)
    assert head(x).detach().numpy() == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert (head.s * head.cosine(x)).detach().numpy() == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_eval_output_identical_with_and_without_labels(head):
    head.eval()
    x, y = batch()
    assert torch.equal(head(x, y), head(x))


def test_train_without_labels_has_no_margin(head):
    head.train()
    x, _ = batch()
    assert torch.equal(head(x), head.eval()(x))


def test_train_with_labels_changes_only_target_logits(head):
    x, y = batch()
    plain = head.eval()(x)
    trained = head.train()(x, y)
    target = F.one_hot(y, C).bool()
    assert torch.equal(trained[~target], plain[~target])
    # a margin never raises the target logit (easy margin leaves cos <= 0 unchanged)
    assert bool((trained[target] <= plain[target]).all())
    assert bool((trained[target] < plain[target]).any())


@pytest.mark.parametrize("training", [True, False])
def test_head_loss_is_cross_entropy_of_forward(head, training):
    head = head.double().train(training)
    x, y = batch(torch.float64)
    x.requires_grad_(True)
    fused = head.loss(x, y)
    gx, gw = torch.autograd.grad(fused, (x, head.weight))
    plain = F.cross_entropy(head(x, y), y)
    rx, rw = torch.autograd.grad(plain, (x, head.weight))
    assert fused.item() == pytest.approx(plain.item(), rel=1e-12)
    assert gx.numpy() == pytest.approx(rx.numpy(), rel=1e-9, abs=1e-12)
    assert gw.numpy() == pytest.approx(rw.numpy(), rel=1e-9, abs=1e-12)


def test_zero_margin_equals_plain_softmax():
    for head in (ArcFaceHead(D, C, m=0.0, s=8.0), CosFaceHead(D, C, m=0.0, s=8.0)):
        x, y = batch()
        assert head.train()(x, y).detach().numpy() == pytest.approx(
            head.eval()(x).detach().numpy(), rel=1e-6, abs=1e-6
        )


def test_single_override_point():
    class Shifted(MarginHead):
        def _target_logit(self, cos_target):
            return cos_target - self.m

    torch.manual_seed(0)
    custom = Shifted(D, C, m=0.2, s=10.0)
    cosface = CosFaceHead(D, C, m=0.2, s=10.0)
    cosface.weight.data.copy_(custom.weight.data)
    x, y = batch()
    assert torch.equal(custom(x, y), cosface(x, y))


def autograd_margin_loss(head, x, y):
    """Cross-entropy of the margin logits built from plain torch ops, ``_target_logit``
    differentiated by autograd: the reference for the fused kernels' hand-written backward."""
    cos = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    index = y[:, None]
    cos = cos.scatter(1, index, head._target_logit(cos.gather(1, index).squeeze(1))[:, None])
    return F.cross_entropy(head.s * cos, y)


def assert_fused_forms_match_autograd(head, x, y) -> None:
    """head.loss and F.cross_entropy(head(x, y), y): the loss and both gradients of the
    plain-autograd reference, in float64."""
    want = autograd_margin_loss(head, x, y)
    rx, rw = torch.autograd.grad(want, (x, head.weight))
    for got in (head.loss(x, y), F.cross_entropy(head(x, y), y)):
        gx, gw = torch.autograd.grad(got, (x, head.weight))
        assert got.item() == pytest.approx(want.item(), rel=1e-12)
        assert gx.numpy() == pytest.approx(rx.numpy(), rel=1e-9, abs=1e-12)
        assert gw.numpy() == pytest.approx(rw.numpy(), rel=1e-9, abs=1e-12)


def test_subclass_overriding_only_target_logit_is_differentiated_by_autograd():
    # ArcFace's analytic slope must not be inherited by a subclass that changes the margin
    class Curved(ArcFaceHead):
        def _target_logit(self, cos_target):
            return 0.5 * cos_target * cos_target + 0.25 * cos_target - 0.1

    class CurvedWithSlope(Curved):
        def _target_logit_and_slope(self, cos_target):
            return self._target_logit(cos_target), cos_target + 0.25

    torch.manual_seed(0)
    for cls in (Curved, CurvedWithSlope):
        head = cls(D, C, s=10.0).double()
        x, y = batch(torch.float64)
        x.requires_grad_(True)
        assert_fused_forms_match_autograd(head, x, y)


@pytest.mark.parametrize("name", HEAD_IDS)
@pytest.mark.parametrize("dim, classes", [(6, 4), (3, 7)])  # C <= D and C > D backward paths
def test_fused_gradients_match_autograd_reference(name, dim, classes):
    torch.manual_seed(0)
    head = {
        "arcface": ArcFaceHead(dim, classes, m=0.5, s=16.0),
        "arcface-easy": ArcFaceHead(dim, classes, m=0.5, s=16.0, easy_margin=True),
        "cosface": CosFaceHead(dim, classes, m=0.35, s=16.0),
    }[name].double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, dim, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, classes, (12,), generator=g)
    assert_fused_forms_match_autograd(head, x, y)


def slope_test_cosines(head, dtype):
    """Cosines covering [-1, 1], the ends and just past them, the clamp of 1 - cos^2 at 1e-6
    and ArcFace's switch to the fallback at cos(pi - m), with neighbours a few ulps away."""
    points = [-1.0, 1.0, 1.0 + 1e-7, -1.0 - 1e-7, 0.0, math.sqrt(1.0 - 1e-6)]
    points += [-p for p in points] + [math.cos(math.pi - head.m)]
    base = torch.tensor(points, dtype=dtype)
    ulps = torch.arange(-20, 21, dtype=dtype)[:, None]
    near = base + ulps * torch.finfo(dtype).eps * base.abs().clamp_min(1e-3)
    return torch.cat([torch.linspace(-1, 1, 2001, dtype=dtype), base, near.flatten()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_slope_equals_autograd_derivative_of_target_logit(head, dtype):
    cos = slope_test_cosines(head, dtype)
    psi, slope = head._target_logit_and_slope(cos[:, None])
    leaf = cos.clone().requires_grad_(True)
    want = head._target_logit(leaf)
    (want_slope,) = torch.autograd.grad(want.sum(), leaf)
    assert torch.equal(psi.squeeze(1), want.detach())
    slope = torch.ones_like(psi) if slope is None else slope
    # abs: at cos(pi - m) ArcFace's slope cos m + sin m cos / sin cancels to 0
    rel, tiny = (1e-12, 16 * 2.0**-52) if dtype == torch.float64 else (1e-6, 16 * 2.0**-23)
    assert slope.squeeze(1).numpy() == pytest.approx(want_slope.numpy(), rel=rel, abs=tiny)


# ------------------------------------------------------------ pytorch-metric-learning, same weights


def pml_pair(head):
    if isinstance(head, CosFaceHead):
        ref = CosFaceLoss(head.num_classes, head.embedding_dim, margin=head.m, scale=head.s)
    else:
        ref = ArcFaceLoss(
            head.num_classes, head.embedding_dim, margin=math.degrees(head.m), scale=head.s
        )
    ref.W.data = head.weight.data.T.clone()
    return ref


@pytest.mark.parametrize("name", ["arcface", "cosface"])
@pytest.mark.parametrize("region", ["random", "fallback"])
def test_loss_and_gradients_match_pytorch_metric_learning(name, region):
    # PML's ArcFace keeps cos(theta + m) while theta <= pi - m and uses cos(theta) - m sin(m)
    # beyond: the same fallback as the paper, so the comparison holds in that region too.
    head = dict(margin_heads(torch.float64))[name].train()
    ref = pml_pair(head).double()
    x, y = batch(torch.float64, n=16) if region == "random" else fallback_batch(head)
    x = x.clone().requires_grad_(True)
    ours = F.cross_entropy(head(x, y), y)
    gx, gw = torch.autograd.grad(ours, (x, head.weight))
    x2 = x.detach().clone().requires_grad_(True)
    theirs = ref(x2, y)
    rx, rw = torch.autograd.grad(theirs, (x2, ref.W))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-10)
    assert gx.numpy() == pytest.approx(rx.numpy(), rel=1e-7, abs=1e-10)
    assert gw.numpy() == pytest.approx(rw.T.numpy(), rel=1e-7, abs=1e-10)


def test_matches_pytorch_metric_learning_in_float32_at_default_scale():
    torch.manual_seed(0)
    head = ArcFaceHead(64, 100)  # m = 0.5, s = 64
    ref = pml_pair(head)
    x = torch.randn(32, 64)
    y = torch.randint(0, 100, (32,))
    assert F.cross_entropy(head(x, y), y).item() == pytest.approx(ref(x, y).item(), rel=1e-5)


# ------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("name", HEAD_IDS)
@pytest.mark.parametrize("region", ["random", "fallback"])
def test_gradcheck_float64(name, region):
    head = dict(margin_heads(torch.float64))[name].train()
    x, y = batch(torch.float64, n=5) if region == "random" else fallback_batch(head, n=5)
    weight = head.weight.detach().clone()

    def logits(x, w):
        return functional_call(head, {"weight": w}, (x, y))

    def loss(x, w):
        return F.cross_entropy(logits(x, w), y)

    inputs = (x.requires_grad_(True), weight.requires_grad_(True))
    assert torch.autograd.gradcheck(logits, inputs)
    assert torch.autograd.gradcheck(loss, inputs)


@pytest.mark.parametrize("name", HEAD_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite_at_cos_plus_minus_one(name, dtype):
    head = dict(margin_heads(dtype))[name].train()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    w = head.weight.detach()
    sign = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0], dtype=dtype)[:, None]
    x = (sign * w[y] * 3.0).requires_grad_(True)  # cos(x, w_y) = +1 or -1 (up to rounding)
    loss = F.cross_entropy(head(x, y), y)
    loss.backward()
    assert bool(torch.isfinite(loss))
    assert bool(torch.isfinite(x.grad).all()) and bool(torch.isfinite(head.weight.grad).all())

    cos = torch.tensor([1.0, -1.0, 1.0 + 1e-7, -1.0 - 1e-7], dtype=dtype, requires_grad=True)
    head._target_logit(cos).sum().backward()
    assert bool(torch.isfinite(cos.grad).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_cpu_is_finite_and_close_to_float32(head, dtype):
    head.train()
    x, y = batch(n=64)
    ref_logits = head(x, y)
    ref_loss = F.cross_entropy(ref_logits, y)
    with torch.autocast("cpu", dtype=dtype):
        logits = head(x, y)
        loss = F.cross_entropy(logits, y)
    loss.backward()
    assert bool(torch.isfinite(logits).all()) and bool(torch.isfinite(loss))
    assert bool(torch.isfinite(head.weight.grad).all())
    # cosines rounded to the half type (8 or 11 significant bits) then scaled by s = 16
    tol = head.s * (2.0**-6 if dtype == torch.bfloat16 else 2.0**-9)
    assert logits.float().detach().numpy() == pytest.approx(ref_logits.detach().numpy(), abs=tol)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-2)


def test_no_grad_training_forward_equals_grad_forward(head):
    head.train()
    x, y = batch()
    with torch.no_grad():
        quiet = head(x, y)
    assert torch.equal(quiet, head(x, y).detach())


def test_backward_twice_with_retained_graph(head):
    head.train()
    x, y = batch()
    loss = head.loss(x, y)
    (g1,) = torch.autograd.grad(loss, head.weight, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, head.weight)
    assert torch.equal(g1, g2)


# ----------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("cls", [ArcFaceHead, CosFaceHead])
def test_rejects_bad_hyperparameters(cls):
    with pytest.raises(ValueError, match=r"m must be >= 0.*got -0\.1"):
        cls(D, C, m=-0.1)
    with pytest.raises(ValueError, match=r"s must be > 0, got 0\.0"):
        cls(D, C, s=0)
    with pytest.raises(ValueError, match=r"s must be > 0, got -1\.0"):
        cls(D, C, s=-1.0)
    with pytest.raises(ValueError, match=r"m must be finite, got nan"):
        cls(D, C, m=float("nan"))
    with pytest.raises(TypeError, match=r"m must be a real number, got str"):
        cls(D, C, m="0.5")
    with pytest.raises(ValueError, match=r"num_classes must be >= 2, got 1"):
        cls(D, 1)
    with pytest.raises(ValueError, match=r"embedding_dim must be >= 1, got 0"):
        cls(0, C)
    head = cls(D, C)
    with pytest.raises(ValueError, match=r"m must be >= 0"):
        head.m = -1.0
    with pytest.raises(ValueError, match=r"s must be > 0"):
        head.s = 0.0


def test_arcface_margin_in_degrees_is_rejected_with_a_hint():
    with pytest.raises(
        ValueError, match=r"m must be >= 0 and < 3\.14159.*28\.6 degrees.*0\.4992 rad"
    ):
        ArcFaceHead(D, C, m=28.6)


def test_arcface_margin_setter_updates_the_formula():
    torch.manual_seed(0)
    head = ArcFaceHead(D, C, m=0.5, s=8.0)
    fresh = ArcFaceHead(D, C, m=0.2, s=8.0)
    fresh.weight.data.copy_(head.weight.data)
    head.m = 0.2
    x, y = batch()
    assert torch.equal(head(x, y), fresh(x, y))


def test_rejects_bad_inputs(head):
    head.train()
    x, y = batch()
    with pytest.raises(ValueError, match=r"embedding must have shape \[B, 6\], got \[10, 5\]"):
        head(x[:, :5], y)
    with pytest.raises(ValueError, match=r"embedding must have shape \[B, 6\], got \[6\]"):
        head(x[0], y)
    with pytest.raises(TypeError, match=r"embedding must be a floating-point tensor"):
        head(x.long(), y)
    with pytest.raises(TypeError, match=r"embedding must be a torch.Tensor, got ndarray"):
        head(x.numpy(), y)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\] \(num_classes=4\), got 4"):
        head(x, torch.full((B,), 4))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\] \(num_classes=4\), got -1"):
        head(x, torch.full((B,), -1))
    with pytest.raises(ValueError, match=r"labels must be an integer tensor.*float32"):
        head(x, y.float())
    with pytest.raises(ValueError, match=r"labels must have shape \[10\], got \[9\]"):
        head(x, y[:9])
    with pytest.raises(ValueError, match=r"embedding must have shape \[B, 6\], got \[7, 5\]"):
        head.cosine(torch.randn(7, 5))


def test_eval_head_exports_with_torch_export():
    head = ArcFaceHead(D, C, s=8.0).eval()
    x, _ = batch()
    exported = torch.export.export(head, (x,))
    assert torch.equal(exported.module()(x), head(x))


def test_heads_declare_their_margin_kind_and_diagnostics_read_it():
    from embscope.diagnostics.heads import head_params

    assert ArcFaceHead.margin_type == "angular" and CosFaceHead.margin_type == "cosine"
    assert head_params(ArcFaceHead(4, 3)).kind_source == "declared"

    class CosineNamedButAngular(ArcFaceHead):  # the declaration wins over the name
        pass

    assert head_params(CosineNamedButAngular(4, 3)).kind == "angular"

    class MyArcMarginProduct(torch.nn.Module):  # a foreign head: no declaration
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(3, 4))
            self.m, self.s = 0.5, 30.0

    p = head_params(MyArcMarginProduct())
    assert (p.kind, p.kind_source) == ("angular", "class name")
