"""TripletLoss against scipy distances and brute-force batch-hard mining."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, cosine, euclidean

from embscope.losses import TripletLoss


def triplets(n=9, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("mining", ["none", "hard"])
def test_triplet_form_matches_scipy(distance, mining):
    a, p, n = triplets()
    loss, d_ap, d_an = TripletLoss(margin=0.3, mining=mining, distance=distance)(a, p, n)
    dist = cosine if distance == "cosine" else euclidean
    want_ap = [dist(u, v) for u, v in zip(a.numpy(), p.numpy(), strict=True)]
    want_an = [dist(u, v) for u, v in zip(a.numpy(), n.numpy(), strict=True)]
    assert d_ap.numpy() == pytest.approx(want_ap, rel=1e-10)
    assert d_an.numpy() == pytest.approx(want_an, rel=1e-10)
    want = np.mean(np.maximum(np.array(want_ap) - np.array(want_an) + 0.3, 0.0))
    assert loss.item() == pytest.approx(want, rel=1e-10)


def brute_force_batch_hard(x, labels, margin, metric):
    dist = cdist(x, x, metric=metric)
    losses, aps, ans = [], [], []
    for i in range(len(x)):
        pos = [dist[i, j] for j in range(len(x)) if j != i and labels[j] == labels[i]]
        neg = [dist[i, j] for j in range(len(x)) if labels[j] != labels[i]]
        if pos and neg:
            aps.append(max(pos))
            ans.append(min(neg))
            losses.append(max(max(pos) - min(neg) + margin, 0.0))
    return np.mean(losses), aps, ans


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_batch_hard_matches_brute_force(distance):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(14, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4, 5, 1])  # 3 and 5 are singletons
    loss, d_ap, d_an = TripletLoss(margin=0.4, mining="hard", distance=distance)(x, labels)
    want, aps, ans = brute_force_batch_hard(x.numpy(), labels.numpy(), 0.4, distance)
    assert len(d_ap) == 12  # the two singleton anchors have no positive
    assert loss.item() == pytest.approx(want, rel=1e-10)
    assert d_ap.numpy() == pytest.approx(aps, rel=1e-10)
    assert d_an.numpy() == pytest.approx(ans, rel=1e-10)


def test_batch_hard_is_permutation_invariant():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2] * 4)
    perm = torch.randperm(12, generator=g)
    crit = TripletLoss(mining="hard")
    assert crit(x, labels)[0].item() == pytest.approx(crit(x[perm], labels[perm])[0].item())


def test_batch_hard_without_valid_anchor_is_zero_with_zero_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    for labels in (torch.zeros(4, dtype=torch.long), torch.arange(4)):
        loss, d_ap, d_an = TripletLoss(mining="hard")(x, labels)
        loss.backward()
        assert loss.item() == 0.0 and d_ap.numel() == 0 and d_an.numel() == 0
        assert torch.equal(x.grad, torch.zeros(4, 3))
        x.grad = None


def test_gradients_finite_for_identical_embeddings():
    x = torch.ones(4, 3, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    for distance in ("cosine", "euclidean"):
        loss, _, _ = TripletLoss(mining="hard", distance=distance)(x, labels)
        loss.backward()
        assert bool(torch.isfinite(x.grad).all())
        x.grad = None
    a = torch.ones(2, 3, requires_grad=True)
    TripletLoss(distance="euclidean")(a, a, a)[0].backward()
    assert bool(torch.isfinite(a.grad).all())


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_gradcheck(distance):
    a, p, n = (t.requires_grad_(True) for t in triplets(n=4, d=3))
    crit = TripletLoss(margin=1.0, distance=distance)
    assert torch.autograd.gradcheck(lambda a, p, n: crit(a, p, n)[0], (a, p, n))
    hard = TripletLoss(margin=1.0, mining="hard", distance=distance)
    labels = torch.tensor([0, 0, 1, 1])
    assert torch.autograd.gradcheck(lambda a: hard(a, labels)[0], (a,))


def test_rejects_bad_input():
    a, p, n = triplets()
    with pytest.raises(ValueError, match=r"margin must be >= 0, got -0\.1"):
        TripletLoss(margin=-0.1)
    with pytest.raises(ValueError, match=r"mining must be one of 'none', 'hard'; got 'semi'"):
        TripletLoss(mining="semi")
    with pytest.raises(ValueError, match=r"distance must be one of 'cosine', 'euclidean'"):
        TripletLoss(distance="manhattan")
    with pytest.raises(ValueError, match=r"negative must have the shape of anchor \[9, 4\]"):
        TripletLoss()(a, p, n[:5])
    with pytest.raises(ValueError, match=r"positive must have shape \[B, 4\], got \[9, 3\]"):
        TripletLoss()(a, p[:, :3], n)
    with pytest.raises(ValueError, match=r"batch form.*needs mining='hard'"):
        TripletLoss()(a, torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be an integer tensor.*pass a negative"):
        TripletLoss(mining="hard")(a, p)
    with pytest.raises(ValueError, match=r"labels must have shape \[9\], got \[8\]"):
        TripletLoss(mining="hard")(a, torch.zeros(8, dtype=torch.long))
