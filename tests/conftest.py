"""Shared helpers: the test bed, Ansible runs, and a bounded MQTT client."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTBED = REPO / "tests" / "testbed" / "testbed"
ANSIBLE_DIR = REPO / "ansible"
VENV_BIN = Path(os.environ.get("DATAYOTI_VENV", REPO / ".venv")) / "bin"
RECAP_LINE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
FAILED_TASK_LINE = re.compile(r"^(?:fatal|failed): \[([^\]]+)\].*$", re.M)
UNIT_NAME = re.compile(r"\b([A-Za-z0-9@_.:\\-]+\.(?:service|socket|timer|mount|target|path|scope))\b")
# A failed run explains itself, boundedly: per host at most this many units, lines and seconds.
REPORT_UNITS = 6
REPORT_LINES = 50
REPORT_TIMEOUT_S = 60


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
            + "\nEND:\n" + result.stdout[-1500:] + result.stderr[-1000:]
            + getattr(result, "unit_report", ""))


def units_named_in_failures(output: str) -> dict[str, list[str]]:
    """{host: [units]} named in a run's failed tasks (e.g. "Unable to restart service X: Job for X failed")."""
    named: dict[str, list[str]] = {}
    for match in FAILED_TASK_LINE.finditer(output):
        units = named.setdefault(match[1], [])
        for unit in UNIT_NAME.findall(match[0]):
            if unit not in units:
                units.append(unit)
    return named


# Units that failed, or that a failed task names (a unit with Restart= may be running again by now),
# each with its state and the end of its journal, which holds systemd's own words about it.
UNIT_REPORT_SCRIPT = """
n=0; seen=" "
for u in $(systemctl --failed --no-legend --plain | awk '{{print $1}}') {named}; do
  case "$seen" in *" $u "*) continue;; esac
  seen="$seen$u "; n=$((n + 1)); [ $n -le {units} ] || break
  echo "--- $u: $(systemctl show -p ActiveState -p SubState -p Result -p NRestarts "$u" | tr '\\n' ' ')"
  timeout 20 journalctl -u "$u" -n {lines} --no-pager -o short-precise
done
[ $n -gt 0 ] || echo "(no failed unit)"
"""


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
        """Run a playbook; a failed run carries `unit_report` (shown by play_summary)."""
        cmd = [tool("ansible-playbook"), "-i", self.inventory, playbook, *extra]
        env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
        result = subprocess.run(cmd, cwd=ANSIBLE_DIR, text=True, capture_output=True, timeout=timeout, env=env)
        if result.returncode != 0:
            result.unit_report = self.unit_report(units_named_in_failures(result.stdout))
        return result

    def unit_report(self, named: dict[str, list[str]] | None = None) -> str:
        """Failed units of every host, with their journals; never raises, bounded in time."""
        named = named or {}
        try:
            hosts = list(self.status()["hosts"])
        except Exception as exc:  # a report must not hide the failure it explains
            return f"\nUNITS: cannot read the bed's hosts: {exc!r}\n"
        report = ["\nUNITS:"]
        for host in hosts:
            script = UNIT_REPORT_SCRIPT.format(named=" ".join(shlex.quote(u) for u in named.get(host, [])),
                                               units=REPORT_UNITS, lines=REPORT_LINES)
            try:
                out = self.sh(host, script, check=False, timeout=REPORT_TIMEOUT_S)
                text = (out.stdout + out.stderr).strip()
            except subprocess.TimeoutExpired:
                text = f"(no answer within {REPORT_TIMEOUT_S} s)"
            report.append(f"== {host}\n{text[-8000:]}")
        return "\n".join(report) + "\n"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the test bed makes namespaces, mounts and containers")


@pytest.fixture(scope="session")
def fleet():
    """Two simulated Pis provisioned by site.yml, shared by the integration tests."""
    require_root()
    bed = Bed(os.environ.get("DATAYOTI_FLEET_BED", "site"))
    bed.up(2, "--sensors", "20")
    try:
        first = bed.playbook()
        bed.first_run = first
        yield bed
    finally:
        bed.down()


MODULE_ORDER = ["test_lint", "test_sensor_fleet", "test_site", "test_ingestor", "test_datayoti", "test_devices",
                "test_backup", "test_grafana_queries", "test_bench", "test_image", "test_testbed", "test_molecule"]


def pytest_collection_modifyitems(items):
    """Idempotence and --check run on a fleet nothing has disturbed yet."""
    def rank(item):
        name = item.module.__name__.rsplit(".", 1)[-1]
        return MODULE_ORDER.index(name) if name in MODULE_ORDER else -1
    items.sort(key=rank)
