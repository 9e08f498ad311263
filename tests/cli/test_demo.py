"""``diagnose --demo`` and the data, model and training helpers of ``embscope.cli.demo``."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, f1_score

from embscope.cli.demo import (
    DigitsNet,
    LeakyMarginNet,
    diagnose_model,
    digits_binary,
    digits_multiclass,
    embed,
    run_demo,
    train,
)
from embscope.cli.errors import UsageError
from embscope.cli.main import main
from embscope.diagnostics import Report, probe_margin_leak
from embscope.losses import ArcFaceHead, BCEHead


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: threads only add contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _index(ids: list[str]) -> np.ndarray:
    return np.array([int(i.split("[")[1].split("]")[0]) for i in ids])


def test_binary_task_is_odd_vs_even_with_a_third_of_the_positives_and_noise() -> None:
    digits = load_digits()
    n_odd = int((digits.target % 2 == 1).sum())
    n_even = len(digits.target) - n_odd
    split = digits_binary(seed=3, noise=0.35, val_fraction=0.3)
    y = torch.cat([split.y_train, split.y_val]).numpy()
    assert (y == 1).sum() == round(n_odd / 3)
    assert (y == 0).sum() == n_even
    d = torch.cat([split.digits_train, split.digits_val]).numpy()
    np.testing.assert_array_equal(y, d % 2)
    # stratified: 30% of each class held out
    assert (split.y_val == 1).sum() == round(round(n_odd / 3) * 0.3)
    assert (split.y_val == 0).sum() == round(n_even * 0.3)
    # the noise is what separates the pixels from scikit-learn's, with the asked spread
    index = _index(split.ids_val)
    np.testing.assert_array_equal(digits.target[index], split.digits_val.numpy())
    noise = split.x_val.numpy() - digits.data[index] / 16.0
    assert noise.mean() == pytest.approx(0.0, abs=0.01)
    assert noise.std() == pytest.approx(0.35, rel=0.02)
    # seeded: the same seed gives the same split, another seed another one
    again = digits_binary(seed=3, noise=0.35, val_fraction=0.3)
    assert torch.equal(again.x_train, split.x_train) and again.ids_val == split.ids_val
    assert digits_binary(seed=4).ids_val != split.ids_val


def test_multiclass_keeps_the_asked_share_of_each_digit() -> None:
    digits = load_digits()
    keep = [1.0] * 8 + [0.1, 0.05]
    split = digits_multiclass(seed=0, class_keep=keep, val_fraction=0.25)
    labels = torch.cat([split.y_train, split.y_val]).numpy()
    counts = np.bincount(labels, minlength=10)
    expected = [max(2, round((digits.target == d).sum() * k)) for d, k in enumerate(keep)]
    np.testing.assert_array_equal(counts, expected)
    assert split.num_classes == 10
    clean = split.x_val.numpy() - digits.data[_index(split.ids_val)] / 16.0
    assert np.abs(clean).max() == 0.0  # noise=0: the scans as they are


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: digits_binary(positive_keep=0), r"positive_keep must lie in \(0, 1\], got 0"),
        (lambda: digits_binary(val_fraction=1.0), r"val_fraction must lie in \(0, 1\), got 1.0"),
        (lambda: digits_binary(noise=-1), r"noise must be a number >= 0, got -1"),
        (lambda: digits_multiclass(class_keep=[1.0] * 9), r"class_keep must hold 10 shares"),
        (lambda: digits_multiclass(class_keep=[1.0] * 9 + [2]), r"class_keep\[9\] must lie"),
    ],
)
def test_bad_arguments_name_themselves(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_training_is_seeded_and_learns() -> None:
    split = digits_binary(seed=0)

    def fitted(seed: int) -> tuple[DigitsNet, list[float]]:
        torch.manual_seed(seed)
        model = DigitsNet(BCEHead(16))
        return model, train(model, split, epochs=4, seed=seed)

    model, losses = fitted(0)
    twin, twin_losses = fitted(0)
    assert losses == twin_losses
    assert losses[-1] < 0.7 * losses[0]
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    # the report's accuracy and F1 are those of the model's own predictions (scikit-learn)
    embeddings, logits = embed(model, split.x_val)
    assert embeddings.shape == (len(split.y_val), 16) and logits.shape == (len(split.y_val),)
    predicted = (logits > 0).long().numpy()
    report = diagnose_model(model, split.x_val, split.y_val, reservoir_size=0)
    assert report.metrics["accuracy"] == pytest.approx(accuracy_score(split.y_val, predicted))
    assert report.metrics["f1"] == pytest.approx(f1_score(split.y_val, predicted))
    assert report.metrics["head.margin_leak"] == 0.0


def test_the_leaky_model_reproduces_the_notes_bug_and_is_caught() -> None:
    split = digits_binary(seed=1)
    torch.manual_seed(1)
    leaky = LeakyMarginNet(ArcFaceHead(16, 2, m=0.2, s=16))
    train(leaky, split, epochs=3, seed=1)
    torch.manual_seed(1)
    fixed = DigitsNet(ArcFaceHead(16, 2, m=0.2, s=16))
    train(fixed, split, epochs=3, seed=1)
    x, y = split.x_val, split.y_val
    # same training, same weights: only evaluation with labels differs
    _, plain = embed(leaky, x)
    assert torch.equal(plain, embed(fixed, x, y)[1])
    _, with_labels = embed(leaky, x, y)
    cos = with_labels[torch.arange(len(y)), y] / 16
    plain_cos = plain[torch.arange(len(y)), y] / 16
    theta = torch.arccos(plain_cos.clamp(-1, 1))
    # ArcFace on the true class: cos(theta + m) where theta + m <= pi
    inside = theta + 0.2 <= torch.pi
    assert torch.allclose(cos[inside], torch.cos(theta[inside] + 0.2), atol=1e-4)
    assert probe_margin_leak(leaky, x, y) and not probe_margin_leak(fixed, x, y)
    report = diagnose_model(leaky, x, y, eval_with_labels=True, reservoir_size=0)
    first = report.recommendations[0]
    assert (first.action, first.severity) == ("fix_eval_margin", "error")
    assert not leaky.head.training or leaky.training  # the head's flag is restored


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_run_demo_writes_both_reports_and_the_comparison_and_never_replaces_them(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "demo"
    assert run_demo(out, epochs=3) == 0
    files = _listing(out)
    for name in ("bce", "arcface"):
        for part in ("report.json", "report.md", "report.html"):
            assert f"{name}/{part}" in files
        assert any(f.startswith(f"{name}/plots/") and f.endswith(".png") for f in files)
    assert {"comparison.md", "comparison.json"} <= files
    bce = Report.from_json((out / "bce" / "report.json").read_text())
    arcface = Report.from_json((out / "arcface" / "report.json").read_text())
    assert "head.s" not in bce.metrics and arcface.metrics["head.s"] == 16.0
    for report in (bce, arcface):  # thumbnails of the hardest 16 scans (diagnostics.thumbnails)
        hardest = [h["id"] for h in report.sections["hardest"]]
        assert list(report.sections["thumbnails"]) == hardest[:16]
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["deltas"]["f1"]["a"] == pytest.approx(bce.metrics["f1"])
    assert comparison["deltas"]["f1"]["b"] == pytest.approx(arcface.metrics["f1"])
    # the ArcFace report carries the comparison's verdict as a recommendation
    verdict = {"keep_arcface": "enable_arcface", "disable_arcface": "disable_arcface"}
    actions = [r.action for r in arcface.recommendations]
    assert verdict[comparison["verdict"]] in actions
    printed = capsys.readouterr().out
    assert str(out / "bce" / "report.html") in printed
    assert str(out / "arcface" / "report.html") in printed
    assert str(out / "comparison.md") in printed
    assert printed.count("recommendations:") == 2
    for rec in bce.recommendations + arcface.recommendations:
        assert f"] {rec.action}" in printed
    # never replaced without force, and checked before any training
    before = (out / "bce" / "report.json").read_bytes()
    with pytest.raises(UsageError, match="already holds a report.*--force"):
        run_demo(out, epochs=2)
    assert (out / "bce" / "report.json").read_bytes() == before
    (out / "bce" / "report.json").unlink()
    (out / "arcface" / "report.json").unlink()
    with pytest.raises(UsageError, match="already holds a demo comparison.*--force"):
        run_demo(out, epochs=2)
    assert capsys.readouterr().out == ""
    assert run_demo(out, epochs=2, force=True) == 0
    assert (out / "bce" / "report.json").read_bytes() != before


def test_diagnose_demo_command(tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "d"
    assert main(["--demo", "--out", str(out)]) == 0  # the README's command, default epochs
    assert (out / "arcface" / "report.html").is_file()
    assert torch.get_num_threads() == 1  # the fixture's setting, restored by run_demo
    capsys.readouterr()
    assert main(["--demo", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--force" in error[0]
    import embscope.cli.demo as demo

    monkeypatch.setattr(demo, "run_demo", functools.partial(demo.run_demo, epochs=1))
    assert main(["--demo", "--out", str(out), "--force"]) == 0
    assert main(["--demo", "some/path", "--out", str(out)]) == 2
