"""Bad inputs: exit 2, one line on stderr naming the file or option and the fix, no traceback,
and nothing that was in ``--out`` before is lost. Run in-process through ``main(argv)``; the
console script's own error path is covered in test_end_to_end.py."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

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


def embeddings_npz(tmp: Path, name: str = "e.npz", **arrays: np.ndarray) -> Path:
    """20 rows of 4-d embeddings and 3 classes, with ``arrays`` replacing or adding columns."""
    rng = np.random.default_rng(0)
    columns = {
        "embeddings": rng.normal(size=(20, 4)).astype(np.float32),
        "labels": rng.integers(0, 3, size=20),
        **arrays,
    }
    np.savez(tmp / name, **columns)
    return tmp / name


def sparse_pt(tmp: Path) -> Path:
    embeddings = torch.randn(20, 4).to_sparse()
    torch.save({"embeddings": embeddings, "labels": torch.arange(20) % 3}, tmp / "sparse.pt")
    return tmp / "sparse.pt"


def binary_ids(tmp: Path) -> Path:
    data = folder(tmp, "embeddings")
    rng = np.random.default_rng(0)
    np.save(data / "embeddings.npy", rng.normal(size=(20, 4)).astype(np.float32))
    np.save(data / "labels.npy", rng.integers(0, 3, size=20))
    (data / "ids.txt").write_bytes(rng.bytes(400))
    return data


def looping_embeddings(tmp: Path) -> Path:
    data = folder(tmp, "embeddings")
    np.save(data / "labels.npy", np.arange(20) % 3)
    (data / "a.npy").symlink_to(data / "embeddings.npy")
    (data / "embeddings.npy").symlink_to(data / "a.npy")
    return data


def list_metrics_baseline(tmp: Path) -> Path:
    path = tmp / "baseline.json"
    path.write_text(json.dumps({"schema": "embscope.report/1", "metrics": [0.5, 0.9]}))
    return path


def blocked_global_checkpoint(digits: Digits, tmp: Path) -> Path:
    """A state dict next to a function of a module torch's weights-only loader blocks (os):
    refused with a message that is not torch's generic 'unsupported global'."""
    path = tmp / "with_hook.pt"
    torch.save({"model": digits.net.state_dict(), "hook": os.getcwd}, path)
    return path


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
            "--rgb",
        ],  # RGB forced, the model's Linear(64) wants one channel of 8x8
        (
            "forward failed on inputs of shape [64, 3, 8, 8]",
            "takes 64 features but the images were read as [3, 8, 8]",
            "pass --grayscale",
        ),
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
        "embeddings with D = 0",
        lambda d, t: [embeddings_npz(t, embeddings=np.zeros((20, 0), np.float32))],
        ("e.npz ['embeddings']", "shape [20, 0]", "D >= 1"),
    ),
    (
        "logits with zero columns",
        lambda d, t: [embeddings_npz(t, logits=np.zeros((20, 0), np.float32))],
        ("e.npz ['logits']", "shape [20, 0]", "C >= 1"),
    ),
    (
        "sparse tensor in a .pt",
        lambda d, t: [sparse_pt(t)],
        ("sparse.pt ['embeddings']", "sparse_coo tensor", "to_dense()"),
    ),
    (
        "binary ids.txt",
        lambda d, t: [binary_ids(t)],
        ("ids.txt", "is not UTF-8 text", "ids.npy"),
    ),
    (
        "embeddings.npy that is a symlink loop",
        lambda d, t: [looping_embeddings(t)],
        ("embeddings.npy", "is a symlink loop"),
    ),
    (
        "baseline whose metrics is a list",
        lambda d, t: [embeddings_npz(t), "--baseline", list_metrics_baseline(t)],
        ("--baseline", "baseline.json", "'metrics' is a list", "report.json written by diagnose"),
    ),
    (
        "checkpoint with an object the weights-only loader blocks",
        lambda d, t: [
            blocked_global_checkpoint(d, t),
            d.tensors_pt,
            "--model",
            factory(d, "make_net"),
        ],
        ("with_hook.pt", "holds pickled Python objects", "getcwd", "--trust-checkpoint"),
    ),
    (
        "embeddings that are all NaN, with a --fail-on rule",
        lambda d, t: [
            embeddings_npz(t, embeddings=np.full((20, 4), np.nan, np.float32)),
            "--fail-on",
            "macro_f1<0.5",
        ],
        ("e.npz", "no usable rows", "20 rows", "NaN"),
    ),
    (
        "negative --seed",
        lambda d, t: [embeddings_npz(t), "--seed", "-1"],
        ("--seed", "'-1'", "from 0 to"),
    ),
    (
        "--seed beyond 64 bits",
        lambda d, t: [embeddings_npz(t), "--seed", str(2**70)],
        ("--seed", "from 0 to"),
    ),
    (
        "--device that is neither the CPU nor CUDA",
        lambda d, t: [embeddings_npz(t), "--device", "meta"],
        ("--device", "'meta' is not supported", "cpu, cuda, cuda:N or auto"),
    ),
    (
        "--metrics without --baseline",
        lambda d, t: [embeddings_npz(t), "--metrics", "f1"],
        ("--metrics", "only with --baseline"),
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


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("diagnose: error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def test_out_under_a_file_is_refused_before_anything_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import embscope.cli.data as data

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the embeddings were read before --out was checked")

    monkeypatch.setattr(data, "EmbeddingFile", never)
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "a_file" / "sub"
    assert main([str(embeddings_npz(tmp_path)), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert line == (
        f"diagnose: error: --out: {tmp_path / 'a_file'} is a file, so {out} cannot be created "
        "(choose another --out)"
    )
    assert (tmp_path / "a_file").read_text() == "not a folder"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_refused_for_precomputed_embeddings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It used to be ignored silently: the report was computed on the CPU, exit 0.
    out = tmp_path / "out"
    assert main([str(embeddings_npz(tmp_path)), "--device", "cuda", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "--device: cuda requested but CUDA is not available here" in line
    assert not out.exists()


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root reads any file: the simulated test below covers it"
)
def test_an_unreadable_folder_and_baseline_are_not_readable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = short_labels(None, tmp_path)  # type: ignore[arg-type]
    data.chmod(0)
    try:
        assert main([str(data), "--out", str(tmp_path / "out")]) == 2
        assert f"{data}: is not readable" in one_error_line(capsys)
    finally:
        data.chmod(0o755)
    baseline = list_metrics_baseline(tmp_path)
    baseline.chmod(0)
    argv = [str(embeddings_npz(tmp_path)), "--baseline", str(baseline)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert f"--baseline: {baseline} is not readable" in one_error_line(capsys)


def test_a_baseline_the_user_cannot_read_is_not_readable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The permission error simulated (tests may run as root, who reads everything)."""
    baseline = list_metrics_baseline(tmp_path)
    read_text = Path.read_text

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        if self == baseline:
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    argv = [str(embeddings_npz(tmp_path)), "--baseline", str(baseline)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert line == (
        f"diagnose: error: --baseline: {baseline} is not readable (check its permissions)"
    )


def test_a_permission_error_anywhere_is_one_line_not_an_internal_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import embscope.cli.data as data

    def denied(path: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "e.npz"))

    monkeypatch.setattr(data, "EmbeddingFile", denied)
    assert main([str(embeddings_npz(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert line == (
        f"diagnose: error: {tmp_path / 'e.npz'}: permission denied (Permission denied) "
        "(check its permissions)"
    )


def test_a_report_of_no_rows_is_never_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should compute() ever return a report of n = 0, the CLI still refuses to write it."""
    from embscope.diagnostics import Diagnoser, Report

    empty = Report(metrics={"n": 0.0, "nonfinite_count": 15.0, "zero_norm_count": 5.0})
    monkeypatch.setattr(Diagnoser, "compute", lambda self: empty)
    out = tmp_path / "out"
    assert main([str(embeddings_npz(tmp_path)), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(
        f"diagnose: error: {tmp_path / 'e.npz'}: no usable rows: 20 of 20 rows were dropped: "
        "15 with NaN/Inf, 5 all-zero ("
    )
    assert not out.exists()
