"""Images are read the way the model takes them (issue 15): grayscale scans and a model whose
first convolution takes one channel run without flags; a model of three channels gets the
images converted; --grayscale / --rgb override; a forward that fails on the images' shape says
what shape the loader produced and which flags change it."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from embscope.cli.checkpoint import load_model
from embscope.cli.data import ImageOptions, open_inputs
from embscope.cli.errors import UsageError
from embscope.cli.input_common import fit_to_model, model_input
from embscope.cli.main import main
from tests.cli.conftest import run_diagnose

# The user's model file of the issue: a small CNN whose first Conv2d takes `in_channels`, with
# forward(x, labels=None) -> (embedding, logits).
MYNET = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, in_channels=1, num_classes=3):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, 4, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(2),
                nn.Flatten(),
            )
            self.embed = nn.Linear(16, 8)
            self.classifier = nn.Linear(8, num_classes)

        def forward(self, x, labels=None):
            embedding = self.embed(self.features(x))
            return embedding, self.classifier(embedding)


    def build():
        return Net(1)


    def build_rgb():
        return Net(3)
    """
)


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


def _scans(root: Path, mode: str = "L", per_class: int = 6) -> Path:
    """Class folders of 8x8 digit scans (scikit-learn's digits 0-2) as 8-bit PNGs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = root / "val_imgs"
    for label in range(3):
        (folder / f"class_{label}").mkdir(parents=True)
        images = digits.images[digits.target == label][:per_class]
        for i, image in enumerate(images):
            pixels = np.round(image / 16 * 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").convert(mode).save(
                folder / f"class_{label}" / f"{i}.png"
            )
    return folder


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """mynet.py, ckpt.pt (a state dict of Net(1)) and rgb.pt (of Net(3)) in one folder."""
    (tmp_path / "mynet.py").write_text(MYNET)
    sys.path.insert(0, str(tmp_path))
    import importlib

    sys.modules.pop("mynet", None)
    mynet = importlib.import_module("mynet")
    torch.manual_seed(0)
    torch.save(mynet.build().state_dict(), tmp_path / "ckpt.pt")
    torch.save(mynet.build_rgb().state_dict(), tmp_path / "rgb.pt")
    return tmp_path


def test_issue_grayscale_scans_and_a_one_channel_model_run_without_flags(project: Path) -> None:
    # the issue's command, as written: it failed with "expected input[64, 3, 8, 8] to have 1
    # channels" and advice about the labels argument
    _scans(project)
    result = run_diagnose("ckpt.pt", "val_imgs/", "--model", "mynet.py:build", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "labels argument" not in result.stderr
    # the image folder's report keeps thumbnails of its hardest samples, named by file
    report = json.loads((project / "embscope-report" / "report.json").read_text())
    hardest = [h["id"] for h in report["sections"]["hardest"]]
    assert list(report["sections"]["thumbnails"]) == hardest[:16]
    assert all((project / name).is_file() for name in hardest[:16])


def test_one_channel_model_reads_one_channel_and_three_channel_model_converts(
    project: Path,
) -> None:
    folder = _scans(project)
    pixels = np.asarray(Image.open(folder / "class_1" / "2.png"), dtype=np.float32) / 255
    for factory, checkpoint, channels in (("build", "ckpt.pt", 1), ("build_rgb", "rgb.pt", 3)):
        loaded = load_model(project / checkpoint, model_spec=f"{project / 'mynet.py'}:{factory}")
        data = fit_to_model(open_inputs(folder), loaded)
        batch = next(data.batches(100))
        assert batch.inputs.shape == (18, channels, 8, 8)
        row = batch.ids.index(str(folder / "class_1" / "2.png"))
        for c in range(channels):  # grey replicated into every channel, values unchanged
            assert torch.equal(batch.inputs[row, c], torch.from_numpy(pixels))


def test_model_input_reads_the_first_convolution_or_the_flat_features(project: Path) -> None:
    loaded = load_model(project / "ckpt.pt", model_spec=f"{project / 'mynet.py'}:build")
    assert model_input(loaded.module).channels == 1
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    assert model_input(mlp).features == 64 and model_input(mlp).channels is None
    program = torch.export.export(loaded.module, (torch.zeros(2, 1, 8, 8),))
    assert model_input(program).channels == 1


def test_flat_mlp_takes_one_channel_when_its_features_are_the_pixels(tmp_path: Path) -> None:
    folder = _scans(tmp_path)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    data = open_inputs(folder)
    fit_to_model(data, mlp)
    assert next(data.batches(4)).inputs.shape == (4, 1, 8, 8)
    rgb_mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
    data = open_inputs(folder)
    fit_to_model(data, rgb_mlp)
    assert next(data.batches(4)).inputs.shape == (4, 3, 8, 8)


def test_flags_override_the_model(project: Path) -> None:
    folder = _scans(project)
    loaded = load_model(project / "ckpt.pt", model_spec=f"{project / 'mynet.py'}:build")
    data = fit_to_model(open_inputs(folder, image=ImageOptions(rgb=True)), loaded)
    assert next(data.batches(4)).inputs.shape == (4, 3, 8, 8)
    rgb_loaded = load_model(project / "rgb.pt", model_spec=f"{project / 'mynet.py'}:build_rgb")
    data = fit_to_model(open_inputs(folder, image=ImageOptions(grayscale=True)), rgb_loaded)
    assert next(data.batches(4)).inputs.shape == (4, 1, 8, 8)


def test_grayscale_and_rgb_together_are_refused(project: Path, capsys) -> None:
    _scans(project)
    code = main(
        [str(project / "ckpt.pt"), str(project / "val_imgs"), "--grayscale", "--rgb",
         "--model", f"{project / 'mynet.py'}:build", "--out", str(project / "out")]
    )  # fmt: skip
    assert code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_color_images_and_a_one_channel_model_name_grayscale(project: Path, capsys) -> None:
    folder = _scans(project, mode="RGB")
    code = main(
        [str(project / "ckpt.pt"), str(folder), "--model", f"{project / 'mynet.py'}:build",
         "--out", str(project / "out")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "RGB" in err and "takes 1 channel" in err and "--grayscale" in err
    assert not (project / "out").exists()


def test_one_color_image_among_grayscale_ones_is_named(project: Path) -> None:
    folder = _scans(project)
    odd = folder / "class_2" / "3.png"
    Image.open(odd).convert("RGB").save(odd)
    loaded = load_model(project / "ckpt.pt", model_spec=f"{project / 'mynet.py'}:build")
    data = fit_to_model(open_inputs(folder), loaded)
    with pytest.raises(UsageError, match=r"class_2/3.png: is RGB .*--grayscale"):
        list(data.batches(5))


def test_shape_error_names_the_loaders_shape_and_the_flags(project: Path, capsys) -> None:
    # --rgb forces three channels on the one-channel model: the forward fails on the shape (in
    # the margin-leak probe, which passes labels); the hint is about the images, not the labels
    _scans(project)
    code = main(
        [str(project / "ckpt.pt"), str(project / "val_imgs"), "--rgb",
         "--model", f"{project / 'mynet.py'}:build", "--out", str(project / "out")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "labels argument" not in err
    assert "[18, 3, 8, 8]" in err  # what the loader produced (one batch of 18)
    assert "takes 1 channel but the images were read as [3, 8, 8]" in err
    assert "pass --grayscale" in err


def test_a_forward_that_rejects_labels_still_gets_the_labels_advice() -> None:
    from embscope.diagnostics import InputError
    from embscope.diagnostics.runner import ModelRunner

    class Picky(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x, labels=None):
            if labels is not None:
                raise TypeError("labels must be one-hot")
            return self.fc(x)

    runner = ModelRunner(Picky())
    with pytest.raises(InputError, match="make the labels argument optional"):
        runner.probe(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


def test_tensor_file_shape_error_names_its_shape_and_that_image_flags_do_not_apply(
    project: Path, capsys
) -> None:
    torch.save({"x": torch.rand(10, 3, 8, 8), "y": torch.arange(10) % 3}, project / "val.pt")
    code = main(
        [str(project / "ckpt.pt"), str(project / "val.pt"),
         "--model", f"{project / 'mynet.py'}:build", "--out", str(project / "out")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "labels argument" not in err
    assert "[3, 8, 8]" in err and "takes 1 channel" in err


def test_sixteen_bit_scans_read_as_one_channel_for_a_one_channel_model(project: Path) -> None:
    folder = project / "scans16"
    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        Image.fromarray(values).save(folder / label / "x.png")  # a 16-bit grey PNG
    assert Image.open(folder / "a" / "x.png").mode.startswith("I")
    loaded = load_model(project / "ckpt.pt", model_spec=f"{project / 'mynet.py'}:build")
    batch = next(fit_to_model(open_inputs(folder), loaded).batches(2))
    assert batch.inputs.shape == (2, 1, 8, 8)
    assert torch.allclose(batch.inputs[0, 0], torch.from_numpy(values / 65535).float())
