"""Bad inputs: exit 2, one line on stderr naming the file or option and the fix, no traceback,
and nothing that was in ``--out`` before is lost. Run in-process through ``main(argv)``; the
console script's own error path is covered in test_end_to_end.py."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from embscope.cli.main import main
from tests.cli.conftest import Digits


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() makes the current folder and --model's folder importable, as a process would."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def factory(digits: Digits, name: str) -> str:
    return f"{digits.root / 'digits_model.py'}:{name}"


def random_bytes(tmp: Path) -> Path:
    path = tmp / "random.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def folder(tmp: Path, *parts: str) -> Path:
    path = tmp.joinpath(*parts)
    path.mkdir(parents=True)
    return path


def class_folder_without_images(digits: Digits, tmp: Path) -> Path:
    data = folder(tmp, "data", "digit_0")
    (data / "a.png").write_bytes((digits.images / "digit_0" / "0000.png").read_bytes())
    (folder(tmp, "data", "digit_1") / "notes.txt").write_text("no images here")
    return tmp / "data"


def unreadable_image(digits: Digits, tmp: Path) -> Path:
    for name in ("digit_0", "digit_1"):
        image = next((digits.images / name).glob("*.png"))
        (folder(tmp, "data", name) / "a.png").write_bytes(image.read_bytes())
    (tmp / "data" / "digit_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return tmp / "data"


def short_labels(digits: Digits, tmp: Path) -> Path:
    data = folder(tmp, "embeddings")
    rng = np.random.default_rng(0)
    np.save(data / "embeddings.npy", rng.normal(size=(50, 4)).astype(np.float32))
    np.save(data / "labels.npy", rng.integers(0, 3, size=47))
    return data


Argv = Callable[[Digits, Path], list[object]]

CASES: list[tuple[str, Argv, tuple[str, ...]]] = [
    (
        "missing file",
        lambda d, t: [t / "nothere.pt", d.tensors_pt, "--model", factory(d, "make_net")],
        ("nothere.pt", "no such checkpoint file"),
    ),
    (
        "random bytes as checkpoint",
        lambda d, t: [random_bytes(t), d.tensors_pt, "--model", factory(d, "make_net")],
        ("random.pt", "not a PyTorch checkpoint", "torch.save"),
    ),
    (
        "empty data folder",
        lambda d, t: [d.state_dict, folder(t, "empty"), "--model", factory(d, "make_net")],
        ("empty", "no class sub-folders", "DATA/<class>/<image>"),
    ),
    (
        "class folder without images",
        lambda d, t: [
            d.state_dict,
            class_folder_without_images(d, t),
            "--model",
            factory(d, "make_net"),
        ],
        ("digit_1", "holds no images"),
    ),
    (
        "unreadable image",
        lambda d, t: [
            d.state_dict,
            unreadable_image(d, t),
            "--model",
            factory(d, "make_net"),
            "--grayscale",
        ],
        ("broken.png", "cannot be read as an image", "replace or remove"),
    ),
    (
        "state dict that does not fit the factory",
        lambda d, t: [d.state_dict, d.tensors_pt, "--model", factory(d, "RenamedNet")],
        (
            "state_dict.pt",
            "2 missing keys [fc.weight, fc.bias]",
            "2 unexpected keys [classifier.weight, classifier.bias]",
            "--model-kwargs",
        ),
    ),
    (
        "state dict with other sizes",
        lambda d, t: [
            d.state_dict,
            d.tensors_pt,
            "--model",
            factory(d, "make_net"),
            "--model-kwargs",
            '{"hidden": 8}',
        ],
        ("shape mismatches", "classifier.weight: checkpoint [10, 16] vs model [10, 8]"),
    ),
    (
        "pickled module without the flag",
        lambda d, t: [d.pickled, d.tensors_pt],
        ("pickled.pt", "digits_model.DigitNet", "--trust-checkpoint", "arbitrary code"),
    ),
    (
        "model output of the wrong shape",
        lambda d, t: [d.state_dict, d.tensors_pt, "--model", factory(d, "WrongShapeNet")],
        ("model output 'logits'", "[64, 2, 5]", "expected float logits [64]"),
    ),
    (
        "labels file shorter than embeddings",
        lambda d, t: [short_labels(d, t)],
        ("labels.npy", "47 rows", "50 embeddings"),
    ),
    (
        "state dict without --model",
        lambda d, t: [d.with_config, d.tensors_pt],
        ("with_config.pt", "--model"),
    ),
    (
        "images the model cannot take",
        lambda d, t: [
            d.state_dict,
            d.images,
            "--model",
            factory(d, "make_net"),
        ],  # RGB, model wants 1 channel
        ("forward failed on inputs of shape [64, 3, 8, 8]", "--grayscale"),
    ),
    (
        "factory that does not exist",
        lambda d, t: [d.state_dict, d.tensors_pt, "--model", factory(d, "make_nett")],
        ("--model", "has no 'make_nett'", "make_net"),
    ),
    (
        "model kwargs that are not JSON",
        lambda d, t: [
            d.state_dict,
            d.tensors_pt,
            "--model",
            factory(d, "make_net"),
            "--model-kwargs",
            "{hidden: 16}",
        ],
        ("--model-kwargs", "not valid JSON"),
    ),
    (
        "bad --fail-on rule",
        lambda d, t: [
            d.state_dict,
            d.tensors_pt,
            "--model",
            factory(d, "make_net"),
            "--fail-on",
            "f1 << 0.8",
        ],
        ("--fail-on", "'f1 << 0.8'", "METRIC<OP>NUMBER"),
    ),
    (
        "baseline that is not a report",
        lambda d, t: [
            d.state_dict,
            d.tensors_pt,
            "--model",
            factory(d, "make_net"),
            "--baseline",
            d.tensors_pt,
        ],
        ("--baseline", "digits.pt"),
    ),
    (
        "bad option value",
        lambda d, t: [d.state_dict, d.tensors_pt, "--batch-size", "0"],
        ("--batch-size", "positive integer", "--help"),
    ),
    (
        "unknown embedding layer",
        lambda d, t: [
            d.state_dict,
            d.tensors_pt,
            "--model",
            factory(d, "make_net"),
            "--embedding-layer",
            "neck",
        ],
        ("--embedding-layer", "'neck'", "classifier"),
    ),
    (
        "option that does not apply to the data",
        lambda d, t: [
            d.state_dict,
            d.tensors_pt,
            "--model",
            factory(d, "make_net"),
            "--image-size",
            "8",
        ],
        ("--image-size", "only to image folders"),
    ),
]


def snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize(("argv", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_keeps_earlier_files(
    digits: Digits,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: Argv,
    fragments: tuple[str, ...],
) -> None:
    out = folder(tmp_path, "out")
    (out / "notes.txt").write_text("the user's own file")
    before = snapshot(out)
    code = main([str(a) for a in argv(digits, tmp_path)] + ["--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("diagnose: error: ")
    assert "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in lines[0]
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


def test_an_earlier_report_is_not_overwritten(
    digits: Digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = folder(tmp_path, "out")
    (out / "report.json").write_text('{"schema": "embscope.report/1", "earlier": true}')
    (out / "report.html").write_text("<html>earlier</html>")
    before = snapshot(out)
    code = main(
        [
            str(digits.state_dict),
            str(digits.tensors_pt),
            "--model",
            factory(digits, "make_net"),
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        f"diagnose: error: --out: {out} already holds a report (report.json) "
        "(pass --force to replace it, or choose another --out)"
    ]
    assert snapshot(out) == before


def test_debug_shows_the_traceback(
    digits: Digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            str(tmp_path / "nothere.pt"),
            str(digits.tensors_pt),
            "--debug",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" in err
    assert err.splitlines()[-1].startswith("diagnose: error: ")


def test_an_unexpected_error_is_one_line_exit_2(
    digits: Digits,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import embscope.cli.data as data

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(data.TensorFile, "batches", broken)
    code = main(
        [
            str(digits.state_dict),
            str(digits.tensors_pt),
            "--model",
            factory(digits, "make_net"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        "diagnose: error: internal error: ZeroDivisionError: a bug "
        "(rerun with --debug for the traceback, and please report it)"
    ]
    assert not (tmp_path / "o").exists()
