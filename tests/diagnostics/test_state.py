"""The Diagnoser's state is declared once (diagnostics/state.py): every piece of state is a
declared field, and reset / merge follow the declaration for every field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embscope.diagnostics import Diagnoser
from embscope.diagnostics import state as S
from embscope.losses import ArcFaceHead

from .conftest import blobs


def _feed(d, x, y, z, ids, parts):
    for idx in np.array_split(np.arange(len(y)), parts):
        d.update(x[idx], y[idx], None if z is None else z[idx], [ids[i] for i in idx])


def _data(cols, seed=0):
    x, y = blobs(n=90, d=6, k=cols if cols > 1 else 2, seed=seed)
    g = np.random.default_rng(seed)
    z = g.normal(size=(90, cols)) if cols > 1 else g.normal(size=90)
    return x, y, z, [f"s{i}" for i in range(90)]


@pytest.mark.parametrize("cols", [1, 3, 20])
def test_every_piece_of_state_is_declared(cols):
    x, y, z, ids = _data(cols)
    head = ArcFaceHead(6, cols if cols > 1 else 2) if cols < 20 else None
    d = Diagnoser(head=head, reservoir_size=30)
    _feed(d, x, y, z, ids, 3)
    assert set(d.state) <= set(S.FIELDS)
    layout = d._layout()
    for name, f in S.FIELDS.items():
        if f.early or f.active(layout):
            assert name in d.state, name  # laid out from the declaration
        else:
            assert name not in d.state, name
        if f.reduce != "cat" and name in d.state:
            assert d.state[name].dtype == torch.float64
            assert tuple(d.state[name].shape) == f.shape(layout), name
    d.reset()
    assert set(d.state) == {n for n, f in S.FIELDS.items() if f.early}


@pytest.mark.parametrize("cols", [None, 1, 3, 20])
def test_merge_folds_every_field_as_declared(cols):
    x, y, z, ids = _data(cols or 3, seed=4)
    if cols is None:
        z, y = None, np.array([7, -3, 100])[y % 3]  # raw labels: slots differ between parts
    whole = Diagnoser(reservoir_size=30)
    _feed(whole, x, y, z, ids, 1)
    parts = []
    for idx in np.array_split(np.arange(len(y))[::-1], 3):  # reversed: other slot orders
        p = Diagnoser(reservoir_size=30)
        _feed(p, x[idx], y[idx], None if z is None else z[idx], [ids[i] for i in idx], 2)
        parts.append(p)
    merged = Diagnoser(reservoir_size=30)
    for p in parts:
        merged.merge(p)
    order_w = np.argsort(whole._values)
    order_m = np.argsort(merged._values)
    for name, f in S.FIELDS.items():
        a, b = whole.state.get(name), merged.state.get(name)
        assert (a is None) == (b is None), name
        if a is None:
            continue
        if f.reduce == "cat":
            if name == "ids":
                assert sorted(a) == sorted(b)
                continue
            assert bool(a) == bool(b), name
            if not a:
                continue
            va, vb = torch.cat(a), torch.cat(b)
            if f.slots:  # slot -> label value
                va = torch.as_tensor(whole._values)[va]
                vb = torch.as_tensor(merged._values)[vb]
            assert sorted(va.tolist()) == pytest.approx(sorted(vb.tolist())), name
        else:
            if f.by_class:
                a, b = a[order_w], b[order_m]
            # float32 batch sums: the order of additions differs between the two
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5, equal_nan=True), name
