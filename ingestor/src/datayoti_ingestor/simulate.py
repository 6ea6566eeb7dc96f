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

Accounts: the per-sensor files `/etc/datayoti/sensors/<MAC>.json` (root only; the mosquitto role
writes them), or `--credentials DIR` holding copies, which any user may run with.
"""

from __future__ import annotations

import argparse
import heapq
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

from .messages import canonical_mac

SENSORS_DIR = Path("/etc/datayoti/sensors")
REQUIRED_KEYS = ("device_id", "MQTT_USER", "MQTT_PASSWORD", "MQTT_PORT")
KEEPALIVE_S = 90
CONNECT_TIMEOUT_S = 10.0
FLUSH_TIMEOUT_S = 10.0
# Bounds of one run. A rate above one reading a second would give a sensor two readings in the
# same second: the firmware's timestamps have whole seconds, and (device, time) is the natural key.
MAX_DEVICES = 200
MAX_RATE = 1.0
MAX_DURATION_S = 24 * 3600.0
MAX_READINGS = 1_000_000
DEFAULT_SITE = "SITE_001"
DHT22_TEMPERATURE = (-40.0, 80.0)
DHT22_HUMIDITY = (0.0, 100.0)
# --bad-ratio's faults, named by the reason the ingestor rejects each with (README's rules table).
BAD_KINDS = ("malformed_json", "not_finite", "out_of_range", "wrong_type", "missing_field", "nul_character",
             "not_utf8", "device_mismatch")


class SimulateError(Exception):
    """Nothing to simulate with (no accounts, unreadable files): one line, exit 1."""


# ------------------------------------------------------------------ accounts

@dataclass(frozen=True)
class SensorCredentials:
    device_id: str
    username: str
    password: str = field(repr=False)
    port: int
    tls_port: int
    ca_cert: str = field(repr=False)
    site_id: str | None = None


def load_credentials(path: Path) -> SensorCredentials:
    """Read one sensor JSON file; raise ValueError naming the file on bad content."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: missing keys {', '.join(missing)}")
    try:
        device_id = canonical_mac(data["device_id"])
        port, tls_port = int(data["MQTT_PORT"]), int(data.get("MQTT_TLS_PORT", 8883))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    site = data.get("site_id")
    return SensorCredentials(device_id=device_id, username=str(data["MQTT_USER"]),
                             password=str(data["MQTT_PASSWORD"]), port=port, tls_port=tls_port,
                             ca_cert=str(data.get("CA_CERT", "")), site_id=site if isinstance(site, str) else None)


def load_fleet(directory: Path, count: int | None) -> list[SensorCredentials]:
    """The first `count` accounts of `directory` (all when None), in MAC order."""
    if not directory.is_dir():
        raise SimulateError(f"{directory}: no such directory (or not allowed to see it)")
    if not os.access(directory, os.R_OK | os.X_OK):
        raise SimulateError(f"{directory}: permission denied")
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise SimulateError(f"{directory}: no sensor accounts (<MAC>.json); the inventory's datayoti_sensors "
                            "declares them")
    if count is not None and count > len(paths):
        raise SimulateError(f"{directory}: {len(paths)} sensor accounts, {count} asked for")
    try:
        return [load_credentials(p) for p in paths[:count]]
    except ValueError as exc:
        raise SimulateError(str(exc)) from None


# ------------------------------------------------------------------ what the firmware sends

def firmware_timestamp(epoch: float) -> str:
    """The firmware's format: %Y-%m-%dT%H:%M:%S.000Z, always UTC."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def firmware_client_id(device_id: str, millis: int) -> str:
    return f"ESP32Client-{device_id}-{millis % 10000}"


def topic(device_id: str, kind: str) -> str:
    return f"datayoti/sensor/{device_id}/{kind}"


def encode(payload: dict) -> bytes:
    """Compact JSON, like ArduinoJson's serializeJson."""
    return json.dumps(payload, separators=(",", ":")).encode()


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


def is_bad(index: int, ratio: float) -> bool:
    """Whether a sensor's reading `index` (from 0) is a fault: floor(n * ratio) of its first n readings are."""
    return math.floor((index + 1) * ratio + 1e-9) > math.floor(index * ratio + 1e-9)


def next_stamp(now: float, last: int | None) -> int:
    """Whole seconds, after the sensor's previous reading: (device, time) stays unique."""
    second = math.floor(now)
    return second if last is None or second > last else last + 1


def clamp(value: float, bounds: tuple[float, float]) -> float:
    return min(bounds[1], max(bounds[0], value))


class DhtSeries:
    """A DHT22 in a room: a daily cycle peaking mid-afternoon, a slow mean-reverting drift, noise.

    Humidity moves against temperature, as relative humidity does in a closed room.
    """

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.base_temperature = rng.uniform(19.0, 24.0)
        self.daily_amplitude = rng.uniform(1.0, 3.0)
        self.base_humidity = rng.uniform(40.0, 60.0)
        self.drift_temperature = 0.0
        self.drift_humidity = 0.0

    def values(self, epoch: float) -> tuple[float, float]:
        """(temperature °C, relative humidity %) at `epoch`, rounded to 0.1 and within the DHT22's range."""
        daily = math.cos(2 * math.pi * ((epoch % 86400) / 86400 - 15 / 24))
        self.drift_temperature = clamp(0.99 * self.drift_temperature + self.rng.gauss(0, 0.05), (-3.0, 3.0))
        self.drift_humidity = clamp(0.99 * self.drift_humidity + self.rng.gauss(0, 0.2), (-10.0, 10.0))
        temperature = self.base_temperature + self.daily_amplitude * daily + self.drift_temperature
        humidity = self.base_humidity - 2.5 * self.daily_amplitude * daily + self.drift_humidity
        temperature += self.rng.gauss(0, 0.05)
        humidity += self.rng.gauss(0, 0.3)
        return round(clamp(temperature, DHT22_TEMPERATURE), 1), round(clamp(humidity, DHT22_HUMIDITY), 1)


# ------------------------------------------------------------------ one sensor

def make_client(client_id: str):
    """A paho client as PubSubClient connects: MQTT 3.1.1, clean session."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                         clean_session=True)
    client.max_queued_messages_set(0)
    return client


class SimulatedSensor:
    def __init__(self, creds: SensorCredentials, index: int, site_id: str, rng: random.Random, client_factory,
                 now: float):
        self.creds, self.index, self.site_id, self.rng = creds, index, site_id, rng
        self.series = DhtSeries(rng)
        self.booted = now - rng.randint(60, 7 * 86400)  # an ESP32 that has been up a while
        self.rssi = rng.randint(-75, -50)
        self.min_heap = 200_000
        self.readings = 0
        self.faults = 0
        self.last_stamp: int | None = None
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
        self.status = encode(status_payload(self.creds.device_id, firmware_timestamp(now)))
        self.client.will_set(topic(self.creds.device_id, "status"), self.status, qos=1, retain=True)
        if tls:
            self.client.tls_set_context(ssl.create_default_context(cadata=self.creds.ca_cert or None))
        self.client.connect(host, port, keepalive=KEEPALIVE_S)
        self.client.loop_start()

    def announce(self) -> list[tuple[str, object]]:
        """The retained "online" status, right after the connection."""
        return [("status", self.client.publish(topic(self.creds.device_id, "status"), self.status, qos=0,
                                               retain=True))]

    def heartbeat(self, ts: str, now: float) -> dict:
        self.rssi = int(clamp(self.rssi + self.rng.choice((-1, 0, 0, 1)), (-90, -40)))
        free_heap = self.rng.randint(175_000, 195_000)
        self.min_heap = min(self.min_heap, free_heap - self.rng.randint(5_000, 30_000))
        return heartbeat_payload(self.creds.device_id, self.site_id, ts, self.rssi, free_heap,
                                 int(now - self.booted), self.min_heap)

    def reading(self, now: float, bad_ratio: float) -> list[tuple[str, str, bytes]]:
        """This reading's messages, in order: [(kind counted, topic, payload)]; kind is a fault's name for a fault."""
        self.last_stamp = next_stamp(now, self.last_stamp)
        ts = firmware_timestamp(self.last_stamp)
        dev = self.creds.device_id
        temperature, humidity = self.series.values(self.last_stamp)
        messages = [("data", topic(dev, "data"), encode(data_payload(dev, ts, temperature, humidity))),
                    ("heartbeat", topic(dev, "heartbeat"), encode(self.heartbeat(ts, now)))]
        if is_bad(self.readings, bad_ratio):
            kind = BAD_KINDS[(self.index + self.faults) % len(BAD_KINDS)]
            where, payload = bad_message(kind, dev, ts)
            self.faults += 1
            messages = [(kind, topic(dev, where), payload) if counted == where else (counted, t, p)
                        for counted, t, p in messages]
        self.readings += 1
        return messages

    def publish(self, messages: list[tuple[str, str, bytes]]) -> list[tuple[str, object]]:
        return [(kind, self.client.publish(t, payload, qos=0)) for kind, t, payload in messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------ a run

@dataclass
class Summary:
    host: str
    tls: bool
    rate: float
    duration_s: float
    devices: list[str] = field(default_factory=list)
    connected: list[str] = field(default_factory=list)
    published: Counter = field(default_factory=Counter)
    bad: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.connected) and not self.errors

    def to_json(self) -> dict:
        return {"ok": self.ok, "host": self.host, "tls": self.tls, "rate_per_sensor": self.rate,
                "duration_s": self.duration_s, "seconds": round(self.seconds, 3), "devices": self.devices,
                "connected": self.connected,
                "published": {k: self.published[k] for k in ("status", "data", "heartbeat")},
                "bad": dict(sorted(self.bad.items())), "bad_total": sum(self.bad.values()),
                "first_timestamp": self.first_timestamp, "last_timestamp": self.last_timestamp,
                "errors": [{"message": m, "count": n} for m, n in sorted(self.errors.items())]}


def format_summary(summary: Summary) -> str:
    doc = summary.to_json()
    published = doc["published"]
    lines = [f"simulate: {len(summary.connected)} of {len(summary.devices)} sensors on {summary.host}"
             f"{' (TLS)' if summary.tls else ''}, {summary.rate:g} reading/s each, {summary.seconds:.1f} s",
             f"published: {published['status']} status, {published['data']} data, {published['heartbeat']} heartbeat"]
    if doc["bad_total"]:
        lines.append(f"bad: {doc['bad_total']} ({', '.join(f'{k} {n}' for k, n in doc['bad'].items())})")
    if summary.first_timestamp:
        lines.append(f"readings from {summary.first_timestamp} to {summary.last_timestamp}")
    lines.append("errors: none" if not summary.errors else "errors:")
    lines += [f"  {e['message']} (x{e['count']})" for e in doc["errors"]]
    return "\n".join(lines)


def account(summary: Summary, sent: list[tuple[str, object]], sensor: SimulatedSensor) -> None:
    """Count what paho took; keep the rest to be checked as sent at the end."""
    for kind, info in sent:
        if info.rc != 0:
            summary.errors[f"{sensor.creds.device_id}: publish failed (paho rc {info.rc})"] += 1
            continue
        (summary.bad if kind in BAD_KINDS else summary.published)[kind] += 1
        sensor.pending.append(info)
    while sensor.pending and sensor.pending[0].is_published():
        sensor.pending.popleft()


def connect_all(sensors: list[SimulatedSensor], host: str, port: int | None, tls: bool, summary: Summary
                ) -> list[SimulatedSensor]:
    """Connect each sensor; the ones the broker accepted within CONNECT_TIMEOUT_S."""
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
        summary.errors[f"{sensor.creds.device_id}: connection {why}"] += 1
        sensor.close()
    return accepted


def run(creds: list[SensorCredentials], host: str, port: int | None = None, tls: bool = False, rate: float = 1.0,
        duration: float = 60.0, readings: int | None = None, bad_ratio: float = 0.0, site: str | None = None,
        seed: int | None = None, stop: threading.Event | None = None, client_factory=make_client) -> Summary:
    """Connect the sensors, publish at `rate` readings/s each until `duration` or `readings`, disconnect."""
    stop = stop or threading.Event()
    rng = random.Random(seed)
    now = time.time()
    summary = Summary(host=host, tls=tls, rate=rate, duration_s=duration, devices=[c.device_id for c in creds])
    sensors = [SimulatedSensor(c, i, site or c.site_id or DEFAULT_SITE, random.Random(rng.random()), client_factory,
                               now) for i, c in enumerate(creds)]
    began = time.monotonic()
    live = connect_all(sensors, host, port, tls, summary)
    summary.connected = [s.creds.device_id for s in live]
    try:
        for sensor in live:
            account(summary, sensor.announce(), sensor)
        interval = 1.0 / rate
        start = time.monotonic()
        deadline = start + duration
        # (when due, sensor index): readings spread evenly over an interval.
        due = [(start + interval * i / len(live), i) for i in range(len(live))]
        heapq.heapify(due)
        while due and not stop.is_set():
            at, i = heapq.heappop(due)
            if at >= deadline or stop.wait(max(0.0, at - time.monotonic())):
                break
            sensor = live[i]
            messages = sensor.reading(time.time(), bad_ratio)
            account(summary, sensor.publish(messages), sensor)
            stamp = firmware_timestamp(sensor.last_stamp)
            summary.first_timestamp = min(summary.first_timestamp or stamp, stamp)
            summary.last_timestamp = max(summary.last_timestamp or stamp, stamp)
            if readings is None or sensor.readings < readings:
                heapq.heappush(due, (at + interval, i))
    finally:
        flush_deadline = time.monotonic() + FLUSH_TIMEOUT_S
        for sensor in live:
            while sensor.pending and time.monotonic() < flush_deadline:
                if sensor.pending[0].is_published():
                    sensor.pending.popleft()
                else:
                    time.sleep(0.01)
            if sensor.pending:
                summary.errors[f"{sensor.creds.device_id}: {len(sensor.pending)} messages not sent in time"] += 1
            sensor.close()
        summary.seconds = time.monotonic() - began
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
                    "values. They use the Pi's sensor accounts (/etc/datayoti/sensors, root only) or "
                    "--credentials DIR. Always bounded in time; prints what was published.")
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
    p.add_argument("--credentials", type=Path, metavar="DIR",
                   help=f"directory of <MAC>.json sensor accounts (default {SENSORS_DIR}; with it, no root needed)")
    p.add_argument("--site", type=site_name, help=f"site_id in the heartbeats (default {DEFAULT_SITE})")
    p.add_argument("--seed", type=bounded(int, 0, 2**63 - 1), help="seed of the values, for a repeatable run")
    p.add_argument("--create", action="store_true", help="create missing sensor accounts (not yet: needs "
                                                         "`datayoti device add`)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=command, needs_root=lambda args: args.credentials is None)


def command(args: argparse.Namespace) -> int:
    if args.create:
        print("datayoti simulate: --create is not there yet: it needs `datayoti device add`; simulate the sensors "
              f"the inventory declares ({SENSORS_DIR})", file=sys.stderr)
        return 2
    try:
        creds = load_fleet(args.credentials or SENSORS_DIR, args.devices)
    except SimulateError as exc:
        print(f"datayoti simulate: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = run(creds, args.host, args.port, args.tls, args.rate, args.duration, args.readings, args.bad_ratio,
                      args.site, args.seed, stop)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    print(json.dumps(summary.to_json(), indent=2) if args.json else format_summary(summary))
    return 0 if summary.ok else 1
