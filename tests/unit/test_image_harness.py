"""The image harness's own logic: stopping an overrunning build so that its trap still runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "image"))

import qemu_card  # noqa: E402


def test_an_overrunning_build_is_stopped_with_its_trap_run_and_its_children_gone(tmp_path):
    mark, child = tmp_path / "trap-ran", tmp_path / "child.pid"
    script = f"trap 'touch {mark}' EXIT; trap 'exit 130' TERM; sleep 600 & echo $! > {child}; wait"
    build = subprocess.Popen(["bash", "-c", script], start_new_session=True, stdout=subprocess.PIPE, text=True)
    while not child.exists() or not child.read_text().strip():
        time.sleep(0.01)
    qemu_card.stop_group(build, grace_s=10)
    assert build.returncode == 130 and mark.exists()
    assert gone(int(child.read_text()))  # the group's sleep got the SIGTERM too


def gone(pid: int, within_s: float = 5.0) -> bool:
    """Whether `pid` has exited (or is a zombie waiting for init) within `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_arm64_builds_get_longer_than_amd64():
    assert qemu_card.BUILD_TIMEOUT_S["arm64"] > qemu_card.BUILD_TIMEOUT_S["amd64"] >= 3600


def test_build_image_stops_a_build_that_overruns_and_says_so(tmp_path, monkeypatch):
    mark = tmp_path / "trap-ran"
    fake = tmp_path / "build.sh"
    fake.write_text(f"#!/bin/bash\ntrap 'touch {mark}' EXIT\ntrap 'exit 130' TERM\nsleep 600 & wait\n")
    fake.chmod(0o755)
    monkeypatch.setattr(qemu_card, "BUILD", fake)
    with pytest.raises(qemu_card.CardError, match="ran over 1 s; stopped"):
        qemu_card.build_image("arm64", timeout=1)
    assert mark.exists()  # its trap ran: the mounts of a real build would be undone
