#!/usr/bin/env python3
"""The benchmark's hands on the simulated Pi.

The controller (tests/bench/bench.py) copies this file to the Pi and runs it
there with the Pi's own python3 (Debian's paho-mqtt and psycopg2), as root:

  consume --kind plain|naive|ours   measure one consumer of a live stream
  fleet --kind idle|naive|ours      one phase of the reference fleet: the whole Pi's writes per writer
                                    and CPU per component (every thread, about once a second), and
                                    publish-to-visible latency
  naive-ingestor                    the original stack's way: a row per message, autocommit
  copy --count N                    limit B: COPY N stream-like rows straight into sensor_data
  dataset --days D                  50 sensors x D days at one reading a minute, by COPY
  queries                           time the dashboards' queries, raw and through the rollups
  isolation --size N                the product's Store against this Pi's database: a batch of N
                                    clean, then with one message the database refuses, per kind
  grafana [--runs N] [--setup]      run (and time) the Grafana queries read as JSON on stdin, as
                                    grafana_reader; with --setup (run as postgres) inside one
                                    transaction that first runs the given setup SQL, then rolls back

`consume` and `fleet` print READY once their consumer listens, then read one JSON
line on stdin: the last timestamp each device published. Every command ends by printing
one JSON object on its last line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

SECRETS = "/etc/datayoti/secrets"
SERVICE = "datayoti-ingestor.service"
DB = "datayoti_db"
POLL_EVERY_S = 0.02
SAMPLE_EVERY_S = 0.25
CLK_TCK = os.sysconf("SC_CLK_TCK")
DATA_TOPIC = "datayoti/sensor/+/data"
HEARTBEAT_TOPIC = "datayoti/sensor/+/heartbeat"
PLAIN_OUT = "/run/datayoti-bench/plain.out"


# ------------------------------------------------------------------ pure helpers

def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, q in [0, 100]."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(latencies_s: list[float]) -> dict:
    """p50 / p99 / max in milliseconds."""
    ms = [v * 1000 for v in latencies_s]
    return {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": max(ms) if ms else None,
            "samples": len(ms)}


def commit_times(rows: list[tuple[str, float]], timeline: list[tuple[float, dict[str, float]]]
                 ) -> list[tuple[float, float]]:
    """(publish time, first seen committed) for each row seen in `timeline`.

    `timeline` holds (poll time, {device: newest committed publish time}). A
    device's messages are stored in publish order, so a row is committed once its
    device's watermark reaches its publish time.
    """
    by_device: dict[str, list[float]] = {}
    for device, published in rows:
        by_device.setdefault(device, []).append(published)
    for stamps in by_device.values():
        stamps.sort()
    cursor = dict.fromkeys(by_device, 0)
    seen: list[tuple[float, float]] = []
    for polled_at, marks in timeline:
        for device, mark in marks.items():
            stamps = by_device.get(device, [])
            i = cursor.get(device, 0)
            while i < len(stamps) and stamps[i] <= mark:
                seen.append((stamps[i], polled_at))
                i += 1
            cursor[device] = i
    return seen


def rate(count: int, first: float | None, last: float | None) -> float | None:
    if not count or first is None or last is None or last <= first:
        return None
    return count / (last - first)


def parse_mosquitto_sub_line(line: str) -> tuple[str, float, float] | None:
    """'<receipt %U> <payload>' -> (device, published, received), None for a line that is not a reading."""
    received, _, payload = line.partition(" ")
    try:
        message = json.loads(payload)
        return message["device_id"], iso_seconds(message["timestamp"]), float(received)
    except (ValueError, KeyError, TypeError):
        return None


def iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def reading_row(device: str, site: str, at: datetime, minute_index: int, device_index: int) -> str:
    """One COPY text line of plausible indoor readings: a daily wave plus a little noise."""
    phase = (minute_index % 1440) / 1440 * 2 * math.pi
    wobble = ((minute_index * 7919 + device_index * 104729) % 1000) / 1000 - 0.5
    temperature = round(21 + 3 * math.sin(phase) + device_index % 5 * 0.4 + wobble, 1)
    humidity = round(50 - 8 * math.sin(phase) + device_index % 7 + wobble * 2, 1)
    stamp = at.isoformat()
    return f"{stamp}\t{device}\t{site}\t{temperature}\t{humidity}\t{stamp}\n"


def site_of(device_index: int, sites: int) -> str:
    return f"SITE_{device_index % sites + 1:03d}"


# ------------------------------------------------------------------ whole-Pi accounting: pure helpers
#
# Writes and CPU are read per THREAD (/proc/<pid>/task/<tid>/io and .../stat): unlike /proc/<pid>/io,
# a thread's counters never include the children its process reaped (sshd once "wrote" 650 MB when
# a child was reaped). Each thread is keyed by (tid, starttime), so a reused tid is a new thread, and
# counted once: last seen minus first seen, or minus 0 for a thread born after the first sample.

# The writers of the report, in its order; "rest" is every other unit of the Pi.
WRITERS = ("PostgreSQL WAL", "PostgreSQL data", "Mosquitto", "journald", "Grafana", "ingestor", "naive consumer",
           "rest")
UNIT_WRITERS = {"mosquitto.service": "Mosquitto", "systemd-journald.service": "journald",
                "grafana-server.service": "Grafana", "datayoti-ingestor.service": "ingestor"}
BENCH = ("bench", "bench poller")  # the benchmark's own: reported, never in the whole Pi
PG_BACKGROUND = ("checkpointer", "background writer", "walwriter", "autovacuum launcher", "autovacuum worker",
                 "logical replication launcher", "walsummarizer", "archiver", "io worker", "startup")
COUNTERS = ("write_bytes", "cancelled_write_bytes", "cpu_ticks")


def unit_of(cgroup_text: str) -> str:
    """The systemd unit of a process, from /proc/<pid>/cgroup ("0::" or "name=systemd" line), or "-"."""
    path = ""
    for line in cgroup_text.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, where = rest.partition(":")
        if controllers == "name=systemd" or (number == "0" and controllers == ""):
            path = where
            if controllers == "name=systemd":
                break
    units = [part for part in path.split("/") if part.endswith((".service", ".scope"))]
    return units[-1] if units else "-"


def pg_backend(cmdline: str) -> str:
    """What a PostgreSQL process is, from its process title ("postgres: 17/main: checkpointer ").

    A client backend is "client <user>"; the postmaster keeps its real command line.
    """
    title = cmdline.replace("\0", " ").strip()
    if not title.startswith("postgres: "):
        return "postmaster"
    title = title[len("postgres: "):]
    head, sep, tail = title.partition(": ")
    if sep and "/" in head:  # the cluster_name prefix Debian sets ("17/main")
        title = tail
    for name in PG_BACKGROUND:
        if title.startswith(name):
            return name
    if title.startswith(("TimescaleDB", "bgworker")):
        return "timescaledb worker"
    user = title.split(" ", 1)[0]
    return f"client {user}" if user else "other"


def writer_of(owner: dict, naive_pid: int | None = None, poller_pid: int | None = None) -> str:
    """Whose a process is: "PostgreSQL", a WRITERS name, "rest", or one of BENCH.

    `owner`: {"pid", "comm", "unit", "bench"} (bench: a descendant of the benchmark's agent).
    """
    pid = owner["pid"]
    if poller_pid and pid == poller_pid:
        return "bench poller"
    if naive_pid and pid == naive_pid:
        return "naive consumer"
    if owner.get("bench"):
        return "bench"
    if owner["comm"] == "postgres" or owner["unit"].startswith("postgresql"):
        return "PostgreSQL"
    return UNIT_WRITERS.get(owner["unit"], "rest")


class ThreadLedger:
    """Per-thread counters over a phase: each thread counted once, from its first sample (0 if born later)."""

    def __init__(self):
        self.base: dict = {}
        self.last: dict = {}
        self.owner: dict = {}
        self.samples = 0

    def add(self, snapshot: dict) -> None:
        """One sample: {(tid, starttime): (owner, (write_bytes, cancelled_write_bytes, cpu_ticks))}."""
        for key, (owner, counters) in snapshot.items():
            if key not in self.base:
                self.base[key] = counters if self.samples == 0 else (0,) * len(counters)
            self.last[key] = counters
            self.owner[key] = owner
        self.samples += 1

    def deltas(self) -> dict:
        """{key: (owner, (written, cancelled, cpu_ticks))} over the phase; a counter never goes back."""
        return {key: (self.owner[key], tuple(max(0, now - then) for now, then in zip(last, self.base[key],
                                                                                   strict=True)))
                for key, last in self.last.items()}


def written(counters: tuple) -> int:
    """Bytes a thread sent to the block layer: write_bytes less what it cancelled (truncated before writeback)."""
    return counters[0] - counters[1]


def group_totals(deltas: dict, group) -> dict:
    """{group(owner): {"bytes", "cpu_ticks"}}; bytes summed per group, never below 0."""
    totals: dict = {}
    for owner, counters in deltas.values():
        entry = totals.setdefault(group(owner), {"bytes": 0, "cpu_ticks": 0})
        entry["bytes"] += written(counters)
        entry["cpu_ticks"] += counters[2]
    for entry in totals.values():
        entry["bytes"] = max(0, entry["bytes"])
    return totals


def split_postgres(pg_bytes: int, pg_io_data_bytes: int) -> tuple[int, int]:
    """(WAL, data) of PostgreSQL's block-layer bytes: data from pg_stat_io (relations' writes and extends),
    at most the total; WAL is the rest (WAL, plus the little PostgreSQL writes besides relations)."""
    data = max(0, min(pg_bytes, pg_io_data_bytes))
    return pg_bytes - data, data


def per_day(nbytes: float, seconds: float) -> float | None:
    """Bytes a day at the phase's rate."""
    return nbytes / seconds * 86400 if seconds > 0 else None


def mb_per_day(nbytes: float, seconds: float) -> float | None:
    """MB (10^6 bytes) a day at the phase's rate."""
    daily = per_day(nbytes, seconds)
    return daily / 1e6 if daily is not None else None


NOT_DISKS = ("loop", "ram", "zram", "sr", "dm-", "md", "nbd")  # /sys/block entries that are not a disk of their own


def whole_disks(names: list[str]) -> set[str]:
    """The block devices (/sys/block's names) that are disks: loop, RAM, optical, device-mapper and RAID devices
    left out, so that no byte is counted twice."""
    return {n for n in names if not n.startswith(NOT_DISKS)}


def disk_written_bytes(diskstats: str, disks: set[str]) -> int:
    """Bytes written to `disks` since boot, by everything on the machine (/proc/diskstats' sectors written, 512 B
    each whatever the disk's sector size)."""
    total = 0
    for line in diskstats.splitlines():
        fields = line.split()
        if len(fields) >= 10 and fields[2] in disks:
            total += int(fields[9]) * 512
    return total


def writes_breakdown(deltas: dict, seconds: float, pg_io_data_bytes: int, naive_pid: int | None = None,
                     poller_pid: int | None = None, top: int = 5) -> dict:
    """Bytes and MB/day per writer (WRITERS), for the whole Pi, the rest's top units, PostgreSQL's backends
    and the benchmark's own processes (left out of the whole Pi)."""
    def writer(owner):
        return writer_of(owner, naive_pid, poller_pid)

    by_writer = group_totals(deltas, writer)
    pg_total = by_writer.get("PostgreSQL", {}).get("bytes", 0)
    wal, data = split_postgres(pg_total, pg_io_data_bytes)
    nbytes = {name: by_writer.get(name, {}).get("bytes", 0) for name in WRITERS}
    nbytes.update({"PostgreSQL WAL": wal, "PostgreSQL data": data})
    whole = sum(nbytes.values())
    rest = {k: v for k, v in deltas.items() if writer(v[0]) == "rest"}
    rest_units = sorted(group_totals(rest, lambda o: o["unit"]).items(), key=lambda kv: -kv[1]["bytes"])
    pg = {k: v for k, v in deltas.items() if writer(v[0]) == "PostgreSQL"}
    backends = sorted(group_totals(pg, lambda o: pg_backend(o.get("cmdline", ""))).items(),
                      key=lambda kv: -kv[1]["bytes"])
    return {"bytes": nbytes, "mb_per_day": {k: mb_per_day(v, seconds) for k, v in nbytes.items()},
            "whole_pi_bytes": whole, "whole_pi_mb_per_day": mb_per_day(whole, seconds),
            "pg_block_bytes": pg_total, "pg_io_data_bytes": pg_io_data_bytes,
            "rest_top": [{"unit": u, "bytes": t["bytes"], "mb_per_day": mb_per_day(t["bytes"], seconds)}
                         for u, t in rest_units[:top]],
            "pg_backends": [{"backend": b, "bytes": t["bytes"], "mb_per_day": mb_per_day(t["bytes"], seconds)}
                            for b, t in backends if t["bytes"]],
            "excluded_bytes": {name: by_writer.get(name, {}).get("bytes", 0) for name in BENCH}}


def cpu_breakdown(deltas: dict, naive_pid: int | None = None, poller_pid: int | None = None) -> dict:
    """CPU seconds per component: the consumer (ingestor or naive), PostgreSQL (the poller's backend left
    out), Mosquitto, the bench poller's backend, and the rest of the Pi."""
    by_writer = group_totals(deltas, lambda o: writer_of(o, naive_pid, poller_pid))

    def seconds(*names):
        return sum(by_writer.get(n, {}).get("cpu_ticks", 0) for n in names) / CLK_TCK

    return {"ingestor": seconds("ingestor"), "naive consumer": seconds("naive consumer"),
            "PostgreSQL": seconds("PostgreSQL"), "Mosquitto": seconds("Mosquitto"),
            "bench poller": seconds("bench poller"),
            "rest": seconds("journald", "Grafana", "rest")}


# ------------------------------------------------------------------ the Pi

def secret(name: str) -> str:
    with open(f"{SECRETS}/{name}.password") as handle:
        return handle.read().strip()


def connect(role: str):
    """A connection as `role` over TCP with its password, or as postgres over the socket."""
    import psycopg2

    if role == "postgres":
        conn = psycopg2.connect(dbname=DB)
    else:
        conn = psycopg2.connect(host="127.0.0.1", dbname=DB, user=role, password=secret(f"postgresql-{role}"),
                                application_name=f"datayoti-bench-{role}")
    return conn


def as_postgres(command: list[str]) -> list[str]:
    """`command` run as the postgres user, who gets in by peer authentication. setpriv, not runuser:
    runuser opens a PAM session, whose three journal lines per call would count as journald's writes
    inside a fleet phase."""
    import pwd

    if pwd.getpwuid(os.geteuid()).pw_name == "postgres":
        return command
    return ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups", *command]


def as_postgres_sql(query: str) -> str:
    """Run SQL as the postgres superuser, return unaligned output."""
    result = subprocess.run(as_postgres(["psql", "-d", DB, "-qAtX", "-v", "ON_ERROR_STOP=1"]),
                            input=query, text=True, capture_output=True, cwd="/", check=False)
    if result.returncode != 0:
        raise RuntimeError(f"psql failed: {result.stderr.strip()}")
    return result.stdout.strip()


PG_WRITES = """
SELECT (SELECT wal_bytes FROM pg_stat_wal),
       (SELECT wal_write FROM pg_stat_wal),
       (SELECT wal_records FROM pg_stat_wal),
       (SELECT wal_fpi FROM pg_stat_wal),
       (SELECT coalesce(sum((coalesce(writes, 0) + coalesce(extends, 0)) * op_bytes), 0)
          FROM pg_stat_io WHERE object = 'relation')
"""


def pg_write_counters(settle_s: float) -> dict:
    """WAL and data bytes written so far, after a checkpoint has written the dirty pages out."""
    as_postgres_sql("CHECKPOINT;")
    time.sleep(settle_s)  # backends flush their statistics when idle, within 10 s
    values = (int(float(v)) for v in as_postgres_sql(PG_WRITES).split("|"))
    return dict(zip(("wal_bytes", "wal_writes", "wal_records", "wal_fpi", "data_bytes"), values, strict=True))


def wal_flush_counts() -> dict:
    """How many times PostgreSQL has written and synced WAL (pg_stat_wal): what the card sees of its commits."""
    writes, syncs = (int(v) for v in as_postgres_sql("SELECT wal_write, wal_sync FROM pg_stat_wal").split("|"))
    return {"wal_writes": writes, "wal_syncs": syncs}


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def stack_pids(consumer_pid: int | None) -> list[int]:
    """PostgreSQL, Mosquitto and the consumer: the whole stack but Grafana."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as handle:
                comm = handle.read().strip()
        except OSError:
            continue
        if comm in ("postgres", "mosquitto") or int(entry) == consumer_pid:
            pids.append(int(entry))
    return pids


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler(threading.Thread):
    """Samples the consumer's RSS and the stack's PSS until stopped."""

    def __init__(self, pid: int | None):
        super().__init__(daemon=True)
        self.pid = pid
        self.rss_kb: list[int] = []
        self.stack_kb: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_EVERY_S):
            if self.pid:
                rss = proc_status_kb(self.pid, "VmRSS")
                if rss:
                    self.rss_kb.append(rss)
            self.stack_kb.append(sum(pss_kb(p) for p in stack_pids(self.pid)))


def systemctl(*args: str) -> str:
    return subprocess.run(["systemctl", *args], text=True, capture_output=True, check=False).stdout.strip()


def wait_child(pid: int, grace_s: float):
    """wait4 the child, interrupting it once it has had `grace_s` to finish."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return done, status, usage
        time.sleep(0.1)
    os.kill(pid, signal.SIGINT)
    return os.wait4(pid, 0)


def ingestor_pid() -> int:
    return int(systemctl("show", "-P", "MainPID", SERVICE) or 0)


def wait_ingestor_idle(quiet_s: float = 1.5, limit_s: float = 600) -> None:
    """Start the ingestor and let it drain what its session queued while it was stopped."""
    systemctl("start", SERVICE)
    deadline = time.monotonic() + limit_s
    conn = connect("grafana_reader")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute("SELECT extract(epoch FROM now() - max(last_data_at)) FROM devices")
                idle = cur.fetchone()[0]
                if systemctl("is-active", SERVICE) == "active" and (idle is None or idle > quiet_s):
                    return
                time.sleep(0.25)
    finally:
        conn.close()
    raise RuntimeError("the ingestor did not drain its queue")


# ------------------------------------------------------------------ whole-Pi accounting: sampling /proc

THREAD_SAMPLE_EVERY_S = 1.0
FLEET_POLL_EVERY_S = 0.1  # the visibility poller at the reference fleet: small load, 0.1 s resolution


def read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return None


def io_counters(text: str) -> tuple[int, int]:
    """(write_bytes, cancelled_write_bytes) of a /proc/.../io file."""
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return int(fields.get("write_bytes", 0)), int(fields.get("cancelled_write_bytes", 0))


def stat_fields(text: str) -> list[str]:
    """/proc/.../stat after the command name: [state, ppid, ...]; field n of proc(5) is [n - 3]."""
    return text.rsplit(")", 1)[1].split()


def thread_snapshot(exclude: int, comms: set[str] | None = None) -> dict:
    """Every thread of every process in this pid namespace but `exclude` (the agent):
    {(tid, starttime): (owner, (write_bytes, cancelled_write_bytes, utime + stime ticks))}.

    `owner` is {"pid", "comm", "unit", "cmdline", "bench"}; bench: a descendant of `exclude`.
    `comms`: only processes of these names (cheaper, when only PostgreSQL and Mosquitto matter).
    """
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == exclude:
            continue
        comm = (read_text(f"/proc/{entry}/comm") or "").strip()
        if comms is not None and comm not in comms:
            continue
        stat = read_text(f"/proc/{entry}/stat")
        if stat is None:
            continue
        procs[int(entry)] = (comm, int(stat_fields(stat)[1]))
    parents = {pid: ppid for pid, (_, ppid) in procs.items()}
    snapshot = {}
    for pid, (comm, _) in procs.items():
        owner = {"pid": pid, "comm": comm, "unit": unit_of(read_text(f"/proc/{pid}/cgroup") or ""),
                 "cmdline": (read_text(f"/proc/{pid}/cmdline") or "") if comm == "postgres" else "",
                 "bench": descends_from(pid, exclude, parents)}
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            stat, io_text = read_text(f"/proc/{pid}/task/{tid}/stat"), read_text(f"/proc/{pid}/task/{tid}/io")
            if stat is None or io_text is None:
                continue  # gone between the listing and the read: its last sample stands
            fields = stat_fields(stat)
            snapshot[(int(tid), int(fields[19]))] = (owner, (*io_counters(io_text), int(fields[11]) + int(fields[12])))
    return snapshot


def descends_from(pid: int, ancestor: int, parents: dict[int, int]) -> bool:
    seen = set()
    while pid in parents and pid not in seen:
        seen.add(pid)
        pid = parents[pid]
        if pid == ancestor:
            return True
    return False


class ThreadSampler(threading.Thread):
    """Samples every thread of the Pi about once a second into a ThreadLedger, until stopped."""

    def __init__(self, comms: set[str] | None = None, every_s: float = THREAD_SAMPLE_EVERY_S):
        super().__init__(daemon=True)
        self.comms, self.every_s = comms, every_s
        self.ledger = ThreadLedger()
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.started_at = self.stopped_at = None
        self.sample()  # the first sample, before the phase starts

    def sample(self) -> None:
        snapshot = thread_snapshot(os.getpid(), self.comms)
        with self.lock:
            self.ledger.add(snapshot)
            now = time.monotonic()
            self.started_at = self.started_at or now
            self.stopped_at = now

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            self.sample()

    def stop(self) -> dict:
        """The last sample, and the deltas of the whole window."""
        self.done.set()
        self.join()
        self.sample()
        return self.ledger.deltas()

    @property
    def seconds(self) -> float:
        return self.stopped_at - self.started_at


# ------------------------------------------------------------------ consumers

def watermark_poller(devices: list[str], since: float):
    """A function returning {device: newest committed publish time since `since`}."""
    conn = connect("grafana_reader")
    conn.autocommit = True
    cur = conn.cursor()
    start = datetime.fromtimestamp(since, tz=UTC)
    # `since` as a literal, not a parameter: the planner then excludes every chunk
    # but the newest, however long the history.
    newest = cur.mogrify(
        "SELECT d, (SELECT extract(epoch FROM s.time) FROM sensor_data s "
        "           WHERE s.device_id = d AND s.time >= %s ORDER BY s.time DESC LIMIT 1) "
        "FROM unnest(%s::text[]) d", (start, devices))

    def poll() -> dict[str, float]:
        cur.execute(newest)
        return {d: float(t) for d, t in cur.fetchall() if t is not None}

    def rows() -> list[tuple[str, float]]:
        cur.execute("SELECT device_id, extract(epoch FROM time) FROM sensor_data "
                    "WHERE device_id = ANY(%s) AND time >= %s", (devices, start))
        return [(d, float(t)) for d, t in cur.fetchall()]

    return poll, rows, conn


def read_published(stdin_timeout_s: float) -> dict:
    """The controller's end-of-stream line: {"last": {device: epoch}, "count": n}."""
    result: dict = {}

    def reader():
        line = sys.stdin.readline()
        if line:
            result.update(json.loads(line))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(stdin_timeout_s)
    if not result:
        raise RuntimeError("no end-of-stream line from the controller")
    return result


def start_consumer(args: argparse.Namespace) -> tuple[int, subprocess.Popen | None]:
    """(pid to measure, child process or None) for this run's consumer."""
    if args.kind == "ours":
        return ingestor_pid(), None
    if args.kind == "naive":
        child = subprocess.Popen([sys.executable, __file__, "naive-ingestor"], stdout=subprocess.DEVNULL)
        return child.pid, child
    # Limit A: a consumer without a database that receives what ours receives at QoS 1. It subscribes at
    # QoS 1, and the broker's upgrade_outgoing_qos delivers even the firmware's QoS 0 at QoS 1, so it
    # acknowledges every message, as ours does (at QoS 0, unacknowledged, it would be less work).
    with open(PLAIN_OUT, "w") as out:  # the child keeps its own descriptor
        child = subprocess.Popen(
            ["mosquitto_sub", "-h", "localhost", "-p", "1883", "-u", "datayoti_ingestor",
             "-P", secret("mqtt-datayoti_ingestor"), "-i", "datayoti-bench-plain", "-q", "1",
             "-t", DATA_TOPIC, "-F", "%U %p", "-C", str(args.count), "-W", str(int(args.timeout))],
            stdout=out)
    return child.pid, child


def plain_result(child: subprocess.Popen, args: argparse.Namespace) -> tuple[dict, list[tuple[float, float]]]:
    """mosquitto_sub's own figures, and (published, received) per message."""
    published = read_published(args.timeout)
    _, status, usage = wait_child(child.pid, grace_s=30)
    with open(PLAIN_OUT) as received:
        got = [x for x in map(parse_mosquitto_sub_line, received) if x]
    report = {"cpu_s": usage.ru_utime + usage.ru_stime, "rss_peak_kb": usage.ru_maxrss,
              "exit_status": os.waitstatus_to_exitcode(status), "stored": len(got),
              "expected": published["count"]}
    return report, [(sent, seen) for _, sent, seen in got]


def polled_result(pid: int, args: argparse.Namespace) -> tuple[dict, list[tuple[float, float]]]:
    """Poll the database until every device's last reading is committed: (publish, commit) per row."""
    cpu_before = proc_cpu_s(pid)
    poll, rows, conn = watermark_poller(args.devices.split(","), args.since)
    poller_pid = conn.get_backend_pid()
    timeline: list[tuple[float, dict[str, float]]] = []
    published: dict = {}
    reader = threading.Thread(target=lambda: published.update(read_published(args.timeout)), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            marks = poll()
            timeline.append((time.time(), marks))
            if published and all(marks.get(d, 0) >= t for d, t in published["last"].items()):
                break
            time.sleep(POLL_EVERY_S)
        stored = rows()
    finally:
        conn.close()
    report = {"cpu_s": proc_cpu_s(pid) - cpu_before, "rss_peak_kb": proc_status_kb(pid, "VmHWM"),
              "stored": len(stored), "expected": published.get("count"), "poller_pid": poller_pid}
    return report, commit_times(stored, timeline)


def consume(args: argparse.Namespace) -> dict:
    """One consumer of one live stream: throughput, latency, CPU, memory and PostgreSQL's writes."""
    if args.kind == "ours":
        wait_ingestor_idle()
    else:
        systemctl("stop", SERVICE)
    before = pg_write_counters(args.settle)
    pid, child = start_consumer(args)
    time.sleep(1.0)  # the consumer subscribes
    sampler = MemorySampler(pid)
    sampler.start()
    threads = ThreadSampler(comms={"postgres", "mosquitto"})  # their CPU, per thread
    threads.start()
    print("READY", flush=True)
    try:
        if args.kind == "plain":
            report, pairs = plain_result(child, args)
        else:
            report, pairs = polled_result(pid, args)
    finally:
        sampler.done.set()
        sampler.join()
        deltas = threads.stop()
        if args.kind == "naive":
            child.send_signal(signal.SIGTERM)
            child.wait(30)
    cpu = cpu_breakdown(deltas, poller_pid=report.pop("poller_pid", None))
    report["cpu_components_s"] = {k: cpu[k] for k in ("PostgreSQL", "Mosquitto", "bench poller")}
    report["kind"] = args.kind
    report["msg_per_s"] = rate(report["stored"], min((p for p, _ in pairs), default=None),
                               max((c for _, c in pairs), default=None))
    report["latency"] = latency_summary([seen - sent for sent, seen in pairs])
    report["rss_steady_kb"] = statistics.median(sampler.rss_kb) if sampler.rss_kb else None
    if sampler.rss_kb:
        report["rss_peak_kb"] = max(report["rss_peak_kb"] or 0, max(sampler.rss_kb))
    report["stack_pss_peak_kb"] = max(sampler.stack_kb, default=None)
    after = pg_write_counters(args.settle)
    report["pg"] = {k: after[k] - before[k] for k in before}
    return report


def naive_ingestor(_: argparse.Namespace) -> dict:
    """The original stack's ingestor: on_message -> INSERT, autocommit, one row per message
    (readings into sensor_data, heartbeats into device_heartbeats; status messages are not stored)."""
    import paho.mqtt.client as mqtt

    conn = connect("mqtt_ingestor")
    conn.autocommit = True
    cur = conn.cursor()
    stop = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe([(DATA_TOPIC, 1), (HEARTBEAT_TOPIC, 1)])

    def on_message(client, userdata, message):
        try:
            m = json.loads(message.payload)
            if message.topic.endswith("/heartbeat"):
                cur.execute("INSERT INTO device_heartbeats (time, device_id, site_id, rssi, free_heap, uptime, "
                            "min_heap, ntp_sync) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                            (m["timestamp"], m["device_id"], m.get("site_id"), m.get("rssi"), m.get("free_heap"),
                             m.get("uptime"), m.get("min_heap"), m.get("ntp_sync")))
            else:
                cur.execute("INSERT INTO sensor_data (time, device_id, temperature, humidity) "
                            "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                            (m["timestamp"], m["device_id"], m["temperature"], m["humidity"]))
        except (ValueError, KeyError) as exc:
            print(f"naive: skipped a message: {exc}", file=sys.stderr)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="datayoti-bench-naive")
    client.username_pw_set("datayoti_ingestor", secret("mqtt-datayoti_ingestor"))
    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.connect("localhost", 1883)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()
    conn.close()
    return {"stopped": True}


# ------------------------------------------------------------------ the reference fleet

def pg_io_data_bytes() -> int:
    """Relation pages PostgreSQL has written or extended so far (pg_stat_io, object 'relation')."""
    return int(float(as_postgres_sql(
        "SELECT coalesce(sum((coalesce(writes, 0) + coalesce(extends, 0)) * op_bytes), 0) FROM pg_stat_io "
        "WHERE object = 'relation';")))


def device_written() -> dict:
    """The machine's disks and the bytes written to them so far, after a sync(2) so that the page cache's dirty
    pages are counted where they were made. A container sees its host's disks: the figure is the whole
    machine's, the host's own writes included."""
    with contextlib.suppress(OSError):  # a sandbox may refuse it: then only what writeback has sent is counted
        os.sync()
    disks = whole_disks(os.listdir("/sys/block")) if os.path.isdir("/sys/block") else set()
    return {"disks": sorted(disks), "bytes": disk_written_bytes(read_text("/proc/diskstats") or "", disks)}


def checkpoint(settle_s: float) -> int:
    """CHECKPOINT, let the backends flush their statistics, then pg_io_data_bytes()."""
    as_postgres_sql("CHECKPOINT;")
    time.sleep(settle_s)
    return pg_io_data_bytes()


PG_BIN = "/usr/lib/postgresql/17/bin"
PG_WAL_DIR = "/var/lib/postgresql/17/main/pg_wal"
# The totals line of `pg_waldump --stats`: count, record bytes [share], FPI bytes [share], combined [share]
WALDUMP_TOTAL = re.compile(r"^Total\s+(\d+)\s+(\d+)\s+\[[^]]*\]\s+(\d+)\s+\[[^]]*\]\s+(\d+)")


def wal_position() -> str:
    """PostgreSQL's WAL write position (pg_current_wal_lsn(), "0/1A2B3C8")."""
    return as_postgres_sql("SELECT pg_current_wal_lsn();")


def checkpoint_timeout_s() -> int:
    """checkpoint_timeout in seconds (SHOW checkpoint_timeout, e.g. "1h")."""
    return int(as_postgres_sql("SELECT setting FROM pg_settings WHERE name = 'checkpoint_timeout';"))


def parse_waldump_stats(text: str) -> dict | None:
    """{"records", "record_bytes", "fpi_bytes", "combined_bytes"} from the Total line of
    `pg_waldump --stats=record`, or None without one."""
    for line in text.splitlines():
        match = WALDUMP_TOTAL.match(line.strip())
        if match:
            records, record_bytes, fpi_bytes, combined = (int(v) for v in match.groups())
            return {"records": records, "record_bytes": record_bytes, "fpi_bytes": fpi_bytes,
                    "combined_bytes": combined}
    return None


def wal_stats(start: str, end: str) -> dict:
    """WAL generated between two positions, by pg_waldump (as postgres): records, record and FPI bytes.
    pg_waldump prints its statistics before it reports an unreadable tail, so those still count; the
    error is kept. Without statistics, zeros and the error: the FPIs then count as continuous WAL."""
    empty = {"records": 0, "record_bytes": 0, "fpi_bytes": 0, "combined_bytes": 0}
    if start == end:
        return {**empty, "error": None}
    result = subprocess.run(as_postgres([f"{PG_BIN}/pg_waldump", "--stats=record", "-p", PG_WAL_DIR,
                                         "--start", start, "--end", end]),
                            text=True, capture_output=True, cwd="/", check=False)
    stats = parse_waldump_stats(result.stdout)
    if stats is None:  # e.g. a window longer than checkpoint_timeout, whose first segments were recycled
        return {**empty, "error": f"pg_waldump {start}..{end} printed no totals: {result.stderr.strip()[-300:]}"}
    error = (result.stderr.strip()[-300:] or f"exit {result.returncode}") if result.returncode else None
    return {**stats, "error": error}


def add_wal_stats(*parts: dict) -> dict:
    total = {k: sum(p[k] for p in parts) for k in ("records", "record_bytes", "fpi_bytes", "combined_bytes")}
    total["errors"] = [p["error"] for p in parts if p.get("error")]
    return total


# Journal lines the benchmark's own `testbed exec` SSH sessions cause: sshd, logind, the session scopes
# (and the runuser/psql the agent runs in them), the root user manager they start, and PID 1's lines
# about those units.
BENCH_JOURNAL_UNITS = ("ssh.service", "sshd.service", "systemd-logind.service")
BENCH_JOURNAL_PREFIXES = ("session-", "user@", "user-runtime-dir@")


def journal_unit(entry: dict) -> tuple[str, bool]:
    """(unit, caused by the benchmark's SSH sessions) of one `journalctl -o json` entry."""
    unit = entry.get("_SYSTEMD_UNIT") or ("kernel" if entry.get("_TRANSPORT") == "kernel" else "-")
    about = entry.get("UNIT") or entry.get("USER_UNIT") or ""
    bench = (unit in BENCH_JOURNAL_UNITS or unit.startswith(BENCH_JOURNAL_PREFIXES)
             or (unit == "init.scope" and about.startswith(BENCH_JOURNAL_PREFIXES)))
    return unit, bench


def journal_lines_by_unit(lines, top: int = 5) -> dict:
    """Journal entries (JSON lines) counted per unit: the top units, and those the benchmark caused."""
    counts: dict = {}
    bench = 0
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        unit, caused = journal_unit(entry)
        if caused:
            bench += 1
        else:
            counts[unit] = counts.get(unit, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"top": [{"unit": u, "lines": n} for u, n in ranked[:top]], "lines": sum(counts.values()),
            "bench_lines": bench}


def journal_since(start: float, end: float) -> dict:
    """journal_lines_by_unit() of the lines logged between two epoch times."""
    result = subprocess.run(["journalctl", "--no-pager", "-q", "-o", "json", "--since", f"@{math.floor(start)}",
                             "--until", f"@{math.ceil(end)}",
                             "--output-fields=_SYSTEMD_UNIT,UNIT,USER_UNIT,_TRANSPORT"],
                            text=True, capture_output=True, check=False)
    return journal_lines_by_unit(result.stdout.splitlines())


def stored_since(since: float, devices: list[str]) -> dict:
    start = datetime.fromtimestamp(since, tz=UTC).isoformat()
    macs = ",".join(f"'{d}'" for d in devices)
    counts = as_postgres_sql(
        f"SELECT (SELECT count(*) FROM sensor_data WHERE time >= '{start}' AND device_id IN ({macs})), "
        f"(SELECT count(*) FROM device_heartbeats WHERE time >= '{start}' AND device_id IN ({macs}));")
    readings, heartbeats = (int(v) for v in counts.split("|"))
    return {"readings": readings, "heartbeats": heartbeats}


def fleet(args: argparse.Namespace) -> dict:
    """One phase of the reference fleet (idle, naive or ours): the whole Pi's writes per writer, CPU per
    component and, with publishers, publish-to-visible latency.

    The window opens after a CHECKPOINT (the previous step's dirty pages are not this phase's) and closes
    after another one, inside it (this phase's dirty pages are). The controller publishes meanwhile, then
    sends the end-of-stream line; a phase without publishers gets one too.
    """
    devices = args.devices.split(",")
    child = None
    if args.kind == "naive":
        systemctl("stop", SERVICE)
        child = subprocess.Popen([sys.executable, __file__, "naive-ingestor"], stdout=subprocess.DEVNULL)
        time.sleep(1.0)  # it subscribes
    else:
        wait_ingestor_idle()
    data_before = checkpoint(args.settle)
    flushes_before = wal_flush_counts()
    cycle_s = checkpoint_timeout_s()
    lsn_start = wal_position()
    poller = watermark_poller(devices, args.since) if args.kind != "idle" else None
    poller_pid = poller[2].get_backend_pid() if poller else None
    threads = ThreadSampler()
    device_start = device_written()
    threads.start()
    window_start = time.time()
    print("READY", flush=True)
    published: dict = {}
    reader = threading.Thread(target=lambda: published.update(read_published(args.timeout)), daemon=True)
    reader.start()
    timeline: list[tuple[float, dict[str, float]]] = []
    visible = False
    try:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            if poller:
                marks = poller[0]()
                if not timeline or marks != timeline[-1][1]:
                    timeline.append((time.time(), marks))
                visible = bool(published) and all(marks.get(d, 0) >= t for d, t in published["last"].items())
            else:
                visible = bool(published)
            if visible:
                break
            time.sleep(FLEET_POLL_EVERY_S)
        # The closing CHECKPOINT may recycle the WAL segments before it: read them first, then the tail.
        lsn_close = wal_position()
        before_close = wal_stats(lsn_start, lsn_close)
        data_after = checkpoint(args.settle)
        flushes_after = wal_flush_counts()
        lsn_end = wal_position()
        deltas = threads.stop()
        device_end = device_written()
        journal = journal_since(window_start, time.time())
        wal = {"start_lsn": lsn_start, "close_lsn": lsn_close, "end_lsn": lsn_end,
               **add_wal_stats(before_close, wal_stats(lsn_close, lsn_end)),
               **{k: flushes_after[k] - flushes_before[k] for k in flushes_after}}
        rows = poller[1]() if poller else []
    finally:
        if poller:
            poller[2].close()
        if child:
            child.send_signal(signal.SIGTERM)
            child.wait(30)
    seconds = threads.seconds
    pairs = commit_times(rows, timeline)
    sent = published.get("published", {})
    return {"kind": args.kind, "seconds": seconds, "all_visible": visible, "published": sent,
            "messages": sum(sent.values()), "stored": stored_since(args.since, devices),
            "writes": writes_breakdown(deltas, seconds, data_after - data_before, child.pid if child else None,
                                       poller_pid),
            "cpu_s": cpu_breakdown(deltas, child.pid if child else None, poller_pid),
            "device": {"disks": device_end["disks"], "bytes": device_end["bytes"] - device_start["bytes"]},
            "wal": wal, "checkpoint_timeout_s": cycle_s, "journal_lines_by_unit": journal,
            "latency": latency_summary([seen - sent_at for sent_at, seen in pairs]),
            "poll_every_s": FLEET_POLL_EVERY_S, "sample_every_s": THREAD_SAMPLE_EVERY_S,
            "threads": {"seen": len(deltas), "samples": threads.ledger.samples},
            "agent_cpu_s": sum(os.times()[:2])}


# ------------------------------------------------------------------ COPY and the dashboards' data set

COPY_COLUMNS = "sensor_data (time, device_id, site_id, temperature, humidity, reception_time)"


def copy_load(args: argparse.Namespace) -> dict:
    """Limit B: COPY `count` stream-like rows (a second apart per device, an hour ago) and commit."""
    devices = args.devices.split(",")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1, milliseconds=-7)
    buffer = io.StringIO()
    for i in range(args.count):
        device_index = i % len(devices)
        at = start + timedelta(milliseconds=(i // len(devices)) * 20 + 1)
        buffer.write(reading_row(devices[device_index], site_of(device_index, 5), at, i, device_index))
    data = buffer.getvalue()
    before = pg_write_counters(args.settle)
    conn = connect("postgres")
    began = time.monotonic()
    with conn.cursor() as cur:
        cur.copy_expert(f"COPY {COPY_COLUMNS} FROM STDIN", io.StringIO(data))
    conn.commit()
    seconds = time.monotonic() - began
    after = pg_write_counters(args.settle)
    with conn.cursor() as cur:  # these rows bypassed the rollups: take them out again
        end = start + timedelta(milliseconds=(args.count // len(devices) + 1) * 20 + 1)
        cur.execute("DELETE FROM sensor_data WHERE device_id = ANY(%s) AND time BETWEEN %s AND %s",
                    (devices, start, end))
    conn.commit()
    conn.close()
    return {"kind": "copy", "stored": args.count, "seconds": seconds, "msg_per_s": args.count / seconds,
            "pg": {k: after[k] - before[k] for k in before}}


def dataset(args: argparse.Namespace) -> dict:
    """50 sensors x `days` at one reading a minute, ending now, plus their rollups; reused when present."""
    devices = args.devices.split(",")
    conn = connect("postgres")
    with conn.cursor() as cur:
        cur.execute("CREATE SCHEMA IF NOT EXISTS bench; CREATE TABLE IF NOT EXISTS bench.dataset "
                    "(days int, devices int, rows bigint, ends timestamptz, seconds float8)")
        cur.execute("SELECT days, devices, rows, extract(epoch FROM ends), seconds FROM bench.dataset")
        found = cur.fetchone()
        conn.commit()
        if found and found[0] == args.days and found[1] == len(devices):
            appliance = dataset_extras(conn, devices, datetime.fromtimestamp(float(found[3]), tz=UTC))
            conn.close()
            return {"reused": True, "days": found[0], "rows": found[2], "ends": float(found[3]),
                    "load_seconds": found[4], **appliance}
        cur.execute("TRUNCATE sensor_data, rollup_semi_hourly, rollup_hourly, rollup_daily, device_heartbeats, "
                    "appliance_stats, "
                    "rejected_messages, bench.dataset; DROP TABLE IF EXISTS bench.extras")
        sites = sorted({site_of(i, 5) for i in range(len(devices))})
        cur.execute("INSERT INTO sites (site_id, site_name) SELECT s, s FROM unnest(%s::text[]) s "
                    "ON CONFLICT DO NOTHING", (sites,))
        cur.execute("INSERT INTO devices (device_id, site_id) SELECT * FROM unnest(%s::text[], %s::text[]) "
                    "ON CONFLICT (device_id) DO UPDATE SET site_id = excluded.site_id",
                    (devices, [site_of(i, 5) for i in range(len(devices))]))
        conn.commit()
    # Hour-aligned, so that each day loaded holds whole rollup buckets.
    ends = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    begins = ends - timedelta(days=args.days)
    began = time.monotonic()
    copy_seconds = 0.0
    rows = 0
    day = begins
    while day < ends:
        chunk = io.StringIO()
        minute = int((day - begins).total_seconds() // 60)
        at = day
        day_end = min(day + timedelta(days=1), ends)
        while at < day_end:
            for i, device in enumerate(devices):
                chunk.write(reading_row(device, site_of(i, 5), at, minute, i))
            rows += len(devices)
            at += timedelta(minutes=1)
            minute += 1
        chunk.seek(0)
        with conn.cursor() as cur:
            copy_began = time.monotonic()
            cur.copy_expert(f"COPY {COPY_COLUMNS} FROM STDIN", chunk)
            copy_seconds += time.monotonic() - copy_began
            # A day at a time: the aggregate stays within temp_file_limit.
            for table, width in (("rollup_semi_hourly", "30 minutes"), ("rollup_hourly", "1 hour")):
                cur.execute(f"""
                    INSERT INTO {table} SELECT device_id, time_bucket(INTERVAL '{width}', time), count(*),
                        sum(temperature), min(temperature), max(temperature),
                        sum(humidity), min(humidity), max(humidity)
                    FROM sensor_data WHERE time >= %s AND time < %s GROUP BY 1, 2""", (day, day_end))
        conn.commit()
        day = day_end
    with conn.cursor() as cur:
        # The daily rollup, as the daily timer folds it (schema.FOLD_DAILY) and the view completes it.
        cur.execute("""
            INSERT INTO rollup_daily SELECT device_id, time_bucket(INTERVAL '1 day', bucket_start),
                sum(measurement_count), sum(sum_temperature), min(min_temperature), max(max_temperature),
                sum(sum_humidity), min(min_humidity), max(max_humidity)
            FROM rollup_hourly WHERE bucket_start < time_bucket(INTERVAL '1 day', %s::timestamptz) GROUP BY 1, 2""",
                    (ends,))
    conn.commit()
    with conn.cursor() as cur:
        # A week of heartbeats, one a minute, for device_health.
        cur.execute("""
            INSERT INTO device_heartbeats (time, device_id, site_id, rssi, free_heap, uptime, min_heap, ntp_sync,
                                           reception_time)
            SELECT t, d.device_id, d.site_id, -60, 180000, extract(epoch FROM t - %(begins)s)::bigint, 150000, true, t
            FROM devices d, generate_series(%(ends)s - INTERVAL '7 days', %(ends)s, INTERVAL '1 minute') t
            WHERE d.device_id = ANY(%(devices)s)""", {"begins": begins, "ends": ends, "devices": devices})
        cur.execute("UPDATE devices SET last_data_at = %s, last_heartbeat_at = %s WHERE device_id = ANY(%s)",
                    (ends, ends, devices))
        conn.commit()
        seconds = time.monotonic() - began
        cur.execute("INSERT INTO bench.dataset VALUES (%s, %s, %s, %s, %s)", (args.days, len(devices), rows, ends,
                                                                            seconds))
        conn.commit()
    appliance = dataset_extras(conn, devices, ends)
    conn.close()
    subprocess.run(as_postgres(["vacuumdb", "-q", "--analyze", "-d", DB]), cwd="/", check=True)
    return {"reused": False, "days": args.days, "rows": rows, "ends": ends.timestamp(), "load_seconds": seconds,
            "copy_rows_per_s": rows / copy_seconds, **appliance}


# What the Grafana dashboards read besides the readings, at the ingestor's retention limits
# (retention.heartbeat_days for appliance_stats, retention.rejected_days for rejected_messages).
STATS_DAYS = 183
REJECTED_DAYS = 30


def dataset_extras(conn, devices: list[str], ends: datetime) -> dict:
    """Sensor models (a fifth DHT11s), `extra` metrics on two days of five sensors, the ingestor's
    appliance_stats (a row every 5 minutes, the ingestor's default) and rejected messages (one in ten
    minutes); once per data set."""
    with conn.cursor() as cur:
        # A mark of its own: the running ingestor writes appliance_stats rows too.
        cur.execute("CREATE TABLE IF NOT EXISTS bench.extras (done boolean); SELECT count(*) FROM bench.extras")
        if cur.fetchone()[0]:
            conn.commit()
            return {"appliance_stats_days": STATS_DAYS, "rejected_days": REJECTED_DAYS}
        cur.execute("INSERT INTO bench.extras VALUES (true)")
        cur.execute("UPDATE devices SET device_type = CASE WHEN i %% 5 = 0 THEN 'ESP32-DHT11' ELSE 'ESP32-DHT22' END "
                    "FROM unnest(%s::text[]) WITH ORDINALITY AS u(mac, i) WHERE device_id = u.mac", (devices,))
        cur.execute("UPDATE sensor_data SET extra = jsonb_build_object('pressure', 1013 + temperature / 10, "
                    "'battery', 3.7) WHERE device_id = ANY(%s) AND time > %s - INTERVAL '2 days'",
                    (devices[:5], ends))
        cur.execute("""
            INSERT INTO appliance_stats (time, interval_s, received, stored, rejected, database_refused, duplicates,
                                         backlog, database_bytes, disk_free_bytes, disk_total_bytes, card_written_bytes)
            SELECT t, 300, 100 + m %% 7, 100 + m %% 7 - (m %% 10 = 0)::int, (m %% 10 = 0)::int, (m %% 100 = 0)::int,
                   0, m %% 5, 2000000000 + m %% 100000, 20000000000 - m %% 100000, 32000000000,
                   900000 + m %% 10 * 1000
            FROM generate_series(%(ends)s - make_interval(days => %(days)s), %(ends)s, INTERVAL '5 minutes') t,
                 LATERAL (SELECT extract(epoch FROM t)::bigint / 300 AS m) x""", {"ends": ends, "days": STATS_DAYS})
        cur.execute("""
            INSERT INTO rejected_messages (received_at, topic, payload, payload_bytes, reason, detail)
            SELECT t, 'datayoti/sensor/' || %(device)s || '/data', convert_to('{"temperature": NaN}', 'UTF8'), 20,
                   (ARRAY['malformed_json', 'not_finite', 'out_of_range', 'database_refused'])[i %% 4 + 1], 'bench'
            FROM generate_series(%(ends)s - make_interval(days => %(days)s), %(ends)s, INTERVAL '10 minutes')
                 WITH ORDINALITY AS g(t, i)""", {"ends": ends, "days": REJECTED_DAYS, "device": devices[0]})
    conn.commit()
    return {"appliance_stats_days": STATS_DAYS, "rejected_days": REJECTED_DAYS}


def dashboard_queries(device: str, site: str, ends: datetime) -> list[tuple[str, str, str, dict]]:
    """(name, raw SQL, rollup/view SQL, parameters): what the dashboards ask, both ways."""
    params = {"device": device, "site": site, "ends": ends}
    return [
        ("latest reading per device",
         "SELECT s.device_id, s.time, s.temperature, s.humidity FROM sensor_data s "
         "JOIN (SELECT device_id, max(time) AS time FROM sensor_data GROUP BY device_id) m USING (device_id, time)",
         "SELECT * FROM latest_sensor_readings", params),
        ("device health",
         "SELECT device_id, max(time) AS last_heartbeat, CASE WHEN max(time) > now() - INTERVAL '5 minutes' "
         "THEN 'online' WHEN max(time) > now() - INTERVAL '30 minutes' THEN 'warning' ELSE 'offline' END "
         "FROM device_heartbeats GROUP BY device_id",
         "SELECT * FROM device_health", params),
        ("24 h raw, one device",
         "SELECT time, temperature, humidity FROM sensor_data WHERE device_id = %(device)s "
         "AND time > %(ends)s - INTERVAL '24 hours' ORDER BY time",
         "SELECT bucket_start, avg_temperature, avg_humidity FROM sensor_data_semi_hourly "
         "WHERE device_id = %(device)s AND bucket_start > %(ends)s - INTERVAL '24 hours' ORDER BY bucket_start",
         params),
        ("30 days hourly, all devices",
         "SELECT time_bucket('1 hour', time) AS hour, device_id, avg(temperature), avg(humidity) FROM sensor_data "
         "WHERE time > %(ends)s - INTERVAL '30 days' GROUP BY 1, 2 ORDER BY 1",
         "SELECT bucket_start, device_id, avg_temperature, avg_humidity FROM sensor_data_hourly "
         "WHERE bucket_start > %(ends)s - INTERVAL '30 days' ORDER BY 1",
         params),
        ("1 year daily, one site",
         "SELECT time_bucket('1 day', time) AS day, avg(temperature), min(temperature), max(temperature) "
         "FROM sensor_data WHERE site_id = %(site)s AND time > %(ends)s - INTERVAL '365 days' GROUP BY 1 ORDER BY 1",
         "SELECT time_bucket('1 day', h.bucket_start) AS day, sum(h.sum_temperature) / sum(h.measurement_count), "
         "min(h.min_temperature), max(h.max_temperature) FROM rollup_hourly h JOIN devices d USING (device_id) "
         "WHERE d.site_id = %(site)s AND h.bucket_start > %(ends)s - INTERVAL '365 days' GROUP BY 1 ORDER BY 1",
         params),
    ]


class RowCounter(io.RawIOBase):
    """A sink for COPY TO STDOUT that only counts the rows."""

    def __init__(self):
        self.rows = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.rows += bytes(data).count(b"\n")
        return len(data)


def time_query(cur, sql: str, params: dict, runs: int) -> dict:
    """Median of `runs` timings of the server running `sql` and sending every row.

    COPY (...) TO STDOUT: the same plan and the same rows on the wire, without the
    per-row Python objects that Grafana, a Go program, does not build.
    """
    copy = cur.mogrify(f"COPY ({sql}) TO STDOUT", params).decode()
    sink = RowCounter()
    cur.copy_expert(copy, sink)  # warm-up
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        cur.copy_expert(copy, RowCounter())
        times.append((time.perf_counter() - began) * 1000)
    return {"median_ms": statistics.median(times), "runs_ms": times, "rows": sink.rows}


def queries(args: argparse.Namespace) -> dict:
    conn = connect("grafana_reader")
    conn.autocommit = True
    ends = datetime.fromtimestamp(args.ends, tz=UTC)
    results = []
    with conn.cursor() as cur:
        for name, raw, rollup, params in dashboard_queries(args.device, args.site, ends):
            results.append({"query": name, "raw": time_query(cur, raw, params, args.runs),
                            "rollup": time_query(cur, rollup, params, args.runs)})
    conn.close()
    return {"queries": results}


# ------------------------------------------------------------------ the Grafana dashboards' and alerts' queries

GRAFANA_ROWS = 200  # rows of each result sent back


def type_names(cur, oids: set[int]) -> dict[int, str]:
    if not oids:
        return {}
    cur.execute("SELECT oid::int, typname::text FROM pg_type WHERE oid = ANY(%s)", (sorted(oids),))
    return dict(cur.fetchall())


def run_grafana_query(cur, sql: str) -> dict:
    """One query as Grafana runs it (the simple protocol, every row): its columns, rows and time order."""
    cur.execute(sql)
    if cur.description is None:
        return {"ok": True, "columns": [], "rowcount": 0, "rows": [], "time_sorted": None}
    rows = cur.fetchall()
    described = [(column.name, column.type_code) for column in cur.description]
    names = type_names(cur, {oid for _, oid in described})
    columns = [[name, names.get(oid, str(oid))] for name, oid in described]
    time_sorted = None
    if "time" in [c[0] for c in columns]:
        index = [c[0] for c in columns].index("time")
        stamps = [row[index] for row in rows if row[index] is not None]
        time_sorted = all(a <= b for a, b in zip(stamps, stamps[1:], strict=False))
    return {"ok": True, "columns": columns, "rowcount": len(rows), "time_sorted": time_sorted,
            "rows": json.loads(json.dumps([list(r) for r in rows[:GRAFANA_ROWS]], default=str))}


def grafana(args: argparse.Namespace) -> dict:
    """Queries from stdin ({"setup": [sql], "queries": [{"id", "sql"}]}): results, and medians with --runs."""
    request = json.loads(sys.stdin.read())
    if args.setup:  # as postgres: the setup and the queries share one transaction, rolled back
        conn = connect("postgres")
        cur = conn.cursor()
        for statement in request.get("setup", []):
            cur.execute(statement)
        cur.execute("SET LOCAL ROLE grafana_reader")
    else:
        conn = connect("grafana_reader")
        conn.autocommit = True
        cur = conn.cursor()
    cur.execute("SET statement_timeout = %s", (f"{args.timeout}s",))
    results = []
    for query in request["queries"]:
        if args.setup:
            cur.execute("SAVEPOINT q")
        try:
            result = run_grafana_query(cur, query["sql"])
            if args.runs:
                result["timing"] = time_query(cur, query["sql"].rstrip().rstrip(";"), {}, args.runs)
        except Exception as exc:  # a query's own failure is its result
            result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip()}"}
        if args.setup:
            cur.execute("ROLLBACK TO SAVEPOINT q")
        results.append({"id": query["id"], **result})
    conn.rollback()
    conn.close()
    return {"results": results}


# ------------------------------------------------------------------ isolation of refused messages

PRODUCT_LIB = "/usr/lib/datayoti-ingestor"
PROBE_DEVICES = [f"02:DA:7A:00:00:{i:02X}" for i in range(11)]  # locally administered MACs


def poisons():
    """What validation would stop, handed to the Store directly: (name, make(good message) -> poison)."""
    from dataclasses import replace

    from datayoti_ingestor.messages import Status

    return [
        ("heartbeat rssi 2**70 (integer out of range)", lambda beat: replace(beat, rssi=2**70)),
        ("NUL in a heartbeat's site_id", lambda beat: replace(beat, site_id="SITE\x00X")),
        ("NUL in a heartbeat extra", lambda beat: replace(beat, extra={"firmware": "1.0\x00"})),
        ("NUL in a status body", lambda beat: Status(beat.device_id, beat.stamp, "announce", {"note": "\x00"})),
    ]


def probe_batch(size: int, start: datetime, poison=None) -> list:
    """`size` firmware messages (readings and heartbeats of the probe devices), one of them poisoned."""
    from dataclasses import replace

    from datayoti_ingestor.messages import parse_message
    from datayoti_ingestor.store import Incoming

    received = datetime.now(UTC)
    batch = []
    for i in range(size):
        device = PROBE_DEVICES[i % (len(PROBE_DEVICES) - 1)]
        kind = "heartbeat" if i % 2 else "data"
        stamp = (start + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        body = {"device_id": device, "timestamp": stamp, "temperature": 21.5, "humidity": 48.0} if kind == "data" \
            else {"device_id": device, "site_id": "SITE_PROBE", "timestamp": stamp, "rssi": -60, "free_heap": 1000,
                  "uptime": i, "min_heap": 900, "ntp_sync": True}
        topic = f"datayoti/sensor/{device}/{kind}"
        payload = json.dumps(body).encode()
        batch.append(Incoming(mid=i, dup=False, received_at=received, topic=topic, payload=payload,
                              parsed=parse_message(topic, payload, received)))
    if poison is not None:
        # A heartbeat in the middle, of a device of its own (a later heartbeat would set another site).
        target = batch[size // 2 + 1]
        target.parsed = poison(replace(target.parsed, device_id=PROBE_DEVICES[-1]))
    return batch


def wal_lsn() -> int:
    return int(as_postgres_sql("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn;"))


def timed_write(store, batch: list) -> dict:
    before = wal_lsn()
    started = time.perf_counter()
    result = store.write_batch(batch)
    took = time.perf_counter() - started
    return {"ms": took * 1000, "wal_bytes": wal_lsn() - before, "writes": max(1, result.isolation_attempts),
            "stored": result.readings + result.heartbeats + result.statuses, "refused": result.refused,
            "rejected": result.rejected, "duplicates": result.duplicates}


def isolation(args: argparse.Namespace) -> dict:
    """Clean batch, then the same size with one refused message, side by side, for each kind of poison."""
    sys.path.insert(0, PRODUCT_LIB)
    from datayoti_ingestor.config import DatabaseConfig, database_connect_kwargs
    from datayoti_ingestor.store import Store

    db = DatabaseConfig(password=secret("postgresql-mqtt_ingestor"))
    store = Store(database_connect_kwargs(db), device_cache_ttl_s=300, payload_limit=2048)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    cases = []
    try:
        store.write_batch(probe_batch(args.size, start - timedelta(hours=1)))  # registers the probe devices
        for n, (name, poison) in enumerate(poisons()):
            clean = timed_write(store, probe_batch(args.size, start + timedelta(seconds=2 * n * args.size)))
            poisoned_batch = probe_batch(args.size, start + timedelta(seconds=(2 * n + 1) * args.size), poison)
            isolated = timed_write(store, poisoned_batch)
            culprit = next(m for m in poisoned_batch if m.reason == "database_refused")
            cases.append({"poison": name, "clean": clean, "isolated": isolated, "detail": culprit.detail,
                          "culprit_mid": culprit.mid,
                          "stored_once": int(as_postgres_sql(
                              "SELECT count(*) FROM (SELECT time, device_id FROM sensor_data UNION ALL "
                              "SELECT time, device_id FROM device_heartbeats UNION ALL "
                              "SELECT time, device_id FROM device_status) t "
                              f"WHERE device_id LIKE '02:DA:7A:%' AND time >= '{poisoned_batch[0].parsed.stamp.time}' "
                              f"AND time <= '{poisoned_batch[-1].parsed.stamp.time}';"))})
    finally:
        store.close()
        macs = ",".join(f"'{m}'" for m in PROBE_DEVICES)
        topics = " OR ".join(f"topic LIKE 'datayoti/sensor/{m}/%'" for m in PROBE_DEVICES)
        as_postgres_sql(f"DELETE FROM sensor_data WHERE device_id IN ({macs}); "
                        f"DELETE FROM device_heartbeats WHERE device_id IN ({macs}); "
                        f"DELETE FROM device_status WHERE device_id IN ({macs}); "
                        f"DELETE FROM rollup_semi_hourly WHERE device_id IN ({macs}); "
                        f"DELETE FROM rollup_hourly WHERE device_id IN ({macs}); "
                        f"DELETE FROM rollup_daily WHERE device_id IN ({macs}); "
                        f"DELETE FROM rejected_messages WHERE {topics}; "
                        f"DELETE FROM devices WHERE device_id IN ({macs}); "
                        "DELETE FROM sites WHERE site_id = 'SITE_PROBE';")
    return {"size": args.size, "cases": cases}


# ------------------------------------------------------------------ CLI

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("consume")
    c.add_argument("--kind", choices=("plain", "naive", "ours"), required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--since", type=float, required=True, help="epoch seconds the stream starts at")
    c.add_argument("--devices", required=True)
    c.add_argument("--timeout", type=float, default=300)
    c.add_argument("--settle", type=float, default=11)
    f = sub.add_parser("fleet")
    f.add_argument("--kind", choices=("idle", "naive", "ours"), required=True)
    f.add_argument("--since", type=float, required=True, help="epoch seconds the phase starts at")
    f.add_argument("--devices", required=True)
    f.add_argument("--timeout", type=float, default=1200, help="seconds to wait for the end of the phase")
    f.add_argument("--settle", type=float, default=11)
    sub.add_parser("naive-ingestor")
    p = sub.add_parser("copy")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--devices", required=True)
    p.add_argument("--settle", type=float, default=11)
    d = sub.add_parser("dataset")
    d.add_argument("--days", type=int, required=True)
    d.add_argument("--devices", required=True)
    q = sub.add_parser("queries")
    q.add_argument("--device", required=True)
    q.add_argument("--site", required=True)
    q.add_argument("--ends", type=float, required=True)
    q.add_argument("--runs", type=int, default=5)
    i = sub.add_parser("isolation")
    i.add_argument("--size", type=int, default=200)
    g = sub.add_parser("grafana")
    g.add_argument("--runs", type=int, default=0, help="time each query: median of N (0: run it once)")
    g.add_argument("--setup", action="store_true", help="run the request's setup first, in one transaction")
    g.add_argument("--timeout", type=float, default=120, help="statement timeout, seconds")
    args = parser.parse_args(argv)
    for name in ("count", "days", "runs", "size"):
        if getattr(args, name, 1) < (0 if args.command == "grafana" else 1):
            parser.error(f"--{name} must be at least 1")
    return args


COMMANDS = {"consume": consume, "fleet": fleet, "naive-ingestor": naive_ingestor, "copy": copy_load, "dataset": dataset,
            "queries": queries, "isolation": isolation, "grafana": grafana}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs("/run/datayoti-bench", mode=0o755, exist_ok=True)
    print(json.dumps(COMMANDS[args.command](args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
