"""Tensor files in the layouts people save (issue 15): the usual key pairs, a pair of tensors, a
list of (input, label) pairs, and with --trust-checkpoint a saved TensorDataset or other
dataset; ambiguous keys and pickled files without the flag are one-line errors, and nothing
is unpickled without it."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from embscope.cli.data import open_inputs
from embscope.cli.errors import UsageError
from embscope.cli.main import main
from tests.cli.conftest import Digits

X = torch.arange(5 * 4, dtype=torch.float32).reshape(5, 4) / 20
Y = torch.tensor([0, 1, 1, 0, 2])


def read(path: Path, trust: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    data = open_inputs(path, trust=trust)
    batches = list(data.batches(2))
    return torch.cat([b.inputs for b in batches]), torch.cat([b.labels for b in batches])


@pytest.mark.parametrize(
    ("x_key", "y_key"),
    [
        ("images", "labels"),
        ("x", "labels"),
        ("data", "targets"),
        ("inputs", "y"),
        ("x", "y"),
        ("images", "targets"),
        ("features", "label"),
        ("Images", "Labels"),
    ],
)
@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_usual_key_pairs_load(tmp_path: Path, x_key: str, y_key: str, suffix: str) -> None:
    path = tmp_path / f"val{suffix}"
    if suffix == ".pt":
        torch.save({x_key: X, y_key: Y, "epoch": 3}, path)
    else:
        np.savez(path, **{x_key: X.numpy(), y_key: Y.numpy()})
    x, y = read(path)
    assert torch.equal(x, X) and torch.equal(y, Y)


def test_ambiguous_keys_are_named_with_what_to_call_them(tmp_path: Path) -> None:
    torch.save({"x": X, "images": X, "labels": Y}, tmp_path / "two.pt")
    with pytest.raises(UsageError) as caught:
        open_inputs(tmp_path / "two.pt")
    message = str(caught.value)
    assert "\n" not in message
    assert "keys ['x', 'images', 'labels']" in message
    assert "several keys that could be the inputs ('x' and 'images')" in message
    assert "inputs under x, inputs, images or data and labels under y, labels or targets" in message
    torch.save({"x": X, "labels": Y, "targets": Y}, tmp_path / "labels.pt")
    with pytest.raises(UsageError, match=r"could be the labels \('labels' and 'targets'\)"):
        open_inputs(tmp_path / "labels.pt")
    torch.save({"pixels": X, "labels": Y}, tmp_path / "none.pt")
    with pytest.raises(UsageError, match=r"holds keys \['pixels', 'labels'\]: no inputs \("):
        open_inputs(tmp_path / "none.pt")


def test_precomputed_embeddings_given_as_data_say_so(tmp_path: Path) -> None:
    torch.save({"embeddings": X, "labels": Y}, tmp_path / "emb.pt")
    with pytest.raises(UsageError, match=r"precomputed embeddings .*without a checkpoint"):
        open_inputs(tmp_path / "emb.pt")


def test_pair_of_tensors_and_list_of_pairs_load_without_trust(tmp_path: Path) -> None:
    torch.save((X, Y), tmp_path / "pair.pt")
    x, y = read(tmp_path / "pair.pt")
    assert torch.equal(x, X) and torch.equal(y, Y)
    # a list of (input, label) pairs holds only tensors and numbers: no unpickling needed
    for label_kind in (int, torch.tensor):
        pairs = [(X[i], label_kind(int(Y[i]))) for i in range(len(Y))]
        torch.save(pairs, tmp_path / "pairs.pt")
        x, y = read(tmp_path / "pairs.pt")
        assert torch.equal(x, X) and torch.equal(y, Y)
    # two pairs are not mistaken for (inputs, labels)
    torch.save([(X[0], 1), (X[1], 0)], tmp_path / "two_pairs.pt")
    x, y = read(tmp_path / "two_pairs.pt")
    assert torch.equal(x, X[:2]) and y.tolist() == [1, 0]


def test_list_of_pairs_of_different_shapes_is_refused(tmp_path: Path) -> None:
    torch.save([(X[0], 0), (X[1, :3], 1)], tmp_path / "ragged.pt")
    with pytest.raises(UsageError, match=r"different shapes \(item 0 \[4\], item 1 \[3\]\)"):
        open_inputs(tmp_path / "ragged.pt")
    torch.save([("abc", 0), ("def", 1)], tmp_path / "text.pt")
    with pytest.raises(UsageError, match=r"input 0 is a str, not numbers"):
        open_inputs(tmp_path / "text.pt")
    torch.save([(X[0], 0, "a")], tmp_path / "triples.pt")
    with pytest.raises(UsageError, match=r"item 0 is a tuple of 3 items, not an \(input, label\)"):
        open_inputs(tmp_path / "triples.pt")


# A dataset class whose unpickling leaves a mark: proof that nothing is unpickled untrusted.
DATASET_SOURCE = textwrap.dedent(
    '''
    import os
    from pathlib import Path


    class Samples:
        """A map-style dataset of (input, label) pairs."""

        def __init__(self, inputs, labels):
            self.inputs, self.labels = inputs, labels

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, index):
            return self.inputs[index], int(self.labels[index])

        def __setstate__(self, state):
            Path(os.environ["EMBSCOPE_TEST_MARK"]).write_text("unpickled")
            self.__dict__.update(state)
    '''
)


@pytest.fixture
def samples_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "user_samples.py").write_text(DATASET_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("EMBSCOPE_TEST_MARK", str(tmp_path / "mark"))
    import user_samples

    monkeypatch.setitem(sys.modules, "user_samples", user_samples)  # removed afterwards
    return user_samples


def test_pickled_datasets_need_trust_and_then_load(tmp_path: Path, samples_module) -> None:
    mark = tmp_path / "mark"
    torch.save(TensorDataset(X, Y), tmp_path / "tensordataset.pt")
    torch.save(samples_module.Samples(X, Y), tmp_path / "samples.pt")
    for name, what in (("tensordataset.pt", "TensorDataset"), ("samples.pt", "Samples")):
        with pytest.raises(UsageError) as caught:
            open_inputs(tmp_path / name)
        message = str(caught.value)
        assert what in message and "--trust-checkpoint" in message and "arbitrary code" in message
        assert "state_dict" not in message and "--model" not in message
        assert "torch.save({'x': inputs, 'y': labels}, path)" in message
        assert not mark.exists()
    for name in ("tensordataset.pt", "samples.pt"):
        x, y = read(tmp_path / name, trust=True)
        assert torch.equal(x, X) and torch.equal(y, Y)
    assert mark.read_text() == "unpickled"  # the trusted load did unpickle Samples


def test_tensor_dataset_of_three_tensors_is_refused(tmp_path: Path) -> None:
    torch.save(TensorDataset(X, Y, Y), tmp_path / "three.pt")
    with pytest.raises(UsageError, match=r"TensorDataset of 3 tensors .*TensorDataset\(inputs"):
        open_inputs(tmp_path / "three.pt", trust=True)


def test_cli_tensor_dataset(digits: Digits, tmp_path: Path, capsys) -> None:
    path = tmp_path / "val.pt"
    torch.save(TensorDataset(digits.x[:200], digits.y[:200]), path)
    model = f"{digits.root / 'digits_model.py'}:make_net"
    args = [str(digits.state_dict), str(path), "--model", model, "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trust-checkpoint" in err and "state_dict" not in err
    assert not (tmp_path / "out").exists()
    assert main([*args, "--trust-checkpoint"]) == 0
    assert (tmp_path / "out" / "report.json").exists()
