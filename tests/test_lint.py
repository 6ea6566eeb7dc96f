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


def shell_scripts() -> list[str]:
    """Every shell script of the image and the test bed: a sh/bash shebang or a shellcheck shell= directive."""
    found = []
    for top in ("image", "tests", "roles"):
        for path in sorted((REPO / top).rglob("*")):
            if not path.is_file() or path.suffix in (".py", ".yml", ".md", ".json", ".j2", ".toml", ".sql"):
                continue
            try:
                head = path.read_text(errors="replace")[:200]
            except OSError:
                continue
            if head.startswith(("#!/bin/bash", "#!/usr/bin/env bash", "#!/bin/sh")) or "shellcheck shell=" in head:
                found.append(str(path.relative_to(REPO)))
    return found


def test_shellcheck_is_clean():
    scripts = shell_scripts()
    assert any(s.startswith("image/") for s in scripts), scripts
    result = subprocess.run(["shellcheck", "-x", *scripts], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{scripts}\n{result.stdout[-6000:]}"
