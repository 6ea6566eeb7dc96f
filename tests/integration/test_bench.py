"""Issues 4 and 12: the benchmark runs end to end (smoke size) and writes a complete report."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import grafana_sql
from conftest import REPO, require_root

BENCH = REPO / "tests" / "bench" / "bench.py"
KINDS = {"plain", "naive", "ours"}
WRITERS = {"PostgreSQL WAL", "PostgreSQL data", "Mosquitto", "journald", "Grafana", "ingestor", "naive consumer",
           "rest"}
AMORTISED = WRITERS | {"PostgreSQL FPI"}  # PostgreSQL's WAL split: its full-page images apart
TARGETS = 26  # 9 per QoS, 3 of the reference fleet, 5 dashboard queries; then one per Grafana query


def test_bench_smoke_writes_a_complete_report(tmp_path):
    require_root()
    result = subprocess.run([sys.executable, str(BENCH), "--smoke", "--bed", "bench-smoke", "--out", str(tmp_path),
                             "--down"], text=True, capture_output=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    table = (tmp_path / "report.txt").read_text()

    runs = report["runs"]
    assert {(r["kind"], r["qos"], str(r["rate"])) for r in runs} == {
        (k, q, r) for k in KINDS for q in (0, 1) for r in ("100", "1000", "max")}
    for r in runs:
        assert r["stored"] == r["published"], r  # nothing lost in any consumer
        assert r["msg_per_s"] > 0 and r["latency"]["p99_ms"] is not None, r
        assert r["cpu_s"] is not None and r["rss_peak_kb"] and r["stack_pss_peak_kb"], r
        if r["kind"] != "plain":
            assert r["pg"]["wal_bytes"] > 0 and r["bytes_per_reading"]["total"] > 0, r
    for r in runs:
        if r["kind"] != "plain":
            assert r["cpu_components_s"]["PostgreSQL"] > 0, r
        assert r["cpu_components_s"]["Mosquitto"] is not None, r
    check_fleet(report["fleet"], table)
    assert report["copy"]["msg_per_s"] > 0
    assert report["dataset"]["rows"] == 50 * 1440
    assert [q["query"] for q in report["queries"]["queries"]] == [
        "latest reading per device", "device health", "24 h raw, one device", "30 days hourly, all devices",
        "1 year daily, one site"]
    assert all(q["raw"]["median_ms"] > 0 and q["rollup"]["median_ms"] > 0 for q in report["queries"]["queries"])
    assert "top_self" in report["profile"], report["profile"]
    isolation = report["isolation"]
    assert isolation["size"] == 200 and len(isolation["cases"]) == 4, isolation
    for case in isolation["cases"]:
        assert case["isolated"]["refused"] == 1 and case["stored_once"] == 199, case
        assert case["clean"]["wal_bytes"] > 0 and case["isolated"]["ms"] > 0, case
    assert "one refused message in a batch of 200" in table, table
    ratios = report["summary"]["ratios"]
    for name in ("qos0 ours / limit A", "qos1 ours / naive", "qos1 bytes per reading, ours / naive"):
        assert ratios[name] is not None, name
    grafana = report["grafana"]["queries"]
    failed = [q for q in grafana if not q["ok"]]
    assert not failed, failed
    assert all(q["median_ms"] > 0 and len(q["runs_ms"]) == 5 for q in grafana), grafana
    files = REPO / "roles" / "grafana" / "files"
    dashboards = [grafana_sql.load_dashboard(p) for p in sorted((files / "dashboards").glob("*.json"))]
    rules = grafana_sql.load_alert_rules(files / "alerting" / "datayoti-alert-rules.yaml", "datayoti-timescaledb")
    every = {q.name for d in dashboards for q in d.queries} | {r.name for r in rules}
    assert {q["query"] for q in grafana} == every  # every panel, variable and alert query is timed
    assert {q["range"] for q in grafana if "/ panel " in q["query"]} >= {"now-1y"}
    assert len(report["summary"]["targets"]) == TARGETS + len(grafana)
    target_lines = [line for line in table.splitlines() if line.lstrip().startswith(("MET", "MISSED", "REPORTED"))]
    assert len(target_lines) == TARGETS + len(grafana), table
    assert sum("grafana " in line and "<= 50 ms" in line for line in target_lines) == len(grafana), table
    assert table.rstrip().splitlines()[-1].lstrip().startswith("1 year daily, one site: rollup / raw"), table


def check_fleet(fleet: dict, table: str) -> None:
    """The reference fleet's phases, each with every writer, the whole Pi's writes, CPU and, with publishers,
    latency; and its table."""
    phases = {p["kind"]: p for p in fleet["phases"]}
    assert list(phases) == ["idle", "naive", "ours"], fleet
    assert fleet["card"]["source"].startswith("https://") and fleet["card"]["rating_bytes"] > 0
    for kind, p in phases.items():
        writes = p["writes"]
        assert set(writes["bytes"]) == WRITERS and set(writes["raw_mb_per_day"]) == WRITERS, writes
        assert set(writes["mb_per_day"]) == AMORTISED, writes
        assert writes["whole_pi_mb_per_day"] > 0 and p["card_lifetime_years"] > 0, (kind, writes)
        # amortised per checkpoint cycle: the FPI bytes pg_waldump counted, the raw window kept
        amortised = writes["amortised"]
        assert p["checkpoint_timeout_s"] > 0 and amortised["cycle_s"] >= p["seconds"], (kind, amortised)
        assert p["wal"]["records"] > 0 and p["wal"]["fpi_bytes"] >= writes["fpi_bytes"] >= 0, (kind, p["wal"])
        assert amortised["whole_pi_mb_per_day"] == writes["whole_pi_mb_per_day"], (kind, writes)
        assert 0 < writes["whole_pi_mb_per_day"] <= writes["raw_whole_pi_mb_per_day"], (kind, writes)
        assert amortised["continuous_bytes"] + amortised["per_cycle_bytes"] == writes["whole_pi_bytes"], writes
        assert "top" in p["journal_lines_by_unit"], p
        assert p["wal"]["wal_syncs"] >= 1 and p["wal"]["wal_writes"] >= 1, p["wal"]  # the closing CHECKPOINT's
        assert p["device"]["disks"] and p["device"]["bytes"] >= 0 and p["device"]["mb_per_day"] >= 0, p["device"]
        assert p["seconds"] > 10 and p["threads"]["seen"] > 0, p
        assert {"ingestor", "naive consumer", "PostgreSQL", "Mosquitto", "bench poller"} <= set(p["cpu_s"]), p
        if kind == "idle":
            continue
        # PostgreSQL's threads are found: its writes, not its CPU (a smoke phase may take under one 10 ms tick)
        assert p["cpu_s"]["PostgreSQL"] >= 0 and writes["bytes"]["PostgreSQL WAL"] > 0, (kind, p["cpu_s"], writes)
        assert p["wal"]["fpi_bytes"] > 0, (kind, p["wal"])  # the first change to a page after the CHECKPOINT
        assert p["all_visible"] and p["messages"] > 0 and p["stored"]["readings"] > 0, p
        assert p["stored"]["readings"] == p["published"]["data"], p  # nothing lost
        assert all(p["cpu_s_per_1k"][c] is not None for c in ("consumer", "PostgreSQL", "Mosquitto")), p
        assert p["latency"]["p50_ms"] is not None and p["latency"]["p99_ms"] is not None, p
    assert "reference fleet: 50 sensors" in table, table
    assert "the disks' own count (/proc/diskstats" in table and "WAL writes/syncs a minute" in table, table
    assert "PG FPI" in table and "MB/day amortised per checkpoint cycle" in table and "  method: " in table, table
    rows = [line for line in table.splitlines() if re.match(r"(idle|naive|ours) +\d", line)]
    assert len(rows) == 6, table  # per phase, a row of writes and a row of CPU and latency
