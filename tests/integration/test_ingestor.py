"""Issue 3 acceptance: the ingestor on a simulated Pi provisioned by site.yml, with the
real broker, database and systemd."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from conftest import REPO
from datayoti_ingestor import schema, simulate
from payload_strategies import generate, payloads

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


def sensors_of(fleet, count: int) -> list[simulate.SimulatedSensor]:
    """`count` of the Pi's sensors, connected as the firmware connects (`datayoti simulate`'s sensors)."""
    macs = fleet.status()["hosts"][PI]["sensors"][:count]
    assert len(macs) == count, f"the bed declares {len(macs)} sensors, the test needs {count}"
    address = fleet.status()["hosts"][PI]["address"]
    creds = [simulate.parse_credentials(json.loads(fleet.read(PI, f"/etc/datayoti/sensors/{mac}.json")), mac)
             for mac in macs]
    summary = simulate.Summary(host=address)
    sensors = simulate.connect(simulate.sensors_for(creds), address, None, False, summary)
    assert len(sensors) == count, summary.errors
    return sensors


def publish_numbered(sensors, per_sensor: int, qos: int, start: int, rate: float | None = None) -> simulate.Summary:
    """`per_sensor` numbered readings (data only) from each sensor, round-robin, at `rate` msg/s in all or flat out.

    Reading n of each sensor is stamped simulate.reading_time(start + n): the rows to count, exactly once.
    """
    load = simulate.Load(rate=rate / len(sensors) if rate else None, duration=None, readings=per_sensor, qos=qos,
                         heartbeats=False, clock="numbered", first=start, flush_s=300)
    return simulate.publish(sensors, load)


def all_sent(summary: simulate.Summary, expected: int) -> bool:
    """Every reading handed over (PUBACKed at QoS 1), and no error."""
    return summary.published["data"] == expected and summary.ok


def stored_for(fleet, macs: list[str], start: int, per_sensor: int) -> tuple[int, int]:
    """(rows, distinct (device, time)) in the window of numbered readings."""
    first, last = simulate.reading_time(start), simulate.reading_time(start + per_sensor - 1)
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
    print(out.strip())
    assert score <= 2.0, out


# ------------------------------------------------------------------ delivery

def test_sigkill_twice_loses_and_doubles_nothing(fleet, ingestor_active):
    sensors = sensors_of(fleet, 20)
    per_sensor, start = 500, 100_000
    try:
        report = {}
        thread = threading.Thread(target=lambda: report.update(
            r=publish_numbered(sensors, per_sensor, qos=1, start=start, rate=2000)))
        thread.start()
        restarts = int(service(fleet, "NRestarts"))
        for kill in range(2):
            time.sleep(1.0)
            fleet.sh(PI, f"systemctl kill --signal=SIGKILL {SERVICE}")
            wait_for(lambda n=restarts + kill + 1: int(service(fleet, "NRestarts")) >= n
                     and service(fleet, "ActiveState") == "active", 60, what="the restart after SIGKILL")
        thread.join(300)
    finally:
        simulate.close(sensors)
    assert all_sent(report["r"], 20 * per_sensor), report["r"].to_json()
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
    # What PostgreSQL would refuse, stopped at the door (issue 8).
    "integer_out_of_range": ("heartbeat", b'{"rssi": 1180591620717411303424}'),
    "nul_character": ("status", b'{"status": "on\\u0000line"}'),
    "invalid_unicode": ("heartbeat", b'{"firmware": "\\ud800"}'),
    "text_too_long": ("heartbeat", b'{"site_id": "' + b"S" * 65 + b'"}'),
    "too_deep": ("status", b'{"a": [[[[1]]]]}'),
    "too_many_keys": ("heartbeat", json.dumps({f"k{i}": i for i in range(40)}).encode()),
    "key_too_long": ("heartbeat", b'{"' + b"k" * 65 + b'": 1}'),
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
        simulate.close([sensor])
    wait_for(lambda: int(sql(fleet, "SELECT count(*) FROM rejected_messages")) >= before + len(BAD_PAYLOADS), 30,
             what="the rejected rows")
    reasons = sql(fleet, f"SELECT reason FROM rejected_messages ORDER BY id OFFSET {before}").split()
    assert sorted(reasons) == sorted(BAD_PAYLOADS), reasons
    wait_for(lambda: sql(fleet, f"SELECT count(*) FROM sensor_data WHERE device_id = '{sensor.device_id}' "
                                "AND time = '2025-06-01T00:00:00Z'") == "1", 30, what="the good reading")
    assert service(fleet, "ActiveState") == "active"
    assert int(sql(fleet, "SELECT max(payload_bytes) - max(octet_length(payload)) FROM rejected_messages")) > 0


def test_appliance_stats_count_what_the_ingestor_did(fleet, ingestor_active):
    """One row an interval: the dashboards' ingest rate, rejects, backlog, database size and disk free."""
    # Every 20 s here rather than the default 5 minutes (an environment override, as documented).
    dropin = f"/run/systemd/system/{SERVICE}.d"
    fleet.sh(PI, f"mkdir -p {dropin} && printf '[Service]\\nEnvironment=DATAYOTI_STATS_INTERVAL_S=20\\n' "
                 f"> {dropin}/stats.conf && systemctl daemon-reload && systemctl restart {SERVICE}")
    since = sql(fleet, "SELECT now()")
    sensor = sensors_of(fleet, 1)[0]
    try:
        for i in range(20):
            good = json.dumps({"device_id": sensor.device_id, "timestamp": f"2025-06-02T00:{i:02d}:00.000Z",
                               "temperature": 21.0, "humidity": 40.0})
            sensor.client.publish(f"datayoti/sensor/{sensor.device_id}/data", good, qos=1).wait_for_publish(10)
        for _ in range(3):
            sensor.client.publish(f"datayoti/sensor/{sensor.device_id}/data", b"not json", qos=1).wait_for_publish(10)
    finally:
        simulate.close([sensor])
    totals = ("SELECT coalesce(sum(received), 0) >= 23 AND coalesce(sum(rejected), 0) >= 3 "
              f"FROM appliance_stats WHERE time > '{since}'")
    wait_for(lambda: sql(fleet, totals) == "t", 150, step=5,
             what="appliance_stats rows counting 23 messages and 3 rejects")
    row = sql(fleet, f"SELECT interval_s, backlog, database_bytes, disk_free_bytes, disk_total_bytes "
                     f"FROM appliance_stats WHERE time > '{since}' ORDER BY time DESC LIMIT 1").split("|")
    interval_s, backlog, database_bytes, free, total = float(row[0]), *map(int, row[1:])
    fleet.sh(PI, f"rm -r {dropin} && systemctl daemon-reload && systemctl restart {SERVICE}")
    assert 15 <= interval_s <= 60 and backlog >= 0, row
    assert database_bytes > 1_000_000 and 0 < free <= total, row


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
        publish_numbered(sensors, 300, qos=1, start=500_000)       # a stream ...
        publish_numbered(sensors, 120, qos=1, start=200_000)       # ... then late readings for old buckets
        publish_numbered(sensors, 50, qos=1, start=500_000)        # ... and redeliveries of stored ones
    finally:
        simulate.close(sensors)
    macs = [s.device_id for s in sensors]
    wait_for(lambda: stored_for(fleet, macs, 500_000, 300)[0] == 600
             and stored_for(fleet, macs, 200_000, 120)[0] == 240, 60, what="the readings")
    time.sleep(1)
    daily = ("sensor_data_daily", "1 day")
    for view, width in (("sensor_data_semi_hourly", "30 minutes"), ("sensor_data_hourly", "1 hour"), daily):
        assert sql(fleet, ROLLUP_CHECK.format(view=view, width=width)) == "0", view
    # What the daily timer runs: the complete days move to rollup_daily, and the view still equals raw.
    sql(fleet, schema.FOLD_DAILY)
    assert int(sql(fleet, "SELECT count(*) FROM rollup_daily")) > 0
    assert sql(fleet, ROLLUP_CHECK.format(view=daily[0], width=daily[1])) == "0"
    # A second fold rewrites nothing (no new row versions).
    versions = "SELECT string_agg(xmin::text, ',' ORDER BY device_id, bucket_start) FROM rollup_daily"
    before = sql(fleet, versions)
    sql(fleet, schema.FOLD_DAILY)
    assert sql(fleet, versions) == before


def test_retention_drops_only_what_is_past_its_limit(fleet, ingestor_active):
    mac = fleet.status()["hosts"][PI]["sensors"][3]
    sql(fleet, f"""
        INSERT INTO devices (device_id) VALUES ('{mac}') ON CONFLICT DO NOTHING;
        INSERT INTO sensor_data (time, device_id, temperature, humidity) VALUES
            (now() - INTERVAL '400 days', '{mac}', 20, 50),
            (now() - INTERVAL '300 days', '{mac}', 20, 50);
        INSERT INTO device_heartbeats (time, device_id) VALUES
            (now() - INTERVAL '200 days', '{mac}'), (now() - INTERVAL '100 days', '{mac}');
        INSERT INTO appliance_stats (time, interval_s, received, stored, rejected, database_refused, duplicates,
                                     backlog) VALUES
            (now() - INTERVAL '200 days', 60, 0, 0, 0, 0, 0, 0), (now() - INTERVAL '100 days', 60, 0, 0, 0, 0, 0, 0);
    """)
    result = fleet.sh(PI, "systemctl start datayoti-retention.service && journalctl -u datayoti-retention "
                          "--no-pager -n 20", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sql(fleet, f"SELECT count(*) FROM sensor_data WHERE device_id = '{mac}'") == "1"
    assert sql(fleet, f"SELECT count(*) FROM device_heartbeats WHERE device_id = '{mac}'") == "1"
    assert sql(fleet, "SELECT count(*) FROM sensor_data WHERE time < now() - INTERVAL '366 days'") == "0"
    assert sql(fleet, "SELECT count(*) FROM appliance_stats WHERE time < now() - INTERVAL '184 days'") == "0"
    assert sql(fleet, "SELECT count(*) FROM appliance_stats WHERE time < now() - INTERVAL '99 days'") == "1"
    # The rows written here bypassed the ingestor and its rollups: leave none behind.
    sql(fleet, f"DELETE FROM sensor_data WHERE device_id = '{mac}'; "
               f"DELETE FROM device_heartbeats WHERE device_id = '{mac}'; "
               "DELETE FROM appliance_stats WHERE time < now() - INTERVAL '99 days'")


# ------------------------------------------------------------------ outages

def publish_in_background(sensors, per_sensor: int, qos: int, rate: float, start: int):
    holder = {}
    thread = threading.Thread(target=lambda: holder.update(
        report=publish_numbered(sensors, per_sensor, qos=qos, start=start, rate=rate)))
    thread.start()
    return thread, holder


def finish(thread, holder, sensors, expected: int):
    thread.join(600)
    simulate.close(sensors)
    report = holder["report"]
    assert all_sent(report, expected), report.to_json()
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


def test_a_postgresql_crash_loses_no_committed_reading_not_yet_flushed(fleet, ingestor_active):
    """Commits are asynchronous: a crash of the server (every process SIGKILLed) loses those whose WAL was
    not flushed yet. Their messages were not acknowledged; the ingestor writes them again, once each."""
    sensors = sensors_of(fleet, 10)
    per_sensor, start = 100, 350_000  # 1,000 readings over ~50 s
    thread, holder = publish_in_background(sensors, per_sensor, qos=1, rate=20, start=start)
    time.sleep(15)
    try:
        fleet.sh(PI, "systemctl kill --signal=SIGKILL postgresql@17-main")
        time.sleep(3)
    finally:
        fleet.sh(PI, "systemctl start postgresql@17-main")
    finish(thread, holder, sensors, 10 * per_sensor)
    macs = [s.device_id for s in sensors]
    wait_for(lambda: stored_for(fleet, macs, start, per_sensor)[0] >= 1000, 120, what="1,000 rows")
    assert stored_for(fleet, macs, start, per_sensor) == (1000, 1000)
    assert service(fleet, "ActiveState") == "active"


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


# ------------------------------------------------------------------ no single message stops the appliance (issue 8)

AGENT = REPO / "tests" / "bench" / "pi_agent.py"
COUNTERS = re.compile(r"stored (\d+), rejected (\d+) \(database refused (\d+)\), duplicates (\d+)")

# Each of these stopped every sensor's data, or crash-looped the service, before issue 8.
POISONS = {
    "heartbeat with an out-of-range integer": ("heartbeat", b'{"rssi": 1180591620717411303424, "uptime": 5}'),
    "heartbeat with a NUL in a string": ("heartbeat", b'{"rssi": -60, "firmware": "1.4\\u0000"}'),
    "heartbeat with a NUL in site_id": ("heartbeat", b'{"site_id": "SITE\\u0000001", "rssi": -60}'),
    "status with a NUL": ("status", b'{"timestamp": "2025-06-01T00:00:00.000Z", "status": "\\u0000"}'),
}


class StatusWatch:
    """Samples the ingestor's STATUS= text in the background while a test runs."""

    def __init__(self, fleet):
        self.fleet, self.seen, self.stop = fleet, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.wait(1.0):
            self.seen.append(service(self.fleet, "StatusText"))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def counters(fleet) -> tuple[int, int, int, int]:
    """(stored, rejected, refused, duplicates) from the service's STATUS= line."""
    text = service(fleet, "StatusText")
    match = COUNTERS.search(text)
    assert match, text
    return tuple(int(v) for v in match.groups())


def settled_counters(fleet) -> tuple[int, int, int, int]:
    """The counters once two STATUS updates (every 5 s) agree."""
    previous = None
    for _ in range(30):
        current = counters(fleet)
        if current == previous:
            return current
        previous = current
        time.sleep(5.5)
    raise AssertionError(f"the ingestor's counters did not settle: {current}")


def rejected_since(fleet, mac: str, since: str) -> list[str]:
    return sql(fleet, f"SELECT reason FROM rejected_messages WHERE topic LIKE 'datayoti/sensor/{mac}/%' "
                      f"AND received_at >= '{since}' ORDER BY id").split()


def publish_poisons(sensor, poisons: dict) -> None:
    for kind, payload in poisons.values():
        sensor.client.publish(f"datayoti/sensor/{sensor.device_id}/{kind}", payload, qos=0)


def test_poison_messages_cannot_stop_other_sensors(fleet, ingestor_active):
    poisoner, good = sensors_of(fleet, 2)
    restarts = int(service(fleet, "NRestarts"))
    since = sql(fleet, "SELECT now()")
    start = 800_000
    try:
        with StatusWatch(fleet) as watch:
            publish_poisons(poisoner, POISONS)
            sent_at = time.monotonic()
            report = publish_numbered([good], 20, qos=0, start=start)
            wait_for(lambda: stored_for(fleet, [good.device_id], start, 20)[0] == 20, 15,
                     what="the other sensor's readings")
            took = time.monotonic() - sent_at
            wait_for(lambda: len(rejected_since(fleet, poisoner.device_id, since)) >= len(POISONS), 15,
                     what="the poison messages' rejected rows")
            time.sleep(6)  # one more STATUS update
    finally:
        simulate.close([poisoner, good])
    assert all_sent(report, 20) and took < 10, (report.to_json(), took)
    assert sorted(rejected_since(fleet, poisoner.device_id, since)) == sorted(
        ["integer_out_of_range", "nul_character", "nul_character", "nul_character"])
    assert int(service(fleet, "NRestarts")) == restarts
    assert service(fleet, "ActiveState") == "active"
    assert watch.seen and not [s for s in watch.seen if "database DOWN" in s], watch.seen


def test_poison_queued_at_the_broker_does_not_stop_a_starting_service(fleet, ingestor_active):
    poisoner, good = sensors_of(fleet, 2)
    since = sql(fleet, "SELECT now()")
    start = 810_000
    fleet.sh(PI, f"systemctl stop {SERVICE}")
    try:
        publish_poisons(poisoner, POISONS)
        report = publish_numbered([good], 10, qos=0, start=start)
        # A QoS 1 publish on the same connection: the broker has everything sent before it.
        poisoner.client.publish(f"datayoti/sensor/{poisoner.device_id}/status", b"{}", qos=1).wait_for_publish(10)
    finally:
        fleet.sh(PI, f"systemctl start {SERVICE}")
        simulate.close([poisoner, good])
    assert all_sent(report, 10), report.to_json()
    restarts = int(service(fleet, "NRestarts"))
    pid = service(fleet, "MainPID")
    wait_for(lambda: stored_for(fleet, [good.device_id], start, 10)[0] == 10, 30, what="the queued good readings")
    wait_for(lambda: len(rejected_since(fleet, poisoner.device_id, since)) >= len(POISONS), 30,
             what="the queued poison messages' rejected rows")
    time.sleep(3)
    assert (service(fleet, "ActiveState"), service(fleet, "MainPID")) == ("active", pid)
    assert int(service(fleet, "NRestarts")) == restarts


def test_database_refusals_are_isolated_and_good_messages_written_once(fleet):
    """What validation misses, the database refuses: the Store finds each culprit, stores the rest once."""
    fleet.sh(PI, "install -d -m 0755 /run/datayoti-bench && cat > /run/datayoti-bench/pi_agent.py",
             stdin=AGENT.read_text())
    out = fleet.sh(PI, "python3 /run/datayoti-bench/pi_agent.py isolation --size 200", timeout=300).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert len(result["cases"]) == 4
    for case in result["cases"]:
        clean, isolated = case["clean"], case["isolated"]
        print(f"{case['poison']}: clean {clean['ms']:.1f} ms / {clean['wal_bytes']} B WAL; isolated "
              f"{isolated['ms']:.1f} ms / {isolated['wal_bytes']} B WAL in {isolated['writes']} writes")
        assert clean == {**clean, "stored": 200, "refused": 0, "writes": 1}, case
        assert isolated == {**isolated, "stored": 199, "refused": 1, "rejected": 1, "duplicates": 0}, case
        assert case["stored_once"] == 199 and case["culprit_mid"] == 101, case
        # Halving 200 down to one message: at most 2 writes per level, plus one per kind of message.
        assert isolated["writes"] <= 2 * 8 + 3, case
    details = [case["detail"] for case in result["cases"]]
    assert details[0].startswith("22003") and "NUL" in details[1] and details[2].startswith("22P05"), details


def test_fuzzed_payloads_are_all_accounted_for(fleet, ingestor_active):
    """A few thousand generated payloads from one sensor, at QoS 0, with another sensor's readings between them."""
    fuzzer, good = sensors_of(fleet, 2)
    seed = 20261123
    generated = generate(payloads(fuzzer.device_id), 2000, seed)
    restarts = int(service(fleet, "NRestarts"))
    before = settled_counters(fleet)
    since = sql(fleet, "SELECT now()")
    start, good_count = 820_000, 0
    numbered, sent = simulate.Load(heartbeats=False, clock="numbered", first=start), simulate.Summary()
    try:
        with StatusWatch(fleet) as watch:
            for i, (kind, payload) in enumerate(generated):
                fuzzer.client.publish(f"datayoti/sensor/{fuzzer.device_id}/{kind}", payload, qos=0)
                if i % 4 == 0:
                    simulate.send(good, good.reading(time.time(), good_count, numbered), 0, sent)
                    good_count += 1
                if i % 100 == 99:
                    time.sleep(0.1)
            # QoS 1 barriers: the broker has had everything each client sent before them.
            for client, topic in ((fuzzer, "heartbeat"), (good, "heartbeat")):
                client.client.publish(f"datayoti/sensor/{client.device_id}/{topic}", b"{}",
                                      qos=1).wait_for_publish(30)
            published = len(generated) + good_count + 2
            wait_for(lambda: stored_for(fleet, [good.device_id], start, good_count)[0] == good_count, 120,
                     what=f"the other sensor's {good_count} readings")
            after = settled_counters(fleet)
    finally:
        simulate.close([fuzzer, good])
    stored, rejected, refused, duplicates = (a - b for a, b in zip(after, before, strict=True))
    fuzz_stored = int(sql(fleet, "SELECT " + " + ".join(
        f"(SELECT count(*) FROM {table} WHERE device_id = '{fuzzer.device_id}' AND reception_time >= '{since}')"
        for table in ("sensor_data", "device_heartbeats", "device_status"))))
    fuzz_rejected = len(rejected_since(fleet, fuzzer.device_id, since))
    print(f"seed {seed}: published {published}: stored {stored}, rejected {rejected} "
          f"(database refused {refused}), duplicates {duplicates}")
    assert stored + rejected + duplicates == published, (published, after, before)
    assert fuzz_stored + fuzz_rejected + duplicates == len(generated) + 1, (fuzz_stored, fuzz_rejected, duplicates)
    assert stored == fuzz_stored + good_count + 1 and rejected == fuzz_rejected
    assert stored_for(fleet, [good.device_id], start, good_count) == (good_count, good_count)
    assert sent.published == {"data": good_count} and not sent.errors, sent.to_json()
    assert int(service(fleet, "NRestarts")) == restarts and service(fleet, "ActiveState") == "active"
    assert not [s for s in watch.seen if "database DOWN" in s], watch.seen


def test_the_ingestor_connects_with_a_password_of_spaces_quotes_and_backslashes(fleet, ingestor_active):
    secrets = {"mqtt_ingestor": "datayoti-ingestor.service", "datayoti_owner": "datayoti-migrate.service"}
    saved = {role: fleet.read(PI, f"/etc/datayoti/secrets/postgresql-{role}.password") for role in secrets}
    sensor = sensors_of(fleet, 1)[0]

    def set_password(role: str, password: str) -> None:
        path = f"/etc/datayoti/secrets/postgresql-{role}.password"
        fleet.sh(PI, f"cat > {path}", stdin=password)
        fleet.sh(PI, f"cd / && sudo -u postgres psql -d datayoti_db -v ON_ERROR_STOP=1 -qAt -v pw=\"$(cat {path})\"",
                 stdin=f"ALTER ROLE {role} PASSWORD :'pw';")

    try:
        for role in secrets:
            set_password(role, f"{role} with space, 'quote', \"double\" and back\\slash")
        fleet.sh(PI, "systemctl restart datayoti-migrate.service datayoti-ingestor.service")
        assert fleet.sh(PI, "systemctl show -P Result datayoti-migrate.service").stdout.strip() == "success"
        wait_for(lambda: service(fleet, "ActiveState") == "active" and "database ok" in service(fleet, "StatusText"),
                 60, what="the ingestor connected with the new password")
        assert all_sent(publish_numbered([sensor], 5, qos=1, start=830_000), 5)
        wait_for(lambda: stored_for(fleet, [sensor.device_id], 830_000, 5)[0] == 5, 30, what="5 readings")
    finally:
        simulate.close([sensor])
        for role, password in saved.items():
            set_password(role, password)
        fleet.sh(PI, "systemctl restart datayoti-migrate.service datayoti-ingestor.service")
