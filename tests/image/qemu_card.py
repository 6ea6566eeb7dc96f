#!/usr/bin/env python3
"""Boot the test image (tests/image/build.sh) under qemu, the way a user boots a flashed card.

A `Card` is a sparse copy of the image file with its own NoCloud seed (user-data, meta-data, network-config)
written into the FAT partition with mtools, as Raspberry Pi Imager writes it onto a real card. A `VM` boots a
card with qemu (TCG: KVM does not work on the build machines), a direct kernel boot (a real Pi boots its
firmware from the FAT partition instead), its serial console in a log file, and user-mode networking that
reaches nothing but what it forwards from 127.0.0.1: SSH and MQTT.

Every VM is started by us and killed by its PID only; `VM.power_cut()` is a SIGKILL of that PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build.sh"
SSH_OPTS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6"]
POLL_S = 0.2
# A whole build with no cache. arm64 runs under qemu-user: its base alone takes about 20 min and the stage
# about 45 min, so it gets longer than amd64 (a few minutes in all).
BUILD_TIMEOUT_S = {"amd64": 3600, "arm64": 3 * 3600}
STOP_TIMEOUT_S = 60
SSH_FAILURES_GIVE_UP = 5
# What must be active on a booted card. datayoti-migrate is not among them: on a card, `datayoti firstboot`
# applies the migrations, and the migrate unit stays inactive until site.yml or an upgrade runs it.
DATA_SERVICES = ["ssh", "mosquitto", "postgresql@17-main", "datayoti-ingestor"]


class CardError(Exception):
    """A VM that did not do what was waited for, with the end of its serial log."""


def sh(cmd: list[str], timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True, capture_output=True, timeout=timeout, **kw)


# ---------------------------------------------------------------- the image

@dataclass
class Image:
    directory: Path
    info: dict

    @property
    def file(self) -> Path:
        return self.directory / "image.img"

    @property
    def arch(self) -> str:
        return self.info["arch"]

    @property
    def build_key(self) -> Path:
        """The private half of the key the image's first user was built with (PUBKEY_SSH_FIRST_USER)."""
        return self.directory.parent / "build-key"


def build_image(arch: str = "amd64", env: dict | None = None, timeout: float | None = None) -> Image:
    """Build the image (or take it from the cache); the build's log goes to our stderr. A build that overruns
    its time is stopped with SIGTERM, so that build.sh's trap undoes its mounts, then raises."""
    timeout = timeout or BUILD_TIMEOUT_S[arch]
    build = subprocess.Popen([str(BUILD), "--arch", arch], stdout=subprocess.PIPE, stderr=None, text=True,
                             env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        stdout, _ = build.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(build)
        raise CardError(f"build.sh --arch {arch} ran over {timeout:.0f} s; stopped") from None
    except BaseException:  # Ctrl-C: the build runs in a session of its own, so it did not get the signal
        stop_group(build)
        raise
    if build.returncode != 0:
        raise CardError(f"build.sh failed with exit code {build.returncode}")
    directory = Path(stdout.strip().splitlines()[-1])
    return Image(directory, json.loads((directory / "build.json").read_text()))


def stop_group(process: subprocess.Popen, grace_s: float = 120) -> None:
    """SIGTERM to the process's whole group (its children too, so that a shell's trap runs at once), then
    SIGKILL after `grace_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


# ---------------------------------------------------------------- a card

def user_data(user: str, pubkey: str, hostname: str) -> str:
    """user-data as Raspberry Pi Imager writes it for a user with an SSH key and no password."""
    return "\n".join([
        "#cloud-config",
        f"hostname: {hostname}",
        "manage_etc_hosts: true",
        "users:",
        f"- name: {user}",
        "  groups: users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo",
        "  shell: /bin/bash",
        "  lock_passwd: true",
        "  ssh_authorized_keys:",
        f"    - {pubkey}",
        "  sudo: ALL=(ALL) NOPASSWD:ALL",
        "ssh_pwauth: false",
        "timezone: Etc/UTC",
        "",
    ])


# A Pi's wired interface is eth0 (the VM's is too: net.ifnames=0). cloud-init's networkd renderer writes a
# `match: name:` glob as the entry's id, so the entry is named after the interface. Not `optional: true`: with
# networkd (Raspberry Pi OS uses NetworkManager) no required link makes systemd-networkd-wait-online wait 2 min.
NETWORK_CONFIG = """network:
  version: 2
  ethernets:
    eth0:
      dhcp4: true
"""


@dataclass
class Card:
    """A sparse copy of the image with its own NoCloud seed on the FAT partition."""
    image: Image
    disk: Path
    user: str
    key: Path  # private key; key.pub is in the seed
    hostname: str

    @classmethod
    def flash(cls, image: Image, workdir: Path, name: str, user: str, hostname: str) -> Card:
        workdir.mkdir(parents=True, exist_ok=True)
        disk = workdir / f"{name}.img"
        key = workdir / f"{name}-key"
        sh(["cp", "--sparse=always", str(image.file), str(disk)])
        if not key.exists():
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{user}@{name}", "-f", str(key)])
        card = cls(image, disk, user, key, hostname)
        pubkey = key.with_suffix(".pub").read_text().strip()
        card.write_boot_file("user-data", user_data(user, pubkey, hostname))
        card.write_boot_file("network-config", NETWORK_CONFIG)
        return card

    @property
    def _fat(self) -> str:
        return f"{self.disk}@@{self.image.info['boot_offset']}"

    def write_boot_file(self, name: str, text: str) -> None:
        src = self.disk.with_name(f"{self.disk.stem}.{name}")
        src.write_text(text)
        try:
            sh(["mcopy", "-o", "-i", self._fat, str(src), f"::/{name}"])
        finally:
            src.unlink()

    def read_boot_file(self, name: str) -> str:
        return sh(["mtype", "-i", self._fat, f"::/{name}"]).stdout

    def boot_files(self) -> list[str]:
        return sh(["mdir", "-b", "-i", self._fat, "::/"]).stdout.split()

    def remove(self) -> None:
        for path in (self.disk, self.key, self.key.with_suffix(".pub")):
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------- a running card

def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: each socket stays bound until all are chosen, so none is handed out twice."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def qemu_command(card: Card, serial_log: Path, ssh_port: int, mqtt_port: int, memory_mb: int = 1024,
                 cache: str = "unsafe") -> list[str]:
    """`cache`: qemu's disk cache mode. "unsafe" (the default) is fastest; "none" opens the card without the
    host's page cache, so that what the guest has not written yet is lost as on a real card."""
    image = card.image
    net = (f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,"
           f"hostfwd=tcp:127.0.0.1:{mqtt_port}-:1883")
    if image.arch == "arm64":
        cmd = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72"]
        console = "ttyAMA0"
    else:
        cmd = ["qemu-system-x86_64"]
        console = "ttyS0"
    return cmd + [
        "-accel", "tcg,thread=multi", "-smp", "2", "-m", str(memory_mb), "-nodefaults",
        "-display", "none", "-monitor", "none", "-serial", f"file:{serial_log}",
        "-drive", f"file={card.disk},if=none,id=disk0,format=raw,cache={cache}",
        "-device", "virtio-blk-pci,drive=disk0",
        "-netdev", net, "-device", "virtio-net-pci,netdev=n0",
        "-object", "rng-random,filename=/dev/urandom,id=rng0", "-device", "virtio-rng-pci,rng=rng0",
        "-kernel", str(image.directory / "vmlinuz"), "-initrd", str(image.directory / "initrd.img"),
        "-append", f"root=LABEL=rootfs rootfstype=ext4 fsck.repair=yes rootwait net.ifnames=0 console={console}",
    ]


@dataclass
class VM:
    card: Card
    serial_log: Path
    proc: subprocess.Popen
    ssh_port: int
    mqtt_port: int
    started: float  # time.monotonic() at power-on
    marks: dict[str, float] = field(default_factory=dict)  # seconds after power-on

    @classmethod
    def boot(cls, card: Card, serial_log: Path, memory_mb: int = 1024, cache: str = "unsafe") -> VM:
        ssh_port, mqtt_port = free_ports(2)
        serial_log.write_text("")
        cmd = qemu_command(card, serial_log, ssh_port, mqtt_port, memory_mb, cache)
        started = time.monotonic()
        with open(serial_log.with_suffix(".qemu.log"), "w") as qemu_err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=qemu_err,
                                    start_new_session=True)
        return cls(card, serial_log, proc, ssh_port, mqtt_port, started)

    # ------------------------------------------------------------ state

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def serial(self) -> str:
        return self.serial_log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        qemu_err = self.serial_log.with_suffix(".qemu.log")
        err = qemu_err.read_text(errors="replace")[-2000:] if qemu_err.exists() else ""
        return "\n".join(self.serial().splitlines()[-lines:]) + (f"\nqemu: {err}" if err.strip() else "")

    def _fail(self, what: str) -> CardError:
        return CardError(f"{self.card.disk.name}: {what} ({self.elapsed():.0f} s after power-on)\n"
                         f"--- serial console:\n{self.tail()}")

    # ------------------------------------------------------------ waiting

    def wait_for_serial(self, pattern: str, timeout: float, start: int = 0) -> re.Match:
        """The first line matching `pattern` printed on the serial console after offset `start`."""
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        with open(self.serial_log, "rb") as fh:
            fh.seek(start)
            seen = b""
            while True:
                chunk = fh.read()
                if chunk:
                    seen += chunk
                    # Only whole lines: a match must not stop at half a line.
                    text = seen[: seen.rfind(b"\n") + 1].decode(errors="replace")
                    match = regex.search(text)
                    if match:
                        return match
                if not self.alive:
                    raise self._fail(f"qemu exited while waiting for {pattern!r}")
                if time.monotonic() > deadline:
                    raise self._fail(f"no serial line matching {pattern!r} within {timeout:.0f} s")
                time.sleep(0.02)

    def ssh_cmd(self, command: str, user: str | None = None, key: Path | None = None) -> list[str]:
        return ["ssh", *SSH_OPTS, "-i", str(key or self.card.key), "-p", str(self.ssh_port),
                f"{user or self.card.user}@127.0.0.1", command]

    def ssh(self, command: str, timeout: float = 120, check: bool = True, user: str | None = None,
            key: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(self.ssh_cmd(command, user, key), text=True, capture_output=True,
                                timeout=timeout, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise CardError(f"ssh {command!r} failed ({result.returncode}): {result.stdout[-2000:]}"
                            f"{result.stderr[-2000:]}")
        return result

    def sudo(self, command: str, timeout: float = 120, check: bool = True, stdin: str | None = None
             ) -> subprocess.CompletedProcess:
        return self.ssh("sudo -n sh -c " + shlex.quote(command), timeout=timeout, check=check, stdin=stdin)

    def wait_for_ssh(self, timeout: float = 300) -> float:
        """Seconds after power-on when SSH with the card's key first worked."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                raise self._fail("qemu exited before SSH answered")
            with contextlib.suppress(subprocess.TimeoutExpired):
                if self.ssh("true", timeout=15, check=False).returncode == 0:
                    self.marks["ssh"] = self.elapsed()
                    return self.marks["ssh"]
            # systemd gives up on a unit that fails 5 times in a row: no point in waiting any longer.
            if len(re.findall(r"Failed to start .{0,20}ssh\.service", self.serial())) >= SSH_FAILURES_GIVE_UP:
                raise self._fail("ssh.service keeps failing")
            if time.monotonic() > deadline:
                raise self._fail(f"SSH did not answer within {timeout:.0f} s")
            time.sleep(1)

    def wait_until_ready(self, timeout: float = 300) -> str:
        """`systemctl is-system-running --wait`, bounded; records the seconds from power-on to its answer."""
        self.wait_for_ssh(timeout)
        remaining = max(10.0, timeout - self.elapsed())
        result = self.ssh(f"timeout {remaining:.0f} systemctl is-system-running --wait", timeout=remaining + 15,
                          check=False)
        self.marks["ready"] = self.elapsed()
        return result.stdout.strip()

    def boot_analysis(self, timeout: float = 300) -> dict:
        """systemd's own account of the boot: totals, the slowest units, the chain to the last data service.
        Under arm64 TCG, blame and critical-chain take about a minute together; a slower answer is reported
        as missing, not as a failed boot."""
        try:
            out = self.ssh("systemd-analyze; echo @@; systemd-analyze blame --no-pager | head -n 15; echo @@; "
                           "systemd-analyze critical-chain --no-pager datayoti-ingestor.service; echo @@; "
                           "systemctl show -P ActiveEnterTimestampMonotonic -P ExecMainExitTimestampMonotonic "
                           "datayoti-firstboot.service; systemctl show -P ActiveEnterTimestampMonotonic "
                           "datayoti-ingestor.service", check=False, timeout=timeout).stdout
        except subprocess.TimeoutExpired:
            out = f"systemd-analyze gave no answer within {timeout:.0f} s\n"
        parts = (out.split("@@\n") + ["", "", "", ""])[:4]
        return {"summary": parts[0].strip(), "blame": parts[1].rstrip(), "critical_chain": parts[2].rstrip(),
                "monotonic_us": parts[3].split()}

    # ------------------------------------------------------------ power

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL of the qemu we started."""
        if self.alive:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def shutdown(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """A clean poweroff from inside; the plug is pulled if it takes longer than `timeout`."""
        if self.alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.ssh("sudo -n systemctl poweroff", timeout=20, check=False)
            try:
                self.proc.wait(timeout=timeout)
                return True
            except subprocess.TimeoutExpired:
                pass
        self.power_cut()
        return False

    def kill(self) -> None:
        """For cleanup: never raises."""
        with contextlib.suppress(Exception):
            self.power_cut()


# ---------------------------------------------------------------- command line

def boot_once(arch: str, workdir: Path, timeout: float) -> dict:
    """Build (or reuse) the image, flash one card, boot it to every service active, report, power off."""
    started = time.monotonic()
    image = build_image(arch)
    built_s = time.monotonic() - started
    card = Card.flash(image, workdir, f"smoke-{arch}", user="pi", hostname=f"datayoti-{arch}")
    vm = VM.boot(card, workdir / f"smoke-{arch}.serial.log")
    try:
        state = vm.wait_until_ready(timeout)
        active = vm.ssh("systemctl is-active " + " ".join([*DATA_SERVICES, "datayoti-firstboot"]),
                        check=False).stdout.split()
        analysis = vm.boot_analysis()
        report = {"arch": arch, "image": str(image.file), "image_bytes": image.info["image_size"],
                  "image_allocated_bytes": image.info["image_allocated"], "build_s": round(built_s, 1),
                  "build_timings": image.info["timings"], "state": state, "active": active,
                  "ssh_s": round(vm.marks["ssh"], 1), "ready_s": round(vm.marks["ready"], 1), **analysis}
        report["clean_shutdown"] = vm.shutdown()
        return report
    except CardError as exc:
        return {"arch": arch, "error": str(exc)}
    finally:
        vm.kill()
        card.remove()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import shutil
    import tempfile

    parser = argparse.ArgumentParser(description="Build the test image and boot one card of it under qemu.")
    parser.add_argument("--arch", choices=["amd64", "arm64"], default="amd64")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to every service active")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="datayoti-image-smoke-", dir="/var/tmp"))
    try:
        report = boot_once(args.arch, workdir, args.timeout)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if "error" in report:
        print(report["error"])
        return 1
    print(f"{args.arch}: image {report['image_bytes'] / 2**20:.0f} MiB "
          f"({report['image_allocated_bytes'] / 2**20:.0f} MiB allocated), built in {report['build_s']} s")
    print(f"{args.arch}: power-on to SSH {report['ssh_s']} s, to every service active {report['ready_s']} s "
          f"(system {report['state']}; {' '.join(report['active'])})")
    print(report["summary"])
    print(report["blame"])
    print(report["critical_chain"])
    print(json.dumps({k: v for k, v in report.items() if k not in ("blame", "critical_chain")}))
    ok = report["state"] == "running" and set(report["active"]) == {"active"}
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
