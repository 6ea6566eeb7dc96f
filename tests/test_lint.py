"""ansible-lint (production profile), yamllint and ruff report nothing."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import REPO, VENV_BIN, tool


@pytest.mark.parametrize("command", [
    ["ansible-lint", "--profile", "production", "--strict"],
    ["yamllint", "--strict", "."],
    ["ruff", "check", "."],
])
def test_linter_is_clean(command):
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "NO_COLOR": "1"}
    result = subprocess.run([tool(command[0]), *command[1:]], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
