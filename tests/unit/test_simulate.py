"""`datayoti simulate`'s Python API (what the tests and the benchmark publish with), --create, and its arguments."""

from __future__ import annotations

import contextlib
import io
import json
import re
from types import SimpleNamespace

import datayoti_ingestor
import pytest
from datayoti_ingestor import appliance, simulate
from fake_paho import Client
from hypothesis import given, settings
from hypothesis import strategies as st

MAC = "1C:69:20:E9:18:24"


# ------------------------------------------------------------------ clocks

def test_millisecond_timestamps_keep_the_firmwares_format():
    assert simulate.firmware_timestamp(1700000000.123, ms=True) == "2023-11-14T22:13:20.123Z"
    assert simulate.firmware_timestamp(1700000000.9996, ms=True) == "2023-11-14T22:13:21.000Z"
    assert simulate.firmware_timestamp(1700000000.9996) == "2023-11-14T22:13:20.000Z"


def test_millisecond_stamps_stay_unique_per_device():
    assert simulate.next_ms_stamp(10.0009, None) == 10.0
    assert simulate.next_ms_stamp(10.0002, 10.0) == 10.001
    assert simulate.next_ms_stamp(10.0, 10.001) == 10.002


def test_each_clock():
    assert simulate.reading_stamp("firmware", 100.7, None, 5) == 100
    assert simulate.reading_stamp("firmware", 100.7, 100, 5) == 101
    assert simulate.reading_stamp("ms", 100.7004, None, 5) == 100.7
    numbered = simulate.reading_stamp("numbered", 100.7, 99999, 5)
    assert simulate.firmware_timestamp(numbered) == "2025-01-01T00:00:05.000Z"
    assert simulate.reading_time(86400).isoformat() == "2025-01-02T00:00:00+00:00"


@given(nows=st.lists(st.floats(1e9, 2e9), min_size=1, max_size=50), clock=st.sampled_from(["firmware", "ms"]))
def test_live_clocks_never_repeat_a_stamp(nows, clock):
    last, stamps = None, []
    for now in sorted(nows):
        last = simulate.reading_stamp(clock, now, last, 0)
        stamps.append(last)
    assert stamps == sorted(set(stamps))


# ------------------------------------------------------------------ loads

@pytest.mark.parametrize(("fields", "problem"), [
    ({"clock": "sundial"}, "clock 'sundial' is not one of"),
    ({"qos": 2}, "QoS 2 is not 0 or 1"),
    ({"rate": 0}, "rate 0 is not a positive number"),
    ({"rate": float("nan"), "clock": "ms"}, "is not a positive number"),
    ({"rate": 2.0}, "the firmware's clock has whole seconds"),
    ({"rate": None}, "the firmware's clock has whole seconds"),
    ({"duration": None}, "needs a duration or a number of readings"),
    ({"duration": -1.0}, "duration -1.0 is not"),
    ({"readings": 0}, "readings 0 is not a positive count"),
    ({"bad_ratio": 1.5}, "bad ratio 1.5 is not within"),
])
def test_impossible_or_unbounded_loads_are_refused(fields, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        simulate.Load(**fields)


def test_the_tests_and_benchmarks_loads_are_possible():
    simulate.Load()  # the firmware's
    simulate.Load(rate=None, duration=None, readings=600, qos=1, heartbeats=False, clock="ms")  # the benchmark's
    simulate.Load(rate=None, duration=None, readings=5, qos=1, heartbeats=False, clock="numbered", first=830_000)


def test_a_fault_replaces_the_message_on_its_topic_or_comes_after():
    data, beat = ("data", "t/data", b"d"), ("heartbeat", "t/heartbeat", b"h")
    fault = ("nul_character", "t/heartbeat", b"x")
    assert simulate.with_fault([data, beat], fault) == [data, fault]
    assert simulate.with_fault([data], fault) == [data, fault]


# ------------------------------------------------------------------ publishing, against a fake broker

def creds(mac: str, site: str | None = None) -> simulate.SensorCredentials:
    return simulate.parse_credentials({"device_id": mac, "MQTT_USER": mac.replace(":", "-"), "MQTT_PASSWORD": "pw",
                                       "MQTT_PORT": 1883, "site": site}, mac)


def connected(macs, announce=True, **client):
    summary = simulate.Summary(host="localhost")
    sensors = simulate.sensors_for([creds(m) for m in macs], seed=1,
                                   client_factory=lambda cid: Client(cid, **client))
    return simulate.connect(sensors, "localhost", None, False, summary, announce=announce), summary


def test_numbered_readings_at_qos_1_flat_out_round_robin():
    sensors, _ = connected([MAC, "02:00:00:00:00:09"], announce=False)
    load = simulate.Load(rate=None, duration=None, readings=3, qos=1, heartbeats=False, clock="numbered", first=10)
    summary = simulate.publish(sensors, load)
    assert summary.ok and summary.published == {"data": 6} and summary.unsent == 0
    for sensor in sensors:
        sent = sensor.client.published
        assert [t for t, *_ in sent] == [f"datayoti/sensor/{sensor.device_id}/data"] * 3
        assert [p["timestamp"] for _, p, *_ in sent] == [f"2025-01-01T00:00:{s}.000Z" for s in (10, 11, 12)]
        assert {(q, r) for *_, q, r in sent} == {(1, False)}
        assert sensor.last_stamp == simulate.reading_time(12).timestamp()
    assert (summary.first_timestamp, summary.last_timestamp) == ("2025-01-01T00:00:10.000Z",
                                                                 "2025-01-01T00:00:12.000Z")


def test_the_same_sensors_publish_several_loads():
    sensors, _ = connected([MAC])
    numbered = simulate.Load(rate=None, duration=None, readings=2, heartbeats=False, clock="numbered", first=500)
    simulate.publish(sensors, numbered)
    again = simulate.publish(sensors, simulate.Load(rate=None, duration=None, readings=1, heartbeats=False,
                                                    clock="numbered", first=200))
    assert again.published == {"data": 1} and again.first_timestamp == "2025-01-01T00:03:20.000Z"
    assert [p["timestamp"][-10:] for *_, p, _, _ in sensors[0].client.published[1:]] == [
        "08:20.000Z", "08:21.000Z", "03:20.000Z"]


def test_connecting_announces_online_unless_told_not_to():
    sensors, summary = connected([MAC])
    assert summary.published == {"status": 1} and sensors[0].client.published[0][3] is True
    sensors, summary = connected([MAC], announce=False)
    assert summary.published == {} and sensors[0].client.published == []


def test_messages_never_acknowledged_are_errors():
    sensors, _ = connected([MAC], announce=False, ack_qos1=False)
    load = simulate.Load(rate=None, duration=None, readings=2, qos=1, heartbeats=False, clock="ms", flush_s=0.01)
    summary = simulate.publish(sensors, load)
    assert summary.unsent == 2 and not summary.ok
    assert summary.errors == {f"{MAC}: 2 messages not sent in time": 1}


def test_millisecond_readings_flat_out_are_unique_and_data_only():
    sensors, _ = connected([MAC], announce=False)
    summary = simulate.publish(sensors, simulate.Load(rate=None, duration=None, readings=50, heartbeats=False,
                                                      clock="ms"))
    stamps = [p["timestamp"] for _, p, *_ in sensors[0].client.published]
    assert summary.published == {"data": 50} and len(set(stamps)) == 50 and stamps == sorted(stamps)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s) for s in stamps)


def test_a_heartbeat_fault_without_heartbeats_is_still_published():
    sensors, _ = connected([MAC], announce=False)
    sensors[0].faults = simulate.BAD_KINDS.index("nul_character")
    summary = simulate.publish(sensors, simulate.Load(rate=None, duration=None, readings=1, heartbeats=False,
                                                      bad_ratio=1.0, clock="ms"))
    assert summary.bad == {"nul_character": 1} and summary.published == {"data": 1}


# ------------------------------------------------------------------ --create

def test_simulated_macs_are_locally_administered_and_numbered():
    assert simulate.simulated_mac(1) == "02:DA:7A:53:00:01"
    assert simulate.simulated_mac(300) == "02:DA:7A:53:01:2C"
    with pytest.raises(ValueError):
        simulate.simulated_mac(0)


def test_macs_to_create_skip_those_that_exist():
    assert simulate.macs_to_create([], 2) == ["02:DA:7A:53:00:01", "02:DA:7A:53:00:02"]
    assert simulate.macs_to_create(["02:da:7a:53:00:01", MAC], 4) == ["02:DA:7A:53:00:02", "02:DA:7A:53:00:03"]
    assert simulate.macs_to_create([MAC, "02:00:00:00:00:01"], 2) == []


MACS = st.one_of(st.builds(simulate.simulated_mac, st.integers(1, 400)),
                 st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02X}" for x in b)))


@given(existing=st.sets(MACS, max_size=60), wanted=st.integers(1, simulate.MAX_DEVICES))
def test_macs_to_create_make_up_the_number_exactly(existing, wanted):
    created = simulate.macs_to_create(existing, wanted)
    assert len(created) == max(0, wanted - len(existing)) == len(set(created))
    assert not set(created) & existing
    assert all(mac.startswith("02:DA:7A:53:") and int(mac[:2], 16) & 0b10 for mac in created)
    assert created == simulate.macs_to_create(existing, wanted)  # deterministic


class FakeDevices:
    """devices.add's contract: write SENSORS_DIR/<MAC>.json, return it; DeviceError on bad input."""

    class DeviceError(Exception):
        pass

    def __init__(self, directory, refuse=()):
        self.directory, self.refuse, self.added = directory, refuse, []

    def add(self, mac, site=None, name=None, managed_by="cli"):
        if mac in self.refuse:
            raise self.DeviceError("the site name must be 1 to 32 printable characters")
        self.added.append((mac, site, name, managed_by))
        doc = {"device_id": mac, "MQTT_PORT": 1883, "MQTT_TLS_PORT": 8883, "MQTT_USER": mac.replace(":", "-"),
               "MQTT_PASSWORD": "pw", "CA_CERT": "", "site": site, "name": name, "managed_by": managed_by}
        (self.directory / f"{mac}.json").write_text(json.dumps(doc))
        return doc


def test_create_accounts_adds_the_missing_ones(tmp_path):
    (tmp_path / f"{MAC}.json").write_text("{}")
    devices = FakeDevices(tmp_path)
    assert simulate.create_accounts(tmp_path, 3, "GREENHOUSE", devices) == ["02:DA:7A:53:00:01", "02:DA:7A:53:00:02"]
    assert devices.added[1] == ("02:DA:7A:53:00:02", "GREENHOUSE", "simulated sensor 2", "cli")
    assert simulate.create_accounts(tmp_path, 3, None, devices) == []


def test_a_refused_add_is_one_line_naming_what_was_added(tmp_path):
    devices = FakeDevices(tmp_path, refuse={"02:DA:7A:53:00:02"})
    with pytest.raises(simulate.SimulateError) as caught:
        simulate.create_accounts(tmp_path, 2, "S" * 40, devices)
    assert str(caught.value) == ("cannot add simulated sensor 02:DA:7A:53:00:02: the site name must be 1 to 32 "
                                 "printable characters (added before it: 02:DA:7A:53:00:01)")


def call(argv, euid=0, run=None):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = appliance.main(argv, euid=euid, run=run)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def pi(tmp_path, monkeypatch):
    """The Pi's sensors directory in tmp_path, devices.add faked, and no broker: run() records its accounts."""
    devices = FakeDevices(tmp_path)
    monkeypatch.setattr(simulate, "SENSORS_DIR", tmp_path)
    monkeypatch.setattr(datayoti_ingestor, "devices", devices, raising=False)
    ran = []

    def run(creds, host, *args, **load):
        ran.extend(c.device_id for c in creds)
        return simulate.Summary(host=host, load=simulate.Load(**load), devices=list(ran), connected=list(ran))

    monkeypatch.setattr(simulate, "run", run)
    return SimpleNamespace(dir=tmp_path, devices=devices, ran=ran)


def test_simulate_create_adds_accounts_then_simulates_them(pi):
    (pi.dir / f"{MAC}.json").write_text(json.dumps({"device_id": MAC, "MQTT_USER": "u", "MQTT_PASSWORD": "p",
                                                    "MQTT_PORT": 1883}))
    code, out, err = call(["simulate", "--create", "--devices", "3", "--site", "LAB", "--json"])
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["created"] == ["02:DA:7A:53:00:01", "02:DA:7A:53:00:02"]
    assert pi.ran == ["02:DA:7A:53:00:01", "02:DA:7A:53:00:02", MAC]
    assert {site for _, site, _, _ in pi.devices.added} == {"LAB"}
    code, out, _ = call(["simulate", "--create", "--devices", "3"])
    assert code == 0 and "created" not in out and len(pi.devices.added) == 2


def test_simulate_create_needs_root(pi):
    code, _, err = call(["simulate", "--create", "--devices", "1"], euid=1000)
    assert code == 2 and "must run as root" in err and pi.devices.added == []


def test_simulate_create_that_fails_is_exit_1_and_one_line(pi):
    pi.devices.refuse = {"02:DA:7A:53:00:01"}
    code, out, err = call(["simulate", "--create", "--devices", "1"])
    assert code == 1 and out == "" and err.count("\n") == 1 and "cannot add simulated sensor" in err
    assert pi.ran == []


# ------------------------------------------------------------------ arguments: bad ones are exit 2 and one line

VALID = {
    "--devices": st.integers(1, simulate.MAX_DEVICES).map(str),
    "--rate": st.sampled_from(["1", "0.5", "1/60", "1e-3"]),
    "--duration": st.sampled_from(["5", "0.5", "86400", "1/2"]),
    "--readings": st.integers(1, simulate.MAX_READINGS).map(str),
    "--bad-ratio": st.sampled_from(["0", "1", "0.25", "1/3"]),
    "--host": st.sampled_from(["localhost", "10.0.0.2", "pi.local"]),
    "--port": st.integers(1, 65535).map(str),
    "--site": st.sampled_from(["SITE_001", "greenhouse north", "S" * 64]),
    "--seed": st.integers(0, 2**63 - 1).map(str),
}
WORDS = st.sampled_from(["", " ", "fast", "1/0", "0x10", "1,5", "\x00", "é", "NaN", "inf", "-inf", "--", "-x"])
INVALID = {
    "--devices": st.one_of(st.integers(max_value=0), st.integers(min_value=simulate.MAX_DEVICES + 1)).map(str)
    | st.sampled_from(["1.5", "2e1"]) | WORDS,
    "--rate": st.sampled_from(["0", "-1", "1.01", "2", "1e400", "-1/60"]) | WORDS,
    "--duration": st.sampled_from(["0", "-5", "86401", "1e400"]) | WORDS,
    "--readings": st.sampled_from(["0", "-1", str(simulate.MAX_READINGS + 1), "1.0"]) | WORDS,
    "--bad-ratio": st.sampled_from(["-0.1", "1.5", "2/1"]) | WORDS,
    "--host": st.sampled_from(["", "a b", "tab\there", "x" * 254, "\x00"]),
    "--port": st.sampled_from(["0", "65536", "-1", "http"]) | WORDS,
    "--site": st.sampled_from(["", "S" * 65, "nul\x00", "line\nbreak"]),
    "--seed": st.sampled_from(["-1", str(2**63), "1.5"]) | WORDS,
}


@st.composite
def argv_with_one_bad_option(draw):
    options = draw(st.lists(st.sampled_from(sorted(VALID)), unique=True, max_size=5))
    bad = draw(st.sampled_from(sorted(INVALID)))
    pairs = [[o, draw(VALID[o])] for o in options if o != bad]
    pairs.insert(draw(st.integers(0, len(pairs))), [bad, draw(INVALID[bad])])
    flags = draw(st.lists(st.sampled_from(["--json", "--tls", "--create"]), unique=True))
    return ["simulate", *flags, *[token for pair in pairs for token in pair]], bad


@settings(max_examples=300, deadline=None)
@given(case=argv_with_one_bad_option(), euid=st.sampled_from([0, 1000]))
def test_a_bad_simulate_argument_is_exit_2_in_one_line(case, euid):
    argv, bad = case
    code, out, err = call(argv, euid, run=lambda args: pytest.fail(f"ran with {argv}"))
    assert code == 2 and out == "", (argv, err)
    assert err.startswith("datayoti simulate: error: ") and err.count("\n") == 1, err
    assert bad in err or "expected one argument" in err, err
    assert "Traceback" not in err


@settings(max_examples=100, deadline=None)
@given(valid=st.lists(st.sampled_from(sorted(VALID)), unique=True, max_size=4), data=st.data())
def test_create_with_credentials_is_exit_2_in_one_line(valid, data):
    groups = [[o, data.draw(VALID[o])] for o in valid] + [["--create"], ["--credentials", "/tmp/x"]]
    argv = ["simulate", *[t for group in data.draw(st.permutations(groups)) for t in group]]
    code, out, err = call(argv, run=lambda args: pytest.fail(f"ran with {argv}"))
    assert code == 2 and out == "" and err.count("\n") == 1, (argv, err)
    assert "not allowed with argument" in err, err
