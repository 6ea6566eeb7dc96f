"""Parsing and validation of the sensors' MQTT messages: pure functions, no I/O.

Every rule that refuses a message raises `Rejected` with a short machine-readable
reason and a human-readable detail; the caller turns it into one
`rejected_messages` row.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

MAC_PATTERN = re.compile(r"^[0-9A-Fa-f]{2}([:-]?)(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$")
TOPIC_PATTERN = re.compile(r"^datayoti/sensor/([^/]+)/(data|heartbeat|status)$")
INT4 = (-(2**31), 2**31 - 1)
INT8 = (-(2**63), 2**63 - 1)
# Heartbeat integers and the range of the column that stores each.
HEARTBEAT_INT_FIELDS = {"rssi": INT4, "free_heap": INT4, "uptime": INT8, "min_heap": INT4}
RESERVED_DATA_FIELDS = frozenset({"device_id", "timestamp", "temperature", "humidity", "site_id"})


MAX_DETAIL_CHARS = 500


def printable(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """Text safe for a log line and a text column: NULs and lone surrogates escaped, bounded."""
    text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Rejected(Exception):
    """A message that cannot be stored; `reason` is one of a fixed set of codes."""

    def __init__(self, reason: str, detail: str):
        detail = printable(detail)
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    """What counts as plausible. Defaults: the DHT22's ranges, the widest fitted."""

    max_payload_bytes: int = 4096
    temperature_min: float = -40.0
    temperature_max: float = 80.0
    humidity_min: float = 0.0
    humidity_max: float = 100.0
    # Timestamps before this are a clock that never synchronised (ESP32 counts from 1970).
    earliest_valid_time: datetime = datetime(2020, 1, 1, tzinfo=UTC)
    # Timestamps further ahead of the receipt than this are not believed either.
    max_clock_ahead: timedelta = timedelta(hours=1)
    # What PostgreSQL stores without complaint, checked before it is asked (rule: text_too_long).
    max_site_id_chars: int = 64
    max_text_chars: int = 256
    # Stored JSON (heartbeat extras, status bodies, reading extras): rules too_deep, too_many_keys, key_too_long.
    max_json_depth: int = 4
    max_json_keys: int = 32
    max_key_chars: int = 64


@dataclass(frozen=True)
class Stamp:
    """When a message happened. `device_time` keeps a device value that was not believed."""

    time: datetime
    device_time: datetime | None = None
    device_time_raw: str | None = None

    @property
    def from_device(self) -> bool:
        return self.device_time is None and self.device_time_raw is None


@dataclass(frozen=True)
class Reading:
    device_id: str
    stamp: Stamp
    temperature: float
    humidity: float
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Heartbeat:
    device_id: str
    stamp: Stamp
    site_id: str | None
    rssi: int | None
    free_heap: int | None
    uptime: int | None
    min_heap: int | None
    ntp_sync: bool | None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Status:
    device_id: str
    stamp: Stamp
    status_type: str
    status_data: dict


Message = Reading | Heartbeat | Status


def canonical_mac(text: str) -> str:
    """'1c-69-20-e9-18-24', '1C6920E91824' -> '1C:69:20:E9:18:24'; ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"not a MAC address: {text!r}")
    return _canonical_mac_text(text)


@functools.lru_cache(maxsize=4096)
def _canonical_mac_text(text: str) -> str:
    """canonical_mac for a string; cached, because every message names its device twice."""
    if not MAC_PATTERN.match(text):
        raise ValueError(f"not a MAC address: {text!r}")
    digits = re.sub(r"[:-]", "", text).upper()
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def parse_topic(topic: str) -> tuple[str, str]:
    """'datayoti/sensor/<mac>/<kind>' -> (canonical MAC, kind)."""
    match = TOPIC_PATTERN.match(topic)
    if not match:
        raise Rejected("bad_topic", f"topic {topic!r} is not datayoti/sensor/<MAC>/data|heartbeat|status")
    try:
        return canonical_mac(match[1]), match[2]
    except ValueError as exc:
        raise Rejected("bad_device_id", str(exc)) from None


def refuse_constant(name: str):
    raise Rejected("not_finite", f"JSON constant {name} is not a number")


# One decoder for every message: json.loads(text, parse_constant=...) would build a new one each time.
DECODER = json.JSONDecoder(parse_constant=refuse_constant)


def decode_payload(payload: bytes, limits: Limits) -> dict:
    if len(payload) > limits.max_payload_bytes:
        raise Rejected("oversized", f"{len(payload)} bytes, the limit is {limits.max_payload_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    try:
        body = DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise Rejected("malformed_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise Rejected("too_deep", "JSON nested too deeply to decode") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise Rejected("malformed_json", str(exc)[:200]) from None
    if not isinstance(body, dict):
        raise Rejected("not_an_object", f"payload is a JSON {type(body).__name__}, not an object")
    return body


def parse_time_value(value) -> datetime:
    """ISO 8601 (Z or offset) or epoch seconds/milliseconds -> aware UTC datetime."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        seconds = value / 1000 if abs(value) >= 1e11 else value  # 1e11 s is year 5138
        return datetime.fromtimestamp(seconds, tz=UTC)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return parse_time_value(float(text))
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone (add Z or an offset)")
        return parsed.astimezone(UTC)
    raise ValueError(f"a {type(value).__name__} is not a timestamp")


def stamp_for(value, received_at: datetime, limits: Limits, wall_clock: bool = True) -> Stamp:
    """Decide a message's time. Missing: receipt. Absurd or not wall-clock: receipt, keeping the device's."""
    if value is None:
        return Stamp(time=received_at)
    try:
        device_time = parse_time_value(value)
    except (ValueError, OverflowError, OSError) as exc:
        raise Rejected("bad_timestamp", str(exc)) from None
    absurd = device_time < limits.earliest_valid_time or device_time > received_at + limits.max_clock_ahead
    if absurd or not wall_clock:
        return Stamp(time=received_at, device_time=device_time, device_time_raw=str(value))
    return Stamp(time=device_time)


def number(body: dict, key: str, low: float, high: float) -> float:
    if key not in body:
        raise Rejected("missing_field", f"{key} is missing")
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected("wrong_type", f"{key} is a {type(value).__name__}, not a number")
    if not math.isfinite(value):
        raise Rejected("not_finite", f"{key} is {value}")
    if not low <= value <= high:
        raise Rejected("out_of_range", f"{key}={value} is outside {low}..{high}")
    return float(value)


def optional_int(body: dict, key: str, bounds: tuple[int, int]) -> int | None:
    """An integer field that fits its column (`bounds`), or None when absent."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value != int(value):
        raise Rejected("wrong_type", f"{key}={value!r} is not an integer")
    low, high = bounds
    if not low <= value <= high:
        raise Rejected("integer_out_of_range", f"{key}={int(value)} does not fit its column ({low}..{high})")
    return int(value)


def check_text(where: str, value: str, max_chars: int, reason: str = "text_too_long") -> None:
    """A string PostgreSQL stores as it is: no NUL, valid Unicode, bounded length."""
    if "\x00" in value:
        raise Rejected("nul_character", f"{where} contains a NUL character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Rejected("invalid_unicode", f"{where} contains a lone surrogate") from None
    if len(value) > max_chars:
        raise Rejected(reason, f"{where} has {len(value)} characters, the limit is {max_chars}")


def check_json(value, limits: Limits, where: str = "payload", depth: int = 1, keys: list | None = None) -> None:
    """What goes into a jsonb column: finite numbers, clean strings and keys, bounded depth and key count."""
    keys = [0] if keys is None else keys
    if isinstance(value, str):
        check_text(where, value, limits.max_text_chars)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise Rejected("not_finite", f"{where} is {value}")
    elif isinstance(value, dict | list):
        if depth > limits.max_json_depth:
            raise Rejected("too_deep", f"{where} is nested deeper than {limits.max_json_depth} levels")
        if isinstance(value, list):
            for i, item in enumerate(value):
                check_json(item, limits, f"{where}[{i}]", depth + 1, keys)
            return
        keys[0] += len(value)
        if keys[0] > limits.max_json_keys:
            raise Rejected("too_many_keys", f"more than {limits.max_json_keys} keys in {where}")
        for key, item in value.items():
            check_text(f"a key in {where}", key, limits.max_key_chars, "key_too_long")
            check_json(item, limits, f"{where}.{key}", depth + 1, keys)


def check_device(body: dict, topic_device: str) -> None:
    claimed = body.get("device_id")
    if claimed is None:
        return
    try:
        same = canonical_mac(claimed) == topic_device
    except ValueError:
        raise Rejected("bad_device_id", f"device_id {claimed!r} is not a MAC address") from None
    if not same:
        raise Rejected("device_mismatch", f"payload device_id {claimed} contradicts topic device {topic_device}")


def extra_numbers(body: dict, reserved: frozenset, limits: Limits) -> dict:
    """Other numeric fields, kept as they are; non-finite ones are refused."""
    extra = {key: value for key, value in body.items()
             if key not in reserved and not isinstance(value, bool) and isinstance(value, int | float)}
    if extra:
        check_json(extra, limits, "extra")
    return extra


def parse_message(topic: str, payload: bytes, received_at: datetime, limits: Limits = Limits()) -> Message:
    """Turn one MQTT message into a typed record, or raise Rejected."""
    device_id, kind = parse_topic(topic)
    body = decode_payload(payload, limits)
    check_device(body, device_id)
    if kind == "data":
        temperature = number(body, "temperature", limits.temperature_min, limits.temperature_max)
        humidity = number(body, "humidity", limits.humidity_min, limits.humidity_max)
        stamp = stamp_for(body.get("timestamp"), received_at, limits)
        return Reading(device_id, stamp, temperature, humidity, extra_numbers(body, RESERVED_DATA_FIELDS, limits))
    if kind == "heartbeat":
        ntp_sync = body.get("ntp_sync")
        if ntp_sync is not None and not isinstance(ntp_sync, bool):
            raise Rejected("wrong_type", f"ntp_sync={ntp_sync!r} is not a boolean")
        site_id = body.get("site_id")
        if site_id is not None:
            if not isinstance(site_id, str) or not site_id:
                raise Rejected("wrong_type", f"site_id={site_id!r} is not a non-empty string")
            check_text("site_id", site_id, limits.max_site_id_chars)
        ints = {key: optional_int(body, key, bounds) for key, bounds in HEARTBEAT_INT_FIELDS.items()}
        stamp = stamp_for(body.get("timestamp"), received_at, limits, wall_clock=ntp_sync is not False)
        extra = {k: v for k, v in body.items()
                 if k not in {"device_id", "site_id", "timestamp", "ntp_sync", *HEARTBEAT_INT_FIELDS}}
        if extra:
            check_json(extra, limits, "extra")
        return Heartbeat(device_id, stamp, site_id, ntp_sync=ntp_sync, extra=extra, **ints)
    # The whole body is stored as status_data.
    check_json(body, limits)
    stamp = stamp_for(body.get("timestamp"), received_at, limits)
    status_type = body.get("status") if isinstance(body.get("status"), str) else "announce"
    return Status(device_id, stamp, status_type, body)
