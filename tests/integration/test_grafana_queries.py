"""Issue 10: every SQL query of the dashboards and alert rules runs on a Pi provisioned by site.yml.

A simulated Pi of its own (bed `gq`) gets a realistic data set: six sensors on two sites, DHT11s and
DHT22s, a year of rollups, three days of raw readings (some with `extra` metrics), heartbeats and
statuses, rejected messages and a week of appliance_stats. Then:

- every panel, template variable and alert query, expanded by tests/grafana_sql.py exactly as Grafana
  would (for 6 hours, 7 days, 90 days, 1 year and each dashboard's default range, with one value,
  several values and All), runs as `grafana_reader` and must return the columns its use needs;
- a renamed column makes the check fail, naming the panels it breaks;
- each alert rule fires for its condition only (an out-of-range reading for a DHT11 that a DHT22 may
  give, a silent sensor, a burst of rejects, a backlog, a full disk, card writes) and none for a
  healthy fleet.

The ingestor is stopped once the Pi is provisioned, so that the data set is all there is.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime

import grafana_sql as g
import pytest
from conftest import REPO, Bed, play_summary, require_root

PI = "pi1"
BED = os.environ.get("DATAYOTI_GQ_BED", "gq")
REUSE = os.environ.get("DATAYOTI_GQ_REUSE") == "1"  # development: keep and reuse a provisioned bed
AGENT = REPO / "tests" / "bench" / "pi_agent.py"
AGENT_ON_PI = "/run/datayoti-bench/pi_agent.py"
DASHBOARDS = REPO / "roles" / "grafana" / "files" / "dashboards"
ALERT_RULES = REPO / "roles" / "grafana" / "files" / "alerting" / "datayoti-alert-rules.yaml"
DATASOURCE_UID = "datayoti-timescaledb"
RANGES = ["now-6h", "now-7d", "now-90d", "now-1y"]  # raw, semi-hourly, hourly and hourly over a year
CHOICES = ["single", "multi", "all"]

DHT11, DHT22, OLD_DEFAULT = "ESP32-DHT11", "ESP32-DHT22", "ESP32-DHT"
DEVICES = [  # (MAC, site, type, active); the third sends `extra` metrics, the fifth some too
    ("02:DA:7A:10:00:01", "GQ_NORTH", DHT11, True),
    ("02:DA:7A:10:00:02", "GQ_NORTH", DHT22, True),
    ("02:DA:7A:10:00:03", "GQ_NORTH", OLD_DEFAULT, True),
    ("02:DA:7A:10:00:04", "GQ_SOUTH", DHT11, True),
    ("02:DA:7A:10:00:05", "GQ_SOUTH", DHT22, True),
    ("02:DA:7A:10:00:06", "GQ_SOUTH", DHT22, False),  # retired 20 days ago: never "silent"
]
A_DHT11, A_DHT22, SILENT = DEVICES[0][0], DEVICES[1][0], DEVICES[3][0]

# Plausible values: a daily wave, an offset per device, a slow drift.
WAVE = "sin(extract(epoch FROM {t}) / 86400 * 2 * pi())"
TEMPERATURE = f"round((21 + 3 * {WAVE} + (ascii(right(d.device_id, 1)) % 5) * 0.4)::numeric, 1)::float8"
HUMIDITY = f"round((50 - 8 * {WAVE} + (ascii(right(d.device_id, 1)) % 7))::numeric, 1)::float8"

DATA_SET = f"""
BEGIN;
INSERT INTO sites (site_id, site_name) VALUES ('GQ_NORTH', 'North lab'), ('GQ_SOUTH', 'South lab')
    ON CONFLICT DO NOTHING;
INSERT INTO devices (device_id, site_id, device_name, device_type, is_active) VALUES
{",".join(f"('{mac}', '{site}', 'sensor {mac[-2:]}', '{kind}', {str(active).lower()})"
          for mac, site, kind, active in DEVICES)}
    ON CONFLICT (device_id) DO NOTHING;
CREATE TEMP TABLE gq AS SELECT date_trunc('hour', now()) AS ends, now() - interval '1 minute' AS raw_ends;
CREATE TEMP VIEW gq_devices AS
    SELECT d.*, CASE WHEN d.is_active THEN gq.ends ELSE gq.ends - interval '20 days' END AS seen_until
    FROM devices d, gq WHERE d.device_id LIKE '02:DA:7A:10:%';

-- A year of rollups up to three days ago (and the retired sensor's up to its retirement) ...
INSERT INTO rollup_hourly
SELECT d.device_id, b, 60, 60 * {TEMPERATURE.format(t="b")}, {TEMPERATURE.format(t="b")} - 0.8,
       {TEMPERATURE.format(t="b")} + 0.9, 60 * {HUMIDITY.format(t="b")}, {HUMIDITY.format(t="b")} - 2,
       {HUMIDITY.format(t="b")} + 2.5
FROM gq_devices d, gq,
     generate_series(gq.ends - interval '365 days',
                     least(d.seen_until, gq.ends - interval '3 days') - interval '1 hour', interval '1 hour') b;
INSERT INTO rollup_semi_hourly
SELECT d.device_id, b, 30, 30 * {TEMPERATURE.format(t="b")}, {TEMPERATURE.format(t="b")} - 0.5,
       {TEMPERATURE.format(t="b")} + 0.6, 30 * {HUMIDITY.format(t="b")}, {HUMIDITY.format(t="b")} - 1.5,
       {HUMIDITY.format(t="b")} + 1.5
FROM gq_devices d, gq,
     generate_series(gq.ends - interval '365 days', least(d.seen_until, gq.ends - interval '3 days')
                     - interval '30 minutes', interval '30 minutes') b;

-- ... and three days of raw readings, one a minute, with extra metrics from two sensors.
INSERT INTO sensor_data (time, device_id, site_id, temperature, humidity, reception_time, extra)
SELECT t, d.device_id, d.site_id, {TEMPERATURE.format(t="t")}, {HUMIDITY.format(t="t")}, t + interval '150 ms',
       CASE WHEN d.device_id = '02:DA:7A:10:00:03'
                THEN jsonb_build_object('pressure', round((1013 + 5 * {WAVE.format(t="t")})::numeric, 1),
                                        'battery', 3.7)
            WHEN d.device_id = '02:DA:7A:10:00:05' AND extract(minute FROM t)::int % 10 = 0
                THEN jsonb_build_object('battery', 3.9, 'firmware', '1.2.0') END
FROM gq_devices d, gq, generate_series(gq.ends - interval '3 days', gq.raw_ends, interval '1 minute') t
WHERE d.is_active;
INSERT INTO rollup_hourly
SELECT device_id, time_bucket('1 hour', time), count(*), sum(temperature), min(temperature), max(temperature),
       sum(humidity), min(humidity), max(humidity)
FROM sensor_data WHERE device_id LIKE '02:DA:7A:10:%' GROUP BY 1, 2;
INSERT INTO rollup_semi_hourly
SELECT device_id, time_bucket('30 minutes', time), count(*), sum(temperature), min(temperature), max(temperature),
       sum(humidity), min(humidity), max(humidity)
FROM sensor_data WHERE device_id LIKE '02:DA:7A:10:%' GROUP BY 1, 2;

INSERT INTO device_heartbeats (time, device_id, site_id, status, rssi, free_heap, uptime, min_heap, ntp_sync,
                               reception_time)
SELECT t, d.device_id, d.site_id, 'online', -55 - (ascii(right(d.device_id, 1)) % 20) - extract(minute FROM t)::int % 7,
       180000 - extract(minute FROM t)::int * 10, extract(epoch FROM t - (gq.ends - interval '3 days'))::bigint,
       150000, extract(minute FROM t)::int % 97 <> 0, t + interval '100 ms'
FROM gq_devices d, gq, generate_series(gq.ends - interval '3 days', gq.raw_ends, interval '1 minute') t
WHERE d.is_active;
INSERT INTO device_status (time, device_id, site_id, status_type, status_data)
SELECT gq.ends - interval '3 days', d.device_id, d.site_id, 'announce', '{{"status": "online", "fw": "1.2.0"}}'
FROM gq_devices d, gq;
UPDATE devices d SET last_data_at = v.seen, last_heartbeat_at = v.seen
FROM (SELECT device_id, CASE WHEN is_active THEN (SELECT raw_ends FROM gq) ELSE seen_until END AS seen
      FROM gq_devices) v
WHERE d.device_id = v.device_id;

INSERT INTO rejected_messages (received_at, topic, payload, payload_bytes, reason, detail)
SELECT gq.ends - interval '3 days' + i * interval '3 hours',
       'datayoti/sensor/02:DA:7A:10:00:0' || (i % 5 + 1) || '/data', convert_to('{{"temperature": NaN}}', 'UTF8'), 20,
       (ARRAY['malformed_json', 'not_finite', 'out_of_range', 'database_refused', 'bad_topic'])[i % 5 + 1],
       'sample rejection ' || i
FROM gq, generate_series(0, 23) i;

-- A week of the ingestor's own figures, one row a minute: quiet, healthy.
INSERT INTO appliance_stats (time, interval_s, received, stored, rejected, database_refused, duplicates, backlog,
                             database_bytes, disk_free_bytes, disk_total_bytes, card_written_bytes)
SELECT t, 60, 10 + m % 3, 10 + m % 3 - CASE WHEN m % 180 = 0 THEN 1 ELSE 0 END,
       CASE WHEN m % 180 = 0 THEN 1 ELSE 0 END, CASE WHEN m % 720 = 0 THEN 1 ELSE 0 END, m % 50 / 49, m % 4,
       60000000 + m % 100000 * 100, 20000000000 - m % 100000 * 1000, 32000000000, 200000 + m % 10 * 1000
FROM gq, generate_series(gq.ends - interval '7 days', gq.raw_ends, interval '1 minute') t,
     LATERAL (SELECT (extract(epoch FROM t)::bigint / 60) AS m) x;
COMMIT;
ANALYZE;
"""

# In the alert scenarios' transaction, before each scenario: the fleet is alive right now.
LIVE_FLEET = [
    "INSERT INTO sensor_data (time, device_id, site_id, temperature, humidity, reception_time) "
    "SELECT now() - interval '20 seconds', device_id, site_id, 22.5, 48.0, now() FROM devices "
    "WHERE device_id LIKE '02:DA:7A:10:%' AND is_active",
    "UPDATE devices SET last_data_at = now() - interval '20 seconds', "
    "last_heartbeat_at = now() - interval '20 seconds' "
    "WHERE device_id LIKE '02:DA:7A:10:%' AND is_active",
    "INSERT INTO appliance_stats VALUES (now() - interval '20 seconds', 60, 12, 12, 0, 0, 0, 2, 60000000, "
    "20000000000, 32000000000, 250000)",
]


def reading(mac: str, temperature: float, humidity: float) -> str:
    return ("INSERT INTO sensor_data (time, device_id, site_id, temperature, humidity, reception_time) "
            f"SELECT now() - interval '5 seconds', device_id, site_id, {temperature}, {humidity}, now() "
            f"FROM devices WHERE device_id = '{mac}'")


def stats(seconds_ago: int, received=12, rejected=0, backlog=2, disk_free=20_000_000_000, card=250_000) -> str:
    return (f"INSERT INTO appliance_stats VALUES (now() - interval '{seconds_ago} seconds', 60, {received}, "
            f"{received - rejected}, {rejected}, 0, 0, {backlog}, 60000000, {disk_free}, 32000000000, {card})")


# scenario: (setup after LIVE_FLEET, {rule keyword: device that fires, or None for a rule without labels})
SCENARIOS = {
    "a healthy fleet": ([], {}),
    "0 °C: a DHT11's range ends at 2 °C, a DHT22's at -10 °C": (
        [reading(A_DHT11, 0.0, 48.0), reading(A_DHT22, 0.0, 48.0)], {"temperature": A_DHT11}),
    "20 %: a DHT11's range ends at 25 %, a DHT22's at 10 %": (
        [reading(A_DHT11, 22.0, 20.0), reading(A_DHT22, 22.0, 20.0)], {"humidity": A_DHT11}),
    "a sensor silent for 10 minutes": (
        ["UPDATE devices SET last_data_at = now() - interval '10 minutes', "
         f"last_heartbeat_at = now() - interval '10 minutes' WHERE device_id = '{SILENT}'"], {"silent": SILENT}),
    "a burst of rejects": (
        [stats(s, received=100, rejected=40) for s in (10, 70, 130, 190, 250)]
        + ["INSERT INTO rejected_messages (received_at, topic, payload, payload_bytes, reason, detail) "
           "SELECT now() - i * interval '1 second', 'datayoti/sensor/02:DA:7A:10:00:01/data', '\\x7b'::bytea, 1, "
           "'malformed_json', 'burst' FROM generate_series(1, 200) i"], {"reject": None}),
    "a backlog of 5000": ([stats(5, backlog=5000)], {"backlog": None}),
    "no figures from the ingestor for 20 minutes": (
        ["DELETE FROM appliance_stats WHERE time > now() - interval '20 minutes'"], {"stale": None}),
    "2 GB free of 32 GB": ([stats(5, disk_free=2_000_000_000)], {"disk": None}),
    "180 MB written to the card in an hour": (
        [stats(s, card=3_000_000) for s in range(5, 3600, 60)], {"card": None}),
}


# ------------------------------------------------------------------ the bed and the agent

@pytest.fixture(scope="module")
def pi():
    require_root()
    bed = Bed(BED)
    if not (REUSE and bed.run("status", check=False).returncode == 0):
        bed.up(1, "--sensors", "0")
        run = bed.playbook()
        assert run.returncode == 0, play_summary(run)
    try:
        bed.sh(PI, "systemctl stop datayoti-ingestor.service datayoti-retention.timer")
        bed.sh(PI, f"install -d -m 0755 /run/datayoti-bench && cat > {AGENT_ON_PI} && chmod 0644 {AGENT_ON_PI}",
               stdin=AGENT.read_text())
        loaded = psql(bed, "SELECT count(*) FROM devices WHERE device_id LIKE '02:DA:7A:10:%'")
        if loaded == "0":
            psql(bed, DATA_SET, timeout=900)
            # The daily timer's service folds the hourly rollup's complete days into rollup_daily.
            bed.sh(PI, "systemctl start datayoti-retention.service", timeout=600)
            assert int(psql(bed, "SELECT count(*) FROM rollup_daily")) > 300 * 5
        yield bed
    finally:
        if not REUSE:
            bed.down()


def psql(bed: Bed, sql: str, timeout: float = 120) -> str:
    result = bed.sh(PI, "cd / && runuser -u postgres -- psql -d datayoti_db -v ON_ERROR_STOP=1 -qAtX", stdin=sql,
                    check=False, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def run_queries(bed: Bed, sqls: dict[str, str], setup: list[str] | None = None) -> dict[str, dict]:
    """{id: result} of the agent running each SQL as grafana_reader (after `setup`, in one rolled back
    transaction, when given)."""
    request = json.dumps({"setup": setup or [], "queries": [{"id": k, "sql": v} for k, v in sqls.items()]})
    prefix = ["runuser", "-u", "postgres", "--"] if setup is not None else []
    result = bed.run("exec", PI, *prefix, "python3", AGENT_ON_PI, "grafana", *(["--setup"] if setup is not None
                                                                               else []),
                     stdin=request, check=False, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return {r["id"]: r for r in json.loads(result.stdout.strip().splitlines()[-1])["results"]}


def problems_of(query: g.Query, result: dict) -> list[str]:
    if not result["ok"]:
        return [result["error"]]
    return g.check_result(query, [tuple(c) for c in result["columns"]], result["rows"], result["time_sorted"])


# ------------------------------------------------------------------ the queries

@pytest.fixture(scope="module")
def dashboards() -> list[g.Dashboard]:
    found = [g.load_dashboard(p) for p in sorted(DASHBOARDS.glob("*.json"))]
    assert len(found) == 3, f"expected three dashboards in {DASHBOARDS}"
    return found


@pytest.fixture(scope="module")
def rules() -> list[g.Query]:
    found = g.load_alert_rules(ALERT_RULES, DATASOURCE_UID)
    assert found, f"no rule of {ALERT_RULES} queries {DATASOURCE_UID}"
    return found


def resolve_variables(bed: Bed, dashboard: g.Dashboard, choice: str, span: g.TimeRange,
                      checked: dict[str, list[str]]) -> dict[str, g.Variable]:
    """The dashboard's variables, each query variable's own query checked on the way."""
    def run(query: g.Query, sql: str) -> dict:
        result = run_queries(bed, {query.name: sql})[query.name]
        checked[f"{query.name} [{span.name}, {choice}]"] = problems_of(query, result) or (
            [] if result["rowcount"] else ["returns no option"])
        return result

    return g.resolve_variables(dashboard, choice, span, run)


def check_panels(bed: Bed, dashboards: list[g.Dashboard], setup: list[str] | None = None,
                 ranges: list[str] | None = None, choices: list[str] | None = None
                 ) -> tuple[dict[str, list[str]], dict[str, int], dict[str, str]]:
    """({query [range, choice]: problems}, {query name: most rows}, {query name: expanded SQL, last range})."""
    now = datetime.now(UTC)
    problems: dict[str, list[str]] = {}
    most_rows: dict[str, int] = {}
    expanded: dict[str, str] = {}
    for dashboard in dashboards:
        for raw_from in ranges or [*RANGES, dashboard.time_from]:
            span = g.time_range(raw_from, raw_from, dashboard.time_to, now=now)
            for choice in choices or CHOICES:
                variables = resolve_variables(bed, dashboard, choice, span, problems)
                panels = [q for q in dashboard.queries if q.kind == "panel"]
                sqls = {q.name: g.expand_panel_query(q, variables, span) for q in panels}
                expanded.update(sqls)
                results = run_queries(bed, sqls, setup)
                for query in panels:
                    result = results[query.name]
                    problems[f"{query.name} [{raw_from}, {choice}]"] = problems_of(query, result)
                    most_rows[query.name] = max(most_rows.get(query.name, 0), result.get("rowcount", 0))
    return problems, most_rows, expanded


def test_every_panel_and_variable_query_runs_as_grafana_reader_and_has_its_columns(pi, dashboards):
    problems, most_rows, _ = check_panels(pi, dashboards)
    failed = {name: found for name, found in problems.items() if found}
    assert not failed, "\n".join(f"{name}: {'; '.join(found)}" for name, found in sorted(failed.items()))
    assert len(problems) >= 3 * len(CHOICES) * len(RANGES)
    empty = sorted(name for name, rows in most_rows.items() if rows == 0)
    assert not empty, f"panels that show nothing for a realistic data set in any range: {empty}"


def test_a_renamed_column_breaks_the_check_and_names_the_panels(pi, dashboards, rules):
    setup = ["ALTER TABLE sensor_data RENAME COLUMN humidity TO humidity_pct"]
    problems, _, expanded = check_panels(pi, dashboards, setup, ranges=["now-6h"], choices=["all"])
    failed = {name: found for name, found in problems.items() if found}
    assert failed, "renaming sensor_data.humidity broke no query: the check cannot see a broken panel"
    for name, found in failed.items():
        assert any("humidity" in text for text in found), (name, found)
    broken = {name.rsplit(" [", 1)[0] for name in failed}
    reads_it = {name for name, sql in expanded.items()
                if re.search(r"\bsensor_data\b", sql) and re.search(r"\bhumidity\b", sql)}
    assert broken <= reads_it, f"panels broken that do not read sensor_data.humidity: {broken - reads_it}"
    assert any("Humidity" in name for name in broken), broken
    print("broken by the rename:", *sorted(broken), sep="\n  ")


def rule_for(rules: list[g.Query], keyword: str) -> g.Query:
    matching = [r for r in rules if r.ref_id == "A" and keyword in (r.rule_uid + " " + r.title).lower()]
    assert len(matching) == 1, f"one rule about {keyword!r} expected, found {[r.rule_uid for r in matching]}"
    return matching[0]


def test_alert_queries_have_their_columns_in_every_range_of_data(pi, rules):
    results = run_queries(pi, {r.name: g.expand_alert_query(r, datetime.now(UTC)) for r in rules})
    failed = {r.name: problems_of(r, results[r.name]) for r in rules if problems_of(r, results[r.name])}
    assert not failed, failed


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_alert_rules_fire_for_their_condition_only(pi, rules, scenario):
    setup, expected = SCENARIOS[scenario]
    expected_rules = {rule_for(rules, keyword).rule_uid: device for keyword, device in expected.items()}
    now = datetime.now(UTC)
    results = run_queries(pi, {r.name: g.expand_alert_query(r, now) for r in rules}, [*LIVE_FLEET, *setup])
    fired = {}
    for rule in rules:
        result = results[rule.name]
        assert result["ok"] and not problems_of(rule, result), (rule.name, result)
        rows = g.firing(rule, [tuple(c) for c in result["columns"]], result["rows"])
        if rows:
            fired[rule.rule_uid] = rows
    assert set(fired) == set(expected_rules), f"{scenario}: fired {fired}"
    for uid, device in expected_rules.items():
        if device is not None:
            assert [row.get("device_id") for row in fired[uid]] == [device], (uid, fired[uid])


def test_the_data_set_is_what_the_docstring_says(pi):
    counts = psql(pi, "SELECT (SELECT count(*) FROM sensor_data), (SELECT count(*) FROM rollup_hourly), "
                      "(SELECT count(DISTINCT device_type) FROM devices), "
                      "(SELECT count(DISTINCT site_id) FROM devices), "
                      "(SELECT count(*) FROM sensor_data WHERE extra IS NOT NULL), "
                      "(SELECT count(*) FROM appliance_stats), (SELECT count(*) FROM rejected_messages)")
    raw, hourly, kinds, sites, extras, stats_rows, rejects = (int(v) for v in counts.split("|"))
    assert raw >= 5 * 3 * 1440 and hourly >= 5 * 364 * 24 and kinds == 3 and sites == 2
    assert extras > 0 and stats_rows >= 7 * 1440 and rejects >= 24
