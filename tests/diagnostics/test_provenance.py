"""Provenance (diagnostics/provenance.py): the checkpoint file's fingerprint equals hashlib's
digest of the whole file read in any chunk size, the state_dict's hash identifies the weights
(equal weights in another module or insertion order give the same hash, one changed value
another), diagnose_model records it, it survives save and load, and compare says whether two
reports come from the same weights."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import pytest
import torch
from torch import nn

from embscope.diagnostics import Report, compare, diagnose_model
from embscope.diagnostics.provenance import (
    checkpoint_phrase,
    file_fingerprint,
    same_checkpoint,
    state_dict_fingerprint,
)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_file_fingerprint_is_the_sha256_of_the_whole_file(tmp_path, chunk: int) -> None:
    data = torch.randn(3001, generator=torch.Generator().manual_seed(0)).numpy().tobytes()
    path = tmp_path / "ckpt.pt"
    path.write_bytes(data)
    fp = file_fingerprint(path, chunk=chunk)
    assert fp == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def test_state_dict_hash_identifies_the_weights() -> None:
    a, b = _net(0), _net(0)
    fa = state_dict_fingerprint(a)
    assert fa == state_dict_fingerprint(b)
    assert fa["tensors"] == 4 and fa["values"] == 4 * 3 + 3 + 3 * 2 + 2
    # the same tensors in another order: the same hash
    reordered = OrderedDict(reversed(list(a.state_dict().items())))

    class Holder:
        def state_dict(self):
            return reordered

    assert state_dict_fingerprint(Holder()) == fa
    with torch.no_grad():
        b[0].weight[1, 2] += 1e-6
    assert state_dict_fingerprint(b)["sha256"] != fa["sha256"]
    assert state_dict_fingerprint(object()) is None


def test_reports_say_whether_they_come_from_the_same_weights(tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 4, generator=g)
    y = (x[:, 0] > 0).long()
    r1 = diagnose_model(_net(0), (x, y), reservoir_size=50)
    r2 = diagnose_model(_net(0), (x, y), reservoir_size=50)
    r3 = diagnose_model(_net(1), (x, y), reservoir_size=50)
    assert r1.meta["checkpoint"]["state_dict"] == state_dict_fingerprint(_net(0))
    assert same_checkpoint(r1, r2) is True
    assert same_checkpoint(r1, r3) is False
    assert same_checkpoint(r1, Report(metrics={"n": 1.0})) is None
    r1.save(tmp_path / "r1")
    back = Report.load(tmp_path / "r1")
    assert same_checkpoint(back, r2) is True
    assert "the same (state_dict sha256" in compare(r1, r2).checkpoints
    assert compare(r1, r3).checkpoints == "checkpoints: different"
    assert "Checkpoints: different." in compare(r1, r3).to_markdown()
    assert "unknown (B record" in checkpoint_phrase(r1, Report(metrics={"n": 1.0}))


def test_the_data_fingerprint_covers_counts_ids_and_labels() -> None:
    from embscope.diagnostics import diagnose
    from embscope.diagnostics.compare import DifferentData, IncomparableReports, pairing

    g = torch.Generator().manual_seed(3)
    y = torch.arange(300) % 2
    x = torch.randn(300, 4, generator=g) + y[:, None]
    z = (2 * y - 1) * 1.0 + torch.randn(300, generator=g)
    ids = [f"s{i}" for i in range(300)]
    base = diagnose(x, y, z, ids=ids, reservoir_size=50)
    # the same n, other class counts
    y2 = y.clone()
    y2[:10] = 1
    with pytest.raises(DifferentData, match="class counts"):
        compare(base, diagnose(x, y2, z, ids=ids, reservoir_size=50))
    # the same ids and class counts, two labels swapped between samples
    y3 = y.clone()
    y3[0], y3[1] = y[1], y[0]
    with pytest.raises(DifferentData, match="the same ids carry other labels"):
        compare(base, diagnose(x, y3, z, ids=ids, reservoir_size=50))
    # the same samples in another order: compared, and paired by id
    p = torch.randperm(300, generator=g)
    shuffled = diagnose(x[p], y[p], z[p], ids=[ids[i] for i in p], reservoir_size=50)
    assert compare(base, shuffled).verdict == "no_difference"
    assert pairing(base, shuffled)[2].startswith("paired by id")
    # without ids a shuffled order cannot be told from other data of the same counts: it is
    # compared (not refused) but not paired
    plain = diagnose(x, y, z, reservoir_size=50)
    plain_shuffled = diagnose(x[p], y[p], z[p], reservoir_size=50)
    assert plain.meta["data"]["labels_sha256"] != plain_shuffled.meta["data"]["labels_sha256"]
    assert compare(plain, plain_shuffled).verdict == "no_difference"
    assert pairing(plain, plain_shuffled) is None
    # another class set or logit width: not comparable at all
    ten = diagnose(x, torch.arange(300) % 10, reservoir_size=50)
    with pytest.raises(IncomparableReports, match="classes"):
        compare(plain, ten)
    wide = diagnose(x, y, torch.stack([-z, z, 0 * z], 1), reservoir_size=50)
    with pytest.raises(IncomparableReports, match="logits"):
        compare(plain, wide)
