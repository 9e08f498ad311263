"""Calibration: ECE and MCE against torchmetrics, Brier and NLL against scikit-learn and brute
force, the fitted temperature against scipy, and streaming, merging and the binary forms."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.metrics import log_loss

from embscope.diagnostics import Diagnoser, calibration_metrics, diagnose, direction
from embscope.diagnostics.calibration import _fit_temperature
from embscope.losses import ArcFaceHead

torchmetrics = pytest.importorskip("torchmetrics")
from torchmetrics.classification import MulticlassCalibrationError  # noqa: E402

KEYS = ("ece", "mce", "brier", "nll", "fitted_temperature", "fitted_scale")


def _logits(n, c, scale=1.0, shift=1.5, seed=0):
    """Random logits [n, c] (float32) with the true class raised by ``shift``, and labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    z = torch.randn(n, c, generator=g)
    z[torch.arange(n), y] += shift
    return z * scale, y


def _torchmetrics(z, y, norm):
    """torchmetrics' top-label calibration error of the softmax of ``z`` (given as
    probabilities: logits that happen to lie in [0, 1] would be taken for probabilities)."""
    metric = MulticlassCalibrationError(num_classes=z.shape[1], n_bins=15, norm=norm)
    return float(metric(torch.softmax(z, dim=1), y))


def _binned_reference(z, y, n_bins=15):
    """ECE and MCE in float64 with torchmetrics' binning (its float32 softmax, float32
    boundaries, right-closed search with an extra bin for 1.0) but exact float64 sums."""
    conf32, pred = torch.softmax(z, dim=1).max(dim=1)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)
    idx = (torch.bucketize(conf32, edges, right=True) - 1).numpy()
    conf = torch.softmax(z.double(), dim=1).max(dim=1).values.numpy()
    correct = (pred == y).double().numpy()
    gaps = []
    for b in range(n_bins + 1):
        sel = idx == b
        gaps.append((abs(correct[sel].sum() - conf[sel].sum()), sel.sum()))
    ece = sum(g for g, _ in gaps) / len(y)
    mce = max(g / n if n else 0.0 for g, n in gaps)
    return ece, mce


def _scipy_temperature(z, y):
    """argmin over T in [0.01, 100] of the NLL of softmax(z / T), by scipy's bounded search."""
    zd, yy = z.double().numpy(), y.numpy()
    if zd.ndim == 1:  # one binary logit: the [0, z] form
        zd = np.stack([np.zeros_like(zd), zd], axis=1)
    rows = np.arange(len(yy))

    def nll(log_t):
        return float(-log_softmax(zd / np.exp(log_t), axis=1)[rows, yy].mean())

    res = minimize_scalar(
        nll, bounds=(math.log(0.01), math.log(100)), method="bounded", options={"xatol": 1e-10}
    )
    return math.exp(res.x)


# ----------------------------------------------------------------------------------------------
# ECE and MCE: torchmetrics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [2, 3, 10, 40])
@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0, 30.0])
def test_ece_and_mce_equal_torchmetrics_on_random_logits(c, scale):
    z, y = _logits(3000, c, scale, seed=c)
    r = calibration_metrics(z, y)
    # torchmetrics accumulates in float32: agreement to its rounding (measured <= 2.1e-6)
    assert r.ece == pytest.approx(_torchmetrics(z, y, "l1"), abs=1e-5)
    assert r.mce == pytest.approx(_torchmetrics(z, y, "max"), abs=1e-5)
    # the same binning with exact sums: agreement to float64 rounding (wide logits: float32)
    ece, mce = _binned_reference(z, y)
    tol = 1e-9 if c <= 16 else 1e-6
    assert r.ece == pytest.approx(ece, abs=tol)
    assert r.mce == pytest.approx(mce, abs=tol)


@pytest.fixture(scope="module")
def digits_logits():
    """Validation logits of a softmax regression trained on scikit-learn's 8x8 digits
    (10 classes; 40 full-batch Adam steps, seeded): real, slightly miscalibrated outputs."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    g = np.random.default_rng(0)
    order = g.permutation(len(y))
    x = torch.tensor(x[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[order], dtype=torch.int64)
    train, val = slice(0, 1200), slice(1200, None)
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[train]), y[train]).backward()
        opt.step()
    with torch.no_grad():
        z = model(x[val])
    return z, y[val]


def test_ece_and_mce_equal_torchmetrics_on_trained_digits(digits_logits):
    z, y = digits_logits
    assert float((z.argmax(1) == y).double().mean()) > 0.85  # the model did learn
    r = calibration_metrics(z, y)
    assert r.ece > 0.005  # not trivially calibrated
    assert r.ece == pytest.approx(_torchmetrics(z, y, "l1"), abs=1e-5)
    assert r.mce == pytest.approx(_torchmetrics(z, y, "max"), abs=1e-5)
    ece, mce = _binned_reference(z, y)
    assert r.ece == pytest.approx(ece, abs=1e-9)
    assert r.mce == pytest.approx(mce, abs=1e-9)
    # the streaming Diagnoser reports the same
    x = torch.randn(len(y), 4)
    rep = diagnose(x, y, z)
    for key in KEYS[:4]:
        assert rep.metrics[key] == pytest.approx(r.to_dict()[key], rel=1e-12), key


def test_binary_digits_equal_torchmetrics_in_the_two_column_form(digits_logits):
    """A binary model (odd vs even: one logit, the log-odds) against torchmetrics given the
    softmax of [0, z]."""
    z10, y10 = digits_logits
    y = y10 % 2
    odd = torch.logsumexp(z10[:, 1::2], 1) - torch.logsumexp(z10[:, 0::2], 1)
    r = calibration_metrics(odd, y)
    two = torch.stack([torch.zeros_like(odd), odd], dim=1)
    assert r.ece == pytest.approx(_torchmetrics(two, y, "l1"), abs=1e-5)
    assert r.mce == pytest.approx(_torchmetrics(two, y, "max"), abs=1e-5)


# ----------------------------------------------------------------------------------------------
# Brier and NLL: scikit-learn and brute force
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [2, 3, 10, 40])
def test_brier_and_nll_against_references(c):
    z, y = _logits(1000, c, 2.0, seed=c)
    r = calibration_metrics(z, y)
    p = torch.softmax(z.double(), dim=1).numpy()
    onehot = np.eye(c)[y.numpy()]
    assert r.brier == pytest.approx(((p - onehot) ** 2).sum(1).mean(), rel=1e-6)
    assert r.nll == pytest.approx(log_loss(y.numpy(), p, labels=list(range(c))), rel=1e-6)


def test_binary_logit_brier_and_nll_against_references():
    g = np.random.default_rng(3)
    y = g.integers(0, 2, 800)
    z = (2 * y - 1) * 1.2 + g.normal(size=800) * 2
    r = calibration_metrics(torch.tensor(z), torch.tensor(y))
    p = 1 / (1 + np.exp(-z))
    two = np.stack([1 - p, p], 1)
    # the two-class form: (p - y)^2 + ((1 - p) - (1 - y))^2
    assert r.brier == pytest.approx(((two - np.eye(2)[y]) ** 2).sum(1).mean(), rel=1e-12)
    assert r.nll == pytest.approx(log_loss(y, p), rel=1e-9)


def test_nll_is_exact_where_probabilities_underflow():
    """Logits of scale 1000: softmax probabilities of wrong classes underflow to 0 in float64,
    log(0) would be inf; the log-sum-exp form stays exact."""
    for c in (3, 40):
        z, y = _logits(200, c, 1000.0, seed=c)
        r = calibration_metrics(z, y)
        ref = -log_softmax(z.double().numpy(), axis=1)[np.arange(200), y.numpy()].mean()
        assert np.isfinite(r.nll) and np.isfinite(r.brier)
        assert r.nll == pytest.approx(ref, rel=1e-6)
    zb = torch.tensor([800.0, -900.0, 3.0])
    yb = torch.tensor([0, 0, 1])
    assert calibration_metrics(zb, yb).nll == pytest.approx(
        (800.0 + 0 + math.log1p(math.exp(-3))) / 3
    )


# ----------------------------------------------------------------------------------------------
# Temperature: scipy
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["logit", 2, 5, 40])
@pytest.mark.parametrize("factor", [4.0, 0.25])
def test_fitted_temperature_equals_scipy(form, factor):
    """Overconfident (z * 4) and underconfident (z / 4) versions of the same outputs."""
    c = 2 if form == "logit" else form
    z, y = _logits(1500, c, factor, seed=c)
    if form == "logit":
        z = z[:, 1] - z[:, 0]
    r = calibration_metrics(z, y)
    t = _scipy_temperature(z, y)
    assert r.fitted_temperature == pytest.approx(t, rel=1e-5)
    assert (r.fitted_temperature > 1.5) if factor > 1 else (r.fitted_temperature < 0.7)
    assert "fitted_temperature" not in r.reasons
    # the Diagnoser (margins for binary, its exact reservoir otherwise) finds the same T
    rep = diagnose(torch.randn(len(y), 3), y, z)
    assert rep.metrics["fitted_temperature"] == pytest.approx(r.fitted_temperature, rel=1e-9)
    assert rep.sampled.get("fitted_temperature", {"exact": True})["exact"]


def test_temperature_at_the_edges_is_reported_with_its_reason():
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    z = 3 * torch.nn.functional.one_hot(y, 3).float()
    sharp = calibration_metrics(z, y)  # every sample right: sharper is always better
    assert sharp.fitted_temperature == pytest.approx(0.01)
    assert "lower end" in sharp.reasons["fitted_temperature"]
    assert sharp.ece == pytest.approx(1 - float(torch.softmax(z[0], 0).max()))
    wrong = calibration_metrics(-z, y)  # every sample wrong: uniform is best
    assert wrong.fitted_temperature == pytest.approx(100.0)
    assert "upper end" in wrong.reasons["fitted_temperature"]
    flat = calibration_metrics(torch.zeros(6, 3), y)  # T changes nothing
    assert math.isnan(flat.fitted_temperature)
    assert "does not depend on T" in flat.reasons["fitted_temperature"]
    assert flat.nll == pytest.approx(math.log(3))


# ----------------------------------------------------------------------------------------------
# Binary forms, streaming, merging, invariances
# ----------------------------------------------------------------------------------------------


def test_one_binary_logit_equals_the_two_column_form():
    g = np.random.default_rng(5)
    y = torch.tensor(g.integers(0, 2, 500))
    z = torch.tensor(g.normal(size=500) * 3 + (2 * y.numpy() - 1), dtype=torch.float32)
    one = calibration_metrics(z, y)
    two = calibration_metrics(torch.stack([torch.zeros_like(z), z], 1), y)
    for key in KEYS[:5]:
        assert one.to_dict()[key] == pytest.approx(two.to_dict()[key], rel=1e-9), key
    assert one.reliability["count"] == two.reliability["count"]
    x = torch.randn(500, 3)
    a, b = diagnose(x, y, z), diagnose(x, y, torch.stack([torch.zeros_like(z), z], 1))
    for key in KEYS[:5]:
        assert a.metrics[key] == pytest.approx(b.metrics[key], rel=1e-9), key


def _close(a: dict, b: dict, rel=1e-9):
    for key in KEYS:
        va, vb = a[key], b[key]
        if math.isnan(vb):
            assert math.isnan(va), key
        else:
            assert va == pytest.approx(vb, rel=rel, abs=1e-12), key


@settings(max_examples=20, deadline=None)
@given(
    columns=st.sampled_from([1, 2, 4, 20]),
    cuts=st.lists(st.integers(0, 90), max_size=4),
    order=st.permutations(range(5)),
    seed=st.integers(0, 2**16),
)
def test_batches_and_merges_in_any_order_give_the_same_values(columns, cuts, order, seed):
    c = 2 if columns == 1 else columns
    z, y = _logits(90, c, 2.0, seed=seed)
    if columns == 1:
        z = z[:, 1] - z[:, 0]
    x = torch.randn(90, 3, generator=torch.Generator().manual_seed(seed))
    whole = diagnose(x, y, z).metrics
    functional = calibration_metrics(z, y).to_dict()
    # wide logits: the Diagnoser's top probability is its own float32 exp(top - log-sum-exp)
    rel = 1e-6 if columns > 16 else 1e-9
    _close({k: whole[k] for k in KEYS}, {**functional, "fitted_scale": math.nan}, rel=rel)
    bounds = [0, *sorted(cuts), 90]
    pieces = [slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
    parts = []
    for piece in pieces:
        d = Diagnoser()
        d.update(x[piece], y[piece], z[piece])  # empty pieces too
        parts.append(d)
    merged = Diagnoser()
    for i in order:
        if i < len(parts):
            merged.merge(parts[i])
    _close(merged.compute().metrics, whole)
    streamed = Diagnoser()
    for piece in pieces:
        streamed.update(x[piece], y[piece], z[piece])
    _close(streamed.compute().metrics, whole)


def test_permuting_samples_and_relabelling_classes_changes_nothing():
    z, y = _logits(400, 6, 2.0, seed=9)
    r = calibration_metrics(z, y).to_dict()
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(1))
    _close(calibration_metrics(z[perm], y[perm]).to_dict(), r)
    relabel = torch.tensor([3, 5, 0, 1, 4, 2])  # class k becomes relabel[k]
    z2 = torch.empty_like(z)
    z2[:, relabel] = z
    _close(calibration_metrics(z2, relabel[y]).to_dict(), r)


# ----------------------------------------------------------------------------------------------
# Undefined and degenerate cases
# ----------------------------------------------------------------------------------------------


def test_degenerate_inputs_are_nan_safe():
    # a class with no samples: five logit columns, labels in {0, 1, 2}
    z, y = _logits(300, 5, 2.0, seed=2)
    keep = y < 3
    r = calibration_metrics(z[keep], y[keep])
    assert all(math.isfinite(r.to_dict()[k]) for k in KEYS[:5])
    # one sample
    one = calibration_metrics(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]))
    assert one.ece == pytest.approx(1 - float(torch.softmax(torch.tensor([2.0, 0.0, -1.0]), 0)[0]))
    assert one.ece == one.mce
    assert one.fitted_temperature == pytest.approx(0.01)
    # every row dropped (NaN logits): nothing is defined, and says so
    empty = calibration_metrics(torch.full((4, 3), math.nan), torch.tensor([0, 1, 2, 0]))
    assert all(math.isnan(empty.to_dict()[k]) for k in KEYS)
    assert empty.reasons["ece"] == "no samples"
    assert empty.reasons["fitted_temperature"] == "no samples"


def test_reliability_diagram_adds_up():
    z, y = _logits(500, 4, 3.0, seed=4)
    rel = calibration_metrics(z, y).reliability
    assert len(rel["edges"]) == 16 and rel["edges"][0] == 0.0 and rel["edges"][-1] == 1.0
    assert len(rel["confidence"]) == len(rel["accuracy"]) == len(rel["count"]) == 15
    assert sum(rel["count"]) == 500
    for lo, hi, conf, n in zip(
        rel["edges"], rel["edges"][1:], rel["confidence"], rel["count"], strict=False
    ):
        if n:
            assert lo - 1e-7 <= conf <= hi + 1e-7
        else:
            assert math.isnan(conf)


def test_wide_logits_are_fitted_on_the_reservoir_and_flagged_as_sampled():
    z, y = _logits(400, 20, 3.0, seed=6)
    x = torch.randn(400, 5)
    d = Diagnoser(reservoir_size=100)
    d.update(x, y, z)
    rep = d.compute()
    info = {"exact": False, "sample_size": 100, "population": 400}
    assert rep.sampled["fitted_temperature"] == info
    res = d.reservoir
    order = torch.argsort(res.keys)
    fit = _fit_temperature(logits=res.extra[order], labels=res.labels[order])
    assert rep.metrics["fitted_temperature"] == pytest.approx(fit.temperature, rel=1e-12)
    # ECE, Brier and NLL stay exact: streamed sums over every sample (wide logits are evaluated
    # in float32; the Diagnoser reuses its own float32 log-sum-exp)
    full = calibration_metrics(z, y)
    for key in ("ece", "mce", "brier", "nll"):
        assert rep.metrics[key] == pytest.approx(full.to_dict()[key], rel=1e-6)
        assert key not in rep.sampled
    narrow = diagnose(x, y % 3, z[:, :3], reservoir_size=0)
    assert math.isnan(narrow.metrics["fitted_temperature"])
    assert "reservoir_size is 0" in narrow.reasons["fitted_temperature"]


# ----------------------------------------------------------------------------------------------
# The margin head's scale
# ----------------------------------------------------------------------------------------------


def test_fitted_scale_is_s_over_t_for_a_cosine_head():
    torch.manual_seed(0)
    head = ArcFaceHead(8, 4, m=0.3, s=16.0).eval()
    y = torch.randint(0, 4, (300,))
    x = head.weight.detach()[y] * 2 + torch.randn(300, 8)
    with torch.no_grad():
        z = head(x)  # eval: s * cos(theta), no margin
    rep = diagnose(x, y, z, head=head)
    t = rep.metrics["fitted_temperature"]
    assert rep.metrics["fitted_scale"] == pytest.approx(16.0 / t)
    assert calibration_metrics(z, y, scale=16.0).fitted_scale == pytest.approx(16.0 / t)
    # without a head, and with logits that cannot be the head's s * cos(theta)
    assert math.isnan(diagnose(x, y, z).metrics["fitted_scale"])
    too_big = diagnose(x, y, z * 3, head=head)
    assert math.isnan(too_big.metrics["fitted_scale"])
    assert "beyond the head's s = 16" in too_big.reasons["fitted_scale"]


# ----------------------------------------------------------------------------------------------
# Report, rendering, inputs
# ----------------------------------------------------------------------------------------------


def test_report_directions_section_and_plot():
    from embscope.diagnostics import Report

    for key in ("ece", "mce", "brier", "nll"):
        assert direction(key) == "lower"
    assert direction("fitted_temperature") is None and direction("fitted_scale") is None
    z, y = _logits(200, 3, 2.0, seed=7)
    rep = diagnose(torch.randn(200, 4), y, z)
    assert set(rep.sections["reliability"]) == {"edges", "confidence", "accuracy", "count"}
    again = Report.from_json(rep.to_json())  # nan bins travel as "nan"
    assert "reliability" in again.plot_pngs()
    assert "alt='reliability'" in again.to_html()
    no_logits = diagnose(torch.randn(50, 4), torch.randint(0, 2, (50,)))
    assert "ece" not in no_logits.metrics and "reliability" not in no_logits.sections


def test_inputs_are_checked():
    z, y = _logits(10, 3)
    with pytest.raises(ValueError, match="n_bins must be a positive integer, got 0"):
        calibration_metrics(z, y, n_bins=0)
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        calibration_metrics(z, y, scale=-1.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        calibration_metrics(z, y + 3)
    with pytest.raises(ValueError, match="logits are required"):
        calibration_metrics(None, y)
    ten = calibration_metrics(z, y, n_bins=10)
    assert len(ten.reliability["count"]) == 10
