"""Shared helpers: the test bed, Ansible runs, and a bounded MQTT client."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTBED = REPO / "tests" / "testbed" / "testbed"
ANSIBLE_DIR = REPO / "ansible"
VENV_BIN = Path(os.environ.get("DATAYOTI_VENV", REPO / ".venv")) / "bin"
RECAP_LINE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def tool(name: str) -> str:
    """A tool from the project's virtualenv, falling back to PATH."""
    candidate = VENV_BIN / name
    return str(candidate) if candidate.exists() else name


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines -> {host: {ok, changed, unreachable, failed}}."""
    return {
        m[1]: {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5])}
        for m in RECAP_LINE.finditer(output)
    }


def play_summary(result: subprocess.CompletedProcess) -> str:
    """What went wrong in an ansible-playbook run: failed tasks, changed tasks, then its end."""
    lines = result.stdout.splitlines()
    blocks = {"failed": [], "changed": []}
    for i, line in enumerate(lines):
        if line.startswith(("fatal:", "failed:")):
            blocks["failed"].append("\n".join(lines[max(0, i - 2): i + 3]))
        elif line.startswith("changed:"):
            blocks["changed"].append("\n".join(lines[max(0, i - 2): i + 1]))
    return ("FAILED:\n" + "\n---\n".join(blocks["failed"])[-5000:]
            + "\nCHANGED:\n" + "\n---\n".join(blocks["changed"])[-3000:]
            + "\nEND:\n" + result.stdout[-1500:] + result.stderr[-1000:])


@dataclass
class Bed:
    name: str

    def run(self, *args: str, check: bool = True, timeout: float = 900, stdin: str | None = None
            ) -> subprocess.CompletedProcess:
        return subprocess.run([str(TESTBED), "--bed", self.name, *args], check=check, text=True,
                              capture_output=True, timeout=timeout, input=stdin,
                              stdin=None if stdin is not None else subprocess.DEVNULL)

    def up(self, count: int, *extra: str) -> None:
        result = self.run("up", str(count), *extra, check=False)
        assert result.returncode == 0, result.stderr

    def down(self) -> None:
        self.run("down", check=False, timeout=300)

    def status(self) -> dict:
        return json.loads(self.run("status").stdout)

    @property
    def inventory(self) -> str:
        return self.status()["inventory"]

    def sh(self, host: str, script: str, check: bool = True, timeout: float = 120, stdin: str | None = None
           ) -> subprocess.CompletedProcess:
        """Run a shell script as root on a simulated Pi, over SSH."""
        return self.run("exec", host, "sh", "-c", script, check=check, timeout=timeout, stdin=stdin)

    def read(self, host: str, path: str) -> str:
        return self.sh(host, f"cat {path!r}").stdout

    def playbook(self, *extra: str, playbook: str = "site.yml", timeout: float = 1800) -> subprocess.CompletedProcess:
        cmd = [tool("ansible-playbook"), "-i", self.inventory, playbook, *extra]
        env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
        return subprocess.run(cmd, cwd=ANSIBLE_DIR, text=True, capture_output=True, timeout=timeout, env=env)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the test bed makes namespaces, mounts and containers")


@pytest.fixture(scope="session")
def fleet():
    """Two simulated Pis provisioned by site.yml, shared by the integration tests."""
    require_root()
    bed = Bed("site")
    bed.up(2, "--sensors", "20")
    try:
        first = bed.playbook()
        bed.first_run = first
        yield bed
    finally:
        bed.down()


MODULE_ORDER = ["test_lint", "test_sensor_fleet", "test_site", "test_ingestor", "test_bench", "test_testbed",
                "test_molecule"]


def pytest_collection_modifyitems(items):
    """Idempotence and --check run on a fleet nothing has disturbed yet."""
    def rank(item):
        name = item.module.__name__.rsplit(".", 1)[-1]
        return MODULE_ORDER.index(name) if name in MODULE_ORDER else -1
    items.sort(key=rank)
