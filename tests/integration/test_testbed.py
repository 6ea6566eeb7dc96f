"""The test bed cleans up after itself, including after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import TESTBED, Bed, require_root


def leftovers(bed: Bed, hosts: dict) -> list[str]:
    """Everything of `hosts` that still exists on this machine."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    mounts = Path("/proc/self/mounts").read_text()
    for name, host in hosts.items():
        if host["netns"] in netns:
            found.append(f"{name}: netns {host['netns']}")
        if f" {host['veth']}@" in links or f" {host['veth']}:" in links:
            found.append(f"{name}: veth {host['veth']}")
        if Path(f"/proc/{host['pid']}").exists():
            found.append(f"{name}: process {host['pid']}")
    found += [f"mount {line.split()[1]}" for line in mounts.splitlines() if f"datayoti-testbed/{bed.name}/" in line]
    for line in mounts.splitlines():
        kind, where = line.split()[2], line.split()[1]
        cgroup = Path(where) / "datayoti-testbed" / bed.name
        if kind in ("cgroup", "cgroup2") and cgroup.exists():
            found.append(f"cgroup {cgroup}")
    for state_dir in (Path("/run/datayoti-testbed") / bed.name, Path("/var/tmp/datayoti-testbed") / bed.name):
        if state_dir.exists():
            found.append(f"directory {state_dir}")
    return found


def wait_gone(pid: int) -> None:
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)


def test_down_leaves_nothing_behind():
    require_root()
    bed = Bed("downcheck")
    bed.up(2, "--sensors", "0")
    hosts = bed.status()["hosts"]
    assert len(leftovers(bed, hosts)) >= 2 * 3, "the check must see what `up` made"
    assert bed.sh("pi2", "systemctl is-system-running").stdout.strip() in ("running", "degraded")
    bed.down()
    assert leftovers(bed, hosts) == []


def test_up_after_a_crash_still_works():
    require_root()
    bed = Bed("crashcheck")
    bed.up(1, "--sensors", "0")
    crashed = bed.status()["hosts"]
    os.kill(crashed["pi1"]["pid"], signal.SIGKILL)  # the container dies without `down`
    wait_gone(crashed["pi1"]["pid"])
    try:
        bed.up(1, "--sensors", "0")  # clears the leftovers itself
        assert bed.sh("pi1", "hostname").stdout.strip() == "pi1"
        second = bed.status()["hosts"]
    finally:
        bed.down()
    assert leftovers(bed, crashed) == []
    assert leftovers(bed, second) == []


def test_bad_arguments_get_a_clear_error():
    def testbed(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(TESTBED), "--bed", "argcheck", *args], capture_output=True, text=True)

    result = testbed("up", "0")
    assert result.returncode == 2 and "N must be between 1 and 32" in result.stderr
    result = testbed("exec", "pi9", "true")
    assert result.returncode == 2 and "no host 'pi9'" in result.stderr
    result = testbed("up", "1", "--memory", "12")
    assert result.returncode == 2 and "--memory" in result.stderr
