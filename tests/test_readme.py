"""Every command in the README's bash blocks runs as written from a fresh clone of the
repository, after the install command: the steps of the install line that set up the
environment (the venv, pip) are the ones not run here (the tests run in that environment, as
CI's), the rest of it (``diagnose --demo``) is; the test command is this suite itself."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Steps of a command line (split at &&) that install the environment the tests already run in.
INSTALL_STEPS = ("python -m venv", ". .venv/bin/activate", "source .venv/bin/activate", "pip ")
TEST_COMMAND = "python -m pytest"  # this suite


def _bash_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _commands(block: str) -> list[str]:
    joined = block.replace("\\\n", " ")
    return [c.strip() for c in joined.splitlines() if c.strip() and not c.startswith("#")]


def _to_run(command: str) -> str | None:
    """The command without its install steps; None when nothing is left to run here."""
    steps = [step.strip() for step in command.split("&&")]
    kept = [s for s in steps if not s.startswith(INSTALL_STEPS) and not s.startswith(TEST_COMMAND)]
    return " && ".join(kept) if kept else None


def _fresh_clone(target: Path) -> None:
    """The files a clone of the repository holds (git's tracked files), copied to ``target``."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True
    )
    if listed.returncode != 0:  # not a git checkout (an unpacked source archive): copy it
        shutil.copytree(
            ROOT,
            target,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(
                ".git", ".venv", "build", "embscope-report", "*.egg-info"
            ),
        )
        return
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is skipped
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def test_readme_bash_blocks_hold_only_runnable_commands():
    blocks = _bash_blocks()
    assert len(blocks) >= 3
    for block in blocks:
        for command in _commands(block):
            assert "CHECKPOINT" not in command and "A.json" not in command, command
    # the install line ends with the demo, which is run below
    install = next(c for b in blocks for c in _commands(b) if "pip install" in c)
    assert _to_run(install) == "diagnose --demo"


def test_every_readme_command_runs_as_written(tmp_path):
    _fresh_clone(tmp_path)
    # the commands run in the environment the tests run in (the venv's python and diagnose)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    ran = []
    for block in _bash_blocks():
        for command in _commands(block):
            to_run = _to_run(command)
            if to_run is None:
                continue
            result = subprocess.run(
                to_run,
                shell=True,
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert result.returncode == 0, (to_run, result.stdout[-2000:], result.stderr[-2000:])
            ran.append(to_run)
    assert "diagnose --demo" in ran
    assert any(c.startswith("python examples/ci_regression/train_model.py") for c in ran)
    assert any(c.startswith("diagnose build/model.pt") and "--baseline" in c for c in ran)
    assert (tmp_path / "embscope-report" / "arcface" / "report.html").is_file()
    assert (tmp_path / "build" / "report" / "report.json").is_file()
