"""The `datayoti` program's pure logic: arguments, status parsing and verdict, the simulated sensors."""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from datayoti_ingestor import appliance, health, simulate, storage
from datayoti_ingestor.messages import Heartbeat, Reading, Rejected, Status, parse_message
from datayoti_ingestor.service import Stats, parse_status_line, status_line
from fake_paho import Client as FakeClient
from hypothesis import given, settings
from hypothesis import strategies as st

MAC = "1C:69:20:E9:18:24"
NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)


def call(argv, euid=0, run=None):
    """main() with its output captured: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = appliance.main(argv, euid=euid, run=run or (lambda args: 0))
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------ arguments

ARGUMENT_CASES = [
    # (argv, euid, exit code, what stderr says)
    ([], 0, 2, "required: COMMAND"),
    (["bogus"], 0, 2, "invalid choice: 'bogus'"),
    (["status", "--bogus"], 0, 2, "unrecognized arguments: --bogus"),
    (["status", "--js"], 0, 2, "unrecognized arguments: --js"),  # no abbreviations
    (["status"], 1000, 2, "must run as root"),
    (["simulate", "--devices", "2"], 1000, 2, "must run as root"),
    (["simulate", "--rate", "0"], 0, 2, "--rate: 0 is outside (0, 1]"),
    (["simulate", "--rate", "2"], 0, 2, "--rate: 2 is outside (0, 1]"),
    (["simulate", "--rate", "nan"], 0, 2, "--rate: nan is outside"),
    (["simulate", "--rate", "1/0"], 0, 2, "not a valid float"),
    (["simulate", "--rate", "fast"], 0, 2, "'fast' is not a valid float"),
    (["simulate", "--duration", "1e400"], 0, 2, "--duration: 1e400 is outside"),
    (["simulate", "--duration", "-5"], 0, 2, "--duration: -5 is outside"),
    (["simulate", "--devices", "0"], 0, 2, "--devices: 0 is outside [1, 200]"),
    (["simulate", "--devices", "1.5"], 0, 2, "'1.5' is not a valid int"),
    (["simulate", "--bad-ratio", "1.5"], 0, 2, "--bad-ratio: 1.5 is outside [0, 1]"),
    (["simulate", "--port", "70000"], 0, 2, "--port: 70000 is outside [1, 65535]"),
    (["simulate", "--host", ""], 0, 2, "'' is not a host name"),
    (["simulate", "--host", "a b"], 0, 2, "is not a host name"),
    (["simulate", "--site", "S" * 65], 0, 2, "a site is 1 to 64"),
    (["simulate", "--readings", "0"], 0, 2, "--readings: 0 is outside"),
    (["status", "--json"], 0, 0, ""),
    (["simulate", "--credentials", "/tmp/x", "--rate", "1/60", "--json"], 1000, 0, ""),
    (["simulate", "--devices", "2", "--rate", "0.5", "--duration", "5", "--bad-ratio", "0.1"], 0, 0, ""),
]


@pytest.mark.parametrize(("argv", "euid", "code", "message"), ARGUMENT_CASES)
def test_arguments(argv, euid, code, message):
    got, _, err = call(argv, euid)
    assert got == code, err
    assert message in err
    if code == 2:
        assert err.count("\n") == 1, f"one line, not {err!r}"


def test_help_exits_0_on_stdout():
    code, out, err = call(["--help"])
    assert code == 0 and "status" in out and "simulate" in out and err == ""
    code, out, _ = call(["simulate", "--help"])
    assert code == 0 and "--bad-ratio" in out


def test_rate_takes_a_fraction():
    seen = {}
    call(["simulate", "--rate", "1/60"], run=lambda args: seen.update(rate=args.rate) or 0)
    assert seen["rate"] == pytest.approx(1 / 60)


def test_a_failing_command_is_one_line_and_exit_1():
    def boom(args):
        raise RuntimeError("disk on fire")
    code, _, err = call(["status"], run=boom)
    assert code == 1 and err == "datayoti: status failed: RuntimeError: disk on fire\n"


@pytest.mark.parametrize(("argv", "message"), [
    (["simulate", "--create"], "--create needs --devices N"),
    (["simulate", "--create", "--devices", "2", "--credentials", "/tmp"], "not allowed with argument --create"),
])
def test_simulate_create_usage_errors(argv, message):
    code, _, err = call(argv, run=appliance.simulate.command)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_simulate_without_accounts_is_not_found(tmp_path):
    code, _, err = call(["simulate", "--credentials", str(tmp_path)], euid=1000, run=appliance.simulate.command)
    assert code == 1 and "no sensor accounts" in err
    code, _, err = call(["simulate", "--credentials", str(tmp_path / "nope")], run=appliance.simulate.command)
    assert code == 1 and "no such directory" in err


ARG_TOKENS = ["status", "simulate", "--json", "--devices", "--rate", "--duration", "--bad-ratio", "--host", "--port",
              "--tls", "--credentials", "--site", "--seed", "--readings", "--config", "--help", "-h", "--", "-",
              "0", "1", "-1", "0.5", "1/60", "1e400", "nan", "inf", "200", "201", "65536", "", " ", "=", "--rate=1",
              "--devices=x", "\x00", "é", "@file"]


@settings(max_examples=400, deadline=None)
@given(argv=st.lists(st.one_of(st.sampled_from(ARG_TOKENS), st.text(max_size=10)), max_size=8),
       euid=st.sampled_from([0, 1000]))
def test_any_argv_exits_0_1_or_2_without_a_traceback(argv, euid):
    code, out, err = call(argv, euid)
    assert code in (0, 1, 2)
    assert "Traceback" not in out + err
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("datayoti"), err


# ------------------------------------------------------------------ the ingestor's STATUS= line

@given(stored=st.integers(0, 10**12), rejected=st.integers(0, 10**9), refused=st.integers(0, 10**9),
       duplicates=st.integers(0, 10**9), backlog=st.integers(0, 10**6), rate=st.floats(0, 10**6),
       db=st.sampled_from(["ok", "DOWN", "ERROR 42501", "ERROR transient"]), broker=st.booleans())
def test_status_line_parses_back(stored, rejected, refused, duplicates, backlog, rate, db, broker):
    stats = Stats(stored=stored, rejected=rejected, refused=refused, duplicates=duplicates, last_rate=rate)
    stats.window_start = 100.0
    parsed = parse_status_line(status_line(stats, backlog, 101.0, db, broker))
    assert parsed == {"rate": float(f"{rate:.1f}"), "backlog": backlog, "stored": stored, "rejected": rejected,
                      "refused": refused, "duplicates": duplicates, "database": db,
                      "broker": "ok" if broker else "DOWN"}


@pytest.mark.parametrize("text", ["", "waiting for the broker", "waiting for the database: connection refused",
                                  "12.0 msg/s, backlog 0"])
def test_other_status_texts_do_not_parse(text):
    assert parse_status_line(text) is None


# ------------------------------------------------------------------ status: parsing what is gathered

SYSTEMCTL_SHOW = """Id=mosquitto.service
LoadState=loaded
ActiveState=active
SubState=running
StatusText=

Id=datayoti-ingestor.service
LoadState=loaded
ActiveState=active
SubState=running
StatusText=1.5 msg/s, backlog 0, stored 10, rejected 1 (database refused 0), duplicates 0; database ok, broker ok

Id=nothere.service
LoadState=not-found
ActiveState=inactive
SubState=dead
StatusText=
"""


def test_parse_systemctl_show():
    units = ["mosquitto.service", "datayoti-ingestor.service", "nothere.service"]
    shown = health.parse_systemctl_show(SYSTEMCTL_SHOW, units)
    assert shown["mosquitto.service"]["ActiveState"] == "active"
    assert shown["nothere.service"]["LoadState"] == "not-found"
    assert parse_status_line(shown["datayoti-ingestor.service"]["StatusText"])["stored"] == 10


def test_postgresql_cluster_units_and_data_directory():
    assert health.postgresql_clusters(["/etc/postgresql/17/main/postgresql.conf"]) == [
        ("postgresql@17-main.service", "/etc/postgresql/17/main/postgresql.conf")]
    assert health.postgresql_clusters([]) == []
    conf = "#data_directory = '/nope'\ndata_directory = '/var/lib/postgresql/17/main'\t\t# use data in another dir\n"
    assert health.parse_data_directory(conf) == "/var/lib/postgresql/17/main"
    assert health.parse_data_directory("port = 5432\n") is None


DISKSTATS = """ 179       0 mmcblk0 8101 2511 596874 6092 41211 40217 2392904 113608 0 60416 120568 0 0 0 0
 179       2 mmcblk0p2 7819 2511 580230 5935 41211 40217 2392904 113608 0 60356 119543 0 0 0 0
"""


def test_parse_diskstats_and_boot_time():
    assert storage.parse_diskstats(DISKSTATS, "mmcblk0") == 2392904
    assert storage.parse_diskstats(DISKSTATS, "sda") is None
    assert health.parse_boot_time("cpu 1 2 3\nbtime 1763900000\n") == datetime.fromtimestamp(1763900000, tz=UTC)
    assert health.parse_boot_time("cpu 1\n") is None


def test_writes_today_counts_from_boot_when_booted_today():
    boot = NOW - timedelta(hours=2)
    assert health.writes_today(1000, NOW, boot, "b1", "mmcblk0", None) == (512_000, boot, None)


def test_writes_today_counts_from_the_days_first_reading():
    boot = NOW - timedelta(days=3)
    today, since, fresh = health.writes_today(1000, NOW, boot, "b1", "mmcblk0", None)
    assert (today, since) == (0, NOW) and fresh["sectors"] == 1000 and fresh["date"] == "2026-11-23"
    later = NOW + timedelta(hours=1)
    assert health.writes_today(3000, later, boot, "b1", "mmcblk0", fresh) == (2000 * 512, NOW, None)


@pytest.mark.parametrize("change", [{"date": "2026-11-22"}, {"boot_id": "b0"}, {"device": "sda"},
                                    {"sectors": 5000}, {"sectors": "1"}])
def test_writes_today_starts_again_on_a_stale_state(change):
    boot = NOW - timedelta(days=3)
    state = {"date": "2026-11-23", "boot_id": "b1", "device": "mmcblk0", "sectors": 10, "at": NOW.isoformat()}
    today, since, fresh = health.writes_today(1000, NOW, boot, "b1", "mmcblk0", {**state, **change})
    assert (today, since) == (0, NOW) and fresh is not None


def test_redact():
    assert health.redact("FATAL: password s3cr3t is wrong", "s3cr3t") == "FATAL: password ******** is wrong"
    assert health.redact("no secret", "") == "no secret"


# ------------------------------------------------------------------ status: verdict and output

def healthy_facts() -> health.Facts:
    active = {"load": "loaded", "active": "active", "sub": "running"}
    return health.Facts(
        checked_at=NOW,
        services={"mosquitto.service": active, "postgresql@17-main.service": active,
                  "datayoti-ingestor.service": active,
                  "datayoti-retention.timer": {"load": "loaded", "active": "active", "sub": "waiting"}},
        ingestor_status_text="12.0 msg/s, backlog 3, stored 100, rejected 2 (database refused 1), duplicates 0; "
                             "database ok, broker ok",
        database_size_bytes=45 * 2**20, thresholds_minutes={"online": 5, "warning": 30},
        rejects_last_hour=3, top_reject_reasons=[("malformed_json", 2), ("out_of_range", 1)],
        devices=[{"device_id": MAC, "site_id": "SITE_001", "last_seen": NOW - timedelta(seconds=12),
                  "health": "online", "is_active": True},
                 {"device_id": "1C:69:20:E9:18:25", "site_id": "SITE_001", "last_seen": NOW - timedelta(minutes=9),
                  "health": "warning", "is_active": True},
                 {"device_id": "1C:69:20:E9:18:26", "site_id": None, "last_seen": None, "health": "offline",
                  "is_active": False}],
        disk={"path": "/var/lib/postgresql/17/main", "total_bytes": 32 * 2**30, "free_bytes": 20 * 2**30},
        card_writes={"device": "mmcblk0", "since_boot_bytes": 2**30, "boot_time": NOW - timedelta(days=2),
                     "today_bytes": 120 * 2**20, "today_since": NOW.replace(hour=0, minute=1)})


def test_healthy_facts_have_no_problems():
    assert health.problems(healthy_facts()) == []


def set_service(unit, active, sub="dead", load="loaded"):
    return lambda f: f.services.__setitem__(unit, {"load": load, "active": active, "sub": sub})


def offline(f):
    f.devices[0].update(health="offline", last_seen=NOW - timedelta(hours=1))


UNHEALTHY_CASES = [
    ("ingestor stopped", set_service("datayoti-ingestor.service", "inactive"),
     "datayoti-ingestor.service is inactive (dead)"),
    ("broker stopped", set_service("mosquitto.service", "failed", "failed"), "mosquitto.service is failed"),
    ("no timer", set_service("datayoti-retention.timer", "inactive", load="not-found"),
     "datayoti-retention.timer is not installed"),
    ("database DOWN for the ingestor", lambda f: setattr(f, "ingestor_status_text", f.ingestor_status_text.replace(
        "database ok", "database DOWN")), "ingestor: database DOWN"),
    ("database refusing writes", lambda f: setattr(f, "ingestor_status_text", f.ingestor_status_text.replace(
        "database ok", "database ERROR 42501")), "ingestor: database ERROR 42501"),
    ("broker DOWN for the ingestor", lambda f: setattr(f, "ingestor_status_text", f.ingestor_status_text.replace(
        "broker ok", "broker DOWN")), "ingestor: broker DOWN"),
    ("ingestor waiting", lambda f: setattr(f, "ingestor_status_text", "waiting for the database: refused"),
     "ingestor: waiting for the database"),
    ("database unreachable from here", lambda f: setattr(f, "database_error", "connection refused"),
     "database: connection refused"),
    ("a device offline", offline, f"1 device offline: {MAC}"),
    ("disk almost full", lambda f: f.disk.update(free_bytes=2**30), "disk almost full: 1.0 GiB free of 32.0 GiB"),
    ("configuration unreadable", lambda f: f.errors.append("ingestor configuration: bad"), "ingestor configuration"),
]


@pytest.mark.parametrize(("case", "mutate", "problem"), UNHEALTHY_CASES, ids=[c[0] for c in UNHEALTHY_CASES])
def test_unhealthy(case, mutate, problem):
    facts = healthy_facts()
    mutate(facts)
    found = health.problems(facts)
    assert len(found) == 1 and found[0].startswith(problem), found
    report = health.build_report(facts)
    assert report["healthy"] is False and report["problems"] == found
    assert f"! {found[0]}" in health.format_text(report)


def test_no_status_yet_from_a_starting_ingestor_is_healthy():
    facts = healthy_facts()
    facts.ingestor_status_text = ""
    assert health.problems(facts) == []


def test_report_json_has_every_part():
    report = health.build_report(healthy_facts())
    doc = json.loads(json.dumps(report))
    assert set(doc) == {"healthy", "problems", "checked_at", "services", "ingestor", "rejects_last_hour", "devices",
                        "database", "disk", "card_writes"}
    assert doc["healthy"] is True and doc["checked_at"] == "2026-11-23T14:30:00Z"
    assert doc["ingestor"]["rate"] == 12.0 and doc["ingestor"]["backlog"] == 3
    assert doc["ingestor"]["database_refused"] == 1 and doc["ingestor"]["broker"] == "ok"
    assert doc["rejects_last_hour"] == {"total": 3, "top_reasons": [{"reason": "malformed_json", "count": 2},
                                                                    {"reason": "out_of_range", "count": 1}]}
    assert doc["devices"]["online"] == 1 and doc["devices"]["warning"] == 1 and doc["devices"]["total"] == 3
    assert doc["devices"]["list"][0]["last_seen"] == "2026-11-23T14:29:48Z"
    assert doc["database"] == {"reachable": True, "error": None, "size_bytes": 45 * 2**20}
    assert doc["card_writes"]["today_bytes"] == 120 * 2**20


def test_text_shows_everything_at_a_glance():
    text = health.format_text(health.build_report(healthy_facts()))
    assert text.startswith("DataYoti Edge: healthy")
    for expected in ("datayoti-ingestor.service", "active (running)", "12.0 msg/s, backlog 3, database refused 1",
                     "rejects   3 in the last hour: malformed_json 2, out_of_range 1",
                     "devices   3: 1 online, 1 warning, 1 offline", f"{MAC}  SITE_001     online   last seen 12 s ago",
                     "warning  last seen 9 min ago", "offline, inactive", "database 45.0 MiB",
                     "disk free 20.0 GiB of 32.0 GiB", "written to mmcblk0 today 120.0 MiB"):
        assert expected in text, (expected, text)


def test_text_when_the_ingestor_reports_nothing_and_the_card_is_unknown():
    facts = healthy_facts()
    facts.ingestor_status_text, facts.card_writes = "", None
    text = health.format_text(health.build_report(facts))
    assert "ingestor  no status reported yet" in text and "writes to the card unknown" in text


def test_a_stopped_ingestors_last_status_is_not_shown():
    facts = healthy_facts()
    set_service("datayoti-ingestor.service", "inactive")(facts)
    report = health.build_report(facts)
    assert report["ingestor"]["status_text"] == "" and report["ingestor"]["rate"] is None
    assert "ingestor  not running" in health.format_text(report)


def test_human_units():
    assert health.human_bytes(512) == "512 B" and health.human_bytes(1536) == "1.5 KiB"
    assert health.human_bytes(5 * 2**40) == "5120.0 GiB" and health.human_bytes(None) == "?"
    assert health.human_age(None, "2026-11-23T14:30:00Z") == "never"
    assert health.human_age("2026-11-21T14:30:00Z", "2026-11-23T14:30:00Z") == "2 d ago"


# ------------------------------------------------------------------ simulate: what the firmware sends

def test_firmware_formats():
    assert simulate.firmware_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert simulate.firmware_timestamp(1762180200.7) == "2025-11-03T14:30:00.000Z"
    assert simulate.firmware_client_id(MAC, 123_456) == f"ESP32Client-{MAC}-3456"
    assert simulate.topic(MAC, "data") == f"datayoti/sensor/{MAC}/data"


def test_good_payloads_are_accepted_by_the_ingestor():
    ts = simulate.firmware_timestamp(NOW.timestamp())
    data = parse_message(simulate.topic(MAC, "data"), simulate.encode(simulate.data_payload(MAC, ts, 21.5, 45.0)), NOW)
    assert isinstance(data, Reading) and data.stamp.time == NOW and data.temperature == 21.5
    beat = simulate.heartbeat_payload(MAC, "SITE_001", ts, -60, 180000, 3600, 150000)
    assert set(beat) == {"device_id", "site_id", "timestamp", "rssi", "free_heap", "uptime", "min_heap", "ntp_sync"}
    assert isinstance(parse_message(simulate.topic(MAC, "heartbeat"), simulate.encode(beat), NOW), Heartbeat)
    status = parse_message(simulate.topic(MAC, "status"), simulate.encode(simulate.status_payload(MAC, ts)), NOW)
    assert isinstance(status, Status)


@pytest.mark.parametrize("kind", simulate.BAD_KINDS)
def test_each_bad_payload_is_rejected_for_its_reason(kind):
    where, payload = simulate.bad_message(kind, MAC, simulate.firmware_timestamp(NOW.timestamp()))
    with pytest.raises(Rejected) as caught:
        parse_message(simulate.topic(MAC, where), payload, NOW)
    assert caught.value.reason == kind


def test_dht_series_is_a_plausible_dht22():
    series = simulate.DhtSeries(random.Random(7))
    week = [series.values(NOW.timestamp() + 60 * i) for i in range(7 * 24 * 60)]
    temperatures, humidities = [t for t, _ in week], [h for _, h in week]
    assert all(-40 <= t <= 80 and 0 <= h <= 100 for t, h in week)
    assert all(round(v, 1) == v for v in temperatures + humidities)
    steps = [abs(a - b) for a, b in zip(temperatures, temperatures[1:], strict=False)]
    assert max(steps) < 1.0  # no jumps minute to minute
    day = temperatures[: 24 * 60]
    assert max(day) - min(day) > 1.5  # a daily cycle
    assert 15 < sum(temperatures) / len(temperatures) < 28


@pytest.mark.parametrize("ratio", [0, 0.01, 0.1, 0.25, 0.3, 0.5, 1])
def test_is_bad_gives_the_exact_share(ratio):
    assert sum(simulate.is_bad(i, ratio) for i in range(1000)) == math.floor(1000 * ratio + 1e-6)


@given(ratio=st.floats(0, 1), n=st.integers(1, 500))
def test_is_bad_share_property(ratio, n):
    assert abs(sum(simulate.is_bad(i, ratio) for i in range(n)) - n * ratio) <= 1


def test_next_stamp_keeps_one_reading_per_second():
    assert simulate.next_stamp(100.2, None) == 100
    assert simulate.next_stamp(100.9, 100) == 101
    assert simulate.next_stamp(103.5, 101) == 103


def write_account(directory: Path, mac: str, **extra) -> Path:
    path = directory / f"{mac}.json"
    path.write_text(json.dumps({"device_id": mac, "MQTT_USER": mac.replace(":", "-"), "MQTT_PASSWORD": "pw",
                                "MQTT_PORT": 1883, "MQTT_TLS_PORT": 8883, "CA_CERT": "", **extra}))
    return path


def test_load_credentials(tmp_path):
    creds = simulate.load_credentials(write_account(tmp_path, MAC))
    assert (creds.device_id, creds.username, creds.port, creds.tls_port) == (MAC, "1C-69-20-E9-18-24", 1883, 8883)
    assert "pw" not in repr(creds)
    bad = tmp_path / "bad.json"
    for content, message in [("{not json", "not a readable JSON"), ("[]", "not a JSON object"),
                             (json.dumps({"device_id": MAC}), "missing keys MQTT_USER"),
                             (json.dumps({"device_id": "nope", "MQTT_USER": "u", "MQTT_PASSWORD": "p",
                                          "MQTT_PORT": 1883}), "not a MAC address")]:
        bad.write_text(content)
        with pytest.raises(ValueError, match=re.escape(message)):
            simulate.load_credentials(bad)


def test_load_fleet(tmp_path):
    for mac in ("02:00:00:00:00:02", "02:00:00:00:00:01", "02:00:00:00:00:03"):
        write_account(tmp_path, mac)
    assert [c.device_id for c in simulate.load_fleet(tmp_path, 2)] == ["02:00:00:00:00:01", "02:00:00:00:00:02"]
    assert len(simulate.load_fleet(tmp_path, None)) == 3
    with pytest.raises(simulate.SimulateError, match="3 sensor accounts, 4 asked for"):
        simulate.load_fleet(tmp_path, 4)


# ------------------------------------------------------------------ simulate: a run, against a fake broker

def fake_run(tmp_path, macs, refuse=(), **kw):
    for mac in macs:
        write_account(tmp_path, mac)
    clients = []

    def factory(client_id):
        clients.append(FakeClient(client_id, refuse=any(m in client_id for m in refuse)))
        return clients[-1]

    summary = simulate.run(simulate.load_fleet(tmp_path, None), "localhost", client_factory=factory, **kw)
    return summary, clients


def test_a_sensor_publishes_like_the_firmware(tmp_path):
    summary, [client] = fake_run(tmp_path, [MAC], readings=2, rate=1.0, duration=5, seed=1)
    assert re.fullmatch(rf"ESP32Client-{MAC}-\d{{1,4}}", client.client_id)
    login, will, connect, online, data1, beat1, data2, beat2, bye = client.calls
    assert login == ("login", "1C-69-20-E9-18-24")
    assert will[1:2] == (f"datayoti/sensor/{MAC}/status",) and will[3:] == (1, True)
    assert set(will[2]) == {"device_id", "timestamp"}
    assert connect == ("connect", "localhost", 1883, 90)
    assert online[1] == will[1] and online[3:] == (0, True) and json.loads(online[2]) == will[2]
    for data, beat in ((data1, beat1), (data2, beat2)):
        assert data[1].endswith("/data") and beat[1].endswith("/heartbeat")
        assert data[3] == beat[3] == 0 and not data[4] and not beat[4]
        d, b = json.loads(data[2]), json.loads(beat[2])
        assert d["timestamp"] == b["timestamp"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z", d["timestamp"])
        assert list(d) == ["device_id", "timestamp", "temperature", "humidity"]
    assert json.loads(data2[2])["timestamp"] > json.loads(data1[2])["timestamp"]
    assert bye == ("disconnect",)
    doc = summary.to_json()
    assert doc["ok"] and doc["published"] == {"status": 1, "data": 2, "heartbeat": 2} and doc["errors"] == []
    assert doc["first_timestamp"] == json.loads(data1[2])["timestamp"]


def test_bad_ratio_replaces_messages_and_counts_them(tmp_path):
    summary, [client] = fake_run(tmp_path, [MAC], readings=4, rate=1.0, duration=5, bad_ratio=0.5)
    doc = summary.to_json()
    assert doc["bad_total"] == 2 and doc["published"]["data"] + doc["published"]["heartbeat"] == 6
    assert doc["bad"] == dict.fromkeys(simulate.BAD_KINDS[:2], 1)


def test_a_refused_sensor_is_an_error_and_the_others_publish(tmp_path):
    other = "02:00:00:00:00:09"
    summary, clients = fake_run(tmp_path, [MAC, other], refuse=[other], readings=1, rate=1.0, duration=5)
    doc = summary.to_json()
    assert doc["connected"] == [MAC] and not doc["ok"]
    assert doc["errors"] == [{"message": f"{other}: connection refused (Not authorized)", "count": 1}]
    assert doc["published"]["data"] == 1
    text = simulate.format_summary(summary)
    assert "1 of 2 sensors on localhost" in text and "connection refused (Not authorized) (x1)" in text
