"""Bounded publishing of numbered readings, for tests and benchmarks.

Each reading has a unique (device, timestamp), so the database can be checked
for exactly-once storage: every numbered reading present, none twice.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt

BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)


def reading_time(index: int) -> datetime:
    """The timestamp of reading `index`: one second apart from BASE_TIME."""
    return BASE_TIME + timedelta(seconds=index)


def data_message(device_id: str, index: int) -> str:
    ts = reading_time(index).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return json.dumps({"device_id": device_id, "timestamp": ts,
                       "temperature": round(15 + (index % 200) / 10, 1), "humidity": round(40 + index % 50, 1)})


@dataclass
class PublishReport:
    accepted: int = 0  # QoS 1: PUBACKed by the broker; QoS 0: handed to the socket
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


class SensorClient:
    def __init__(self, host: str, port: int, username: str, password: str, device_id: str):
        self.device_id = device_id
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"ESP32Client-{device_id}-{int(time.time() * 1000) % 10000}")
        self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = lambda c, u, f, rc, p: (not rc.is_failure) and self.connected.set()
        self.client.connect(host, port, keepalive=90)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError(f"{device_id}: no CONNACK from {host}:{port}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_readings(sensors: list[SensorClient], per_sensor: int, qos: int, rate_per_s: float | None = None,
                     timeout_s: float = 300, start_index: int = 0) -> PublishReport:
    """Publish `per_sensor` numbered readings from each sensor, round-robin, optionally paced."""
    report = PublishReport()
    infos = []
    started = time.monotonic()
    deadline = started + timeout_s
    sent = 0
    for i in range(start_index, start_index + per_sensor):
        for sensor in sensors:
            info = sensor.client.publish(f"datayoti/sensor/{sensor.device_id}/data",
                                         data_message(sensor.device_id, i), qos=qos)
            infos.append(info)
            sent += 1
            if rate_per_s:
                ahead = started + sent / rate_per_s - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            if time.monotonic() > deadline:
                report.errors.append("publishing timed out")
                break
    for info in infos:
        try:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        except (RuntimeError, ValueError) as exc:
            report.errors.append(str(exc))
        if info.is_published():
            report.accepted += 1
        else:
            report.failed += 1
    report.seconds = time.monotonic() - started
    return report
