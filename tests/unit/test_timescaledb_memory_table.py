"""The memory table in roles/timescaledb/README.md is what the role computes.

Each column is rendered by Ansible from the role's own vars/main.yml and filter
plugin (the single place the sizing lives), on localhost, without root.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from conftest import REPO, VENV_BIN, tool

ROLE = REPO / "roles" / "timescaledb"
README = ROLE / "README.md"
SIZES_MB = {"512 MB": 512, "1 GB": 1024, "2 GB": 2048, "4 GB": 4096, "8 GB": 8192}


def rendered_settings(memory_mb: int) -> dict[str, str]:
    """__timescaledb_memory_settings as the role renders it for memory_mb of RAM."""
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "ANSIBLE_FILTER_PLUGINS": str(ROLE / "filter_plugins"),
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_NOCOLOR": "1",
    }
    result = subprocess.run(
        [tool("ansible"), "localhost", "-c", "local", "-i", "localhost,",
         "-m", "ansible.builtin.debug", "-a", "var=__timescaledb_memory_settings",
         "-e", f"@{ROLE / 'defaults' / 'main.yml'}", "-e", f"@{ROLE / 'vars' / 'main.yml'}",
         "-e", f"timescaledb_memory_mb={memory_mb}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    host = json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    settings = host["__timescaledb_memory_settings"]
    assert isinstance(settings, dict), f"not rendered to a dict: {settings!r}"
    return {name: str(value) for name, value in settings.items()}


def readme_table() -> dict[int, dict[str, str]]:
    """The README's memory table as {memory_mb: {setting: value}}."""
    lines = README.read_text().splitlines()
    header = re.compile(r"^\|\s*setting\s*\|")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    assert start is not None, "README has no table whose first column is 'setting'"

    def cells(line: str) -> list[str]:
        return [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]

    columns = cells(lines[start])[1:]
    assert columns == list(SIZES_MB), f"README table columns {columns}, expected {list(SIZES_MB)}"
    table: dict[int, dict[str, str]] = {mb: {} for mb in SIZES_MB.values()}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        name, *values = cells(line)
        assert len(values) == len(columns), f"row {name!r} has {len(values)} values"
        for label, value in zip(columns, values, strict=True):
            table[SIZES_MB[label]][name] = value
    return table


@pytest.fixture(scope="module")
def table() -> dict[int, dict[str, str]]:
    return readme_table()


@pytest.mark.parametrize("memory_mb", SIZES_MB.values())
def test_readme_memory_table_matches_the_role(table, memory_mb):
    assert table[memory_mb] == rendered_settings(memory_mb)


def test_settings_grow_with_memory():
    small, large = rendered_settings(512), rendered_settings(8192)
    assert small["max_connections"] == "20"
    assert small != large
