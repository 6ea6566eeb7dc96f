"""Issue 9, first part: `datayoti status` and `datayoti simulate` on a Pi provisioned by site.yml."""

from __future__ import annotations

import json
import shlex
import subprocess
import time

import pytest

PI = "pi1"
INGESTOR = "datayoti-ingestor.service"
DATAYOTI = "/usr/bin/datayoti"  # installed by roles/ingestor
SILENT_MAC = "02:D7:00:99:00:01"  # no sensor of the test bed has it


def datayoti(fleet, *args: str, user: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `datayoti ARGS` on the Pi, as root or as `user`: the one place that says how it is called."""
    argv = " ".join(shlex.quote(a) for a in args)
    as_user = f"runuser -u {shlex.quote(user)} -- " if user else ""
    return fleet.sh(PI, f"cd / && {as_user}{DATAYOTI} {argv}", check=False, timeout=timeout)


def status(fleet) -> tuple[int, dict]:
    result = datayoti(fleet, "status", "--json")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def healthy_status(fleet, seconds: float) -> tuple[int, dict]:
    """The status once healthy, or the last one after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        code, doc = status(fleet)
        if code == 0 or time.monotonic() > deadline:
            return code, doc
        time.sleep(1)


def sql(fleet, query: str) -> str:
    """SQL as the postgres superuser on the Pi; unaligned output."""
    result = fleet.sh(PI, "cd / && sudo -u postgres psql -d datayoti_db -v ON_ERROR_STOP=1 -qAt", stdin=query,
                      check=False)
    assert result.returncode == 0, f"{query}\n{result.stdout}{result.stderr}"
    return result.stdout.strip()


def wait_for(predicate, seconds: float, what: str, step: float = 1.0):
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            assert value, f"timed out after {seconds:.0f} s waiting for {what}"
            return value
        time.sleep(step)


def simulate(fleet, *args: str, timeout: float = 120) -> dict:
    result = datayoti(fleet, "simulate", *args, "--json", timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["errors"] == [], summary
    return summary


def in_list(macs: list[str]) -> str:
    return ",".join(f"'{m}'" for m in macs)


def test_status_json_on_a_healthy_pi_exits_0(fleet):
    # Earlier tests' sensors fell silent minutes ago: one reading from each makes every device fresh.
    simulate(fleet, "--readings", "1", "--duration", "10")
    code, doc = healthy_status(fleet, 30)
    assert code == 0, doc["problems"]
    assert set(doc) == {"healthy", "problems", "checked_at", "services", "ingestor", "rejects_last_hour", "devices",
                        "database", "disk", "card_writes"}
    assert doc["healthy"] is True and doc["problems"] == []
    assert set(doc["services"]) == {"mosquitto.service", "postgresql@17-main.service", INGESTOR,
                                    "datayoti-retention.timer"}
    assert all(s["active"] == "active" for s in doc["services"].values()), doc["services"]
    assert doc["ingestor"]["database"] == "ok" and doc["ingestor"]["broker"] == "ok"
    assert doc["ingestor"]["rate"] >= 0 and doc["ingestor"]["backlog"] >= 0
    assert doc["database"]["reachable"] and doc["database"]["size_bytes"] > 0
    assert doc["devices"]["offline"] == 0 and doc["devices"]["thresholds_minutes"] == {"online": 5, "warning": 30}
    assert set(fleet.status()["hosts"][PI]["sensors"]) <= {d["device_id"] for d in doc["devices"]["list"]}
    assert doc["disk"]["free_bytes"] > 0 and doc["disk"]["path"] == "/var/lib/postgresql/17/main"
    text = datayoti(fleet, "status")
    assert text.returncode == 0 and text.stdout.startswith("DataYoti Edge: healthy"), text.stdout
    password = fleet.read(PI, "/etc/datayoti/secrets/postgresql-grafana_reader.password").strip()
    assert password not in text.stdout + json.dumps(doc)


def test_simulate_publishes_and_the_rows_arrive(fleet):
    summary = simulate(fleet, "--devices", "2", "--rate", "1", "--duration", "5")
    macs = sorted(fleet.status()["hosts"][PI]["sensors"])[:2]
    assert summary["connected"] == macs
    published = summary["published"]
    assert published["status"] == 2 and published["data"] >= 8 and published["heartbeat"] == published["data"]
    window = f"time BETWEEN '{summary['first_timestamp']}' AND '{summary['last_timestamp']}'"
    wait_for(lambda: sql(fleet, f"SELECT count(*) FROM sensor_data WHERE device_id IN ({in_list(macs)}) AND {window}")
             == str(published["data"]), 30, "the readings")
    assert sql(fleet, f"SELECT count(*) FROM device_heartbeats WHERE device_id IN ({in_list(macs)}) AND {window}") \
        == str(published["heartbeat"])
    assert sql(fleet, f"SELECT count(DISTINCT site_id) FROM device_heartbeats WHERE device_id IN ({in_list(macs)}) "
                      f"AND {window}") == "1"


def test_simulate_bad_ratio_becomes_rejected_rows(fleet):
    since = sql(fleet, "SELECT now()")
    summary = simulate(fleet, "--devices", "2", "--rate", "1", "--readings", "4", "--duration", "10",
                       "--bad-ratio", "0.5")
    assert summary["bad_total"] == 4, summary
    topics = " OR ".join(f"topic LIKE 'datayoti/sensor/{m}/%'" for m in summary["connected"])
    query = (f"SELECT reason, count(*) FROM rejected_messages WHERE received_at >= '{since}' AND ({topics}) "
             "GROUP BY 1 ORDER BY 1")
    expected = "\n".join(f"{reason}|{n}" for reason, n in sorted(summary["bad"].items()))
    wait_for(lambda: sql(fleet, query) == expected, 30, f"rejected rows {expected!r}")
    assert status(fleet)[1]["rejects_last_hour"]["total"] >= 4


def test_status_shows_a_silent_device_offline(fleet):
    sql(fleet, f"INSERT INTO devices (device_id, last_data_at, last_heartbeat_at) "
               f"VALUES ('{SILENT_MAC}', now() - INTERVAL '1 hour', now() - INTERVAL '1 hour')")
    try:
        code, doc = status(fleet)
        text = datayoti(fleet, "status").stdout
    finally:
        sql(fleet, f"DELETE FROM devices WHERE device_id = '{SILENT_MAC}'")
    assert code == 1 and doc["healthy"] is False
    device = next(d for d in doc["devices"]["list"] if d["device_id"] == SILENT_MAC)
    assert device["health"] == "offline" and device["last_seen"] is not None
    assert any("offline" in p and SILENT_MAC in p for p in doc["problems"]), doc["problems"]
    assert "UNHEALTHY" in text and SILENT_MAC in text


def test_status_reflects_a_stopped_ingestor(fleet):
    fleet.sh(PI, f"systemctl stop {INGESTOR}")
    try:
        code, doc = status(fleet)
    finally:
        fleet.sh(PI, f"systemctl start {INGESTOR}")
    assert code == 1 and doc["healthy"] is False
    assert doc["services"][INGESTOR]["active"] != "active"
    assert any(p.startswith(INGESTOR) for p in doc["problems"]), doc["problems"]
    code, doc = healthy_status(fleet, 60)
    assert code == 0, doc["problems"]


@pytest.mark.parametrize(("args", "user", "message"), [
    (("status",), "pi", "must run as root"),
    (("simulate", "--devices", "1"), "pi", "must run as root"),
    (("simulate", "--rate", "5"), None, "--rate: 5 is outside (0, 1]"),
    (("simulate", "--create"), None, "--create needs --devices N"),
    (("status", "--frobnicate"), None, "unrecognized arguments"),
])
def test_bad_calls_get_one_line_and_exit_2(fleet, args, user, message):
    result = datayoti(fleet, *args, user=user)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""
