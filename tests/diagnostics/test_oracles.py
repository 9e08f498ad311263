"""Report values against independent oracles: each one computed here from its definition, by
brute force (plain loops over samples, pairs or classes) on small data where the value is not
trivial (neither 0 nor 1 only)."""

import math

import numpy as np
import pytest
import torch

from embscope.diagnostics import Diagnoser, diagnose, nc1
from embscope.losses import ArcFaceHead, build_head

from .conftest import blobs

# ------------------------------------------------------------------------------------------------
# brute-force definitions


def _unit(v):
    return v / math.sqrt(sum(float(a) * float(a) for a in v))


def _softmax(row):
    top = max(row)
    e = [math.exp(float(a) - top) for a in row]
    total = sum(e)
    return [a / total for a in e]


def _sigmoid(t):
    return 1.0 / (1.0 + math.exp(-t)) if t >= 0 else math.exp(t) / (1.0 + math.exp(t))


def _percentile_linear(values, q):
    """numpy's default ("linear") percentile, by hand: position q/100 * (n - 1) in the sorted
    values, interpolated between its two neighbours."""
    v = sorted(values)
    pos = q / 100 * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def brute_margins(z, y):
    """True-class logit minus the largest other; (2y - 1) z for one binary logit."""
    out = []
    for i in range(len(y)):
        if z.ndim == 1:
            out.append((2 * int(y[i]) - 1) * float(z[i]))
        else:
            others = [float(z[i, j]) for j in range(z.shape[1]) if j != y[i]]
            out.append(float(z[i, y[i]]) - max(others))
    return out


def brute_saturation(z):
    """Binary: P(positive) < 1e-3 or > 1 - 1e-3 (sigmoid of one logit, softmax column 1 of
    two); multi-class: top probability > 1 - 1e-3."""
    hits = 0
    for i in range(len(z)):
        if z.ndim == 1:
            p = _sigmoid(float(z[i]))
            hits += p < 1e-3 or p > 1 - 1e-3
        elif z.shape[1] == 2:
            p = _softmax(z[i])[1]
            hits += p < 1e-3 or p > 1 - 1e-3
        else:
            hits += max(_softmax(z[i])) > 1 - 1e-3
    return hits / len(z)


def brute_unit_class_means(x, y):
    """{label: mean of the unit rows of that class}, float64."""
    means = {}
    for c in sorted(set(y.tolist())):
        rows = [_unit(x[i].astype(np.float64)) for i in range(len(y)) if y[i] == c]
        means[c] = sum(rows) / len(rows)
    return means


def brute_centroid_confusion(x, y):
    """Samples whose unit row is nearer by cosine to another class's normalised mean of unit
    rows than to its own class's."""
    means = {c: _unit(m) for c, m in brute_unit_class_means(x, y).items()}
    confused = 0
    for i in range(len(y)):
        u = _unit(x[i].astype(np.float64))
        own = float(u @ means[int(y[i])])
        best_other = max(float(u @ m) for c, m in means.items() if c != y[i])
        confused += best_other > own
    return confused


def brute_pair_similarities(x, y):
    """Cosine similarities of every unordered pair i < j: (genuine, impostor)."""
    units = [_unit(r.astype(np.float64)) for r in x]
    genuine, impostor = [], []
    for i in range(len(y)):
        for j in range(i + 1, len(y)):
            s = float(units[i] @ units[j])
            (genuine if y[i] == y[j] else impostor).append(s)
    return genuine, impostor


def brute_hellinger(a, b, bins=50, lo=-1.0, hi=1.0):
    """sqrt(1 - sum_b sqrt(p_b q_b)) of the two normalised histograms over ``bins`` equal bins
    of [lo, hi] (the last bin closed)."""

    def hist(values):
        counts = [0] * bins
        for v in values:
            k = int(math.floor((v - lo) / (hi - lo) * bins))
            counts[min(max(k, 0), bins - 1)] += 1
        return [c / len(values) for c in counts]

    p, q = hist(a), hist(b)
    bc = sum(math.sqrt(pb * qb) for pb, qb in zip(p, q, strict=True))
    return math.sqrt(max(0.0, 1.0 - bc))


def brute_nc1(x, y):
    """Tr(S_W S_B^+) / C on unit rows, S_W = sum_i (u_i - mu_c)(u_i - mu_c)^T and S_B = sum_c
    n_c (mu_c - mu)(mu_c - mu)^T (the normalisations cancel). S_B is a sum of C centred terms
    whose weighted sum is zero, so its rank is at most C - 1: its pseudo-inverse keeps the top
    min(C - 1, D) eigenpairs and treats the rest (rounding noise) as zero."""
    units = [_unit(r.astype(np.float64)) for r in x]
    classes = sorted(set(y.tolist()))
    d = len(units[0])
    means = brute_unit_class_means(x, y)
    mu = sum(units) / len(units)
    sw = np.zeros((d, d))
    sb = np.zeros((d, d))
    for i, u in enumerate(units):
        sw += np.outer(u - means[int(y[i])], u - means[int(y[i])])
    for c in classes:
        sb += int((y == c).sum()) * np.outer(means[c] - mu, means[c] - mu)
    vals, vecs = np.linalg.eigh(sb)
    rank = min(len(classes) - 1, d)
    sb_pinv = sum(np.outer(vecs[:, j], vecs[:, j]) / vals[j] for j in range(d - rank, d))
    return float(np.trace(sw @ sb_pinv)) / len(classes)


def brute_fisher_and_intra(x, y):
    """tr(S_B) / tr(S_W) of the unit rows (two passes: class means first, then squared
    deviations from them) and the mean cosine distance 1 - cos over same-class pairs i < j."""
    units = [_unit(r.astype(np.float64)) for r in x]
    means = brute_unit_class_means(x, y)
    mu = sum(units) / len(units)
    within = sum(float(np.sum((u - means[int(y[i])]) ** 2)) for i, u in enumerate(units))
    between = sum(int((y == c).sum()) * float(np.sum((m - mu) ** 2)) for c, m in means.items())
    same = [
        1.0 - float(units[i] @ units[j])
        for i in range(len(y))
        for j in range(i + 1, len(y))
        if y[i] == y[j]
    ]
    fisher = between / within if within > 0 else math.nan
    return fisher, (sum(same) / len(same) if same else math.nan)


def brute_true_angles(x, y, weight):
    """Angle (radians) of each embedding to its own class weight, class = label value."""
    w = weight.detach().double().numpy()
    return [
        math.acos(max(-1.0, min(1.0, float(_unit(x[i].astype(np.float64)) @ _unit(w[y[i]])))))
        for i in range(len(y))
    ]


def brute_alignment(weight, x, y):
    """Mean over present classes c (label value = weight row) of cos(w_c - mean w, mu_c - mean
    mu), w_c the unit class weight, mu_c the class mean of unit rows, each centred over the
    classes present (no centring with a single class)."""
    w = weight.detach().double().numpy()
    means = brute_unit_class_means(x, y)
    present = [c for c in means if 0 <= c < len(w)]
    ws = {c: _unit(w[c]) for c in present}
    if len(present) >= 2:
        w_bar = sum(ws.values()) / len(present)
        m_bar = sum(means[c] for c in present) / len(present)
    else:
        w_bar = m_bar = 0.0
    cosines = [float(_unit(ws[c] - w_bar) @ _unit(means[c] - m_bar)) for c in present]
    return sum(cosines) / len(cosines)


# ------------------------------------------------------------------------------------------------
# data


def _logits(kind: str, y, seed: int, scale: float = 5.0):
    """float64 logits whose confidence varies widely: some saturated, some not, some wrong."""
    g = np.random.default_rng(seed)
    n = len(y)
    if kind == "binary1":
        z = g.normal(0.0, scale, n) + (2 * y - 1) * 2.0
    else:
        c = {"binary2": 2, "multiclass": 4}[kind]
        z = g.normal(0.0, scale, (n, c))
        z[np.arange(n), y] += 2.0
    return z


def _labels(kind: str):
    k = 4 if kind == "multiclass" else 2
    x, y = blobs(n=200, d=5, k=k, sep=1.0, seed=21)
    return x, y


LOGIT_KINDS = ["binary1", "binary2", "multiclass"]


# ------------------------------------------------------------------------------------------------
# logit metrics


@pytest.mark.parametrize("kind", LOGIT_KINDS)
def test_saturation_fraction_matches_brute_force(kind):
    x, y = _labels(kind)
    z = _logits(kind, y, seed=5)
    expected = brute_saturation(z)
    assert 0.1 < expected < 0.9  # not a trivial value
    r = diagnose(x, y, z, reservoir_size=0)
    assert r.metrics["saturation_fraction"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kind", LOGIT_KINDS)
def test_margin_statistics_match_brute_force(kind):
    x, y = _labels(kind)
    z = _logits(kind, y, seed=6, scale=2.0)
    m = brute_margins(z, y)
    negative = sum(v < 0 for v in m) / len(m)
    assert 0.05 < negative < 0.95
    r = diagnose(x, y, z, reservoir_size=0)
    assert r.metrics["margin_mean"] == pytest.approx(sum(m) / len(m), rel=1e-12)
    assert r.metrics["margin_median"] == pytest.approx(_percentile_linear(m, 50), rel=1e-12)
    assert r.metrics["margin_p05"] == pytest.approx(_percentile_linear(m, 5), rel=1e-12)
    assert r.metrics["negative_margin_fraction"] == pytest.approx(negative, abs=1e-12)


def test_margin_percentiles_interpolate_between_samples():
    """Hand-derived: margins 0, 1, ..., 20 (one binary logit, label 1): p05 at position 1.0,
    median at 10; with 0..19 p05 sits at position 0.95, between 0 and 1."""
    n = 20
    y = np.ones(n, dtype=np.int64)
    y[0] = 0  # a second class; its margin is -z
    z = np.arange(n, dtype=np.float64)
    z[0] = -0.0  # margin +0.0 for label 0
    x = np.random.default_rng(0).normal(size=(n, 3))
    r = diagnose(x, y, z, reservoir_size=0)
    assert r.metrics["margin_p05"] == pytest.approx(0.95)
    assert r.metrics["margin_median"] == pytest.approx(9.5)
    assert r.metrics["margin_mean"] == pytest.approx(9.5)
    assert r.metrics["negative_margin_fraction"] == 0.0


# ------------------------------------------------------------------------------------------------
# vector metrics


def test_centroid_confusion_count_matches_brute_force():
    x, y = blobs(n=150, d=5, k=4, sep=0.6, seed=13)
    labels = np.array([7, -2, 40, 3])[y]  # any label values
    expected = brute_centroid_confusion(x, labels)
    assert 10 < expected < 140
    r = diagnose(x, labels)
    assert r.sampled["centroid_confusion_fraction"]["exact"]
    assert r.metrics["centroid_confusion_count"] == expected
    assert r.metrics["centroid_confusion_fraction"] == pytest.approx(expected / len(y))


def test_pair_hellinger_matches_brute_force():
    x, y = blobs(n=90, d=4, k=3, sep=0.8, seed=19)
    genuine, impostor = brute_pair_similarities(x, y)
    # no similarity within float32 rounding of a bin edge (0.04 wide), so the binning is stable
    edges = np.linspace(-1, 1, 51)
    sims = np.array(genuine + impostor)
    assert np.abs(sims[:, None] - edges[None, :]).min() > 1e-5
    expected = brute_hellinger(genuine, impostor)
    assert 0.1 < expected < 0.9
    r = diagnose(x, y)
    assert r.sampled["pair_hellinger"]["exact"]
    assert r.metrics["pair_hellinger"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("spread", [1e-2, 1e-3, 1e-4])
def test_fisher_ratio_and_intra_mean_of_tight_float32_classes(spread):
    """Classes spread 1e-2 .. 1e-4 around their means, float32 rows. The closed forms from
    per-class sums (n - sum_c n_c |mu_c|^2) cancel to the rounding of float32 unit rows, whose
    squared norms are 1 +- 1e-7, not the 1 the state assumes: here at 1e-3 fisher_ratio and
    intra_mean were off by 3.5%, at 1e-4 by 44% and 78% (other data: nan, and a negative
    intra_mean of -5.9e-9)."""
    g = np.random.default_rng(0)
    y = np.arange(60) % 4
    x = (g.normal(size=(4, 8))[y] + spread * g.normal(size=(60, 8))).astype(np.float32)
    fisher, intra = brute_fisher_and_intra(x, y)
    r = diagnose(x, y, reservoir_size=0)
    assert r.metrics["intra_mean"] >= 0
    assert r.metrics["intra_mean"] == pytest.approx(intra, rel=1e-2)
    assert r.metrics["fisher_ratio"] == pytest.approx(fisher, rel=1e-2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fisher_ratio_when_every_class_is_a_single_point(dtype):
    """Seven samples of seven classes: no within-class scatter, so fisher_ratio is undefined
    (nan with a reason), whatever the dtype (float32 rows gave 1e7 .. 6e8 for half of these
    seeds)."""
    y = np.array([11, 5, 4, 19, 14, 2, 1])
    for seed in range(20):
        x = np.random.default_rng(seed).normal(size=(7, 6)).astype(dtype)
        r = diagnose(x, y, reservoir_size=0)
        assert math.isnan(r.metrics["fisher_ratio"]), (seed, r.metrics["fisher_ratio"])
        assert r.reasons["fisher_ratio"]
        assert math.isnan(r.metrics["intra_mean"])


def test_nc1_keeps_only_the_rank_of_the_between_class_scatter():
    """S_B of C classes has rank C - 1; its last singular direction is rounding noise, which a
    relative cut of max(C, D) * eps does not always remove: then NC1 comes out near 1e31 (two
    classes in D = 2: about one data set in twenty; e.g. blobs seed 42)."""
    for seed in range(60):
        x, y = blobs(n=30, d=2, k=2, seed=seed)
        expected = brute_nc1(x, y)
        assert nc1(x, y) == pytest.approx(expected, rel=1e-4), seed
        assert diagnose(x, y).metrics["nc1"] == pytest.approx(expected, rel=1e-4), seed
    g = np.random.default_rng(81710460)  # six rows, two classes: the report said 1.1e31
    y = g.integers(0, 2, 6)
    x = (g.normal(size=(2, 2)) * 1.5)[y] + g.normal(size=(6, 2))
    expected = brute_nc1(x, y)
    assert 0.1 < expected < 10
    for batch in (1, 6):
        d = Diagnoser()
        for a in range(0, 6, batch):
            d.update(x[a : a + batch], y[a : a + batch])
        assert d.compute().metrics["nc1"] == pytest.approx(expected, rel=1e-4), batch


# ------------------------------------------------------------------------------------------------
# margin heads: class identity is the label value, whatever the row order


def _ordered(x, y, order):
    idx = np.argsort(y if order == "ascending" else -y, kind="stable")
    return x[idx], y[idx]


def _reports(x, y, head, batch=25):
    """The one-shot report and the report of the same rows streamed in batches (so classes
    arrive one after another in the order of the rows)."""
    d = Diagnoser(head=head, reservoir_size=0)
    for start in range(0, len(y), batch):
        d.update(x[start : start + batch], y[start : start + batch])
    return {"one-shot": diagnose(x, y, head=head, reservoir_size=0), "streamed": d.compute()}


@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_arcface_fallback_fraction_matches_brute_force(order):
    torch.manual_seed(3)
    x, y = blobs(n=200, d=5, k=3, sep=0.7, seed=19)
    x, y = _ordered(x, y, order)
    m = 1.0
    head = build_head({"type": "arcface", "m": m, "s": 16.0}, embedding_dim=5, num_classes=3)
    theta = brute_true_angles(x, y, head.weight)
    expected = sum(t + m > math.pi for t in theta) / len(theta)
    assert 0.05 < expected < 0.95
    for how, r in _reports(x, y, head).items():
        assert r.metrics["fallback_fraction"] == pytest.approx(expected, abs=1e-12), how
        assert r.metrics["angle_true_mean"] == pytest.approx(
            math.degrees(sum(theta) / len(theta)), rel=1e-5
        ), how
        assert r.metrics["head.m"] == pytest.approx(m)


def _partly_trained_head(x, y, num_classes, d, seed):
    """ArcFace head whose class weights are the unit class means plus noise: alignment between
    0 and 1. Rows without samples get pure noise."""
    g = np.random.default_rng(seed)
    means = brute_unit_class_means(x, y)
    w = g.normal(0.0, 0.35, (num_classes, d))
    for c, mu in means.items():
        w[c] += _unit(mu)
    head = ArcFaceHead(d, num_classes, m=0.3, s=16.0)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
    return head


@pytest.mark.parametrize("order", ["ascending", "descending"])
@pytest.mark.parametrize(
    "present, num_classes",
    [
        ([0, 1, 2, 3], 4),  # every class present
        ([1, 2, 3], 4),  # class 0 of the head absent from the data
        ([0, 2, 4], 6),  # the head has classes the data never shows
    ],
)
def test_centroid_alignment_matches_brute_force(present, num_classes, order):
    d = 6
    x, y0 = blobs(n=160, d=d, k=len(present), sep=1.2, seed=23)
    y = np.array(present)[y0]
    x, y = _ordered(x, y, order)
    head = _partly_trained_head(x, y, num_classes, d, seed=len(present))
    expected = brute_alignment(head.weight, x, y)
    assert 0.2 < expected < 0.98
    untrained = float(expected < min(3 / math.sqrt(d), 0.5))
    for how, r in _reports(x, y, head).items():
        assert r.metrics["head.centroid_alignment"] == pytest.approx(expected, rel=1e-5), how
        assert r.metrics["head.looks_untrained"] == untrained, how
