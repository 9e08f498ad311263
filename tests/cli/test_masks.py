"""diagnose CHECKPOINT DATA with segmentation data (issue 17 item 4): an images/ + masks/
folder of PNGs or a tensor file with masks; the report's per-class IoU equals scikit-learn's
on the model's own predictions; bad folders are one-line errors with exit code 2."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import jaccard_score

from embscope.cli.main import main
from embscope.segdemo import NUM_CLASSES, TinyFCN, digit_strokes, pixel_criterion, train_fcn

MODEL = "embscope.segdemo:TinyFCN"


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


def run(*argv: object) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def seg(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A TinyFCN trained for a moment, its state dict, and 24 held-out scans written as
    images/ + masks/ PNGs (a 2-pixel border of the masks set to 255) and as a .pt file."""
    root = tmp_path_factory.mktemp("seg")
    split = digit_strokes(seed=0, rare_keep=0.3)
    model = TinyFCN()
    criterion = pixel_criterion(torch.nn.CrossEntropyLoss())
    train_fcn(model, split.x_train[:128], split.y_train[:128], criterion, epochs=1)
    ckpt = root / "fcn.pt"
    torch.save(model.state_dict(), ckpt)
    x = split.x_test[:24].clamp(0, 1)
    grey = (x[:, 0] * 255).round().to(torch.uint8)
    masks = split.y_test[:24].clone()
    masks[:, :2] = 255
    data = root / "data"
    (data / "images" / "sub").mkdir(parents=True)
    (data / "masks" / "sub").mkdir(parents=True)
    for i in range(24):
        sub = "sub/" if i % 5 == 0 else ""
        Image.fromarray(grey[i].numpy(), mode="L").save(data / "images" / f"{sub}s{i:02d}.png")
        Image.fromarray(masks[i].to(torch.uint8).numpy(), mode="L").save(
            data / "masks" / f"{sub}s{i:02d}.png"
        )
    pt = root / "seg.pt"
    torch.save({"images": grey.float()[:, None] / 255, "masks": masks}, pt)
    # the inputs the command sees: the PNG-rounded images, in its (sorted) file order
    order = sorted(range(24), key=lambda i: f"s{i:02d}.png" if i % 5 else f"sub/s{i:02d}.png")
    return {
        "root": root,
        "ckpt": ckpt,
        "data": data,
        "pt": pt,
        "model": model,
        "x": grey.float()[:, None] / 255,
        "masks": masks,
        "order": order,
    }


def _iou_reference(seg) -> np.ndarray:
    with torch.no_grad():
        pred = seg["model"](seg["x"]).argmax(1)
    keep = seg["masks"] != 255
    t, p = seg["masks"][keep].numpy(), pred[keep].numpy()
    labels = list(range(NUM_CLASSES))
    iou = jaccard_score(t, p, labels=labels, average=None, zero_division=0)
    return np.where(np.isin(labels, np.concatenate([t, p])), iou, np.nan)


@pytest.mark.parametrize("source", ["data", "pt"])
def test_folder_and_tensor_file_give_sklearn_iou(seg, source, tmp_path):
    out = tmp_path / "out"
    code = run(
        seg["ckpt"],
        seg[source],
        "--model",
        MODEL,
        "--out",
        out,
        "--batch-size",
        "7",
        "--reservoir-size",
        "400",
    )
    assert code in (0, 1)
    report = json.loads((out / "report.json").read_text())
    metrics = report["metrics"]
    got = np.array(
        [
            np.nan if metrics[f"seg.class{k}.iou"] is None else metrics[f"seg.class{k}.iou"]
            for k in range(NUM_CLASSES)
        ],
        dtype=float,
    )
    assert got == pytest.approx(_iou_reference(seg), nan_ok=True, abs=1e-9)
    assert metrics["seg.ignored_count"] == 24 * 2 * 16
    assert metrics["seg.images"] == 24
    assert "the input of 'classifier'" in report["meta"]["source"]["embedding"]
    sec = report["sections"]["segmentation"]
    assert len(sec["worst_images"]) == 8
    if source == "data":
        assert all(w["id"].endswith(".png") for w in sec["worst_images"])
    html = (out / "report.html").read_text()
    assert "Worst images (lowest mean IoU)" in html and "plot-seg_confusion" in html


def test_ignore_index_option(seg, tmp_path):
    out = tmp_path / "out"
    code = run(seg["ckpt"], seg["pt"], "--model", MODEL, "--out", out, "--ignore-index", "0")
    assert code == 2  # 255 is then a mask value beyond the 11 logit columns


def test_ignore_index_refused_for_other_data(seg, tmp_path, capsys):
    other = tmp_path / "rows.pt"
    torch.save({"x": torch.zeros(4, 1, 16, 16), "y": torch.zeros(4, dtype=torch.int64)}, other)
    code = run(seg["ckpt"], other, "--model", MODEL, "--out", tmp_path / "o", "--ignore-index", "3")
    assert code == 2
    assert "--ignore-index" in capsys.readouterr().err


def test_image_without_mask_is_a_one_line_error(seg, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(data / "images" / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(data / "images" / "b.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(data / "masks" / "a.png")
    code = run(seg["ckpt"], data, "--model", MODEL, "--out", tmp_path / "o")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "b.png: has no mask (1 of 2 images lack one)" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_colour_mask_is_refused(seg, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(data / "images" / "a.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(data / "masks" / "a.png")
    code = run(seg["ckpt"], data, "--model", MODEL, "--out", tmp_path / "o")
    assert code == 2
    assert "is a RGB image; masks are single-channel index images" in capsys.readouterr().err


def test_mask_of_another_size_is_refused(seg, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(data / "images" / "a.png")
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(data / "masks" / "a.png")
    code = run(seg["ckpt"], data, "--model", MODEL, "--out", tmp_path / "o")
    assert code == 2
    assert "is 16x8 pixels but its image is 16x16" in capsys.readouterr().err
