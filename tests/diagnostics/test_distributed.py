"""Diagnoser.sync across gloo processes equals one process that saw every shard.

Each world size (2 and 3) is spawned once for the module; every worker runs all the cases
below on its shard and writes, per case, its report and its synced reservoir. The tests compare
them with a single-process Diagnoser fed the same samples in rank order.
"""

import json
import math
import os
import socket
import tempfile

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from embscope.diagnostics import Diagnoser, Report
from embscope.losses import ArcFaceHead

from .conftest import blobs, same_metrics

N = 150
BATCH = 16

# name -> options; shards: "contiguous" uneven blocks (rank 0 empty) or "strided" (last rank
# empty, the others take every (K-1)-th sample)
CASES = {
    "binary_logit_ids": {"logits": "binary", "ids": True, "reservoir_size": 1000},
    "two_columns_strided": {"logits": 2, "ids": False, "reservoir_size": 1000, "shards": "strided"},
    "multiclass_head": {"logits": 4, "ids": True, "reservoir_size": 1000, "head": True},
    "no_logits_sampled": {"logits": None, "ids": False, "reservoir_size": 40, "shards": "strided"},
    "no_logits_raw_labels": {"logits": None, "ids": True, "reservoir_size": 1000},
    "euclidean_sampled_logits": {
        "logits": 3,
        "ids": False,
        "reservoir_size": 50,
        "space": "euclidean",
    },
    # wide logits: scored and calibrated on the reservoir's logits, which must travel with it
    "wide_logits_sampled": {"logits": 20, "ids": False, "reservoir_size": 60},
    "empty_batch_on_a_rank": {"logits": 3, "ids": False, "reservoir_size": 0, "empty": "batch"},
    "all_empty": {"logits": None, "ids": False, "reservoir_size": 100, "empty": "all"},
}


def _data(name):
    """The full data set of a case: embeddings, labels (raw values), logits or None, ids."""
    case = CASES[name]
    seed = sorted(CASES).index(name)
    k = 2 if case["logits"] in ("binary", 2, None) else case["logits"]
    x, y = blobs(n=N, d=6, k=k if case["logits"] is not None else 3, seed=seed)
    g = np.random.default_rng(seed + 100)
    z = None
    if case["logits"] == "binary":
        z = ((2 * y - 1) * 1.2 + g.normal(size=N)).astype(np.float32)
    elif case["logits"] is not None:
        z = g.normal(size=(N, k)).astype(np.float32)
        z[np.arange(N), y] += 1.5
    if name == "no_logits_raw_labels":
        y = np.array([7, -3, 100])[y]  # non-contiguous raw labels: slots differ per rank
    ids = [f"img/{i:04d}-é.png" for i in range(N)] if case["ids"] else None
    return x, y, z, ids


def _shard(name, rank, world):
    """Indices of this rank's samples."""
    case = CASES[name]
    if case.get("empty") == "all":
        return np.zeros(0, dtype=np.int64)
    if case.get("shards") == "strided":
        if rank == world - 1:
            return np.zeros(0, dtype=np.int64)
        return np.arange(rank, N, world - 1)
    cuts = [0, 0, 37, N] if world == 3 else [0, 0, N]  # rank 0 empty, the rest uneven
    return np.arange(cuts[rank], cuts[rank + 1])


def _options(name):
    case = CASES[name]
    opts = {"reservoir_size": case["reservoir_size"], "space": case.get("space", "cosine")}
    if case.get("head"):
        torch.manual_seed(0)
        opts["head"] = ArcFaceHead(6, case["logits"], m=0.5, s=16.0)
    return opts


def _feed(d, name, index):
    x, y, z, ids = _data(name)
    if CASES[name].get("empty") == "batch" and len(index) == 0:
        d.update(x[:0], y[:0], z[:0])  # initialised (D, logit shape) but no samples
    for a in range(0, len(index), BATCH):
        i = index[a : a + BATCH]
        d.update(
            x[i], y[i], None if z is None else z[i], None if ids is None else [ids[j] for j in i]
        )


def _reservoir(d):
    res = d.reservoir
    if len(res) == 0:
        return {"keys": [], "rows": [], "labels": [], "seen": res.seen}
    order = torch.argsort(res.keys)
    values = torch.as_tensor(d._values)
    return {
        "keys": res.keys[order].tolist(),
        "rows": res.rows[order].tolist(),
        "labels": values[res.labels[order]].tolist(),
        "seen": res.seen,
    }


def _worker(rank, world, port, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        for name in CASES:
            d = Diagnoser(**_options(name))
            _feed(d, name, _shard(name, rank, world))
            report = _report_or_error(d)  # syncs a deep copy
            again = _report_or_error(d)  # compute twice
            own = _reservoir(d)
            d.sync()
            after_sync = _report_or_error(d)  # sync then compute: must not sync again
            d.sync()  # sync twice: a no-op
            result = {
                "report": report,
                "again": again,
                "after_sync": after_sync,
                "after_second_sync": _report_or_error(d),
                "reservoir": _reservoir(d),
                "own_seen": own["seen"],
            }
            try:
                d.update(torch.randn(2, 6), torch.tensor([0, 1]))
                result["update_after_sync"] = None
            except RuntimeError as e:
                result["update_after_sync"] = str(e)
            with open(os.path.join(out, f"{name}-{rank}.json"), "w") as f:
                json.dump(result, f)
        # a non-default group passed as the Diagnoser's process_group
        group = dist.new_group(list(range(world)))
        d = Diagnoser(reservoir_size=0, process_group=group)
        _feed(d, "binary_logit_ids", _shard("binary_logit_ids", rank, world))
        with open(os.path.join(out, f"group-{rank}.json"), "w") as f:
            f.write(d.compute().to_json())
        # incompatible states raise the same ValueError on every rank (no hang)
        errors = {}
        for what, opts in {"bins": {"bins": 10 if rank == 1 else 50}, "dim": {}}.items():
            d = Diagnoser(reservoir_size=0, **opts)
            x = torch.randn(5, 6 if (what != "dim" or rank != 1) else 4)
            d.update(x, torch.arange(5) % 2)
            try:
                d.sync()
                errors[what] = None
            except ValueError as e:
                errors[what] = str(e)
        with open(os.path.join(out, f"errors-{rank}.json"), "w") as f:
            json.dump(errors, f)
    finally:
        dist.destroy_process_group()


def _report_or_error(d):
    """The report's JSON, or the ValueError's message where there is nothing to report."""
    try:
        return d.compute().to_json()
    except ValueError as e:
        return json.dumps({"error": str(e)})


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[2, 3], ids=["world2", "world3"])
def synced(request):
    world = request.param
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(
            _worker, args=(world, _free_port(), out), nprocs=world, start_method="spawn"
        )
        results = {}
        for name in [*CASES, "group", "errors"]:
            per_rank = []
            for r in range(world):
                with open(os.path.join(out, f"{name}-{r}.json")) as f:
                    per_rank.append(f.read() if name == "group" else json.load(f))
            results[name] = per_rank
    return world, results


def _single(name, world):
    """One process fed every rank's shard in rank order, in the same batches."""
    d = Diagnoser(**_options(name), sync_on_compute=False)
    for r in range(world):
        _feed(d, name, _shard(name, r, world))
    return d


def _close(a, b, path=""):
    """Nested equality of report sections: numbers to float tolerance, nan equals nan."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            _close(u, v, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), path
        else:
            assert a == pytest.approx(b, rel=1e-6, abs=1e-9), (path, a, b)
    else:
        assert a == b, path


@pytest.mark.parametrize("name", list(CASES))
def test_synced_report_equals_single_process(synced, name):
    world, results = synced
    per_rank = results[name]
    # every rank reports the same, to the bit, however compute and sync are called
    for r in per_rank:
        assert r["again"] == r["after_sync"] == r["after_second_sync"] == r["report"]
        assert r["update_after_sync"].startswith("this Diagnoser was synced")
    assert all(r["report"] == per_rank[0]["report"] for r in per_rank)
    one = _single(name, world)
    if CASES[name].get("empty") == "all":  # nothing to report: the same error everywhere
        with pytest.raises(ValueError, match="no usable rows: no rows were given"):
            one.compute()
        assert json.loads(per_rank[0]["report"]) == {"error": "no usable rows: no rows were given"}
        return
    reports = [Report.from_json(r["report"]) for r in per_rank]
    ref = one.compute()
    got = reports[0]
    same_metrics(got.metrics, ref.metrics, rel=1e-6, abs_=1e-9)
    assert got.reasons == ref.reasons
    assert got.sampled == ref.sampled
    ref_json = json.loads(ref.to_json())
    _close(got.to_dict()["sections"], ref_json["sections"])
    _close(got.to_dict()["recommendations"], ref_json["recommendations"])


@pytest.mark.parametrize("name", list(CASES))
def test_synced_reservoir_is_the_single_process_reservoir(synced, name):
    world, results = synced
    ref = _reservoir(_single(name, world))
    for r in results[name]:
        assert r["reservoir"] == ref
    shards = [len(_shard(name, r, world)) for r in range(world)]
    assert [r["own_seen"] for r in results[name]] == shards  # compute() left the state alone
    if name.endswith("sampled"):
        assert len(ref["keys"]) == CASES[name]["reservoir_size"] < N  # it did sample


def test_sampled_cases_report_their_sampling(synced):
    _, results = synced
    rep = Report.from_json(results["no_logits_sampled"][0]["report"])
    assert rep.sampled["recall_at_1"] == {"exact": False, "sample_size": 40, "population": N}
    rep = Report.from_json(results["binary_logit_ids"][0]["report"])
    assert rep.sampled["recall_at_1"] == {"exact": True, "sample_size": N, "population": N}


def test_process_group_argument_is_used(synced):
    world, results = synced
    want = Diagnoser(reservoir_size=0, sync_on_compute=False)
    for r in range(world):
        _feed(want, "binary_logit_ids", _shard("binary_logit_ids", r, world))
    for text in results["group"]:
        same_metrics(Report.from_json(text).metrics, want.compute().metrics, rel=1e-6, abs_=1e-9)


def test_incompatible_ranks_raise_the_same_error_everywhere(synced):
    world, results = synced
    errs = results["errors"]
    assert all(e == errs[0] for e in errs)
    assert errs[0]["bins"].startswith("cannot sync Diagnosers built with different options")
    assert (
        "(cosine, 50, 0, 0)" not in errs[0]["bins"]
        and "('cosine', 10, 0, 0) on rank 1" in errs[0]["bins"]
    )
    assert errs[0]["dim"] == (
        "cannot sync: rank 0 saw D = 6 with no logits, rank 1 saw D = 4 with no logits; every "
        "rank must feed the same kind of batch"
    )


def test_sync_without_a_process_group_raises():
    d = Diagnoser(reservoir_size=0)
    d.update(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(RuntimeError, match="needs an initialised torch.distributed process group"):
        d.sync()
    assert d.compute().metrics["n"] == 4  # no group: compute() reports the local state
