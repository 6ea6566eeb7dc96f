"""Issue 3 acceptance: the ingestor on a simulated Pi provisioned by site.yml, with the
real broker, database and systemd."""

from __future__ import annotations

import json
import time

import pytest
from publisher import SensorClient, publish_readings, reading_time

PI = "pi1"
SERVICE = "datayoti-ingestor.service"


# ------------------------------------------------------------------ helpers

def sql(fleet, query: str) -> str:
    """Run SQL as the postgres superuser on the Pi; return unaligned output."""
    script = f"cd / && sudo -u postgres psql -d datayoti_db -v ON_ERROR_STOP=1 -Atc {json.dumps(query)}"
    return fleet.sh(PI, script).stdout.strip()


def service(fleet, prop: str) -> str:
    return fleet.sh(PI, f"systemctl show -P {prop} {SERVICE}").stdout.strip()


def wait_for(predicate, seconds: float, step: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def sensors_of(fleet, count: int) -> list[SensorClient]:
    macs = fleet.status()["hosts"][PI]["sensors"][:count]
    assert len(macs) == count, f"the bed declares {len(macs)} sensors, the test needs {count}"
    address = fleet.status()["hosts"][PI]["address"]
    clients = []
    for mac in macs:
        creds = json.loads(fleet.read(PI, f"/etc/datayoti/sensors/{mac}.json"))
        clients.append(SensorClient(address, creds["MQTT_PORT"], creds["MQTT_USER"], creds["MQTT_PASSWORD"], mac))
    return clients


def stored_for(fleet, macs: list[str], start: int, per_sensor: int) -> tuple[int, int]:
    """(rows, distinct (device, time)) in the window of numbered readings."""
    first, last = reading_time(start), reading_time(start + per_sensor - 1)
    macs_sql = ",".join(f"'{m}'" for m in macs)
    out = sql(fleet, f"SELECT count(*), count(DISTINCT (device_id, time)) FROM sensor_data "
                     f"WHERE device_id IN ({macs_sql}) AND time BETWEEN '{first.isoformat()}' AND '{last.isoformat()}'")
    rows, distinct = out.split("|")
    return int(rows), int(distinct)


@pytest.fixture
def ingestor_active(fleet):
    assert service(fleet, "ActiveState") == "active"
    yield
    fleet.sh(PI, f"systemctl start postgresql@17-main {SERVICE}", check=False)


# ------------------------------------------------------------------ systemd

def test_service_is_notify_with_watchdog_and_ready(fleet):
    assert service(fleet, "Type") == "notify"
    assert service(fleet, "WatchdogUSec") != "0"
    assert service(fleet, "ActiveState") == "active"
    status = fleet.sh(PI, f"systemctl status {SERVICE} --no-pager", check=False).stdout
    assert "msg/s" in status and "backlog" in status, status


def test_systemd_analyze_security_is_2_or_lower(fleet):
    out = fleet.sh(PI, f"systemd-analyze security --no-pager {SERVICE} | tail -n 1").stdout
    score = float(out.split("exposure level for")[1].split(":")[1].split()[0])
    assert score <= 2.0, out


# ------------------------------------------------------------------ delivery

def test_sigkill_twice_loses_and_doubles_nothing(fleet, ingestor_active):
    sensors = sensors_of(fleet, 20)
    per_sensor, start = 500, 100_000
    try:
        import threading

        report = {}
        thread = threading.Thread(target=lambda: report.update(
            r=publish_readings(sensors, per_sensor, qos=1, rate_per_s=2000, start_index=start)))
        thread.start()
        for _ in range(2):
            time.sleep(1.5)
            fleet.sh(PI, f"systemctl kill --signal=SIGKILL {SERVICE}")
        thread.join(300)
    finally:
        for s in sensors:
            s.close()
    assert report["r"].accepted == 20 * per_sensor, report["r"]
    macs = [s.device_id for s in sensors]
    wait_for(lambda: stored_for(fleet, macs, start, per_sensor)[0] >= 20 * per_sensor, 120,
             what="10,000 rows")
    time.sleep(2)
    assert stored_for(fleet, macs, start, per_sensor) == (10_000, 10_000)
    assert int(service(fleet, "NRestarts")) >= 2
