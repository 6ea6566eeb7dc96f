"""Issue 3 acceptance: the ingestor on a simulated Pi provisioned by site.yml, with the
real broker, database and systemd."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from publisher import SensorClient, publish_readings, reading_time

PI = "pi1"
SERVICE = "datayoti-ingestor.service"


# ------------------------------------------------------------------ helpers

def sql(fleet, query: str) -> str:
    """Run SQL as the postgres superuser on the Pi; return unaligned output."""
    result = fleet.sh(PI, "cd / && sudo -u postgres psql -d datayoti_db -v ON_ERROR_STOP=1 -qAt", stdin=query,
                      check=False)
    assert result.returncode == 0, f"{query}\n{result.stdout}{result.stderr}"
    return result.stdout.strip()


def service(fleet, prop: str) -> str:
    return fleet.sh(PI, f"systemctl show -P {prop} {SERVICE}").stdout.strip()


def systemd_seconds(text: str) -> int:
    """'30s', '1min 30s' -> seconds."""
    match = re.fullmatch(r"(?:(\d+)min)? ?(?:(\d+)s)?", text.strip())
    assert match, f"not a systemd time span: {text!r}"
    return int(match[1] or 0) * 60 + int(match[2] or 0)


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
        report = {}
        thread = threading.Thread(target=lambda: report.update(
            r=publish_readings(sensors, per_sensor, qos=1, rate_per_s=2000, start_index=start)))
        thread.start()
        restarts = int(service(fleet, "NRestarts"))
        for kill in range(2):
            time.sleep(1.0)
            fleet.sh(PI, f"systemctl kill --signal=SIGKILL {SERVICE}")
            wait_for(lambda n=restarts + kill + 1: int(service(fleet, "NRestarts")) >= n
                     and service(fleet, "ActiveState") == "active", 60, what="the restart after SIGKILL")
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


# ------------------------------------------------------------------ bad input

BAD_PAYLOADS = {
    # reason: (topic suffix, payload)
    "malformed_json": ("data", b'{"temperature": 22.5,'),
    "not_utf8": ("data", b'{"temperature": "\xff\xfe"}'),
    "not_an_object": ("data", b"[22.5, 65.3]"),
    "missing_field": ("data", b'{"humidity": 50}'),
    "wrong_type": ("data", b'{"temperature": "hot", "humidity": 50}'),
    "not_finite": ("data", b'{"temperature": NaN, "humidity": 50}'),
    "out_of_range": ("data", b'{"temperature": 120.0, "humidity": 50}'),
    "oversized": ("data", b'{"temperature": 20, "humidity": 50, "pad": "' + b"x" * 5000 + b'"}'),
    "device_mismatch": ("data", b'{"device_id": "AA:BB:CC:DD:EE:FF", "temperature": 20, "humidity": 50}'),
    "bad_timestamp": ("data", b'{"timestamp": "yesterday", "temperature": 20, "humidity": 50}'),
}


def test_bad_payloads_become_one_rejected_row_each(fleet, ingestor_active):
    sensor = sensors_of(fleet, 1)[0]
    marker = f"probe-{time.time_ns()}"
    try:
        sql(fleet, "SELECT 1")
        before = int(sql(fleet, "SELECT count(*) FROM rejected_messages"))
        for _reason, (kind, payload) in BAD_PAYLOADS.items():
            sensor.client.publish(f"datayoti/sensor/{sensor.device_id}/{kind}", payload, qos=1).wait_for_publish(10)
        good = json.dumps({"device_id": sensor.device_id, "timestamp": "2025-06-01T00:00:00.000Z",
                           "temperature": 21.0, "humidity": 40.0, "marker_len": len(marker)})
        sensor.client.publish(f"datayoti/sensor/{sensor.device_id}/data", good, qos=1).wait_for_publish(10)
    finally:
        sensor.close()
    wait_for(lambda: int(sql(fleet, "SELECT count(*) FROM rejected_messages")) >= before + len(BAD_PAYLOADS), 30,
             what="the rejected rows")
    reasons = sql(fleet, f"SELECT reason FROM rejected_messages ORDER BY id OFFSET {before}").split()
    assert sorted(reasons) == sorted(BAD_PAYLOADS), reasons
    wait_for(lambda: sql(fleet, f"SELECT count(*) FROM sensor_data WHERE device_id = '{sensor.device_id}' "
                                "AND time = '2025-06-01T00:00:00Z'") == "1", 30, what="the good reading")
    assert service(fleet, "ActiveState") == "active"
    assert int(sql(fleet, "SELECT max(payload_bytes) - max(octet_length(payload)) FROM rejected_messages")) > 0


# ------------------------------------------------------------------ schema

SEED_QUERIES = [
    "SELECT * FROM latest_sensor_readings;",
    "SELECT * FROM device_health;",
    "SELECT * FROM sensor_data_hourly WHERE bucket_start > NOW() - INTERVAL '24 hours' ORDER BY bucket_start DESC;",
    "SELECT * FROM sensor_data_semi_hourly WHERE bucket_start > NOW() - INTERVAL '24 hours';",
    "SELECT pg_size_pretty(pg_database_size('datayoti_db')) as db_size, "
    "pg_size_pretty(pg_total_relation_size('sensor_data')) as sensor_data_size;",
]


@pytest.mark.parametrize("query", SEED_QUERIES)
def test_seed_example_queries_run_unchanged_as_grafana_reader(fleet, query):
    script = (f"PGPASSWORD=$(cat /etc/datayoti/secrets/postgresql-grafana_reader.password) psql -h 127.0.0.1 "
              f"-U grafana_reader -d datayoti_db -v ON_ERROR_STOP=1 -c {json.dumps(query)}")
    result = fleet.sh(PI, script, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


ROLLUP_CHECK = """
SELECT count(*) FROM {view} v FULL JOIN (
    SELECT device_id, time_bucket(INTERVAL '{width}', time) AS bucket_start, count(*) AS n,
           avg(temperature) AS t_avg, min(temperature) AS t_min, max(temperature) AS t_max,
           avg(humidity) AS h_avg, min(humidity) AS h_min, max(humidity) AS h_max
    FROM sensor_data GROUP BY 1, 2) r USING (device_id, bucket_start)
WHERE v.measurement_count IS DISTINCT FROM r.n
   OR abs(v.avg_temperature - r.t_avg) > 1e-9 OR v.min_temperature IS DISTINCT FROM r.t_min
   OR v.max_temperature IS DISTINCT FROM r.t_max OR abs(v.avg_humidity - r.h_avg) > 1e-9
   OR v.min_humidity IS DISTINCT FROM r.h_min OR v.max_humidity IS DISTINCT FROM r.h_max
"""


def test_rollups_equal_raw_aggregates_after_late_data(fleet, ingestor_active):
    sensors = sensors_of(fleet, 2)
    try:
        publish_readings(sensors, 300, qos=1, start_index=500_000)       # a stream ...
        publish_readings(sensors, 120, qos=1, start_index=200_000)       # ... then late readings for old buckets
        publish_readings(sensors, 50, qos=1, start_index=500_000)        # ... and redeliveries of stored ones
    finally:
        for s in sensors:
            s.close()
    macs = [s.device_id for s in sensors]
    wait_for(lambda: stored_for(fleet, macs, 500_000, 300)[0] == 600
             and stored_for(fleet, macs, 200_000, 120)[0] == 240, 60, what="the readings")
    time.sleep(1)
    for view, width in (("sensor_data_semi_hourly", "30 minutes"), ("sensor_data_hourly", "1 hour")):
        assert sql(fleet, ROLLUP_CHECK.format(view=view, width=width)) == "0", view


def test_retention_drops_only_what_is_past_its_limit(fleet, ingestor_active):
    mac = fleet.status()["hosts"][PI]["sensors"][3]
    sql(fleet, f"""
        INSERT INTO devices (device_id) VALUES ('{mac}') ON CONFLICT DO NOTHING;
        INSERT INTO sensor_data (time, device_id, temperature, humidity) VALUES
            (now() - INTERVAL '400 days', '{mac}', 20, 50),
            (now() - INTERVAL '300 days', '{mac}', 20, 50);
        INSERT INTO device_heartbeats (time, device_id) VALUES
            (now() - INTERVAL '200 days', '{mac}'), (now() - INTERVAL '100 days', '{mac}');
    """)
    result = fleet.sh(PI, "systemctl start datayoti-retention.service && journalctl -u datayoti-retention "
                          "--no-pager -n 20", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sql(fleet, f"SELECT count(*) FROM sensor_data WHERE device_id = '{mac}'") == "1"
    assert sql(fleet, f"SELECT count(*) FROM device_heartbeats WHERE device_id = '{mac}'") == "1"
    assert sql(fleet, "SELECT count(*) FROM sensor_data WHERE time < now() - INTERVAL '366 days'") == "0"
    # The rows written here bypassed the ingestor and its rollups: leave none behind.
    sql(fleet, f"DELETE FROM sensor_data WHERE device_id = '{mac}'; "
               f"DELETE FROM device_heartbeats WHERE device_id = '{mac}'")


# ------------------------------------------------------------------ outages

def publish_in_background(sensors, per_sensor: int, qos: int, rate: float, start: int):
    holder = {}
    thread = threading.Thread(target=lambda: holder.update(
        report=publish_readings(sensors, per_sensor, qos=qos, rate_per_s=rate, start_index=start, timeout_s=600)))
    thread.start()
    return thread, holder


def finish(thread, holder, sensors, expected: int):
    thread.join(600)
    for s in sensors:
        s.close()
    report = holder["report"]
    assert report.accepted == expected and not report.errors, report
    return report


def test_postgresql_down_for_60s_loses_nothing_and_the_service_stays_up(fleet, ingestor_active):
    sensors = sensors_of(fleet, 10)
    per_sensor, start = 160, 300_000  # 1,600 readings over ~80 s
    thread, holder = publish_in_background(sensors, per_sensor, qos=1, rate=20, start=start)
    time.sleep(10)
    fleet.sh(PI, "systemctl stop postgresql@17-main")
    states = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states.append(service(fleet, "ActiveState"))
            time.sleep(2)
        status_text = service(fleet, "StatusText")
    finally:
        fleet.sh(PI, "systemctl start postgresql@17-main")
    finish(thread, holder, sensors, 10 * per_sensor)
    assert set(states) == {"active"}, states
    assert "database DOWN" in status_text, status_text
    macs = [s.device_id for s in sensors]
    wait_for(lambda: stored_for(fleet, macs, start, per_sensor)[0] >= 1600, 120, what="1,600 rows")
    assert stored_for(fleet, macs, start, per_sensor) == (1600, 1600)


def test_watchdog_restarts_a_stopped_ingestor_and_nothing_is_lost(fleet, ingestor_active):
    watchdog_s = systemd_seconds(service(fleet, "WatchdogUSec"))
    assert watchdog_s > 0
    restarts = int(service(fleet, "NRestarts"))
    sensors = sensors_of(fleet, 5)
    per_sensor, start = 100, 400_000
    fleet.sh(PI, f"systemctl kill --signal=SIGSTOP {SERVICE}")
    stopped_at = time.monotonic()
    thread, holder = publish_in_background(sensors, per_sensor, qos=1, rate=50, start=start)
    wait_for(lambda: int(service(fleet, "NRestarts")) > restarts, watchdog_s + 15, what="the watchdog's restart")
    took = time.monotonic() - stopped_at
    finish(thread, holder, sensors, 5 * per_sensor)
    assert took <= watchdog_s + 10, f"restarted after {took:.0f} s"
    macs = [s.device_id for s in sensors]
    wait_for(lambda: stored_for(fleet, macs, start, per_sensor)[0] >= 500, 120, what="500 rows")
    assert stored_for(fleet, macs, start, per_sensor) == (500, 500)


@pytest.mark.parametrize("outage", ["stopped for 60 s", "SIGKILL mid-stream"])
def test_qos0_readings_survive_an_ingestor_outage(fleet, ingestor_active, outage):
    sensors = sensors_of(fleet, 10)
    per_sensor = 100
    start = 600_000 if outage.startswith("stopped") else 700_000
    thread, holder = publish_in_background(sensors, per_sensor, qos=0, rate=10 if outage.startswith("stopped") else 200,
                                           start=start)
    time.sleep(3)
    if outage.startswith("stopped"):
        fleet.sh(PI, f"systemctl stop {SERVICE}")
        time.sleep(60)
        fleet.sh(PI, f"systemctl start {SERVICE}")
    else:
        fleet.sh(PI, f"systemctl kill --signal=SIGKILL {SERVICE}")
    finish(thread, holder, sensors, 10 * per_sensor)
    macs = [s.device_id for s in sensors]
    wait_for(lambda: stored_for(fleet, macs, start, per_sensor)[0] >= 1000, 120, what="1,000 rows")
    assert stored_for(fleet, macs, start, per_sensor) == (1000, 1000)
