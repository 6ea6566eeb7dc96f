"""`molecule test` passes for every role, as a role's developer runs it."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import REPO, VENV_BIN, require_root, tool

ROLES = sorted(p.parents[2].name for p in (REPO / "roles").glob("*/molecule/default/molecule.yml"))


def test_every_role_has_a_molecule_scenario():
    assert {"base", "mosquitto", "timescaledb"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_molecule(role):
    require_root()
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_FORCE_COLOR": "0",
           "PY_COLORS": "0"}
    result = subprocess.run([tool("molecule"), "test"], cwd=REPO / "roles" / role, env=env,
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
