#!/usr/bin/env python3
"""DataYoti Edge benchmark: ingest and dashboards, side by side, in one run.

It provisions (or reuses) one simulated Pi with ansible/site.yml, then:
- runs the reference fleet (issue 12): 50 sensors at the firmware's cadence, a reading and a heartbeat
  a minute each at QoS 0, in three phases one after another (idle, naive, ours), and measures the
  whole Pi's writes per writer (every thread's block-layer counters), CPU per component, the card's
  projected life and publish-to-visible latency;
- publishes a live stream from 50 simulated sensors (`datayoti simulate`'s, data only,
  with millisecond timestamps) at 100 msg/s, 1,000 msg/s and flat out, at QoS 0
  (the firmware's) and at QoS 1, into each consumer in turn:
  limit A (mosquitto_sub receiving at QoS 1, no database), naive (a row per message, autocommit)
  and ours (datayoti-ingestor under systemd);
- measures limit B, COPY of as many rows straight into sensor_data;
- loads 50 sensors x N days at one reading a minute and times the dashboards'
  queries against the raw hypertable and through the rollups;
- times every query of the Grafana dashboards (panels and template variables, for
  each dashboard's default range and for a year, All selected) and of the alert
  rules, expanded as Grafana expands them (tests/grafana_sql.py), as grafana_reader;
- profiles ours at saturation with py-spy.

It writes report.json and report.txt (a table that ends with the ratios and
the targets) into --out. `--smoke` runs the same steps with a few seconds of load.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "ingestor" / "src"))
sys.path.insert(0, str(REPO / "tests"))

import grafana_sql  # noqa: E402
from datayoti_ingestor import simulate  # noqa: E402

TESTBED = REPO / "tests" / "testbed" / "testbed"
AGENT = Path(__file__).with_name("pi_agent.py")
AGENT_ON_PI = "/run/datayoti-bench/pi_agent.py"
VENV_BIN = Path(os.environ.get("DATAYOTI_VENV", REPO / ".venv")) / "bin"
SENSORS = 50
PI = "pi1"
GRAFANA_FILES = REPO / "roles" / "grafana" / "files"
GRAFANA_DATASOURCE_UID = "datayoti-timescaledb"
GRAFANA_LONG_RANGE = "now-1y"

# The product's goals on the 2-core build machine (issues 4 and 12). Never lowered.
TARGETS = {
    "ours_vs_limit_a": 0.80,  # limit A: mosquitto_sub receiving at QoS 1, acknowledging, no database
    "p99_at_1000_ms": 50.0,
    "ingestor_rss_mb": 40.0,
    "bytes_per_reading": 400.0,
    "dashboard_query_ms": 50.0,
    "stack_rss_mb": 250.0,
    "fleet_writes_ours_vs_naive": 0.10,  # whole-Pi bytes a day at the reference fleet
    "cpu_ours_vs_naive": 1.0,  # consumer CPU per 1,000 messages, at every rate
    "cpu_ours_vs_naive_at_1000": 0.6,
}
RATES = (100, 1000, "max")

# The reference fleet (issue 12): SENSORS sensors at the firmware's cadence, a reading and a heartbeat a
# minute each, QoS 0, a retained status on connect; one phase after another on the same Pi.
FLEET_PHASES = ("idle", "naive", "ours")
FLEET_RATE = 1 / 60  # readings a second, per sensor
FLEET_MINUTES = 15.0  # a phase; its once-a-cycle writes are amortised over checkpoint_timeout (1 h)
FLEET_SMOKE_S = 20.0
FLEET_MAX_MINUTES = 240.0
ONLY = ("all", "fleet")  # --only: every step, or the data set and the reference fleet
# The card whose life the report projects. WD Purple microSD (the 32 GB SDHC model among them) is rated
# for up to 1,000 program/erase cycles: 32 GB x 1,000 = 32 TB written. Source: Western Digital's
# announcement, as reported at https://www.ztop.com.br/western-digital-traz-cartao-microsd-wd-purple-para-o-brasil/
# (the later WD Purple SC QD101 family is rated for 512 cycles, half of it:
# https://www.tomshardware.com/news/western-digital-has-1-tb-microsd-card-for-surveillance-16-years-lifespan).
CARD = {"name": "32 GB WD Purple microSD", "capacity_bytes": 32 * 10**9, "pe_cycles": 1000,
        "rating_bytes": 32 * 10**9 * 1000,
        "source": "https://www.ztop.com.br/western-digital-traz-cartao-microsd-wd-purple-para-o-brasil/",
        "note": "rated 1,000 P/E cycles (32 TB written); the card's internal write amplification is not "
                "included: small random writes wear it faster than the bytes the Pi sends"}
FLEET_METHOD = (
    "writes: write_bytes - cancelled_write_bytes of /proc/<pid>/task/<tid>/io, every thread of every process "
    "in the Pi sampled about once a second and counted once (last seen - first seen, 0 at the start for a "
    "thread born during the phase), keyed by (tid, starttime), per thread so that reaped children are never "
    "added to their parent; the benchmark's agent and its children are left out. Writers by systemd unit "
    "(/proc/<pid>/cgroup); PostgreSQL data = pg_stat_io (writes + extends) x op_bytes of object 'relation' "
    "over the phase, PostgreSQL WAL = PostgreSQL's block-layer bytes - data (so WAL includes PostgreSQL's few "
    "other writes). The window opens and closes with a CHECKPOINT, the last inside it. MB = 10^6 bytes. "
    "MB/day is amortised per checkpoint cycle: the full-page images (FPI bytes that pg_waldump --stats counts "
    "between the window's WAL positions, at most PostgreSQL's WAL) and PostgreSQL's data pages are paid once "
    "a cycle, so they count 86400 / max(phase seconds, checkpoint_timeout) times a day; the rest (WAL less "
    "FPIs, every other writer) is continuous: bytes / phase seconds x 86400. The closing checkpoint of a phase "
    "shorter than checkpoint_timeout underestimates the pages a full cycle appends to (a small share at this "
    "load). The raw bytes of each window stay in the report. CPU: utime + stime of the same threads, per "
    "1,000 messages published (readings, heartbeats and statuses); the poller's own backend is counted apart. "
    "Residual error: a thread's writes and CPU in its last second before it exits are missed.")


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and why."""


# ------------------------------------------------------------------ plan

def plan(smoke: bool, fleet_minutes: float | None = None) -> dict:
    """How much load each step gets."""
    if smoke:
        steps = {"rates": {100: 200, 1000: 1000, "max": 2000}, "days": 1, "copy_rows": 2000, "settle_s": 1.5,
                 "query_runs": 5, "profile_s": 2, "fleet_s": FLEET_SMOKE_S}
    else:
        steps = {"rates": {100: 2000, 1000: 20000, "max": 30000}, "days": 365, "copy_rows": 30000, "settle_s": 11,
                 "query_runs": 5, "profile_s": 10, "fleet_s": FLEET_MINUTES * 60}
    if fleet_minutes is not None:
        steps["fleet_s"] = fleet_minutes * 60
    return steps


def validate(args: argparse.Namespace) -> None:
    if args.days is not None and args.days < 1:
        raise BenchError(f"--days must be at least 1, not {args.days}")
    if args.publishers < 1 or args.publishers > SENSORS:
        raise BenchError(f"--publishers must be between 1 and {SENSORS}, not {args.publishers}")
    if getattr(args, "only", "all") not in ONLY:
        raise BenchError(f"--only must be one of {', '.join(ONLY)}, not {args.only!r}")
    minutes = getattr(args, "fleet_minutes", None)
    if minutes is not None and not (math.isfinite(minutes) and 0 < minutes <= FLEET_MAX_MINUTES):
        raise BenchError(f"--fleet-minutes (each reference-fleet phase) must be more than 0 and at most "
                         f"{FLEET_MAX_MINUTES:g}, not {minutes:g}")


# ------------------------------------------------------------------ the bed

def testbed(bed: str, *args: str, stdin: str | None = None, timeout: float = 900, check: bool = True
            ) -> subprocess.CompletedProcess:
    result = subprocess.run([str(TESTBED), "--bed", bed, *args], input=stdin, text=True, capture_output=True,
                            timeout=timeout, stdin=None if stdin is not None else subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise BenchError(f"testbed {' '.join(args[:3])} failed: {result.stderr.strip()[-2000:]}")
    return result


def ensure_pi(bed: str, memory_mb: int, provision: bool, log) -> dict:
    """A simulated Pi provisioned by site.yml: reused when its ingestor already runs, unless `provision`."""
    status = testbed(bed, "status", check=False)
    if status.returncode != 0 or PI not in status.stdout:
        log(f"bringing up {PI} (bed {bed}, {memory_mb} MB, {SENSORS} sensors)")
        testbed(bed, "up", "1", "--sensors", str(SENSORS), "--memory", str(memory_mb))
    state = json.loads(testbed(bed, "status").stdout)
    active = testbed(bed, "exec", PI, "systemctl", "is-active", "datayoti-ingestor", check=False).stdout.strip()
    if provision or active != "active":
        log("provisioning with ansible/site.yml")
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_FORCE_COLOR": "0"}
        play = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", state["inventory"], "site.yml"],
                              cwd=REPO / "ansible", env=env, text=True, capture_output=True, timeout=1800)
        if play.returncode != 0:
            raise BenchError(f"site.yml failed:\n{play.stdout[-3000:]}")
    install = f"install -d -m 0755 /run/datayoti-bench && cat > {AGENT_ON_PI} && chmod 0644 {AGENT_ON_PI}"
    testbed(bed, "exec", PI, "sh", "-c", install,
            stdin=AGENT.read_text())
    return state["hosts"][PI]


def fetch_credentials(bed: str, into: Path) -> list:
    tar = subprocess.run([str(TESTBED), "--bed", bed, "exec", PI, "tar", "-C", "/etc/datayoti/sensors", "-cf", "-",
                          "."], capture_output=True, check=True, timeout=60)
    subprocess.run(["tar", "-C", str(into), "-xf", "-"], input=tar.stdout, check=True)
    creds = [simulate.load_credentials(p) for p in sorted(into.glob("*.json"))]
    if len(creds) < SENSORS:
        raise BenchError(f"{PI} declares {len(creds)} sensors; the benchmark needs {SENSORS}")
    return creds[:SENSORS]


def agent(bed: str, *args: str, timeout: float = 3600, as_postgres: bool = False, stdin: str | None = None) -> dict:
    prefix = ["runuser", "-u", "postgres", "--"] if as_postgres else []
    result = testbed(bed, "exec", PI, *prefix, "python3", AGENT_ON_PI, *args, timeout=timeout, stdin=stdin)
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ Grafana's queries

def grafana_plan(ends: datetime, run) -> list[dict]:
    """Every panel, variable and alert query, expanded: {"query", "range", "sql"}.

    Panels and variables for their dashboard's default range and for a year, ending at the data set's end,
    with All selected (the dashboards' default, and the most rows); `run(query, sql)` runs a variable's query
    so that the next variable and the panels see its options. Alerts as evaluated now (their SQL uses now()).
    """
    plan = []
    for path in sorted((GRAFANA_FILES / "dashboards").glob("*.json")):
        dashboard = grafana_sql.load_dashboard(path)
        for raw_from in dict.fromkeys([dashboard.time_from, GRAFANA_LONG_RANGE]):
            span = grafana_sql.time_range(raw_from, raw_from, dashboard.time_to, now=ends)
            variables = grafana_sql.resolve_variables(dashboard, "all", span, run)
            for query in dashboard.queries:
                plan.append({"query": query.name, "range": raw_from,
                             "sql": grafana_sql.expand_panel_query(query, variables, span)})
    rules = GRAFANA_FILES / "alerting" / "datayoti-alert-rules.yaml"
    if rules.exists():
        for rule in grafana_sql.load_alert_rules(rules, GRAFANA_DATASOURCE_UID):
            span = grafana_sql.alert_range(rule, datetime.now(UTC))
            plan.append({"query": rule.name, "range": f"alert, last {rule.relative_from_s} s",
                         "sql": grafana_sql.expand_alert_query(rule, span.time_to)})
    return plan


def grafana_timings(bed: str, ends: float, runs: int) -> dict:
    """Median of `runs` timings of every Grafana query on the data set, as grafana_reader."""
    def run_once(query, sql: str) -> dict:
        request = json.dumps({"queries": [{"id": query.name, "sql": sql}]})
        return agent(bed, "grafana", stdin=request)["results"][0]

    plan = grafana_plan(datetime.fromtimestamp(ends, tz=UTC), run_once)
    request = json.dumps({"queries": [{"id": str(i), "sql": p["sql"]} for i, p in enumerate(plan)]})
    results = agent(bed, "grafana", "--runs", str(runs), stdin=request)["results"]
    timed = []
    for step, result in zip(plan, results, strict=True):
        timing = result.get("timing") or {}
        timed.append({"query": step["query"], "range": step["range"], "ok": result["ok"],
                      "error": result.get("error"), "rows": result.get("rowcount"),
                      "median_ms": timing.get("median_ms"), "runs_ms": timing.get("runs_ms")})
    return {"runs": runs, "queries": timed}


# ------------------------------------------------------------------ publishing

def per_sensor(count: int, rate: float | None) -> tuple[int, float | None]:
    """A step's `count` readings at `rate` msg/s in all, as (readings, readings/s) of each of the SENSORS."""
    if count < SENSORS or count % SENSORS:
        raise BenchError(f"{count} readings do not spread evenly over {SENSORS} sensors")
    return count // SENSORS, rate / SENSORS if rate else None


def publisher_worker(creds, host: str, load, go, results) -> None:
    """One process publishing `load` from its sensors with the product's simulator; reports on `results`."""
    summary = simulate.Summary(host=host, load=load, devices=[c.device_id for c in creds])
    sensors = simulate.connect(simulate.sensors_for(creds, seed=len(creds)), host, None, False, summary,
                               announce=False)
    if len(sensors) < len(creds):
        simulate.close(sensors)
        results.put({"error": "; ".join(summary.errors)})
        return
    go.wait()
    simulate.publish(sensors, load, summary)
    simulate.close(sensors)
    sent = summary.published["data"]
    results.put({"last": {s.device_id: s.last_stamp for s in sensors}, "sent": sent,
                 "accepted": sent - summary.unsent, "seconds": summary.seconds})


def publish(creds, host: str, qos: int, count: int, rate: float | None, workers: int, on_connected) -> dict:
    """Publish `count` readings (data only, millisecond timestamps); what the end-of-stream line needs."""
    readings, sensor_rate = per_sensor(count, rate)
    load = simulate.Load(rate=sensor_rate, duration=None, readings=readings, qos=qos, heartbeats=False, clock="ms",
                         flush_s=120)
    ctx = multiprocessing.get_context("fork")
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=publisher_worker, args=(creds[i::workers], host, load, go, results))
             for i in range(workers)]
    for p in procs:
        p.start()
    on_connected()
    time.sleep(1.0)  # the workers connect
    go.set()
    reports = [results.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(30)
    failed = [r["error"] for r in reports if "error" in r]
    if failed:
        raise BenchError(f"publishers could not connect: {failed[0]}")
    last = {}
    for r in reports:
        last.update({d: t for d, t in r["last"].items() if t})
    return {"last": last, "count": sum(r["sent"] for r in reports),
            "accepted": sum(r["accepted"] for r in reports),
            "publish_msg_per_s": sum(r["sent"] for r in reports) / max(r["seconds"] for r in reports)}


# ------------------------------------------------------------------ one measured run

def measure(bed: str, host: str, creds, kind: str, qos: int, rate, count: int, settle_s: float, workers: int,
            profile_s: float, out: Path) -> dict:
    since = time.time()
    devices = ",".join(c.device_id for c in creds)
    timeout = max(120.0, count / 150)
    proc = subprocess.Popen([str(TESTBED), "--bed", bed, "exec", PI, "python3", AGENT_ON_PI, "consume",
                             "--kind", kind, "--count", str(count), "--since", f"{since:.3f}", "--devices", devices,
                             "--timeout", str(timeout), "--settle", str(settle_s)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        raise BenchError(f"{kind}: the agent did not get ready: {line}{proc.stderr.read()[-2000:]}")
    profiler = {}

    def start_profile():
        if profile_s:
            profiler["proc"] = start_py_spy(bed, profile_s, out)

    published = publish(creds, host, qos, count, None if rate == "max" else float(rate), workers, start_profile)
    proc.stdin.write(json.dumps({"last": published["last"], "count": published["count"]}) + "\n")
    proc.stdin.flush()
    stdout, stderr = proc.communicate(timeout=timeout + 120)
    if proc.returncode != 0:
        raise BenchError(f"{kind} qos {qos} at {rate}: agent failed: {stderr[-2000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    report.update(qos=qos, rate=rate, published=published["count"], accepted=published["accepted"],
                  publish_msg_per_s=published["publish_msg_per_s"])
    if "proc" in profiler:
        report["profile"] = finish_py_spy(profiler["proc"], out)
    return report


# ------------------------------------------------------------------ the reference fleet

def fleet_publish(creds, host: str, seconds: float) -> dict:
    """The reference fleet for `seconds`: each sensor connects and announces its retained status, then
    publishes a reading and a heartbeat a minute at QoS 0 (spread over the minute), with millisecond
    timestamps on the real clock; the end-of-stream line for the agent."""
    load = simulate.Load(rate=FLEET_RATE, duration=seconds, heartbeats=True, qos=0, clock="ms", flush_s=30)
    summary = simulate.Summary(host=host, load=load, devices=[c.device_id for c in creds])
    sensors = simulate.connect(simulate.sensors_for(creds, seed=len(creds)), host, None, False, summary,
                               announce=True)
    try:
        if len(sensors) < len(creds):
            raise BenchError(f"fleet sensors could not connect: {'; '.join(summary.errors)}")
        simulate.publish(sensors, load, summary)
    finally:
        simulate.close(sensors)
    return {"last": {s.device_id: s.last_stamp for s in sensors if s.last_stamp}, "count": summary.published["data"],
            "published": {k: summary.published[k] for k in ("status", "data", "heartbeat")},
            "unsent": summary.unsent}


def fleet_phase(bed: str, host: str, creds, kind: str, seconds: float, settle_s: float) -> dict:
    """One phase on the Pi: its agent measures while this side publishes (or, idle, waits)."""
    since = time.time()
    timeout = seconds + 300
    proc = subprocess.Popen([str(TESTBED), "--bed", bed, "exec", PI, "python3", AGENT_ON_PI, "fleet", "--kind", kind,
                             "--since", f"{since:.3f}", "--devices", ",".join(c.device_id for c in creds),
                             "--timeout", str(timeout), "--settle", str(settle_s)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        raise BenchError(f"fleet {kind}: the agent did not get ready: {line}{proc.stderr.read()[-2000:]}")
    try:
        if kind == "idle":
            time.sleep(seconds)
            end = {"last": {}, "count": 0, "published": {"status": 0, "data": 0, "heartbeat": 0}, "unsent": 0}
        else:
            end = fleet_publish(creds, host, seconds)
    except BaseException:
        proc.kill()
        raise
    proc.stdin.write(json.dumps(end) + "\n")
    proc.stdin.flush()
    stdout, stderr = proc.communicate(timeout=timeout + 120)
    if proc.returncode != 0:
        raise BenchError(f"fleet {kind}: agent failed: {stderr[-2000:]}")
    phase = json.loads(stdout.strip().splitlines()[-1])
    phase["unsent"] = end["unsent"]
    return fleet_figures(phase)


def per_minute(count, seconds):
    return count / seconds * 60 if count is not None and seconds else None


def cpu_per_1k(seconds, messages):
    return seconds / messages * 1000 if seconds is not None and messages else None


def lifetime_years(bytes_per_day, rating_bytes: float = CARD["rating_bytes"]):
    """Years until the card has been written its rated bytes."""
    return rating_bytes / (bytes_per_day * 365) if bytes_per_day and bytes_per_day > 0 else None


# The amortised writers: PostgreSQL's WAL less its full-page images, the FPIs, then the agent's others.
FLEET_WRITERS = ("PostgreSQL WAL", "PostgreSQL FPI", "PostgreSQL data", "Mosquitto", "journald", "Grafana",
                 "ingestor", "naive consumer", "rest")
PER_CYCLE = ("PostgreSQL FPI", "PostgreSQL data")  # paid once a checkpoint cycle; every other writer: continuous


def split_fpi(nbytes: dict, fpi_bytes: int) -> dict:
    """A window's bytes per writer with PostgreSQL's WAL split into its full-page images (at most the WAL
    written, so the total stays the bytes measured) and the rest (never below 0)."""
    wal = nbytes.get("PostgreSQL WAL", 0)
    fpi = max(0, min(fpi_bytes, wal))
    return {w: nbytes.get(w, 0) for w in FLEET_WRITERS} | {"PostgreSQL WAL": wal - fpi, "PostgreSQL FPI": fpi}


def amortised_per_day(continuous: float, per_cycle: float, seconds: float, cycle_s: float) -> float | None:
    """Bytes a day: the continuous bytes at the window's rate, the per-cycle ones once per checkpoint cycle
    (a window longer than checkpoint_timeout is its own cycle)."""
    if seconds <= 0:
        return None
    return continuous / seconds * 86400 + per_cycle * 86400 / max(seconds, cycle_s)


def amortise(nbytes: dict, fpi_bytes: int, seconds: float, cycle_s: float) -> dict:
    """A window's writes per writer (FLEET_WRITERS) amortised per checkpoint cycle: bytes, MB/day, whole Pi."""
    split = split_fpi(nbytes, fpi_bytes)
    per_day = {w: amortised_per_day(0 if w in PER_CYCLE else b, b if w in PER_CYCLE else 0, seconds, cycle_s)
               for w, b in split.items()}
    mb = {w: d / 1e6 if d is not None else None for w, d in per_day.items()}
    continuous = sum(b for w, b in split.items() if w not in PER_CYCLE)
    per_cycle = sum(split[w] for w in PER_CYCLE)
    whole = amortised_per_day(continuous, per_cycle, seconds, cycle_s)
    return {"checkpoint_timeout_s": cycle_s, "cycle_s": max(seconds, cycle_s), "bytes": split,
            "continuous_bytes": continuous, "per_cycle_bytes": per_cycle, "mb_per_day": mb,
            "whole_pi_mb_per_day": whole / 1e6 if whole is not None else None}


def fleet_figures(phase: dict) -> dict:
    """A phase's derived figures: writes amortised per checkpoint cycle (the raw window's MB/day kept as
    raw_*), CPU s per 1,000 messages per component, the card's projected life from the amortised writes."""
    cpu, n = phase["cpu_s"], phase["messages"]
    consumer = cpu["naive consumer"] if phase["kind"] == "naive" else cpu["ingestor"]
    phase["cpu_s_per_1k"] = {"consumer": cpu_per_1k(consumer, n), "PostgreSQL": cpu_per_1k(cpu["PostgreSQL"], n),
                             "Mosquitto": cpu_per_1k(cpu["Mosquitto"], n)}
    writes = phase["writes"]
    if "amortised" not in writes:
        amortised = amortise(writes["bytes"], phase["wal"]["fpi_bytes"], phase["seconds"],
                             phase["checkpoint_timeout_s"])
        writes["raw_mb_per_day"] = writes.pop("mb_per_day")
        writes["raw_whole_pi_mb_per_day"] = writes.pop("whole_pi_mb_per_day")
        writes.update(amortised=amortised, fpi_bytes=amortised["bytes"]["PostgreSQL FPI"],
                      mb_per_day=amortised["mb_per_day"], whole_pi_mb_per_day=amortised["whole_pi_mb_per_day"])
    device = phase["device"]
    device["mb_per_day"] = device["bytes"] / phase["seconds"] * 86400 / 1e6 if device["disks"] else None
    daily = writes["whole_pi_mb_per_day"]
    phase["card_lifetime_years"] = lifetime_years(daily * 1e6 if daily is not None else None)
    return phase


def fleet(bed: str, host: str, creds, seconds: float, settle_s: float, log) -> dict:
    """The reference fleet's phases, one after another on the same Pi."""
    phases = []
    for kind in FLEET_PHASES:
        log(f"reference fleet: {kind}, {seconds / 60:.1f} min")
        phases.append(fleet_phase(bed, host, creds, kind, seconds, settle_s))
    return {"phase_s": seconds, "sensors": len(creds), "rate_per_sensor": FLEET_RATE, "card": CARD,
            "method": FLEET_METHOD, "phases": phases}


# ------------------------------------------------------------------ profiling

def start_py_spy(bed: str, seconds: float, out: Path):
    pid = testbed(bed, "exec", PI, "systemctl", "show", "-P", "MainPID", "datayoti-ingestor").stdout.strip()
    host_pid = container_to_host_pid(bed, int(pid))
    py_spy = shutil.which("py-spy", path=f"{VENV_BIN}:{os.environ['PATH']}")
    if not py_spy or not host_pid:
        return None
    return subprocess.Popen([py_spy, "record", "--pid", str(host_pid), "--duration", str(int(seconds)),
                             "--gil", "--format", "raw", "--output", str(out / "profile-ours.txt"), "--nonblocking"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def container_to_host_pid(bed: str, pid: int) -> int | None:
    """The host's pid of a process the Pi calls `pid` (NSpid in /proc/*/status)."""
    leader = json.loads(testbed(bed, "status").stdout)["hosts"][PI]["pid"]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                if len(ids) >= 2 and int(ids[-1]) == pid and is_descendant(int(entry.name), int(leader)):
                    return int(entry.name)
    return None


def is_descendant(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def finish_py_spy(proc, out: Path) -> dict:
    if proc is None:
        return {"error": "py-spy or the ingestor's pid not found"}
    _, stderr = proc.communicate(timeout=120)
    path = out / "profile-ours.txt"
    if proc.returncode != 0 or not path.exists():
        return {"error": stderr.strip()[-500:]}
    return {"top_self": top_frames(path.read_text()), "raw": str(path)}


def top_frames(collapsed: str, limit: int = 8) -> list[dict]:
    """Self time per function from py-spy's collapsed stacks ('a;b;c 12' lines)."""
    self_samples: Counter = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        leaf = stack.split(";")[-1]
        self_samples[leaf] += int(samples)
        total += int(samples)
    return [{"frame": frame, "share": n / total} for frame, n in self_samples.most_common(limit)] if total else []


# ------------------------------------------------------------------ report

def per_reading(pg: dict, stored: int) -> dict:
    if not stored:
        return {"wal": None, "data": None, "total": None}
    return {"wal": pg["wal_bytes"] / stored, "data": pg["data_bytes"] / stored,
            "total": (pg["wal_bytes"] + pg["data_bytes"]) / stored}


def ratio(a, b):
    return a / b if a and b else None


def run_cpu_per_1k(run: dict | None):
    """The consumer's CPU seconds per 1,000 messages stored in a run."""
    return cpu_per_1k(run.get("cpu_s"), run.get("stored")) if run else None


def fleet_phase_of(fleet: dict | None, kind: str) -> dict | None:
    return next((p for p in (fleet or {}).get("phases", []) if p["kind"] == kind), None)


def summarize(runs: list[dict], copy: dict | None, queries: dict | None, grafana: dict | None = None,
              fleet: dict | None = None) -> dict:
    """Ratios and targets from the raw measurements."""
    def pick(kind, qos, rate):
        return next((r for r in runs if r["kind"] == kind and r["qos"] == qos and r["rate"] == rate), None)

    ratios, targets = {}, []
    for qos in (0, 1) if runs else ():
        ours, limit_a, naive = pick("ours", qos, "max"), pick("plain", qos, "max"), pick("naive", qos, "max")
        ratios[f"qos{qos} ours / limit A"] = ratio(ours["msg_per_s"], limit_a["msg_per_s"])
        ratios[f"qos{qos} ours / naive"] = ratio(ours["msg_per_s"], naive["msg_per_s"])
        ratios[f"qos{qos} bytes per reading, ours / naive"] = ratio(ours["bytes_per_reading"]["total"],
                                                                    naive["bytes_per_reading"]["total"])
        ratios[f"qos{qos} ours / limit B (COPY)"] = ratio(ours["msg_per_s"], copy["msg_per_s"])
        for rate in RATES:
            ratios[f"qos{qos} consumer CPU per 1k at {rate}, ours / naive"] = ratio(
                run_cpu_per_1k(pick("ours", qos, rate)), run_cpu_per_1k(pick("naive", qos, rate)))
        at_1000 = pick("ours", qos, 1000)  # the longest steady stream: the checkpoint before it weighs least
        targets += [
            target(f"qos{qos}: ours >= 80% of limit A (QoS 1 receiver, no database)",
                   ratios[f"qos{qos} ours / limit A"], TARGETS["ours_vs_limit_a"], "≥"),
            target(f"qos{qos}: p99 <= 50 ms at 1,000 msg/s", at_1000["latency"]["p99_ms"],
                   TARGETS["p99_at_1000_ms"], "≤"),
            target(f"qos{qos}: ingestor RSS <= 40 MB at saturation", mb(ours["rss_peak_kb"]),
                   TARGETS["ingestor_rss_mb"], "≤"),
            target(f"qos{qos}: PostgreSQL <= 400 bytes per reading (steady, 1,000 msg/s)",
                   at_1000["bytes_per_reading"]["total"], TARGETS["bytes_per_reading"], "≤"),
            target(f"qos{qos}: stack (PostgreSQL + Mosquitto + ingestor) <= 250 MB under load",
                   mb(ours["stack_pss_peak_kb"]), TARGETS["stack_rss_mb"], "≤"),
        ]
        targets += [target(f"qos{qos}: ingestor CPU per 1,000 msgs at {rate}, ours / naive <= 1.0",
                           ratios[f"qos{qos} consumer CPU per 1k at {rate}, ours / naive"],
                           TARGETS["cpu_ours_vs_naive"], "≤") for rate in RATES]
        targets.append(target(f"qos{qos}: ingestor CPU per 1,000 msgs at 1000, ours / naive <= 0.6",
                              ratios[f"qos{qos} consumer CPU per 1k at 1000, ours / naive"],
                              TARGETS["cpu_ours_vs_naive_at_1000"], "≤"))
    if fleet:
        targets += fleet_targets(fleet, ratios)
    for q in (queries or {}).get("queries", []):
        ratios[f"{q['query']}: rollup / raw"] = ratio(q["rollup"]["median_ms"], q["raw"]["median_ms"])
        targets.append(target(f"dashboard '{q['query']}' <= 50 ms", q["rollup"]["median_ms"],
                              TARGETS["dashboard_query_ms"], "≤"))
    for q in (grafana or {}).get("queries", []):
        targets.append(target(f"grafana {q['query']} [{q['range']}] <= 50 ms", q["median_ms"] if q["ok"] else None,
                              TARGETS["dashboard_query_ms"], "≤"))
    return {"ratios": ratios, "targets": targets}


def fleet_targets(fleet: dict, ratios: dict) -> list[dict]:
    """The reference fleet's targets; its ratios go into `ratios`."""
    ours, naive, idle = (fleet_phase_of(fleet, k) for k in ("ours", "naive", "idle"))
    whole = {k: p and p["writes"]["whole_pi_mb_per_day"] for k, p in (("ours", ours), ("naive", naive),
                                                                      ("idle", idle))}
    ratios["reference fleet: whole-Pi writes, ours / naive"] = ratio(whole["ours"], whole["naive"])
    ratios["reference fleet: whole-Pi writes, ours / idle"] = ratio(whole["ours"], whole["idle"])
    device = {k: p and p["device"]["mb_per_day"] for k, p in (("ours", ours), ("naive", naive))}
    ratios["reference fleet: disks' writes (whole machine, raw), ours / naive"] = ratio(device["ours"],
                                                                                      device["naive"])
    ratios["reference fleet: consumer CPU per 1k, ours / naive"] = ratio(
        ours and ours["cpu_s_per_1k"]["consumer"], naive and naive["cpu_s_per_1k"]["consumer"])
    return [
        target("reference fleet: whole-Pi writes per day (amortised), ours / naive <= 0.10",
               ratios["reference fleet: whole-Pi writes, ours / naive"], TARGETS["fleet_writes_ours_vs_naive"], "≤"),
        target("reference fleet: ingestor CPU per 1,000 msgs, ours / naive <= 1.0",
               ratios["reference fleet: consumer CPU per 1k, ours / naive"], TARGETS["cpu_ours_vs_naive"], "≤"),
        target("reference fleet: p99 publish-to-visible, ours (ms)", ours and ours["latency"]["p99_ms"], None,
               "reported"),
    ]


def mb(kb):
    return kb / 1024 if kb else None


def target(name: str, value, limit: float | None, sense: str) -> dict:
    """A target met or missed; with sense "reported", a figure reported with no limit (met is None)."""
    if sense == "reported":
        return {"target": name, "value": value, "limit": None, "met": None}
    met = value is not None and (value >= limit if sense == "≥" else value <= limit)
    return {"target": name, "value": value, "limit": limit, "met": met}


def verdict(t: dict) -> str:
    return "REPORTED" if t["met"] is None else "MET" if t["met"] else "MISSED"


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_table(report: dict) -> str:
    names = {"plain": "limit A (mosquitto_sub)", "naive": "naive (row/commit)", "ours": "ours (datayoti-ingestor)"}
    lines = [f"DataYoti Edge benchmark, {report['started']} ({report['mode']}), "
             f"data set {report['dataset']['rows']:,} rows"]
    if report.get("runs"):
        lines += ["",
                  f"{'consumer':<26}{'qos':>4}{'rate':>6}{'msgs':>7}{'stored':>7}{'msg/s':>9}{'p50 ms':>9}"
                  f"{'p99 ms':>9}{'max ms':>9}{'RSS pk MB':>10}{'RSS st MB':>10}{'CPU s/1k':>9}{'PG s/1k':>8}"
                  f"{'MQ s/1k':>8}{'B/read':>8}{'stack MB':>9}"]
    for r in report.get("runs", []):
        lat = r["latency"]
        parts = r.get("cpu_components_s") or {}
        lines.append(
            f"{names[r['kind']]:<26}{r['qos']:>4}{str(r['rate']):>6}{r['published']:>7}{r['stored']:>7}"
            f"{fmt(r['msg_per_s'], 0):>9}{fmt(lat['p50_ms']):>9}{fmt(lat['p99_ms']):>9}{fmt(lat['max_ms']):>9}"
            f"{fmt(mb(r['rss_peak_kb'])):>10}{fmt(mb(r['rss_steady_kb'])):>10}{fmt(run_cpu_per_1k(r), 2):>9}"
            f"{fmt(cpu_per_1k(parts.get('PostgreSQL'), r['stored']), 2):>8}"
            f"{fmt(cpu_per_1k(parts.get('Mosquitto'), r['stored']), 2):>8}"
            f"{fmt(r['bytes_per_reading']['total'], 0):>8}{fmt(mb(r['stack_pss_peak_kb'])):>9}")
    c = report.get("copy")
    if c:
        lines.append(f"{'limit B (COPY)':<26}{'-':>4}{'-':>6}{c['stored']:>7}{c['stored']:>7}"
                     f"{fmt(c['msg_per_s'], 0):>9}{'':>73}{fmt(c['bytes_per_reading']['total'], 0):>8}")
    lines += fleet_table(report.get("fleet"))
    if report.get("queries"):
        lines += ["", f"{'dashboard query (median of 5)':<34}{'raw ms':>10}{'rollup ms':>11}{'rows raw':>10}"
                      f"{'rows rollup':>12}"]
        for q in report["queries"]["queries"]:
            lines.append(f"{q['query']:<34}{fmt(q['raw']['median_ms']):>10}{fmt(q['rollup']['median_ms']):>11}"
                         f"{q['raw']['rows']:>10}{q['rollup']['rows']:>12}")
    lines += grafana_table(report.get("grafana") or {})
    if report.get("isolation"):
        lines += isolation_table(report["isolation"])
    profile = report.get("profile") or {}
    if profile.get("top_self"):
        lines += ["", "ours at saturation, py-spy self time (threads holding the GIL):"]
        lines += [f"  {p['share']:6.1%}  {p['frame']}" for p in profile["top_self"]]
    elif profile:
        lines += ["", f"py-spy: {profile.get('error')}"]
    lines += ["", "targets:"]
    for t in report["summary"]["targets"]:
        lines.append(f"  {verdict(t):<8}  {t['target']:<66}{fmt(t['value'], 2):>10}")
    why = report["summary"].get("bottlenecks") or []
    if why:
        lines += ["", "bottlenecks of the missed targets:"]
        lines += [f"  - {text}" for text in why]
    lines += ["", "ratios (same run):"]
    lines += [f"  {name:<58}{fmt(value, 3):>10}" for name, value in report["summary"]["ratios"].items()]
    return "\n".join(lines) + "\n"


FLEET_COLUMNS = {"PostgreSQL WAL": "PG WAL", "PostgreSQL FPI": "PG FPI", "PostgreSQL data": "PG data",
                 "Mosquitto": "Mosq", "journald": "journald", "Grafana": "Grafana", "ingestor": "ingestor",
                 "naive consumer": "naive", "rest": "rest"}


def fleet_table(fleet: dict | None) -> list[str]:
    """The reference fleet: MB/day per writer and for the whole Pi, CPU per component, latency, card life."""
    if not fleet:
        return []
    card = fleet["card"]
    lines = ["", f"reference fleet: {fleet['sensors']} sensors, a reading and a heartbeat a minute each (QoS 0, "
                 f"retained status on connect), {fleet['phase_s'] / 60:.1f} min a phase",
             f"{'writes, MB/day':<16}{'s':>7}" + "".join(f"{c:>10}" for c in FLEET_COLUMNS.values())
             + f"{'whole Pi':>10}{'raw':>9}{'card years':>12}"]
    for p in fleet["phases"]:
        per_day = p["writes"]["mb_per_day"]
        cells = "".join(f"{fmt(per_day[w], 1):>10}" for w in FLEET_COLUMNS)
        lines.append(f"{p['kind']:<16}{p['seconds']:>7.0f}{cells}"
                     f"{fmt(p['writes']['whole_pi_mb_per_day'], 1):>10}"
                     f"{fmt(p['writes']['raw_whole_pi_mb_per_day'], 1):>9}{fmt(p['card_lifetime_years'], 1):>12}")
    cycle = fleet["phases"][0]["writes"]["amortised"]["checkpoint_timeout_s"]
    flushes = ", ".join(f"{p['kind']} {fmt(per_minute(p['wal']['wal_writes'], p['seconds']), 1)}/"
                        f"{fmt(per_minute(p['wal']['wal_syncs'], p['seconds']), 1)}" for p in fleet["phases"])
    lines.append(f"  PostgreSQL's WAL writes/syncs a minute (pg_stat_wal, the closing CHECKPOINT's included): "
                 f"{flushes}")
    disks = ", ".join(f"{p['kind']} {fmt(p['device']['mb_per_day'], 1)}" for p in fleet["phases"])
    lines.append(f"  the disks' own count (/proc/diskstats, synced at both ends; the whole machine, host included; "
                 f"raw MB/day): {disks} ({', '.join(fleet['phases'][0]['device']['disks']) or 'no disk seen'})")
    lines.append(f"  MB/day amortised per checkpoint cycle (checkpoint_timeout {cycle / 60:g} min): PG FPI and PG "
                 f"data once a cycle, the rest at the window's rate; raw: the window's bytes x 86400 / its "
                 f"seconds. PG FPI: full-page images (pg_waldump --stats), PG WAL: the WAL less them")
    lines += ["", f"{'CPU and latency':<16}{'published':>10}{'readings':>9}{'beats':>7}{'consumer s/1k':>14}"
                  f"{'PG s/1k':>9}{'MQ s/1k':>9}{'poller s':>9}{'p50 ms':>9}{'p99 ms':>9}"]
    for p in fleet["phases"]:
        per_1k, lat = p["cpu_s_per_1k"], p["latency"]
        lines.append(f"{p['kind']:<16}{p['messages']:>10}{p['stored']['readings']:>9}{p['stored']['heartbeats']:>7}"
                     f"{fmt(per_1k['consumer'], 2):>14}{fmt(per_1k['PostgreSQL'], 2):>9}"
                     f"{fmt(per_1k['Mosquitto'], 2):>9}{fmt(p['cpu_s']['bench poller'], 2):>9}"
                     f"{fmt(lat['p50_ms']):>9}{fmt(lat['p99_ms']):>9}")
    for p in fleet["phases"]:
        rest = ", ".join(f"{u['unit']} {fmt(u['mb_per_day'], 1)}" for u in p["writes"]["rest_top"][:3] if u["bytes"])
        pg = ", ".join(f"{b['backend']} {fmt(b['mb_per_day'], 1)}" for b in p["writes"]["pg_backends"][:3])
        lines.append(f"  {p['kind']}: PostgreSQL by backend (raw MB/day): {pg or '-'}; rest (raw): {rest or '-'}")
    for p in fleet["phases"]:
        journal = p.get("journal_lines_by_unit")
        if journal:
            top = ", ".join(f"{u['unit']} {u['lines']}" for u in journal["top"])
            lines.append(f"  {p['kind']}: journal lines by unit: {top or '-'} (of {journal['lines']}; "
                         f"{journal['bench_lines']} more from the benchmark's SSH sessions left out)")
    lines += [f"  card: {card['name']}, {card['note']} ({card['source']})",
              f"  latency: publish to visible in sensor_data, polled every {fleet['phases'][-1]['poll_every_s']} s "
              "(its resolution); CPU per 1,000 messages published (readings, heartbeats, statuses)",
              "  residual error: a thread's writes and CPU in its last second before it exits are missed",
              *textwrap.wrap(f"method: {fleet['method']}", 116, initial_indent="  ", subsequent_indent="    ")]
    return lines


def grafana_table(grafana: dict) -> list[str]:
    """Each Grafana query's median, as the dashboards and alert rules run it."""
    if not grafana.get("queries"):
        return []
    lines = ["", f"{'grafana query (median of ' + str(grafana['runs']) + ')':<96}{'range':<22}{'ms':>9}{'rows':>8}"]
    for q in grafana["queries"]:
        ms = fmt(q["median_ms"]) if q["ok"] else "FAILED"
        lines.append(f"  {q['query'][:94]:<94}{q['range']:<22}{ms:>9}{fmt(q['rows']):>8}")
        if not q["ok"]:
            lines.append(f"    {q['error'][:200]}")
    return lines


def isolation_table(isolation: dict) -> list[str]:
    """What finding one refused message costs, next to a clean batch of the same size."""
    title = f"one refused message in a batch of {isolation['size']}"
    lines = ["", f"{title:<46}{'clean ms':>10}{'isolated ms':>12}"
                 f"{'x':>6}{'clean WAL B':>12}{'isolated WAL B':>15}{'x':>6}{'writes':>7}{'stored':>7}"]
    for c in isolation["cases"]:
        clean, iso = c["clean"], c["isolated"]
        lines.append(f"  {c['poison']:<44}{fmt(clean['ms']):>10}{fmt(iso['ms']):>12}"
                     f"{fmt(ratio(iso['ms'], clean['ms']), 2):>6}"
                     f"{clean['wal_bytes']:>12,}{iso['wal_bytes']:>15,}"
                     f"{fmt(ratio(iso['wal_bytes'], clean['wal_bytes']), 2):>6}{iso['writes']:>7}{c['stored_once']:>7}")
    return lines


def bottlenecks(runs: list[dict], copy: dict | None, profile: dict | None, targets: list[dict],
                fleet: dict | None = None) -> list[str]:
    """Plain words on what holds each missed target back, from this run's own figures."""
    missed = " ".join(t["target"] for t in targets if t["met"] is False)
    ours = next((r for r in runs if (r["kind"], r["qos"], r["rate"]) == ("ours", 1, 1000)), None)
    found = []
    if "bytes per reading" in missed and ours and ours["stored"] and copy:
        n = ours["stored"]
        found.append(
            f"SD writes: at 1,000 msg/s ours writes {ours['pg']['wal_bytes'] / n:.0f} B of WAL "
            f"({ours['pg']['wal_records'] / n:.1f} records) and {ours['pg']['data_bytes'] / n:.0f} B of pages per "
            f"reading. COPY alone, with no rollups, writes {copy['bytes_per_reading']['total']:.0f} B: the row and "
            "its natural-key index are most of the budget; the rest is the two rollup upserts per reading that "
            "20 ms batches of 50 devices cannot share")
    if "whole-Pi writes" in missed:
        found += fleet_writers(fleet)
    if "CPU per 1,000" in missed:
        found.append("ingestor CPU per 1,000 messages, ours against naive: " + cpu_comparison(runs, fleet))
    if ("limit A" in missed or "CPU per 1,000" in missed) and profile and profile.get("top_self"):
        top = ", ".join(f"{p['frame']} {p['share']:.0%}" for p in profile["top_self"][:4])
        found.append(f"ours at saturation spends its GIL time in: {top}")
    if "stack" in missed:
        found.append("stack memory: PostgreSQL's shared_buffers, touched by the backends, dominate the PSS")
    return found


def biggest_writers(phase: dict, top: int = 4) -> list[tuple[str, float]]:
    """A fleet phase's writers by (amortised) MB/day, biggest first, zeros left out."""
    per_day = phase["writes"]["mb_per_day"]
    return sorted(((w, v) for w, v in per_day.items() if v), key=lambda wv: -wv[1])[:top]


def fleet_writers(fleet: dict | None) -> list[str]:
    """The missed writes target's bottleneck: the biggest writers of ours (and of naive, to compare)."""
    ours, naive = fleet_phase_of(fleet, "ours"), fleet_phase_of(fleet, "naive")
    if not ours:
        return []
    named = ", ".join(f"{w} {v:,.1f}" for w, v in biggest_writers(ours))
    text = (f"SD writes at the reference fleet: ours {fmt(ours['writes']['whole_pi_mb_per_day'], 1)} MB/day for the "
            f"whole Pi (amortised per checkpoint cycle), biggest writers (MB/day): {named}")
    backends = ", ".join(f"{b['backend']} {fmt(b['mb_per_day'], 1)}" for b in ours["writes"]["pg_backends"][:3])
    if backends:
        text += f"; PostgreSQL by backend (raw MB/day): {backends}"
    if naive:
        text += (f". naive: {fmt(naive['writes']['whole_pi_mb_per_day'], 1)} MB/day, "
                 + ", ".join(f"{w} {v:,.1f}" for w, v in biggest_writers(naive)))
    return [text]


def cpu_comparison(runs: list[dict], fleet: dict | None) -> str:
    """Each rate's consumer CPU s per 1,000 messages, ours / naive."""
    parts = []
    ours, naive = fleet_phase_of(fleet, "ours"), fleet_phase_of(fleet, "naive")
    if ours and naive:
        parts.append(f"reference fleet {fmt(ours['cpu_s_per_1k']['consumer'], 2)} s against "
                     f"{fmt(naive['cpu_s_per_1k']['consumer'], 2)}")
    for qos in (0, 1):
        for rate in RATES:
            o, n = (next((r for r in runs if (r["kind"], r["qos"], r["rate"]) == (k, qos, rate)), None)
                    for k in ("ours", "naive"))
            if o and n:
                parts.append(f"qos{qos} {rate} {fmt(run_cpu_per_1k(o), 2)} against {fmt(run_cpu_per_1k(n), 2)}")
    return "; ".join(parts) or "-"


# ------------------------------------------------------------------ main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few seconds of load: checks the report's shape")
    parser.add_argument("--bed", default="bench", help="test bed name (default: bench)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-report", help="report directory")
    parser.add_argument("--days", type=int, help="days of history for the dashboards (default 365, smoke 1)")
    parser.add_argument("--memory", type=int, default=1024, help="the simulated Pi's RAM in MB (default 1024)")
    parser.add_argument("--publishers", type=int, default=2, help="publishing processes (default 2)")
    parser.add_argument("--provision", action="store_true", help="run site.yml even on a Pi that is up")
    parser.add_argument("--down", action="store_true", help="remove the simulated Pi afterwards")
    parser.add_argument("--fleet-minutes", type=float, metavar="M",
                        help=f"minutes of each reference-fleet phase (default {FLEET_MINUTES:g}, smoke "
                             f"{FLEET_SMOKE_S:g} s; at most {FLEET_MAX_MINUTES:g})")
    parser.add_argument("--only", default="all", help="run every step (all, the default) or only the data set "
                                                      "and the reference fleet (fleet)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    validate(args)
    steps = plan(args.smoke, args.fleet_minutes)
    days = args.days or steps["days"]
    args.out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    report = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "mode": "smoke" if args.smoke else "full",
              "targets": TARGETS}
    pi = ensure_pi(args.bed, args.memory, args.provision, log)
    with tempfile.TemporaryDirectory() as tmp:
        creds = fetch_credentials(args.bed, Path(tmp))
    devices = ",".join(c.device_id for c in creds)
    log(f"data set: {SENSORS} sensors x {days} days, one reading a minute")
    report["dataset"] = agent(args.bed, "dataset", "--days", str(days), "--devices", devices, as_postgres=True)
    # First, while nothing of the other steps is left for autovacuum or the checkpointer to write.
    report["fleet"] = fleet(args.bed, pi["address"], creds, steps["fleet_s"], steps["settle_s"], log)
    runs, copy = [], None
    if args.only == "all":
        copy = ingest_and_queries(args, steps, pi, creds, report, runs, log)
    report["summary"] = summarize(runs, copy, report.get("queries"), report.get("grafana"), report["fleet"])
    report["summary"]["bottlenecks"] = bottlenecks(runs, copy, report.get("profile"), report["summary"]["targets"],
                                                   report["fleet"])
    if args.down:
        testbed(args.bed, "down")
    return report


def ingest_and_queries(args: argparse.Namespace, steps: dict, pi: dict, creds, report: dict, runs: list,
                       log) -> dict:
    """The ingest runs (into `runs`), limit B, the dashboards', Grafana's and isolation steps; limit B's result."""
    devices = ",".join(c.device_id for c in creds)
    for qos in (0, 1):
        for rate, count in steps["rates"].items():
            for kind in ("plain", "naive", "ours"):
                log(f"qos {qos}, {rate} msg/s, {count} readings -> {kind}")
                profile_s = steps["profile_s"] if (kind, qos, rate) == ("ours", 1, "max") else 0
                r = measure(args.bed, pi["address"], creds, kind, qos, rate, count, steps["settle_s"],
                            args.publishers, profile_s, args.out)
                r["bytes_per_reading"] = per_reading(r["pg"], r["stored"])
                runs.append(r)
                if "profile" in r:
                    report["profile"] = r.pop("profile")
    report["runs"] = runs
    log(f"limit B: COPY {steps['copy_rows']} rows")
    copy = agent(args.bed, "copy", "--count", str(steps["copy_rows"]), "--devices", devices,
                 "--settle", str(steps["settle_s"]), as_postgres=True)
    copy["bytes_per_reading"] = per_reading(copy["pg"], copy["stored"])
    report["copy"] = copy
    log("dashboard queries")
    report["queries"] = agent(args.bed, "queries", "--device", creds[0].device_id, "--site", "SITE_001",
                              "--ends", str(report["dataset"]["ends"]), "--runs", str(steps["query_runs"]))
    log("Grafana's dashboard and alert queries")
    report["grafana"] = grafana_timings(args.bed, report["dataset"]["ends"], steps["query_runs"])
    log("isolating messages the database refuses, in batches of 200")
    report["isolation"] = agent(args.bed, "isolation", "--size", "200")
    return copy


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: error: run as root (the test bed makes namespaces and containers)", file=sys.stderr)
        return 2
    try:
        report = run(args)
    except (BenchError, ValueError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    table = render_table(report)
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "report.txt").write_text(table)
    print(table)
    print(f"bench: wrote {args.out / 'report.json'} and {args.out / 'report.txt'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
