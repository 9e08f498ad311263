"""build_head / head_config round trips and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from embscope.losses import (
    ArcFaceHead,
    BCEHead,
    CosFaceHead,
    build_head,
    head_config,
    known_heads,
    register_head,
)
from embscope.losses import registry as registry_module


def test_build_from_the_issue_example():
    head = build_head({"type": "arcface", "m": 0.2, "s": 8, "embedding_dim": 128, "num_classes": 2})
    assert isinstance(head, ArcFaceHead)
    assert (head.m, head.s, head.weight.shape) == (0.2, 8.0, (2, 128))
    assert head_config(head) == {
        "type": "arcface",
        "embedding_dim": 128,
        "num_classes": 2,
        "m": 0.2,
        "s": 8.0,
        "easy_margin": False,
    }


@pytest.mark.parametrize(
    "head",
    [
        ArcFaceHead(16, 5, m=0.3, s=30.0, easy_margin=True),
        CosFaceHead(16, 5, m=0.25, s=20.0),
        BCEHead(16, pos_weight=2.5),
        BCEHead(16),
    ],
)
def test_round_trip(head):
    config = head_config(head)
    rebuilt = build_head(config)
    assert type(rebuilt) is type(head)
    assert head_config(rebuilt) == config
    rebuilt.load_state_dict(head.state_dict())
    x = torch.randn(3, 16)
    assert torch.equal(rebuilt.eval()(x), head.eval()(x))


def test_overrides_fill_in_dimensions_and_type_is_case_insensitive():
    head = build_head({"type": "CosFace", "m": 0.1}, embedding_dim=8, num_classes=3, s=4)
    assert isinstance(head, CosFaceHead) and (head.m, head.s) == (0.1, 4.0)


def test_errors():
    with pytest.raises(
        ValueError,
        match=r"config\['type'\] must be one of "
        r"\['arcface', 'bce', 'cosface'.*got 'sphereface'",
    ):
        build_head({"type": "sphereface", "embedding_dim": 4, "num_classes": 2})
    with pytest.raises(ValueError, match=r"config must have a 'type' key"):
        build_head({"m": 0.2})
    with pytest.raises(ValueError, match=r"missing \['embedding_dim', 'num_classes'\]"):
        build_head({"type": "arcface", "m": 0.2, "s": 8})
    with pytest.raises(ValueError, match=r"unknown keys \['margin'\] for type 'arcface'"):
        build_head({"type": "arcface", "margin": 0.2}, embedding_dim=4, num_classes=2)
    with pytest.raises(ValueError, match=r"m must be >= 0"):
        build_head({"type": "arcface", "m": -0.2}, embedding_dim=4, num_classes=2)
    with pytest.raises(ValueError, match=r"head must be an instance of a registered head type"):
        head_config(nn.Linear(2, 2))


@pytest.fixture
def clean_registry():
    before = dict(registry_module._HEADS)
    yield
    registry_module._HEADS.clear()
    registry_module._HEADS.update(before)


def test_register_a_new_head(clean_registry):
    @register_head("scaled_linear")
    class ScaledLinear(nn.Module):
        def __init__(self, embedding_dim: int, scale: float = 2.0):
            super().__init__()
            self.embedding_dim, self.scale = embedding_dim, scale

    assert "scaled_linear" in known_heads()
    head = build_head({"type": "scaled_linear", "embedding_dim": 3})
    assert head_config(head) == {"type": "scaled_linear", "embedding_dim": 3, "scale": 2.0}
    with pytest.raises(ValueError, match=r"head type 'arcface' is already registered"):
        register_head("arcface")(ScaledLinear)

    class Sub(ArcFaceHead):
        pass

    with pytest.raises(ValueError, match=r"registered head type"):
        head_config(Sub(4, 2))
