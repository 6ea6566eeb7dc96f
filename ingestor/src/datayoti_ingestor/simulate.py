"""`datayoti simulate`: simulated ESP32 sensors that publish exactly like the real firmware.

Each simulated sensor does what the firmware does (shared FIRMWARE-PROTOCOL.md):
- MQTT 3.1.1, client id `ESP32Client-<MAC>-<millis % 10000>`, keepalive 90 s, clean session;
- a Last Will on `datayoti/sensor/<MAC>/status` (QoS 1, retained) registered at connect, then the
  same payload published retained (QoS 0) as its "online" status;
- every reading: a data message, then a heartbeat with the same timestamp, both at QoS 0;
- timestamps as `%Y-%m-%dT%H:%M:%S.000Z`, UTC.

Its values follow a DHT22 in a room: a daily cycle, a slow drift and noise, at the sensor's 0.1
resolution and within its range. `--bad-ratio` replaces that share of the messages with payloads
the ingestor must reject, one kind of fault after another.

Accounts: the per-sensor files `/etc/datayoti/sensors/<MAC>.json` (root only; `datayoti device add`
writes them, and `--create` adds simulated ones), or `--credentials DIR` holding copies, which any
user may run with.

The tests and the benchmark publish with this module too (`Load`, `connect`, `publish`): the same
sensors, with what they need besides the firmware's defaults (numbered or millisecond timestamps, QoS 1,
data only, no rate limit).
"""

from __future__ import annotations

import argparse
import functools
import heapq
import itertools
import json
import math
import os
import random
import signal
import ssl
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

from .layout import SENSORS_DIR
from .messages import canonical_mac

REQUIRED_KEYS = ("device_id", "MQTT_USER", "MQTT_PASSWORD", "MQTT_PORT")
KEEPALIVE_S = 90
CONNECT_TIMEOUT_S = 10.0
FLUSH_TIMEOUT_S = 10.0
PRUNE_AT = 1000  # messages a sensor holds before those sent are let go (a long run stays small)
MAX_INFLIGHT = 100  # QoS 1 messages awaiting PUBACK per sensor (the firmware publishes only QoS 0)
# Bounds of one run. A rate above one reading a second would give a sensor two readings in the
# same second: the firmware's timestamps have whole seconds, and (device, time) is the natural key.
MAX_DEVICES = 200
MAX_RATE = 1.0
MAX_DURATION_S = 24 * 3600.0
MAX_READINGS = 1_000_000
DEFAULT_SITE = "SITE_001"
DHT22_TEMPERATURE = (-40.0, 80.0)
DHT22_HUMIDITY = (0.0, 100.0)
DHT22_PERIOD_S = 2.0  # its sampling period: no new measurement sooner
# --bad-ratio's faults, named by the reason the ingestor rejects each with (README's rules table).
BAD_KINDS = ("malformed_json", "not_finite", "out_of_range", "wrong_type", "missing_field", "nul_character",
             "not_utf8", "device_mismatch")
# --create's accounts: locally administered MACs that say "simulated" (02:DA:7A:53:00:01, ...).
SIMULATED_MAC_PREFIX = "02:DA:7A:53"
SIMULATED_MACS = 0xFFFF
# How a reading is stamped: "firmware", whole seconds of now; "ms", now to the millisecond (latency
# measurements); "numbered", reading n at NUMBERED_BASE + n seconds (a known set of rows to count).
CLOCKS = ("firmware", "ms", "numbered")
NUMBERED_BASE = datetime(2025, 1, 1, tzinfo=UTC)


class SimulateError(Exception):
    """Nothing to simulate with (no accounts, unreadable files, an account not created): one line, exit 1."""


# ------------------------------------------------------------------ accounts

@dataclass(frozen=True)
class SensorCredentials:
    device_id: str
    username: str
    password: str = field(repr=False)
    port: int
    tls_port: int
    ca_cert: str = field(repr=False)
    site: str | None = None


def parse_credentials(data: object, where: str) -> SensorCredentials:
    """One sensor account (a <MAC>.json document); raise ValueError naming `where` on bad content."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{where}: missing keys {', '.join(missing)}")
    try:
        device_id = canonical_mac(data["device_id"])
        port, tls_port = int(data["MQTT_PORT"]), int(data.get("MQTT_TLS_PORT", 8883))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    site = data.get("site")
    return SensorCredentials(device_id=device_id, username=str(data["MQTT_USER"]),
                             password=str(data["MQTT_PASSWORD"]), port=port, tls_port=tls_port,
                             ca_cert=str(data.get("CA_CERT") or ""), site=site if isinstance(site, str) else None)


def load_credentials(path: Path) -> SensorCredentials:
    """Read one sensor JSON file; raise ValueError naming the file on bad content."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
    return parse_credentials(data, str(path))


def account_paths(directory: Path) -> list[Path]:
    """The <MAC>.json files of `directory`, in MAC order; SimulateError when it cannot be read."""
    if not directory.is_dir():
        raise SimulateError(f"{directory}: no such directory (or not allowed to see it)")
    if not os.access(directory, os.R_OK | os.X_OK):
        raise SimulateError(f"{directory}: permission denied")
    return sorted(directory.glob("*.json"))


def load_fleet(directory: Path, count: int | None) -> list[SensorCredentials]:
    """The first `count` accounts of `directory` (all when None), in MAC order."""
    paths = account_paths(directory)
    if not paths:
        raise SimulateError(f"{directory}: no sensor accounts (<MAC>.json): add some with `datayoti device add MAC`, "
                            "or simulate with --create --devices N")
    if count is not None and count > len(paths):
        raise SimulateError(f"{directory}: {len(paths)} sensor accounts, {count} asked for (--create adds the rest)")
    try:
        return [load_credentials(p) for p in paths[:count]]
    except ValueError as exc:
        raise SimulateError(str(exc)) from None


def simulated_mac(k: int) -> str:
    """The k-th simulated sensor's MAC, from 1: 02:DA:7A:53:00:01."""
    if not 1 <= k <= SIMULATED_MACS:
        raise ValueError(f"simulated sensors are numbered 1 to {SIMULATED_MACS}, not {k}")
    return f"{SIMULATED_MAC_PREFIX}:{k >> 8:02X}:{k & 0xFF:02X}"


def macs_to_create(existing: Collection[str], wanted: int) -> list[str]:
    """The simulated MACs to add so that `wanted` accounts exist, the first ones not in `existing`."""
    taken = {mac.upper() for mac in existing}
    free = (mac for mac in map(simulated_mac, range(1, SIMULATED_MACS + 1)) if mac not in taken)
    return list(itertools.islice(free, max(0, wanted - len(taken))))


def create_accounts(directory: Path, wanted: int, site: str | None, devices=None) -> list[str]:
    """Add simulated sensors with `datayoti device add` until `directory` has `wanted`; the MACs added."""
    if devices is None:
        from . import devices  # here: publishing alone needs neither the broker's admin nor the database
    created = []
    for mac in macs_to_create([p.stem for p in account_paths(directory)], wanted):
        try:
            devices.add(mac, site=site, name=f"simulated sensor {int(mac[-5:].replace(':', ''), 16)}",
                        managed_by="cli")
        except devices.DeviceError as exc:
            done = f" (added before it: {', '.join(created)})" if created else ""
            raise SimulateError(f"cannot add simulated sensor {mac}: {exc}{done}") from None
        created.append(mac)
    return created


# ------------------------------------------------------------------ what the firmware sends

def firmware_timestamp(epoch: float, ms: bool = False) -> str:
    """The firmware's format: %Y-%m-%dT%H:%M:%S.000Z, always UTC; with `ms`, real milliseconds instead of 000."""
    millis = round(epoch * 1000) if ms else math.floor(epoch) * 1000
    return f"{second_text(millis // 1000)}{millis % 1000:03d}Z"


@functools.lru_cache(maxsize=256)
def second_text(second: int) -> str:
    """'%Y-%m-%dT%H:%M:%S.' of a whole second; cached, since a run stamps many readings in each."""
    return datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def firmware_client_id(device_id: str, millis: int) -> str:
    return f"ESP32Client-{device_id}-{millis % 10000}"


def topic(device_id: str, kind: str) -> str:
    return f"datayoti/sensor/{device_id}/{kind}"


COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def encode(payload: dict) -> bytes:
    """Compact JSON, like ArduinoJson's serializeJson."""
    return COMPACT_JSON.encode(payload).encode()


def data_payload(device_id: str, ts: str, temperature: float, humidity: float) -> dict:
    return {"device_id": device_id, "timestamp": ts, "temperature": temperature, "humidity": humidity}


def heartbeat_payload(device_id: str, site_id: str, ts: str, rssi: int, free_heap: int, uptime: int,
                      min_heap: int, ntp_sync: bool = True) -> dict:
    return {"device_id": device_id, "site_id": site_id, "timestamp": ts, "rssi": rssi, "free_heap": free_heap,
            "uptime": uptime, "min_heap": min_heap, "ntp_sync": ntp_sync}


def status_payload(device_id: str, ts: str) -> dict:
    """Both the Last Will and the "online" status: the firmware cannot tell them apart."""
    return {"device_id": device_id, "timestamp": ts}


def other_mac(device_id: str) -> str:
    return "02:00:00:00:00:01" if device_id == "02:00:00:00:00:00" else "02:00:00:00:00:00"


def bad_message(kind: str, device_id: str, ts: str) -> tuple[str, bytes]:
    """(topic kind, payload) of one fault of `kind`; the ingestor rejects it with the reason `kind`."""
    good = data_payload(device_id, ts, 21.5, 45.0)
    if kind == "malformed_json":
        return "data", encode(good)[:-9]  # cut off mid-write
    if kind == "not_finite":
        return "data", encode({**good, "temperature": math.nan})  # json writes NaN, which is not JSON
    if kind == "out_of_range":
        return "data", encode({**good, "temperature": 120.0})
    if kind == "wrong_type":
        return "data", encode({**good, "temperature": "21.5"})
    if kind == "missing_field":
        return "data", encode({k: v for k, v in good.items() if k != "humidity"})
    if kind == "nul_character":
        return "heartbeat", encode({"device_id": device_id, "site_id": "SITE\x00001", "timestamp": ts})
    if kind == "not_utf8":
        return "data", encode(good)[:-1] + b',"note":"\xff\xfe"}'
    if kind == "device_mismatch":
        return "data", encode({**good, "device_id": other_mac(device_id)})
    raise ValueError(f"unknown bad payload kind {kind!r}")


def with_fault(messages: list[tuple[str, str, bytes]], fault: tuple[str, str, bytes]
               ) -> list[tuple[str, str, bytes]]:
    """`fault` (kind, topic, payload) in place of the message on its topic, or after them when none is."""
    where = fault[1]
    if all(t != where for _, t, _ in messages):
        return [*messages, fault]
    return [fault if t == where else (counted, t, p) for counted, t, p in messages]


def is_bad(index: int, ratio: float) -> bool:
    """Whether a sensor's reading `index` (from 0) is a fault: floor(n * ratio) of its first n readings are."""
    return math.floor((index + 1) * ratio + 1e-9) > math.floor(index * ratio + 1e-9)


def next_stamp(now: float, last: float | None) -> int:
    """Whole seconds, after the sensor's previous reading: (device, time) stays unique."""
    second = math.floor(now)
    return second if last is None or second > last else math.floor(last) + 1


def next_ms_stamp(now: float, last: float | None) -> float:
    """Milliseconds, after the sensor's previous reading; rounded down, so that a latency is never understated."""
    stamp = math.floor(now * 1000) / 1000
    return stamp if last is None or stamp > last else round(last + 0.001, 3)


def reading_time(number: int) -> datetime:
    """When reading `number` of the "numbered" clock is stamped: one second apart from NUMBERED_BASE."""
    return NUMBERED_BASE + timedelta(seconds=number)


def reading_stamp(clock: str, now: float, last: float | None, number: int) -> float:
    """A reading's time (epoch seconds) on `clock` (CLOCKS): now, after `last`; or that of reading `number`."""
    if clock == "numbered":
        return reading_time(number).timestamp()
    return next_ms_stamp(now, last) if clock == "ms" else next_stamp(now, last)


def clamp(value: float, bounds: tuple[float, float]) -> float:
    return min(bounds[1], max(bounds[0], value))


class DhtSeries:
    """A DHT22 in a room: a daily cycle peaking mid-afternoon, a slow mean-reverting drift, noise.

    Humidity moves against temperature, as relative humidity does in a closed room. Like the sensor,
    it measures at most every DHT22_PERIOD_S; a read sooner gets the last measurement again, as the
    firmware's DHT library returns it.
    """

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.base_temperature = rng.uniform(19.0, 24.0)
        self.daily_amplitude = rng.uniform(1.0, 3.0)
        self.base_humidity = rng.uniform(40.0, 60.0)
        self.drift_temperature = 0.0
        self.drift_humidity = 0.0
        self.measured_at: float | None = None
        self.measured = (0.0, 0.0)

    def values(self, epoch: float) -> tuple[float, float]:
        """(temperature °C, relative humidity %) at `epoch`, rounded to 0.1 and within the DHT22's range."""
        if self.measured_at is not None and 0 <= epoch - self.measured_at < DHT22_PERIOD_S:
            return self.measured
        daily = math.cos(2 * math.pi * ((epoch % 86400) / 86400 - 15 / 24))
        self.drift_temperature = clamp(0.99 * self.drift_temperature + self.rng.gauss(0, 0.05), (-3.0, 3.0))
        self.drift_humidity = clamp(0.99 * self.drift_humidity + self.rng.gauss(0, 0.2), (-10.0, 10.0))
        temperature = self.base_temperature + self.daily_amplitude * daily + self.drift_temperature
        humidity = self.base_humidity - 2.5 * self.daily_amplitude * daily + self.drift_humidity
        temperature += self.rng.gauss(0, 0.05)
        humidity += self.rng.gauss(0, 0.3)
        self.measured_at = epoch
        self.measured = round(clamp(temperature, DHT22_TEMPERATURE), 1), round(clamp(humidity, DHT22_HUMIDITY), 1)
        return self.measured


# ------------------------------------------------------------------ what a run publishes

@dataclass(frozen=True)
class Load:
    """What a run publishes, per sensor. The defaults are the firmware's; tests and the benchmark change the rest."""
    rate: float | None = 1.0  # readings a second; None: as fast as paho takes them
    duration: float | None = 60.0  # seconds; None: until `readings`
    readings: int | None = None
    bad_ratio: float = 0.0
    qos: int = 0  # the firmware's; 1 where a test counts the broker's PUBACKs
    heartbeats: bool = True  # a heartbeat after each reading, as the firmware; False: data only
    clock: str = "firmware"  # CLOCKS
    first: int = 0  # "numbered": a sensor's reading n of this load is stamped reading_time(first + n)
    flush_s: float = FLUSH_TIMEOUT_S  # at the end, how long paho may take to send what it holds

    def __post_init__(self):
        problem = load_problem(self)
        if problem:
            raise ValueError(problem)


def load_problem(load: Load) -> str | None:
    """What makes `load` impossible or unbounded, or None."""
    if load.clock not in CLOCKS:
        return f"clock {load.clock!r} is not one of {', '.join(CLOCKS)}"
    if load.qos not in (0, 1):
        return f"QoS {load.qos!r} is not 0 or 1"
    if load.rate is not None and not (math.isfinite(load.rate) and load.rate > 0):
        return f"rate {load.rate!r} is not a positive number (None: no limit)"
    if load.clock == "firmware" and (load.rate is None or load.rate > MAX_RATE):
        return f"the firmware's clock has whole seconds: at most {MAX_RATE:g} reading a second, not {load.rate}"
    if load.duration is None and load.readings is None:
        return "a load needs a duration or a number of readings"
    if load.duration is not None and not (math.isfinite(load.duration) and load.duration > 0):
        return f"duration {load.duration!r} is not a positive number of seconds"
    if load.readings is not None and load.readings < 1:
        return f"readings {load.readings!r} is not a positive count"
    if not 0 <= load.bad_ratio <= 1:
        return f"bad ratio {load.bad_ratio!r} is not within [0, 1]"
    return None


# ------------------------------------------------------------------ one sensor

def make_client(client_id: str):
    """A paho client as PubSubClient connects: MQTT 3.1.1, clean session."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                         clean_session=True)
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.max_queued_messages_set(0)
    return client


class SimulatedSensor:
    def __init__(self, creds: SensorCredentials, index: int, site_id: str, rng: random.Random, client_factory,
                 now: float):
        self.creds, self.index, self.site_id, self.rng = creds, index, site_id, rng
        self.device_id = creds.device_id
        self.topics = {kind: topic(creds.device_id, kind) for kind in ("data", "heartbeat", "status")}
        self.series = DhtSeries(rng)
        self.booted = now - rng.randint(60, 7 * 86400)  # an ESP32 that has been up a while
        self.rssi = rng.randint(-75, -50)
        self.min_heap = 200_000
        self.readings = 0
        self.faults = 0
        self.last_stamp: float | None = None
        self.last_timestamp: str | None = None
        self.pending: deque = deque()
        self.connected = threading.Event()
        self.refused: str | None = None
        self.status = b""
        millis = int((now - self.booted) * 1000)
        self.client = client_factory(firmware_client_id(creds.device_id, millis))
        self.client.on_connect = self._on_connect

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.refused = str(reason_code)
        else:
            self.refused = None
            self.connected.set()

    def connect(self, host: str, port: int, tls: bool, now: float) -> None:
        """Register the will and connect (raises OSError when the broker cannot be reached)."""
        self.client.username_pw_set(self.creds.username, self.creds.password)
        self.status = encode(status_payload(self.device_id, firmware_timestamp(now)))
        self.client.will_set(self.topics["status"], self.status, qos=1, retain=True)
        if tls:
            self.client.tls_set_context(ssl.create_default_context(cadata=self.creds.ca_cert or None))
        self.client.connect(host, port, keepalive=KEEPALIVE_S)
        self.client.loop_start()

    def announce(self):
        """The retained "online" status, right after the connection; paho's MQTTMessageInfo."""
        return self.client.publish(self.topics["status"], self.status, qos=0, retain=True)

    def heartbeat(self, ts: str, now: float) -> dict:
        self.rssi = int(clamp(self.rssi + self.rng.choice((-1, 0, 0, 1)), (-90, -40)))
        free_heap = self.rng.randint(175_000, 195_000)
        self.min_heap = min(self.min_heap, free_heap - self.rng.randint(5_000, 30_000))
        return heartbeat_payload(self.device_id, self.site_id, ts, self.rssi, free_heap,
                                 int(now - self.booted), self.min_heap)

    def reading(self, now: float, n: int, load: Load) -> list[tuple[str, str, bytes]]:
        """Reading `n` of `load`'s messages, in order: [(kind counted, topic, payload)]; a fault counts as its kind."""
        self.last_stamp = reading_stamp(load.clock, now, self.last_stamp, load.first + n)
        ts = self.last_timestamp = firmware_timestamp(self.last_stamp, ms=load.clock == "ms")
        temperature, humidity = self.series.values(self.last_stamp)
        messages = [("data", self.topics["data"], encode(data_payload(self.device_id, ts, temperature, humidity)))]
        if load.heartbeats:
            messages.append(("heartbeat", self.topics["heartbeat"], encode(self.heartbeat(ts, now))))
        if load.bad_ratio and is_bad(self.readings, load.bad_ratio):
            kind = BAD_KINDS[(self.index + self.faults) % len(BAD_KINDS)]
            where, payload = bad_message(kind, self.device_id, ts)
            messages = with_fault(messages, (kind, self.topics[where], payload))
            self.faults += 1
        self.readings += 1
        return messages

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------ a run

@dataclass
class Summary:
    host: str = ""
    tls: bool = False
    load: Load = field(default_factory=Load)
    devices: list[str] = field(default_factory=list)
    connected: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    published: Counter = field(default_factory=Counter)
    bad: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    unsent: int = 0  # handed to paho, never sent (or never PUBACKed at QoS 1) within the load's flush_s
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    seconds: float = 0.0  # publishing, from the first reading until paho has sent the last

    @property
    def ok(self) -> bool:
        return bool(self.connected) and not self.errors

    def to_json(self) -> dict:
        return {"ok": self.ok, "host": self.host, "tls": self.tls, "rate_per_sensor": self.load.rate,
                "duration_s": self.load.duration, "seconds": round(self.seconds, 3), "devices": self.devices,
                "created": self.created, "connected": self.connected,
                "published": {k: self.published[k] for k in ("status", "data", "heartbeat")},
                "bad": dict(sorted(self.bad.items())), "bad_total": sum(self.bad.values()),
                "first_timestamp": self.first_timestamp, "last_timestamp": self.last_timestamp,
                "errors": [{"message": m, "count": n} for m, n in sorted(self.errors.items())]}


def format_summary(summary: Summary) -> str:
    doc = summary.to_json()
    published = doc["published"]
    rate = f"{summary.load.rate:g} reading/s each" if summary.load.rate else "flat out"
    lines = [f"simulate: {len(summary.connected)} of {len(summary.devices)} sensors on {summary.host}"
             f"{' (TLS)' if summary.tls else ''}, {rate}, {summary.seconds:.1f} s"]
    if summary.created:
        lines.append(f"created: {len(summary.created)} simulated sensors ({', '.join(summary.created)})")
    lines.append(f"published: {published['status']} status, {published['data']} data, "
                 f"{published['heartbeat']} heartbeat")
    if doc["bad_total"]:
        lines.append(f"bad: {doc['bad_total']} ({', '.join(f'{k} {n}' for k, n in doc['bad'].items())})")
    if summary.first_timestamp:
        lines.append(f"readings from {summary.first_timestamp} to {summary.last_timestamp}")
    lines.append("errors: none" if not summary.errors else "errors:")
    lines += [f"  {e['message']} (x{e['count']})" for e in doc["errors"]]
    return "\n".join(lines)


def account(summary: Summary, sensor: SimulatedSensor, kind: str, info) -> None:
    """Count a message paho took; keep it to be checked as sent at the end."""
    if info.rc != 0:
        summary.errors[f"{sensor.device_id}: publish failed (paho rc {info.rc})"] += 1
        return
    (summary.bad if kind in BAD_KINDS else summary.published)[kind] += 1
    sensor.pending.append(info)
    if len(sensor.pending) > PRUNE_AT:
        while sensor.pending and sensor.pending[0].is_published():
            sensor.pending.popleft()


def send(sensor: SimulatedSensor, messages: list[tuple[str, str, bytes]], qos: int, summary: Summary) -> None:
    """Publish a reading's `messages` (SimulatedSensor.reading), counted into `summary`."""
    for kind, t, payload in messages:
        account(summary, sensor, kind, sensor.client.publish(t, payload, qos=qos))
    ts = sensor.last_timestamp
    if summary.first_timestamp is None or ts < summary.first_timestamp:
        summary.first_timestamp = ts
    if summary.last_timestamp is None or ts > summary.last_timestamp:
        summary.last_timestamp = ts


def sensors_for(creds: list[SensorCredentials], site: str | None = None, seed: int | None = None,
                client_factory=make_client) -> list[SimulatedSensor]:
    """One simulated sensor per account, not yet connected; `seed` makes their values repeatable."""
    rng = random.Random(seed)
    now = time.time()
    return [SimulatedSensor(c, i, site or c.site or DEFAULT_SITE, random.Random(rng.random()), client_factory, now)
            for i, c in enumerate(creds)]


def connect(sensors: list[SimulatedSensor], host: str, port: int | None, tls: bool, summary: Summary,
            announce: bool = True) -> list[SimulatedSensor]:
    """Connect each sensor and announce it online (unless not `announce`: data only, for the benchmark).

    Returns the sensors the broker accepted within CONNECT_TIMEOUT_S.
    """
    started = []
    for sensor in sensors:
        target = port or (sensor.creds.tls_port if tls else sensor.creds.port)
        try:
            sensor.connect(host, target, tls, time.time())
        except (OSError, ssl.SSLError, ValueError) as exc:
            summary.errors[f"cannot reach {host}:{target}: {exc}"] += 1
            break  # the same broker for all: do not wait for each in turn
        started.append(sensor)
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    for sensor in started:
        while not sensor.connected.is_set() and sensor.refused is None and time.monotonic() < deadline:
            sensor.connected.wait(0.05)
    accepted = []
    for sensor in started:
        if sensor.connected.is_set():
            accepted.append(sensor)
            continue
        why = f"refused ({sensor.refused})" if sensor.refused else f"not answered within {CONNECT_TIMEOUT_S:.0f} s"
        summary.errors[f"{sensor.device_id}: connection {why}"] += 1
        sensor.close()
    summary.connected = [s.device_id for s in accepted]
    for sensor in accepted if announce else ():
        account(summary, sensor, "status", sensor.announce())
    return accepted


def publish(sensors: list[SimulatedSensor], load: Load, summary: Summary | None = None,
            stop: threading.Event | None = None) -> Summary:
    """Publish `load` from connected sensors, then wait until paho has sent it; counted into `summary` or a new one."""
    if summary is None:
        ids = [s.device_id for s in sensors]
        summary = Summary(load=load, devices=ids, connected=ids)
    began = time.monotonic()
    deadline = began + load.duration if load.duration else math.inf
    (paced if load.rate else flat_out)(sensors, load, summary, stop or threading.Event(), began, deadline)
    flush(sensors, summary, load.flush_s)
    summary.seconds += time.monotonic() - began
    return summary


def paced(sensors: list[SimulatedSensor], load: Load, summary: Summary, stop: threading.Event, began: float,
          deadline: float) -> None:
    """Each sensor's readings 1/rate apart, the sensors spread evenly over that interval."""
    interval = 1.0 / load.rate
    due = [(began + interval * i / len(sensors), 0, i) for i in range(len(sensors))]  # (when, reading, sensor): a heap
    while due:
        at, n, i = heapq.heappop(due)
        now = time.monotonic()
        if max(at, now) >= deadline or (stop.wait(at - now) if at > now else stop.is_set()):
            return
        send(sensors[i], sensors[i].reading(time.time(), n, load), load.qos, summary)
        if load.readings is None or n + 1 < load.readings:
            heapq.heappush(due, (at + interval, n + 1, i))


def flat_out(sensors: list[SimulatedSensor], load: Load, summary: Summary, stop: threading.Event, began: float,
             deadline: float) -> None:
    """The sensors in turn, as fast as paho takes their messages (the benchmark's full rate)."""
    for n in itertools.islice(itertools.count(), load.readings):
        for sensor in sensors:
            if stop.is_set() or time.monotonic() >= deadline:
                return
            send(sensor, sensor.reading(time.time(), n, load), load.qos, summary)


def flush(sensors: list[SimulatedSensor], summary: Summary, timeout: float) -> None:
    """Wait up to `timeout` s in all until paho has sent what each sensor handed it (PUBACKed, at QoS 1)."""
    deadline = time.monotonic() + timeout
    for sensor in sensors:
        problem = "not sent in time"
        while sensor.pending:
            info = sensor.pending[0]
            try:
                left = deadline - time.monotonic()
                if not info.is_published() and left > 0:
                    info.wait_for_publish(left)
                if not info.is_published():
                    break
            except (RuntimeError, ValueError) as exc:  # paho gave up on it: the connection is gone
                problem = f"not sent ({exc})"
                break
            sensor.pending.popleft()
        if sensor.pending:
            summary.unsent += len(sensor.pending)
            summary.errors[f"{sensor.device_id}: {len(sensor.pending)} messages {problem}"] += 1
            sensor.pending.clear()


def close(sensors: list[SimulatedSensor]) -> None:
    for sensor in sensors:
        sensor.close()


def run(creds: list[SensorCredentials], host: str, port: int | None = None, tls: bool = False,
        site: str | None = None, seed: int | None = None, stop: threading.Event | None = None,
        client_factory=make_client, **load) -> Summary:
    """Connect the sensors, publish Load(**load) (the firmware's by default), disconnect."""
    load = Load(**load)
    summary = Summary(host=host, tls=tls, load=load, devices=[c.device_id for c in creds])
    live = connect(sensors_for(creds, site, seed, client_factory), host, port, tls, summary)
    try:
        if live:
            publish(live, load, summary, stop)
    finally:
        close(live)
    return summary


# ------------------------------------------------------------------ the command

def bounded(kind: type, low: float, high: float, low_open: bool = False):
    """An argparse type: a finite `kind` within [low, high] (or (low, high]); a float may be a fraction, 1/60."""
    def parse(text: str):
        try:
            value = kind(Fraction(text)) if kind is float and "/" in text else kind(text)
        except (ValueError, ZeroDivisionError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
            where = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"{text} is outside {where}")
        return value
    return parse


def site_name(text: str) -> str:
    if not text or len(text) > 64 or not text.isprintable():
        raise argparse.ArgumentTypeError("a site is 1 to 64 printable characters")
    return text


def host_name(text: str) -> str:
    if not text or len(text) > 253 or any(c.isspace() or not c.isprintable() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or address")
    return text


def add_parser(commands) -> None:
    p = commands.add_parser(
        "simulate", help="simulated sensors publishing like the real firmware",
        description="Simulated ESP32 sensors that publish like the real firmware (QoS 0, a data message then a "
                    "heartbeat with the same timestamp, a retained status with a Last Will), with DHT22-like "
                    "values. They use the Pi's sensor accounts (/etc/datayoti/sensors, root only; --create adds "
                    "simulated ones) or --credentials DIR. Always bounded in time; prints what was published.")
    p.add_argument("--devices", type=bounded(int, 1, MAX_DEVICES), metavar="N",
                   help=f"simulate the first N sensor accounts, in MAC order (default all, at most {MAX_DEVICES})")
    p.add_argument("--rate", type=bounded(float, 0, MAX_RATE, low_open=True), default=1.0, metavar="R",
                   help="readings per second per sensor, e.g. 0.5 or 1/60 (the firmware's default); default 1, at "
                        "most 1: timestamps have whole seconds")
    p.add_argument("--duration", type=bounded(float, 0, MAX_DURATION_S, low_open=True), default=60.0, metavar="S",
                   help=f"seconds to publish (default 60, at most {MAX_DURATION_S:.0f})")
    p.add_argument("--readings", type=bounded(int, 1, MAX_READINGS), metavar="N",
                   help="stop a sensor after N readings (default: only the duration bounds it)")
    p.add_argument("--bad-ratio", type=bounded(float, 0, 1), default=0.0, metavar="X",
                   help=f"share of readings with one bad message, 0 to 1 (faults in turn: {', '.join(BAD_KINDS)})")
    p.add_argument("--host", type=host_name, default="localhost", help="broker (default localhost)")
    p.add_argument("--port", type=bounded(int, 1, 65535), help="broker port (default: each account's MQTT_PORT, "
                                                                  "or MQTT_TLS_PORT with --tls)")
    p.add_argument("--tls", action="store_true", help="connect with TLS, trusting the account's CA_CERT")
    accounts = p.add_mutually_exclusive_group()
    accounts.add_argument("--credentials", type=Path, metavar="DIR",
                          help=f"directory of <MAC>.json sensor accounts (default {SENSORS_DIR}; with it, no root "
                               "needed)")
    accounts.add_argument("--create", action="store_true",
                          help=f"with --devices N, first add the missing sensors with `datayoti device add` "
                               f"(simulated MACs {simulated_mac(1)}, {simulated_mac(2)}, ...)")
    p.add_argument("--site", type=site_name, help=f"site_id in the heartbeats, and of the sensors --create adds "
                                                  f"(default: the account's site, else {DEFAULT_SITE})")
    p.add_argument("--seed", type=bounded(int, 0, 2**63 - 1), help="seed of the values, for a repeatable run")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=command, needs_root=lambda args: args.credentials is None)


def command(args: argparse.Namespace) -> int:
    if args.create and args.devices is None:
        print("datayoti simulate: error: --create needs --devices N, the number of sensors to simulate",
              file=sys.stderr)
        return 2
    directory = args.credentials or SENSORS_DIR
    try:
        created = create_accounts(directory, args.devices, args.site) if args.create else []
        creds = load_fleet(directory, args.devices)
    except SimulateError as exc:
        print(f"datayoti simulate: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = run(creds, args.host, args.port, args.tls, args.site, args.seed, stop, rate=args.rate,
                      duration=args.duration, readings=args.readings, bad_ratio=args.bad_ratio)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    summary.created = created
    print(json.dumps(summary.to_json(), indent=2) if args.json else format_summary(summary))
    return 0 if summary.ok else 1
