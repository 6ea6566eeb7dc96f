"""`molecule test` passes for every role, as a role's developer runs it."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from conftest import REPO, VENV_BIN, require_root, tool

ROLES = sorted(p.parents[2].name for p in (REPO / "roles").glob("*/molecule/default/molecule.yml"))
# Two scenarios at a time: each boots its own bed (molecule-<role>), so they do not meet, and
# much of a scenario is waiting on apt and SSH. Measured: 489 s for the suite, about 690 s one at a time.
PARALLEL = 2


def molecule_test(role: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_FORCE_COLOR": "0",
           "PY_COLORS": "0"}
    return subprocess.run([tool("molecule"), "test"], cwd=REPO / "roles" / role, env=env,
                          capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def molecule_runs():
    """Every role's `molecule test`, started together (PARALLEL at a time); each test waits for its own."""
    require_root()
    with ThreadPoolExecutor(PARALLEL) as pool:
        runs: dict[str, Future] = {role: pool.submit(molecule_test, role) for role in ROLES}
        yield runs
        for future in runs.values():
            future.cancel()


def test_every_role_has_a_molecule_scenario():
    assert {"base", "mosquitto", "timescaledb"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_molecule(role, molecule_runs):
    result = molecule_runs[role].result()
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
