"""N-way comparison (diagnostics/ranking.py): models ranked by the task metric, each judged
against the best with compare's own decision at the Bonferroni-corrected level, two models
deciding as compare does at that level, and bad arguments refused."""

from __future__ import annotations

import pytest
import torch

from embscope.diagnostics import compare, compare_many, diagnose
from embscope.diagnostics.compare import DifferentData, IncomparableReports
from embscope.diagnostics.intervals import z_value


def _model(seed: int, flip: float, n: int = 600):
    """Binary data shared by every model (ids equal), one logit whose sign is wrong for the
    base 15% plus ``flip`` of the samples."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randn(n, 6, generator=g) + y[:, None]
    z = (2 * y - 1) * (1 + 2 * torch.rand(n, generator=g))
    z[torch.rand(n, generator=g) < 0.15] *= -1
    z = z + 0.05 * torch.randn(n, generator=torch.Generator().manual_seed(seed))
    if flip:
        right = torch.nonzero((z > 0) == (y == 1)).flatten()
        pick = right[torch.randperm(len(right), generator=torch.Generator().manual_seed(seed))]
        z[pick[: int(flip * n)]] *= -1
    ids = [f"s{i}" for i in range(n)]
    return diagnose(x, y, z, ids=ids, reservoir_size=100)


@pytest.fixture(scope="module")
def four():
    return [_model(1, 0.0), _model(2, 0.08), _model(3, 0.005), _model(4, 0.0)]


def test_ranks_by_the_task_metric_and_finds_the_real_differences(four) -> None:
    ranking = compare_many(four, ["bce", "worse", "focal", "arc"])
    assert ranking.rank_by == "f1"
    f1 = [four[i].metrics["f1"] for i in range(4)]
    assert [ranking.values[n]["f1"] for n in ranking.names] == sorted(f1, reverse=True)
    assert ranking.names[-1] == "worse"
    assert ranking.status["worse"]["f1"] == "worse"
    assert set(ranking.tied_with_best) == {"bce", "focal", "arc"}
    # Bonferroni over the 3 comparisons with the best
    assert ranking.z == pytest.approx(z_value(1 - 0.05 / 3))
    md = ranking.to_markdown()
    assert md.startswith(f"**Best by f1: {ranking.names[0]}**")
    assert "| 4 | worse |" in md and "(worse)" in md
    assert "Bonferroni over the 3 comparisons" in md
    # the headline names every metric on which a model is worse than that metric's best
    for name in ranking.names:
        bad = [m for m in ranking.metrics if ranking.status[name].get(m) == "worse"]
        if bad:
            assert f"{name} is worse than the best on {', '.join(bad)}" in md.split("|")[0]


def test_each_cell_is_compares_decision_at_the_corrected_level(four) -> None:
    ranking = compare_many(four, ["a", "b", "c", "d"])
    names = dict(zip(["a", "b", "c", "d"], four, strict=True))
    for metric in ranking.metrics:
        best = next(n for n in ranking.names if ranking.status[n][metric] == "best")
        for n in ranking.names:
            if n == best or ranking.status[n][metric] == "undefined":
                continue
            pair = compare(names[best], names[n], level=1 - 0.05 / 3)
            want = "worse" if pair.decisions[metric].outcome == "worse" else "tied"
            assert ranking.status[n][metric] == want, (metric, n)
            assert ranking.decisions[n][metric].noise == pytest.approx(pair.decisions[metric].noise)


def test_bad_arguments_are_refused(four) -> None:
    with pytest.raises(ValueError, match="at least two"):
        compare_many(four[:1])
    with pytest.raises(ValueError, match="distinct names"):
        compare_many(four, ["a", "a", "b", "c"])
    with pytest.raises(ValueError, match="rank_by"):
        compare_many(four, rank_by="head.s")
    g = torch.Generator().manual_seed(5)
    ten = diagnose(torch.randn(300, 4, generator=g), torch.arange(300) % 10, reservoir_size=50)
    with pytest.raises(IncomparableReports):
        compare_many([four[0], four[1], ten])
    other = _model(1, 0.0, n=500)
    with pytest.raises(DifferentData, match="model 1 and model 3"):
        compare_many([four[0], four[1], other])
    assert compare_many([four[0], four[1], other], allow_different_data=True).names
