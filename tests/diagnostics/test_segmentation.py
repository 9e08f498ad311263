"""Dense predictions (issue 17): per-class pixel metrics against scikit-learn and torchmetrics,
streaming/merging/order/relabelling invariance, ignore_index, bounded state, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from embscope.diagnostics import Diagnoser, diagnose
from embscope.diagnostics.segmentation import WORST_K

from .conftest import same_metrics

OPTIONS = {"reservoir_size": 120, "pair_rows": 40, "retrieval_rows": 40}


def dense(b=5, c=4, h=9, w=7, d=3, seed=0, ignore=255, rare=True):
    """Masks [b, h, w] with some ignored pixels and a rare class, logits that are right most of
    the time, embeddings [b, d, h, w]."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.tensor([0.6, 0.3, 0.08, 0.02][:c] if rare and c == 4 else [1.0 / c] * c)
    y = torch.multinomial(probs, b * h * w, replacement=True, generator=g).reshape(b, h, w)
    y[torch.rand(b, h, w, generator=g) < 0.1] = ignore
    target = torch.where(y == ignore, 0, y)
    z = torch.randn(b, c, h, w, generator=g) + 2.0 * torch.nn.functional.one_hot(target, c).permute(
        0, 3, 1, 2
    )
    x = torch.randn(b, d, h, w, generator=g) + target[:, None].float()
    return x, y, z


def labelled_pixels(y, z, ignore=255):
    keep = y != ignore
    return y[keep].numpy(), z.argmax(1)[keep].numpy()


def jaccard(t, p, labels):
    """scikit-learn's per-class IoU, nan for a class neither true nor predicted (scikit-learn
    writes 0 there)."""
    iou = jaccard_score(t, p, labels=labels, average=None, zero_division=0)
    used = np.isin(labels, np.concatenate([t, p]))
    return np.where(used, iou, np.nan)


def per_class(report, name, c):
    return np.array([report.metrics[f"seg.class{k}.{name}"] for k in range(c)])


def test_per_class_scores_equal_scikit_learn_on_flattened_pixels():
    x, y, z = dense()
    r = diagnose(x, y, z, **OPTIONS)
    t, p = labelled_pixels(y, z)
    labels = list(range(4))
    refs = {
        "iou": jaccard(t, p, labels),
        "f1": f1_score(t, p, labels=labels, average=None, zero_division=np.nan),
        "precision": precision_score(t, p, labels=labels, average=None, zero_division=np.nan),
        "recall": recall_score(t, p, labels=labels, average=None, zero_division=np.nan),
    }
    for name, ref in refs.items():
        assert per_class(r, name, 4) == pytest.approx(ref, nan_ok=True), name
    assert r.metrics["fw_iou"] == pytest.approx(
        jaccard_score(t, p, labels=labels, average="weighted")
    )
    present = np.bincount(t, minlength=4) > 0
    assert r.metrics["miou"] == pytest.approx(refs["iou"][present].mean())
    assert r.metrics["mean_f1"] == pytest.approx(refs["f1"][present].mean())
    assert r.metrics["accuracy"] == pytest.approx(float((t == p).mean()))
    assert r.metrics["macro_f1"] == pytest.approx(f1_score(t, p, average="macro"))
    counts = np.bincount(t, minlength=4)
    assert per_class(r, "pixel_fraction", 4) == pytest.approx(counts / counts.sum())
    assert r.metrics["imbalance_ratio"] == pytest.approx(counts.max() / counts[counts > 0].min())
    assert r.metrics["n"] == len(t)
    assert r.metrics["seg.ignored_count"] == int((y == 255).sum())


def test_iou_equals_torchmetrics_jaccard_index():
    from torchmetrics.classification import MulticlassJaccardIndex

    x, y, z = dense(c=4, seed=3)
    r = diagnose(x, y, z, **OPTIONS)
    ref = MulticlassJaccardIndex(num_classes=4, average="none", ignore_index=255)
    ref.update(z.argmax(1), y)
    assert per_class(r, "iou", 4) == pytest.approx(ref.compute().numpy().astype(float))
    macro = MulticlassJaccardIndex(num_classes=4, average="macro", ignore_index=255)
    macro.update(z.argmax(1), y)
    # every class is present in the masks here, so the two means average the same classes
    assert r.metrics["miou"] == pytest.approx(float(macro.compute()))


def test_absent_class_is_nan_with_a_reason():
    x, y, z = dense(c=4, rare=False, seed=1)
    y[y == 3] = 0
    z[:, 3] = -50.0  # never predicted either
    r = diagnose(x, y, z, **OPTIONS)
    for name in ("iou", "f1", "precision", "recall", "presence_recall"):
        assert math.isnan(r.metrics[f"seg.class3.{name}"])
        assert "undefined" in r.reasons[f"seg.class3.{name}"]
    assert r.metrics["seg.class3.pixel_fraction"] == 0.0
    t, p = labelled_pixels(y, z)
    assert r.metrics["miou"] == pytest.approx(
        jaccard_score(t, p, labels=[0, 1, 2], average=None).mean()
    )


def test_presence_recall_and_easy_loss_share_brute_force():
    x, y, z = dense(b=6, seed=2)
    r = diagnose(x, y, z, **OPTIONS)
    pred = z.argmax(1)
    logp = torch.log_softmax(z.double(), 1)
    for c in range(4):
        has = [(y[i] == c).any() for i in range(6)]
        found = [((y[i] == c) & (pred[i] == c)).any() for i in range(6)]
        want = sum(bool(f) for f, h in zip(found, has, strict=True) if h) / sum(map(bool, has))
        assert r.metrics[f"seg.class{c}.presence_recall"] == pytest.approx(want)
    keep = y != 255
    lt = logp.gather(1, torch.where(keep, y, 0)[:, None])[:, 0][keep]
    ce = -lt
    easy = lt.exp() > 0.9
    assert r.metrics["seg.easy_loss_share"] == pytest.approx(float(ce[easy].sum() / ce.sum()))
    t = y[keep]
    sel = t == 1
    assert r.metrics["seg.class1.easy_loss_share"] == pytest.approx(
        float(ce[sel & easy].sum() / ce[sel].sum())
    )


def same_report_metrics(a: dict, b: dict) -> None:
    """Every metric agrees; NC1 inverts the between-class scatter, so float64 sums added in
    another order move it by about 1e-5 on these random features."""
    a, b = dict(a), dict(b)
    assert a.pop("nc1") == pytest.approx(b.pop("nc1"), rel=1e-3)
    same_metrics(a, b, rel=1e-5, abs_=1e-6)


def _exact(metrics: dict) -> dict:
    keys = ("n", "accuracy", "macro_f1", "miou", "mean_f1", "fw_iou", "imbalance_ratio")
    return {k: v for k, v in metrics.items() if k in keys or k.startswith("seg.")}


@settings(max_examples=8, deadline=None)
@given(cuts=st.lists(st.integers(1, 6), min_size=1, max_size=4), seed=st.integers(0, 3))
def test_streaming_merging_and_order_equal_one_shot(cuts, seed):
    x, y, z = dense(b=7, seed=seed)
    one = diagnose(x, y, z, **OPTIONS)
    bounds = sorted({min(c, 6) for c in cuts})
    parts = list(zip([0, *bounds], [*bounds, 7], strict=True))
    streamed = Diagnoser(**OPTIONS)
    merged = Diagnoser(**OPTIONS)
    for a, b in reversed(parts):  # another order of the images
        streamed.update(x[a:b], y[a:b], z[a:b])
        shard = Diagnoser(**OPTIONS)
        shard.update(x[a:b], y[a:b], z[a:b])
        merged.merge(shard)
    for other in (streamed.compute(), merged.compute()):
        # the pixel sample does not depend on batching or order either: every metric agrees
        same_report_metrics(one.metrics, other.metrics)
        assert other.intervals.keys() == one.intervals.keys()
        for key in _exact(one.metrics):
            if key in one.intervals:
                assert other.intervals[key] == pytest.approx(one.intervals[key]), key


@settings(max_examples=6, deadline=None)
@given(perm=st.permutations(range(4)))
def test_relabelling_classes_permutes_the_per_class_keys(perm):
    x, y, z = dense(seed=4)
    perm_t = torch.as_tensor(perm)
    y2 = torch.where(y == 255, 255, perm_t[y.clamp(max=3)])
    z2 = torch.empty_like(z)
    z2[:, perm_t] = z  # column perm[k] holds the old class k
    a, b = diagnose(x, y, z, **OPTIONS), diagnose(x, y2, z2, **OPTIONS)
    for k in range(4):
        for name in ("iou", "f1", "precision", "recall", "pixel_fraction", "presence_recall"):
            va, vb = a.metrics[f"seg.class{k}.{name}"], b.metrics[f"seg.class{perm[k]}.{name}"]
            assert vb == pytest.approx(va, nan_ok=True)
    for key in ("miou", "mean_f1", "fw_iou", "imbalance_ratio", "accuracy", "seg.easy_loss_share"):
        assert b.metrics[key] == pytest.approx(a.metrics[key])


def test_ignore_index_pixels_count_for_nothing():
    x, y, z = dense(seed=5, ignore=7)
    base = diagnose(x, y, z, ignore_index=7, **OPTIONS)
    scrambled = z.clone()
    scrambled[:, :, :][(y == 7)[:, None].expand_as(z)] = 99.0  # whatever the model says there
    other = diagnose(x, y, scrambled, ignore_index=7, **OPTIONS)
    same_metrics(_exact(base.metrics), _exact(other.metrics))
    t, p = labelled_pixels(y, z, ignore=7)
    assert per_class(base, "iou", 4) == pytest.approx(jaccard(t, p, list(range(4))), nan_ok=True)
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 4\).*ignore_index=255"):
        diagnose(x, y, z, **OPTIONS)  # 7 is no class and not the default ignore value


def test_state_stays_bounded():
    d = Diagnoser(reservoir_size=40)
    for seed in range(4):
        x, y, z = dense(b=6, h=12, w=12, seed=seed)
        d.update(x, y, z)
    ds = d._dense
    assert ds.sampled_pixels <= 40
    assert all(len(r) <= 10 for r in ds.reservoirs)
    assert all(len(r) > 0 for r in ds.reservoirs)  # the rare class is represented
    assert len(ds.worst) == WORST_K
    shapes = {k: tuple(v.shape) for k, v in ds.state.items()}
    d.update(*dense(b=6, h=12, w=12, seed=9))
    assert {k: tuple(v.shape) for k, v in ds.state.items()} == shapes


def test_report_section_and_intervals():
    x, y, z = dense(b=8, seed=6)
    ids = [f"img{i}.png" for i in range(8)]
    d = Diagnoser(**OPTIONS)
    d.update(x, y, z, ids=ids)
    r = d.compute()
    sec = r.sections["segmentation"]
    pixels = [row["pixels"] for row in sec["classes"]]
    assert pixels == sorted(pixels, reverse=True)
    cm = np.asarray(sec["confusion_normalised"])
    assert cm.sum(1) == pytest.approx(np.ones(4), abs=1e-5)
    worst = sec["worst_images"]
    assert [w["mean_iou"] for w in worst] == sorted(w["mean_iou"] for w in worst)
    assert {w["id"] for w in worst} <= set(ids)
    assert np.asarray(worst[0]["true"]).shape == (9, 7)
    lo, hi = r.intervals["seg.class0.iou"]
    assert lo <= r.metrics["seg.class0.iou"] <= hi and lo < hi
    assert "bootstrap over images" in r.interval_methods["miou"]
    # vector metrics come from the pixel sample and say so
    assert r.sampled["nc1"]["how"] == "class-stratified pixel sample"
    assert "fisher_ratio" not in r.sampled and "miou" not in r.sampled


def test_logits_stand_in_for_missing_embeddings():
    _, y, z = dense(seed=7)
    r = diagnose(None, y, z, **OPTIONS)
    assert r.meta["dense"]["embeddings"].startswith("the logits")
    assert math.isfinite(r.metrics["fisher_ratio"])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (lambda x, y, z: (x, y, None), r"masks of shape \(5, 9, 7\) need logits"),
        (lambda x, y, z: (x, y, z[..., :3]), r"dense logits must be \[B, C, \*mask shape\]"),
        (lambda x, y, z: (x[..., :3], y, z), r"dense embeddings must be \[B, D, \*mask shape\]"),
        (lambda x, y, z: (x, y.float() + 0.5, z), "integer class indices"),
    ],
)
def test_bad_dense_input_is_one_clear_error(args, match):
    x, y, z = dense()
    with pytest.raises((ValueError, TypeError), match=match):
        diagnose(*args(x, y, z), **OPTIONS)


def test_dense_and_row_batches_do_not_mix_and_failed_batches_change_nothing():
    x, y, z = dense()
    d = Diagnoser(**OPTIONS)
    d.update(x, y, z)
    before = d.compute().metrics
    with pytest.raises(ValueError, match="cannot join"):
        d.update(np.zeros((3, 3), np.float32), np.zeros(3, np.int64), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="C = 4 columns"):
        d.update(x, y, z[:, :3])
    same_metrics(before, d.compute().metrics)
    flat = Diagnoser(**OPTIONS)
    flat.update(np.ones((3, 3), np.float32), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="own Diagnoser"):
        flat.update(x, y, z)
    with pytest.raises(ValueError, match="cannot merge"):
        d.merge(flat)


def test_all_pixels_ignored_is_an_error():
    x, y, z = dense()
    with pytest.raises(ValueError, match="no usable pixels"):
        diagnose(x, torch.full_like(y, 255), z, **OPTIONS)


def test_images_taken_a_few_at_a_time_give_the_same_state(monkeypatch):
    import embscope.diagnostics.segmentation as seg

    x, y, z = dense(b=6, seed=8)
    whole = diagnose(x, y, z, **OPTIONS)
    monkeypatch.setattr(seg, "CHUNK", 1)  # one image at a time
    same_report_metrics(whole.metrics, diagnose(x, y, z, **OPTIONS).metrics)


def _sync_worker(rank, world, port, out):
    import json
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        x, y, z = dense(b=6, seed=9)
        d = Diagnoser(**OPTIONS)
        d.update(x[rank::world], y[rank::world], z[rank::world])
        report = d.compute()  # syncs a copy of every rank's state
        with open(os.path.join(out, f"{rank}.json"), "w") as f:
            json.dump(report.metrics, f)
    finally:
        dist.destroy_process_group()


def test_synced_ranks_report_what_one_process_reports(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_sync_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn")
    x, y, z = dense(b=6, seed=9)
    one = diagnose(x, y, z, **OPTIONS).metrics
    for rank in range(2):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        same_report_metrics(one, {k: float("nan") if v is None else v for k, v in got.items()})


def test_calibration_geometry_and_columns_come_from_every_pixel():
    """ECE, NLL, Brier, the class geometry and the logit column statistics are those of the
    flattened labelled pixels (the ordinary report of every pixel), not of the sample."""
    x, y, z = dense(b=6, seed=10)
    r = diagnose(x, y, z, **OPTIONS)
    keep = y != 255
    rows = diagnose(
        x.permute(0, 2, 3, 1)[keep], y[keep], z.permute(0, 2, 3, 1)[keep], reservoir_size=0
    )
    for key in ("ece", "mce", "nll", "brier", "fisher_ratio", "intra_mean", "score_ks"):
        assert r.metrics[key] == pytest.approx(rows.metrics[key], rel=1e-9), key
        assert key not in r.sampled
    assert r.metrics["logits.col2.class1.mean"] == pytest.approx(
        rows.metrics["logits.col2.class1.mean"]
    )
    # what needs per-pixel values is the sample's, and says so
    assert r.sampled["margin_mean"]["how"] == "class-stratified pixel sample"
    assert r.sampled["margin_mean"]["population"] == float(keep.sum())


def test_comparisons_use_pixel_counts_not_the_pixel_sample():
    from embscope.diagnostics import compare

    x, y, z = dense(b=6, seed=11)
    a = diagnose(x, y, z, **OPTIONS)
    b = diagnose(x, y, z + 0.5 * torch.randn_like(z), **OPTIONS)
    assert a.samples is None  # the two pixel samples hold different pixels: never paired
    keep = y != 255
    assert a.meta["data"]["n"] == int(keep.sum())
    counts = torch.bincount(y[keep], minlength=4)
    assert a.meta["data"]["class_counts"] == {str(c): int(v) for c, v in enumerate(counts)}
    assert "miou" in compare(a, b).to_markdown()
    y2 = y.clone()
    y2[tuple(keep.nonzero()[0])] = 255  # one labelled pixel fewer
    other = diagnose(x, y2, z, **OPTIONS)
    with pytest.raises(ValueError, match="different data|samples"):
        compare(a, other)


def test_segmentation_model_runner_finds_the_pixel_features_and_resizes():
    from torch import nn

    from embscope.diagnostics import diagnose_segmentation_model
    from embscope.segdemo import TinyFCN

    torch.manual_seed(0)
    model = TinyFCN(classes=4, width=8)
    images = torch.rand(5, 1, 9, 7)
    _, masks, _ = dense(b=5, seed=12)
    r = diagnose_segmentation_model(model, [(images, masks)], **OPTIONS)
    assert r.meta["source"]["embedding"] == "the input of 'classifier' (the per-pixel classifier)"
    with torch.no_grad():
        pred = model(images).argmax(1)
    t, p = masks[masks != 255].numpy(), pred[masks != 255].numpy()
    assert per_class(r, "iou", 4) == pytest.approx(jaccard(t, p, list(range(4))), nan_ok=True)

    class Coarse(nn.Module):  # logits at about half the mask size (5 x 4), with its features
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(1, 6, 3, padding=1, stride=2)
            self.head = nn.Conv2d(6, 4, 1)

        def forward(self, x):
            f = self.body(x)
            return f, self.head(f)

    r = diagnose_segmentation_model(Coarse(), [(torch.rand(5, 1, 9, 7), masks)], **OPTIONS)
    assert r.meta["source"]["embedding"] == "the model's embedding output"
    assert r.metrics["n"] == int((masks != 255).sum())
