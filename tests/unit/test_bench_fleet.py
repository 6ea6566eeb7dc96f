"""The reference fleet's pure logic (issue 12): per-thread accounting, writers, MB/day, card life, targets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench  # noqa: E402
import pi_agent  # noqa: E402


def owner(pid=10, comm="python3", unit="-", cmdline="", is_bench=False):
    return {"pid": pid, "comm": comm, "unit": unit, "cmdline": cmdline, "bench": is_bench}


# ------------------------------------------------------------------ per-thread accounting

def test_a_thread_present_at_the_start_counts_from_its_first_sample():
    ledger = pi_agent.ThreadLedger()
    o = owner()
    ledger.add({(1, 100): (o, (5000, 0, 7))})
    ledger.add({(1, 100): (o, (9000, 1000, 10))})
    assert ledger.deltas() == {(1, 100): (o, (4000, 1000, 3))}


def test_a_thread_born_during_the_phase_counts_from_zero():
    ledger = pi_agent.ThreadLedger()
    o = owner()
    ledger.add({})
    ledger.add({(2, 300): (o, (4096, 0, 2))})
    ledger.add({(2, 300): (o, (8192, 0, 5))})
    assert ledger.deltas()[(2, 300)][1] == (8192, 0, 5)


def test_a_thread_that_exits_keeps_its_last_sample_and_a_reused_tid_is_another_thread():
    ledger = pi_agent.ThreadLedger()
    o = owner()
    ledger.add({(3, 100): (o, (0, 0, 0))})
    ledger.add({(3, 100): (o, (8192, 0, 1))})
    ledger.add({})  # exited
    ledger.add({(3, 900): (o, (4096, 0, 1))})  # the same tid, started later: a new thread
    deltas = ledger.deltas()
    assert deltas[(3, 100)][1] == (8192, 0, 1)
    assert deltas[(3, 900)][1] == (4096, 0, 1)
    assert pi_agent.group_totals(deltas, lambda _: "all") == {"all": {"bytes": 12288, "cpu_ticks": 2}}


def test_cancelled_writes_are_subtracted_and_a_group_never_goes_below_zero():
    o = owner()
    deltas = {(1, 1): (o, (4096, 0, 0)), (2, 1): (o, (0, 8192, 0))}
    assert pi_agent.group_totals(deltas, lambda _: "g")["g"]["bytes"] == 0
    assert pi_agent.written((10000, 4000, 0)) == 6000


@st.composite
def thread_histories(draw):
    """Samples of threads that come and go, each thread's counters only growing."""
    threads = draw(st.lists(st.tuples(st.integers(1, 5), st.integers(0, 3)), min_size=1, max_size=6, unique=True))
    samples = draw(st.integers(1, 6))
    alive = {t: sorted(draw(st.sets(st.integers(0, samples - 1), min_size=1))) for t in threads}
    values = {t: draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**5), st.integers(0, 100)),
                               min_size=samples, max_size=samples)) for t in threads}
    history = []
    for i in range(samples):
        snapshot = {}
        for t in threads:
            if alive[t][0] <= i <= alive[t][-1]:  # alive over one span of samples
                grown = tuple(map(sum, zip(*values[t][:i + 1], strict=True)))  # cumulative counters
                snapshot[t] = (owner(pid=t[0]), grown)
        history.append(snapshot)
    return history


@settings(max_examples=200, deadline=None)
@given(thread_histories())
def test_delta_accounting_counts_each_thread_once_and_never_negative(history):
    ledger = pi_agent.ThreadLedger()
    for snapshot in history:
        ledger.add(snapshot)
    deltas = ledger.deltas()
    seen = {key for snapshot in history for key in snapshot}
    assert set(deltas) == seen  # every thread once, none twice
    for key, (_, counters) in deltas.items():
        assert all(c >= 0 for c in counters)
        first = next(i for i, snapshot in enumerate(history) if key in snapshot)
        last = max(i for i, snapshot in enumerate(history) if key in snapshot)
        base = history[0][key][1] if first == 0 else (0, 0, 0)
        assert counters == tuple(b - a for a, b in zip(base, history[last][key][1], strict=True))
    totals = pi_agent.group_totals(deltas, lambda o: o["pid"] % 2)
    assert all(t["bytes"] >= 0 and t["cpu_ticks"] >= 0 for t in totals.values())
    assert sum(t["cpu_ticks"] for t in totals.values()) == sum(c[2] for _, c in deltas.values())


# ------------------------------------------------------------------ who writes

@pytest.mark.parametrize(("text", "unit"), [
    ("12:pids:/system.slice/mosquitto.service\n1:name=systemd:/system.slice/mosquitto.service\n",
     "mosquitto.service"),
    ("1:name=systemd:/datayoti-testbed/h12/pi1/system.slice/postgresql@17-main.service\n",
     "postgresql@17-main.service"),
    ("0::/system.slice/systemd-journald.service\n", "systemd-journald.service"),
    ("0::/user.slice/user-0.slice/session-4.scope\n", "session-4.scope"),
    ("1:name=systemd:/\n", "-"),
    ("", "-"),
])
def test_a_process_unit_from_its_cgroup_line(text, unit):
    assert pi_agent.unit_of(text) == unit


@pytest.mark.parametrize(("cmdline", "backend"), [
    ("/usr/lib/postgresql/17/bin/postgres\0-D\0/var/lib/postgresql/17/main\0", "postmaster"),
    ("postgres: 17/main: checkpointer ", "checkpointer"),
    ("postgres: 17/main: background writer ", "background writer"),
    ("postgres: 17/main: walwriter ", "walwriter"),
    ("postgres: 17/main: autovacuum worker datayoti_db", "autovacuum worker"),
    ("postgres: 17/main: TimescaleDB Background Worker Scheduler ", "timescaledb worker"),
    ("postgres: 17/main: mqtt_ingestor datayoti_db 127.0.0.1(40312) idle", "client mqtt_ingestor"),
    ("postgres: walwriter ", "walwriter"),
    ("postgres: grafana_reader datayoti_db [local] SELECT", "client grafana_reader"),
])
def test_a_postgres_process_by_backend(cmdline, backend):
    assert pi_agent.pg_backend(cmdline) == backend


def test_writers_by_unit_consumer_and_bench():
    assert pi_agent.writer_of(owner(comm="mosquitto", unit="mosquitto.service")) == "Mosquitto"
    assert pi_agent.writer_of(owner(comm="systemd-journal", unit="systemd-journald.service")) == "journald"
    assert pi_agent.writer_of(owner(comm="grafana", unit="grafana-server.service")) == "Grafana"
    assert pi_agent.writer_of(owner(comm="datayoti-ingest", unit="datayoti-ingestor.service")) == "ingestor"
    assert pi_agent.writer_of(owner(comm="postgres", unit="postgresql@17-main.service")) == "PostgreSQL"
    assert pi_agent.writer_of(owner(comm="sshd", unit="ssh.service")) == "rest"
    assert pi_agent.writer_of(owner(pid=7, is_bench=True), naive_pid=7) == "naive consumer"
    assert pi_agent.writer_of(owner(pid=8, is_bench=True), naive_pid=7) == "bench"
    assert pi_agent.writer_of(owner(pid=9, comm="postgres"), poller_pid=9) == "bench poller"


def test_descendants_of_the_agent_are_the_benchs():
    parents = {5: 1, 6: 5, 7: 6, 8: 1}
    assert pi_agent.descends_from(7, 5, parents)
    assert not pi_agent.descends_from(8, 5, parents)
    assert not pi_agent.descends_from(5, 5, parents)


def test_postgres_split_into_wal_and_data():
    assert pi_agent.split_postgres(10_000, 3_000) == (7_000, 3_000)
    assert pi_agent.split_postgres(10_000, 20_000) == (0, 10_000)  # data never more than the total


def test_writes_breakdown_per_writer_whole_pi_and_rest():
    pg = owner(pid=2, comm="postgres", unit="postgresql@17-main.service", cmdline="postgres: 17/main: checkpointer ")
    deltas = {
        (1, 1): (owner(pid=1, comm="mosquitto", unit="mosquitto.service"), (1000, 0, 5)),
        (2, 1): (pg, (8000, 0, 10)),
        (3, 1): (owner(pid=3, comm="sshd", unit="ssh.service"), (500, 0, 1)),
        (4, 1): (owner(pid=4, is_bench=True), (9999, 0, 50)),
        (5, 1): (owner(pid=5, comm="postgres"), (100, 0, 3)),
    }
    w = pi_agent.writes_breakdown(deltas, 86400.0, pg_io_data_bytes=3000, poller_pid=5)
    assert list(w["bytes"]) == list(pi_agent.WRITERS)
    assert w["bytes"]["PostgreSQL data"] == 3000 and w["bytes"]["PostgreSQL WAL"] == 5000
    assert w["bytes"]["Mosquitto"] == 1000 and w["bytes"]["rest"] == 500 and w["bytes"]["Grafana"] == 0
    assert w["whole_pi_bytes"] == 9500  # the bench's own processes left out
    assert w["whole_pi_mb_per_day"] == pytest.approx(0.0095)
    assert w["excluded_bytes"] == {"bench": 9999, "bench poller": 100}
    assert w["rest_top"][0]["unit"] == "ssh.service"
    assert w["pg_backends"][0]["backend"] == "checkpointer"
    cpu = pi_agent.cpu_breakdown(deltas, poller_pid=5)
    assert cpu["PostgreSQL"] == pytest.approx(10 / pi_agent.CLK_TCK)
    assert cpu["bench poller"] == pytest.approx(3 / pi_agent.CLK_TCK)


def test_mb_per_day_and_card_lifetime():
    assert pi_agent.mb_per_day(1_000_000, 3600) == pytest.approx(24.0)
    assert pi_agent.mb_per_day(1, 0) is None
    assert bench.lifetime_years(32e9 * 1000 / 365) == pytest.approx(1.0)
    assert bench.lifetime_years(1e9, rating_bytes=365e9) == pytest.approx(1.0)
    assert bench.lifetime_years(0) is None
    assert bench.CARD["rating_bytes"] == bench.CARD["capacity_bytes"] * bench.CARD["pe_cycles"]
    assert bench.CARD["source"].startswith("https://")


# ------------------------------------------------------------------ the fleet's figures and targets

def phase(kind, seconds=900.0, whole=1e6, consumer_cpu=1.0, messages=1550, p99=120.0):
    cpu = {"ingestor": consumer_cpu if kind != "naive" else 0.1, "naive consumer": consumer_cpu if kind == "naive"
           else 0.0, "PostgreSQL": 2.0, "Mosquitto": 0.5, "bench poller": 0.3, "rest": 1.0}
    nbytes = {w: 0 for w in pi_agent.WRITERS} | {"PostgreSQL WAL": whole * 0.6, "journald": whole * 0.4}
    per_day = {w: b / seconds * 86400 / 1e6 for w, b in nbytes.items()}
    return bench.fleet_figures({
        "kind": kind, "seconds": seconds, "messages": messages if kind != "idle" else 0, "cpu_s": cpu,
        "wal": {"fpi_bytes": 0, "wal_writes": 60, "wal_syncs": 30}, "checkpoint_timeout_s": seconds,  # no amortising
        "device": {"disks": ["vda"], "bytes": whole * 1.5},
        "writes": {"bytes": nbytes, "whole_pi_bytes": whole, "whole_pi_mb_per_day": whole / seconds * 86400 / 1e6,
                   "mb_per_day": per_day, "pg_backends": [{"backend": "client mqtt_ingestor", "bytes": 1,
                                                           "mb_per_day": 5.0}], "rest_top": []},
        "latency": {"p50_ms": 30.0, "p99_ms": p99 if kind != "idle" else None, "max_ms": None, "samples": 0},
        "stored": {"readings": 750, "heartbeats": 750}, "poll_every_s": 0.1})


def fleet_of(ours_whole=1e6, naive_whole=2e6, ours_cpu=1.0, naive_cpu=2.0):
    return {"phase_s": 900.0, "sensors": 50, "card": bench.CARD, "method": bench.FLEET_METHOD,
            "phases": [phase("idle", whole=5e5), phase("naive", whole=naive_whole, consumer_cpu=naive_cpu),
                       phase("ours", whole=ours_whole, consumer_cpu=ours_cpu)]}


def test_fleet_figures_cpu_per_1k_and_lifetime():
    p = phase("ours", seconds=86400, whole=32e9 * 1000 / 365, consumer_cpu=1.55, messages=1550)
    assert p["cpu_s_per_1k"]["consumer"] == pytest.approx(1.0)
    assert p["cpu_s_per_1k"]["PostgreSQL"] == pytest.approx(2.0 / 1.55)
    assert p["card_lifetime_years"] == pytest.approx(1.0)
    assert phase("idle")["cpu_s_per_1k"]["consumer"] is None  # no messages


def test_fleet_targets_writes_cpu_and_reported_latency():
    summary = bench.summarize([], None, None, None, fleet_of(ours_whole=1e5, naive_whole=2e6, ours_cpu=1.0,
                                                             naive_cpu=2.0))
    targets = {t["target"]: t for t in summary["targets"]}
    writes = targets["reference fleet: whole-Pi writes per day (amortised), ours / naive <= 0.10"]
    assert writes["met"] and writes["value"] == pytest.approx(0.05)
    assert targets["reference fleet: ingestor CPU per 1,000 msgs, ours / naive <= 1.0"]["met"]
    latency = targets["reference fleet: p99 publish-to-visible, ours (ms)"]
    assert latency["met"] is None and latency["value"] == 120.0 and bench.verdict(latency) == "REPORTED"
    missed = bench.summarize([], None, None, None, fleet_of(ours_whole=3e6, naive_whole=2e6, ours_cpu=3.0))
    assert [t["met"] for t in missed["targets"]] == [False, False, None]
    assert missed["ratios"]["reference fleet: whole-Pi writes, ours / naive"] == pytest.approx(1.5)


def run_of(kind, qos, rate, cpu_s, stored=1000, msg_per_s=1000.0):
    return {"kind": kind, "qos": qos, "rate": rate, "cpu_s": cpu_s, "stored": stored, "published": stored,
            "msg_per_s": msg_per_s, "latency": {"p50_ms": 1.0, "p99_ms": 10.0, "max_ms": 20.0},
            "rss_peak_kb": 30 * 1024, "rss_steady_kb": 30 * 1024, "stack_pss_peak_kb": 200 * 1024,
            "bytes_per_reading": {"total": 300.0}, "pg": {"wal_bytes": 1, "data_bytes": 1, "wal_records": 1},
            "cpu_components_s": {"PostgreSQL": 0.5, "Mosquitto": 0.2, "bench poller": 0.1}}


def runs_of(ours_cpu: dict, naive_cpu: float = 0.3, limit_a: float = 1000.0):
    runs = []
    for qos in (0, 1):
        for rate in bench.RATES:
            runs += [run_of("plain", qos, rate, 0.1, msg_per_s=limit_a), run_of("naive", qos, rate, naive_cpu),
                     run_of("ours", qos, rate, ours_cpu[rate], msg_per_s=900.0)]
    return runs


def test_cpu_targets_at_every_rate_and_the_tighter_one_at_1000():
    runs = runs_of({100: 0.3, 1000: 0.15, "max": 0.45})
    copy = {"msg_per_s": 5000.0, "bytes_per_reading": {"total": 200.0}}
    targets = {t["target"]: t["met"] for t in bench.summarize(runs, copy, None)["targets"]}
    assert targets["qos0: ingestor CPU per 1,000 msgs at 100, ours / naive <= 1.0"]  # 1.0
    assert targets["qos1: ingestor CPU per 1,000 msgs at 1000, ours / naive <= 0.6"]  # 0.5
    assert not targets["qos1: ingestor CPU per 1,000 msgs at max, ours / naive <= 1.0"]  # 1.5
    assert targets["qos0: ours >= 80% of limit A (QoS 1 receiver, no database)"]  # 0.9
    assert not any("10x naive" in name for name in targets)
    summary = bench.summarize(runs, copy, None)
    assert summary["ratios"]["qos0 ours / naive"] == pytest.approx(0.9)  # the ratio stays, as a ratio
    assert len(summary["targets"]) == 18


def test_a_missed_writes_target_names_the_biggest_writers():
    fleet = fleet_of(ours_whole=3e6, naive_whole=2e6, ours_cpu=3.0)
    summary = bench.summarize([], None, None, None, fleet)
    why = bench.bottlenecks([], None, None, summary["targets"], fleet)
    writes = next(text for text in why if text.startswith("SD writes at the reference fleet"))
    assert "PostgreSQL WAL" in writes and "journald" in writes and "client mqtt_ingestor" in writes
    assert writes.index("PostgreSQL WAL") < writes.index("journald")  # biggest first
    assert any(text.startswith("ingestor CPU per 1,000 messages") for text in why)
    met = bench.summarize([], None, None, None, fleet_of(ours_whole=1e5, ours_cpu=1.0))
    assert bench.bottlenecks([], None, None, met["targets"], fleet) == []  # a reported figure is not missed


def test_the_fleet_table_lists_every_phase_and_writer():
    report = {"started": "now", "mode": "smoke", "dataset": {"rows": 1}, "fleet": fleet_of(),
              "summary": bench.summarize([], None, None, None, fleet_of())}
    table = bench.render_table(report)
    assert "reference fleet: 50 sensors" in table
    for kind in bench.FLEET_PHASES:
        assert sum(line.startswith(kind + " ") for line in table.splitlines()) == 2, table
    for column in bench.FLEET_COLUMNS.values():
        assert column in table
    assert "REPORTED" in table and bench.CARD["source"] in table


def test_fleet_options_are_validated():
    def args(**kw):
        return argparse.Namespace(**{"days": None, "publishers": 2, "fleet_minutes": None, "only": "all", **kw})

    bench.validate(args(fleet_minutes=3))
    for minutes in (0, -1, float("nan"), bench.FLEET_MAX_MINUTES + 1):
        with pytest.raises(bench.BenchError, match="--fleet-minutes"):
            bench.validate(args(fleet_minutes=minutes))
    with pytest.raises(bench.BenchError, match="--only"):
        bench.validate(args(only="ingest"))
    assert bench.plan(False)["fleet_s"] == 15 * 60
    assert bench.plan(True)["fleet_s"] == bench.FLEET_SMOKE_S
    assert bench.plan(True, 0.5)["fleet_s"] == 30
    assert bench.parse_args(["--fleet-minutes", "3", "--only", "fleet"]).fleet_minutes == 3.0


def test_agent_fleet_arguments():
    parsed = pi_agent.parse_args(["fleet", "--kind", "idle", "--since", "0", "--devices", "a"])
    assert parsed.kind == "idle"
    with pytest.raises(SystemExit):
        pi_agent.parse_args(["fleet", "--kind", "plain", "--since", "0", "--devices", "a"])


# ------------------------------------------------------------------ amortised per checkpoint cycle

def test_amortised_per_day_counts_the_per_cycle_bytes_once_a_cycle():
    # 15 min window, 1 h checkpoint_timeout: continuous x 96 a day, per-cycle x 24
    assert bench.amortised_per_day(1e6, 2e6, 900, 3600) == pytest.approx(1e6 * 96 + 2e6 * 24)
    # a window longer than the cycle is its own cycle: everything at the window's rate
    assert bench.amortised_per_day(1e6, 2e6, 7200, 3600) == pytest.approx(3e6 * 12)
    assert bench.amortised_per_day(0, 8640, 86400, 3600) == pytest.approx(8640)
    assert bench.amortised_per_day(1, 1, 0, 3600) is None


def test_postgres_wal_split_into_fpi_and_the_rest():
    nbytes = {w: 0 for w in pi_agent.WRITERS} | {"PostgreSQL WAL": 10_000, "PostgreSQL data": 3_000}
    split = bench.split_fpi(nbytes, 4_000)
    assert list(split) == list(bench.FLEET_WRITERS)
    assert split["PostgreSQL WAL"] == 6_000 and split["PostgreSQL FPI"] == 4_000
    over = bench.split_fpi(nbytes, 25_000)  # more FPI bytes generated than WAL written: capped, WAL floored at 0
    assert over["PostgreSQL WAL"] == 0 and over["PostgreSQL FPI"] == 10_000
    assert sum(over.values()) == sum(nbytes.values())


def test_amortise_per_writer_and_whole_pi():
    nbytes = {w: 0 for w in pi_agent.WRITERS} | {"PostgreSQL WAL": 5e6, "PostgreSQL data": 2e6, "journald": 1e6}
    a = bench.amortise(nbytes, 3e6, 180, 3600)
    assert a["cycle_s"] == 3600 and a["checkpoint_timeout_s"] == 3600
    assert a["per_cycle_bytes"] == 5e6 and a["continuous_bytes"] == 3e6
    assert a["mb_per_day"]["PostgreSQL WAL"] == pytest.approx(2 * 480)  # continuous: x 480 for 3 min
    assert a["mb_per_day"]["PostgreSQL FPI"] == pytest.approx(3 * 24)  # once an hour
    assert a["mb_per_day"]["PostgreSQL data"] == pytest.approx(2 * 24)
    assert a["mb_per_day"]["journald"] == pytest.approx(480)
    assert a["whole_pi_mb_per_day"] == pytest.approx(sum(a["mb_per_day"].values()))


def test_fleet_figures_amortise_and_keep_the_raw_window():
    nbytes = {w: 0 for w in pi_agent.WRITERS} | {"PostgreSQL WAL": 4e6, "PostgreSQL data": 1e6}
    raw = {w: b / 900 * 86400 / 1e6 for w, b in nbytes.items()}
    p = bench.fleet_figures({
        "kind": "idle", "seconds": 900.0, "messages": 0, "checkpoint_timeout_s": 3600, "wal": {"fpi_bytes": 3e6},
        "device": {"disks": [], "bytes": 0},
        "cpu_s": {"ingestor": 0.0, "naive consumer": 0.0, "PostgreSQL": 1.0, "Mosquitto": 0.0},
        "writes": {"bytes": nbytes, "whole_pi_bytes": 5e6, "mb_per_day": raw, "whole_pi_mb_per_day": 480.0}})
    w = p["writes"]
    assert w["raw_whole_pi_mb_per_day"] == 480.0 and w["raw_mb_per_day"] == raw and w["whole_pi_bytes"] == 5e6
    assert w["fpi_bytes"] == 3e6
    assert w["whole_pi_mb_per_day"] == pytest.approx(1 * 96 + 4 * 24)  # WAL less FPI x 96; FPI + data x 24
    assert p["card_lifetime_years"] == pytest.approx(bench.lifetime_years(w["whole_pi_mb_per_day"] * 1e6))
    assert p["device"]["mb_per_day"] is None  # no disk seen: no figure, not a zero
    assert bench.fleet_figures(p) == p  # idempotent


def test_the_writes_ratio_compares_amortised_figures():
    fleet = fleet_of(ours_whole=1e5, naive_whole=2e6)
    for p in fleet["phases"]:
        p["writes"]["whole_pi_mb_per_day"] = {"idle": 10.0, "naive": 100.0, "ours": 5.0}[p["kind"]]
    ratios = bench.summarize([], None, None, None, fleet)["ratios"]
    assert ratios["reference fleet: whole-Pi writes, ours / naive"] == pytest.approx(0.05)
    assert ratios["reference fleet: whole-Pi writes, ours / idle"] == pytest.approx(0.5)


def test_the_fleet_table_says_how_writes_are_amortised():
    report = {"started": "now", "mode": "smoke", "dataset": {"rows": 1}, "fleet": fleet_of(),
              "summary": bench.summarize([], None, None, None, fleet_of())}
    table = bench.render_table(report)
    assert "PG FPI" in table and "amortised per checkpoint cycle" in table and "raw" in table
    assert "method: writes:" in table and "underestimates" in table
    # 60 writes and 30 syncs in 900 s; the disks' count of the whole machine, raw, and its ratio
    assert "WAL writes/syncs a minute (pg_stat_wal, the closing CHECKPOINT's included): idle 4.0/2.0" in table
    assert "raw MB/day): idle 72.0, naive 288.0, ours 144.0 (vda)" in table
    assert report["summary"]["ratios"]["reference fleet: disks' writes (whole machine, raw), ours / naive"] == 0.5
    assert all(len(line) <= 200 for line in table.splitlines() if "method" in line)


# A real `pg_waldump --stats=record` of a simulated Pi (PostgreSQL 17), between two positions: 2,000 rows
# inserted then updated in a new table right after a CHECKPOINT.
WALDUMP_SAMPLE = """\
WAL statistics between 0/186AD00 and 0/18D96E8:
Type                                           N      (%)          Record size      (%)             FPI size      (%)        Combined size      (%)
----                                           -      ---          -----------      ---             --------      ---        -------------      ---
Transaction/COMMIT                             1 (  0.02)                  821 (  0.21)                    0 (  0.00)                  821 (  0.19)
Storage/CREATE                                 1 (  0.02)                   42 (  0.01)                    0 (  0.00)                   42 (  0.01)
Standby/LOCK                                   1 (  0.02)                   42 (  0.01)                    0 (  0.00)                   42 (  0.01)
Heap2/MULTI_INSERT                             5 (  0.08)                 1078 (  0.28)                 7420 ( 17.18)                 8498 (  1.96)
Heap/INSERT                                 1994 ( 32.95)               117818 ( 30.17)                 1260 (  2.92)               119078 ( 27.46)
Heap/DELETE                                   13 (  0.21)                  702 (  0.18)                    0 (  0.00)                  702 (  0.16)
Heap/UPDATE                                 1991 ( 32.90)               155298 ( 39.77)                    0 (  0.00)               155298 ( 35.81)
Heap/LOCK                                   2000 ( 33.05)               108000 ( 27.66)                    0 (  0.00)               108000 ( 24.90)
Heap/INSERT+INIT                               9 (  0.15)                  531 (  0.14)                    0 (  0.00)                  531 (  0.12)
Heap/UPDATE+INIT                               9 (  0.15)                  702 (  0.18)                    0 (  0.00)                  702 (  0.16)
Btree/INSERT_LEAF                             26 (  0.43)                 1629 (  0.42)                31873 ( 73.81)                33502 (  7.73)
Btree/INSERT_UPPER                             1 (  0.02)                   63 (  0.02)                  130 (  0.30)                  193 (  0.04)
Btree/SPLIT_L                                  1 (  0.02)                 3743 (  0.96)                 2497 (  5.78)                 6240 (  1.44)
                                        --------                      --------                      --------                      --------
Total                                       6052                        390469 [90.04%]                43180 [9.96%]                433649 [100%]
"""  # noqa: E501 (pg_waldump's own line width)


def test_waldump_totals_from_a_real_sample():
    stats = pi_agent.parse_waldump_stats(WALDUMP_SAMPLE)
    assert stats == {"records": 6052, "record_bytes": 390469, "fpi_bytes": 43180, "combined_bytes": 433649}
    per_record = [line.split(")")[2].split("(")[0] for line in WALDUMP_SAMPLE.splitlines()[3:-2]]
    assert sum(int(v) for v in per_record) == stats["fpi_bytes"]  # the FPI column, summed
    assert stats["combined_bytes"] == stats["record_bytes"] + stats["fpi_bytes"]
    assert pi_agent.parse_waldump_stats("pg_waldump: error: could not find file") is None


def test_wal_stats_of_two_ranges_add_up():
    a = {"records": 2, "record_bytes": 100, "fpi_bytes": 8000, "combined_bytes": 8100, "error": None}
    b = {"records": 1, "record_bytes": 50, "fpi_bytes": 0, "combined_bytes": 50, "error": "invalid record length"}
    assert pi_agent.add_wal_stats(a, b) == {"records": 3, "record_bytes": 150, "fpi_bytes": 8000,
                                            "combined_bytes": 8150, "errors": ["invalid record length"]}


# ------------------------------------------------------------------ journald's lines by unit

def test_journal_lines_by_unit_leave_out_the_benchmarks_ssh_sessions():
    import json

    entries = ([{"_SYSTEMD_UNIT": "mosquitto.service"}] * 3 + [{"_SYSTEMD_UNIT": "datayoti-ingestor.service"}] * 2
               + [{"_SYSTEMD_UNIT": "ssh.service"}, {"_SYSTEMD_UNIT": "systemd-logind.service"},
                  {"_SYSTEMD_UNIT": "session-12.scope"}, {"_SYSTEMD_UNIT": "user@0.service"},
                  {"_SYSTEMD_UNIT": "init.scope", "UNIT": "session-12.scope"},
                  {"_SYSTEMD_UNIT": "init.scope", "UNIT": "cron.service"}, {"_TRANSPORT": "kernel"}])
    lines = [json.dumps(e) for e in entries] + ["not json"]
    got = pi_agent.journal_lines_by_unit(lines, top=2)
    assert got == {"top": [{"unit": "mosquitto.service", "lines": 3}, {"unit": "datayoti-ingestor.service",
                                                                       "lines": 2}],
                   "lines": 7, "bench_lines": 5}
