"""Property-based: whatever numbers and ``--fail-on`` rules a user types, ``diagnose`` ends in
exit 0, 1 or 2, and a 2 is one line naming what was wrong, never a traceback or an 'internal
error'. In-process through ``main(argv)`` on small precomputed embeddings (about 0.4 s a run)."""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from embscope.cli.main import main

# Numbers as users type them, and text that is not one.
NUMBERS = st.one_of(
    st.integers(-(10**25), 10**25).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "1", "2", "-0", "1e3", "0x10", "1_000", "", " ", "--", "abc", "1,2"]),
    st.sampled_from([str(2**31), str(2**32), str(2**63), str(2**64), str(-(2**63) - 1)]),
    st.text(max_size=6),
)
NUMERIC_OPTIONS = ("--batch-size", "--reservoir-size", "--seed", "--tolerance")
# Options of model runs: with EMBEDDINGS a good value is refused as not applying, a bad one as bad.
MODEL_OPTIONS = ("--image-size", "--mean", "--std")

METRICS = st.sampled_from(
    ["accuracy", "macro_f1", "f1", "fisher_ratio", "recall_at_1", "n", "head.s", "nope", "", "1x"]
)
OPERATORS = st.sampled_from(["<", "<=", ">", ">=", "==", "!=", "<<", "=", "=>", ""])
RULES = st.builds(
    lambda metric, op, value, space: f"{metric}{space}{op}{space}{value}",
    METRICS,
    OPERATORS,
    NUMBERS,
    st.sampled_from(["", " "]),
)
FAIL_ON = st.one_of(st.lists(RULES, min_size=0, max_size=3).map(",".join), st.text(max_size=20))

_runs = itertools.count()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Embeddings with logits (60 rows, 3 classes), and a baseline report of them."""
    root = tmp_path_factory.mktemp("properties")
    rng = np.random.default_rng(0)
    np.savez(
        root / "e.npz",
        embeddings=rng.normal(size=(60, 4)).astype(np.float32),
        labels=np.arange(60) % 3,
        logits=rng.normal(size=(60, 3)).astype(np.float32),
    )
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([str(root / "e.npz"), "--out", str(root / "baseline")]) == 0
    return {"root": root, "embeddings": root / "e.npz", "baseline": root / "baseline/report.json"}


def run(argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` with stdout and stderr captured; returns the exit status and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def assert_exit_0_1_or_one_line_2(code: int, err: str, argv: list[str]) -> None:
    assert code in (0, 1, 2), (code, argv)
    assert "Traceback" not in err, (argv, err)
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith("diagnose: error: "), (argv, err)
        assert "internal error" not in lines[0], (argv, err)
    else:
        assert err == "", (argv, err)


@settings(max_examples=25, deadline=None)
@given(
    values=st.dictionaries(
        st.sampled_from(NUMERIC_OPTIONS + MODEL_OPTIONS), NUMBERS, min_size=1, max_size=4
    )
)
@example(values={"--seed": str(2**70)})  # was an internal error (OverflowError)
def test_numeric_options_end_in_exit_0_1_or_one_line_2(
    inputs: dict[str, Path], values: dict[str, str]
) -> None:
    out = inputs["root"] / f"run{next(_runs)}"
    argv = [str(inputs["embeddings"]), "--baseline", str(inputs["baseline"]), "--out", str(out)]
    for option, value in values.items():
        argv += [option, value]
    code, err = run(argv)
    assert_exit_0_1_or_one_line_2(code, err, argv)
    if code == 2:  # a bad number is named by its option, before anything is written
        assert not out.exists(), argv
        named = [option for option in values if option in err]
        assert named or "diagnose: error: --" not in err, (argv, err)


@settings(max_examples=25, deadline=None)
@given(rules=FAIL_ON)
def test_fail_on_rules_end_in_exit_0_1_or_one_line_2(inputs: dict[str, Path], rules: str) -> None:
    out = inputs["root"] / f"run{next(_runs)}"
    argv = [str(inputs["embeddings"]), "--fail-on", rules, "--out", str(out)]
    code, err = run(argv)
    assert_exit_0_1_or_one_line_2(code, err, argv)
    if code == 2:
        assert "--fail-on" in err, (argv, err)
