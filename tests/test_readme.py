"""Every command in the README's bash blocks runs as written from a clean copy of the
repository, after the install command (which, with the test command, is what CI itself runs)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = ("pip install", "python -m pytest")  # the install and test commands: CI runs them


def _bash_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _commands(block: str) -> list[str]:
    joined = block.replace("\\\n", " ")
    return [c.strip() for c in joined.splitlines() if c.strip() and not c.startswith("#")]


def test_readme_bash_blocks_hold_only_runnable_commands():
    blocks = _bash_blocks()
    assert len(blocks) >= 3
    for block in blocks:
        for command in _commands(block):
            assert "CHECKPOINT" not in command and "A.json" not in command, command


def test_every_readme_command_runs_as_written(tmp_path):
    # a copy of what a clone holds that the commands read (examples/), run from its root
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    # the commands run in the environment the tests run in (the venv's python and diagnose)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    ran = 0
    for block in _bash_blocks():
        for command in _commands(block):
            if any(skip in command for skip in SKIP):
                continue
            result = subprocess.run(
                command,
                shell=True,
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-2000:])
            ran += 1
    assert ran >= 2
