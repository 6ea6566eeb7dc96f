#!/usr/bin/env python3
"""A fleet of simulated DataYoti ESP32 sensors.

Each simulated sensor behaves like the real firmware (shared/FIRMWARE-PROTOCOL.md):
- client id ESP32Client-<MAC>-<millis % 10000>, keepalive 90 s;
- a retained Last Will on .../status, then a retained "online" status;
- every interval, a data message followed by a heartbeat with the same timestamp;
- QoS 0 by default (PubSubClient cannot publish QoS 1).

Credentials are the per-sensor JSON files the mosquitto role writes on the Pi
(/etc/datayoti/sensors/<MAC>.json); pass a directory holding copies of them.
"""

from __future__ import annotations

import argparse
import json
import random
import ssl
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt

REQUIRED_KEYS = ("device_id", "MQTT_USER", "MQTT_PASSWORD", "MQTT_PORT")


@dataclass(frozen=True)
class SensorCredentials:
    device_id: str
    username: str
    password: str
    port: int
    tls_port: int
    ca_cert: str


def load_credentials(path: Path) -> SensorCredentials:
    """Read one sensor JSON file; raise ValueError naming the file on bad content."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from exc
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: missing keys {', '.join(missing)}")
    return SensorCredentials(
        device_id=data["device_id"], username=data["MQTT_USER"], password=data["MQTT_PASSWORD"],
        port=int(data["MQTT_PORT"]), tls_port=int(data.get("MQTT_TLS_PORT", 8883)),
        ca_cert=data.get("CA_CERT", ""),
    )


def firmware_timestamp(now: float) -> str:
    """The firmware's format: %Y-%m-%dT%H:%M:%S.000Z, always UTC."""
    return datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def data_payload(device_id: str, ts: str, rng: random.Random) -> dict:
    return {"device_id": device_id, "timestamp": ts,
            "temperature": round(rng.uniform(18.0, 26.0), 1), "humidity": round(rng.uniform(35.0, 70.0), 1)}


def heartbeat_payload(device_id: str, ts: str, uptime_s: int, rng: random.Random) -> dict:
    return {"device_id": device_id, "site_id": "SITE_001", "timestamp": ts,
            "rssi": rng.randint(-80, -45), "free_heap": rng.randint(170000, 190000),
            "uptime": uptime_s, "min_heap": 150000, "ntp_sync": True}


def topic(device_id: str, kind: str) -> str:
    return f"datayoti/sensor/{device_id}/{kind}"


class SimulatedSensor:
    def __init__(self, creds: SensorCredentials, host: str, use_tls: bool, qos: int, seed: int):
        self.creds, self.qos = creds, qos
        self.rng = random.Random(seed)
        self.started = time.monotonic()
        client_id = f"ESP32Client-{creds.device_id}-{int(time.monotonic() * 1000) % 10000}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.username_pw_set(creds.username, creds.password)
        status = json.dumps({"device_id": creds.device_id, "timestamp": firmware_timestamp(time.time())})
        self.client.will_set(topic(creds.device_id, "status"), status, qos=1, retain=True)
        port = creds.port
        if use_tls:
            ctx = ssl.create_default_context(cadata=creds.ca_cert)
            self.client.tls_set_context(ctx)
            port = creds.tls_port
        self.client.connect(host, port, keepalive=90)
        self.client.loop_start()
        self.client.publish(topic(creds.device_id, "status"), status, qos=0, retain=True)

    def publish_reading(self) -> None:
        ts = firmware_timestamp(time.time())
        dev = self.creds.device_id
        uptime = int(time.monotonic() - self.started)
        self.client.publish(topic(dev, "data"), json.dumps(data_payload(dev, ts, self.rng)), qos=self.qos)
        self.client.publish(topic(dev, "heartbeat"), json.dumps(heartbeat_payload(dev, ts, uptime, self.rng)),
                            qos=self.qos)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--credentials", type=Path, required=True, help="directory of <MAC>.json files")
    parser.add_argument("--host", required=True, help="broker address")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between readings (default 60)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to run (default 30)")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0, help="publish QoS (firmware: 0)")
    parser.add_argument("--tls", action="store_true", help="connect to MQTT_TLS_PORT with the Pi's CA")
    args = parser.parse_args(argv)
    if args.interval <= 0 or args.duration <= 0:
        parser.error("--interval and --duration must be positive")
    if not args.credentials.is_dir():
        parser.error(f"--credentials {args.credentials}: not a directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        creds = [load_credentials(p) for p in sorted(args.credentials.glob("*.json"))]
    except ValueError as exc:
        print(f"sensor_fleet: error: {exc}", file=sys.stderr)
        return 2
    if not creds:
        print(f"sensor_fleet: error: no <MAC>.json files in {args.credentials}", file=sys.stderr)
        return 2
    sensors = [SimulatedSensor(c, args.host, args.tls, args.qos, seed=i) for i, c in enumerate(creds)]
    published = 0
    deadline = time.monotonic() + args.duration
    try:
        while time.monotonic() < deadline:
            for sensor in sensors:
                sensor.publish_reading()
                published += 1
            time.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))
    finally:
        for sensor in sensors:
            sensor.close()
    print(f"sensor_fleet: {len(sensors)} sensors published {published} readings "
          f"({2 * published} messages) to {args.host}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
