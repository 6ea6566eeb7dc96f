"""Property-based tests of `parse_message`: whatever arrives, only `Rejected` escapes,
and whatever is accepted is something PostgreSQL stores without complaint."""

from __future__ import annotations

import contextlib
import json
import math
from datetime import UTC, datetime

from datayoti_ingestor.messages import INT4, INT8, Heartbeat, Limits, Reading, Rejected, Status, parse_message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from payload_strategies import payloads

MAC = "1C:69:20:E9:18:24"
NOW = datetime(2025, 11, 3, 14, 31, 5, tzinfo=UTC)
LIMITS = Limits()
# rules.max_payload_bytes may be raised: then deep nesting and huge numbers reach the decoder.
LARGE_PAYLOADS = Limits(max_payload_bytes=1 << 20)


def storable_text(value: str, limit: int) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value and len(value) <= limit


def storable_json(value, depth: int = 1) -> bool:
    """What jsonb takes, within the configured bounds."""
    if isinstance(value, str):
        return storable_text(value, LIMITS.max_text_chars)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return depth <= LIMITS.max_json_depth and all(storable_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return depth <= LIMITS.max_json_depth and all(
            storable_text(k, LIMITS.max_key_chars) and storable_json(v, depth + 1) for k, v in value.items())
    return True


def assert_storable(message) -> None:
    assert message.device_id == MAC
    assert message.stamp.time.tzinfo is not None
    if isinstance(message, Reading):
        assert math.isfinite(message.temperature) and math.isfinite(message.humidity)
        assert storable_json(message.extra)
    elif isinstance(message, Heartbeat):
        for name, (low, high) in {"rssi": INT4, "free_heap": INT4, "min_heap": INT4, "uptime": INT8}.items():
            value = getattr(message, name)
            assert value is None or low <= value <= high, (name, value)
        assert message.site_id is None or storable_text(message.site_id, LIMITS.max_site_id_chars)
        assert storable_json(message.extra)
    else:
        assert isinstance(message, Status)
        assert storable_text(message.status_type, LIMITS.max_text_chars)
        assert storable_json(message.status_data)
    json.dumps(getattr(message, "extra", None) or getattr(message, "status_data", None), allow_nan=False)


def parse_or_reject(kind: str, payload: bytes, limits: Limits):
    try:
        return parse_message(f"datayoti/sensor/{MAC}/{kind}", payload, NOW, limits)
    except Rejected as exc:
        assert exc.reason and "\x00" not in exc.detail
        exc.detail.encode("utf-8")
        return None


# Failures Hypothesis found, kept as explicit examples.
@example(("heartbeat", b'{"rssi": 1180591620717411303424}'))        # 2**70: PostgreSQL's integer out of range
@example(("heartbeat", b'{"site_id": "A\\u0000"}'))                 # NUL in text: psycopg2's ValueError
@example(("status", b'{"status": "\\u0000"}'))                      # NUL in jsonb: crashed the service
@example(("heartbeat", b'{"x": "\\ud800"}'))                        # lone surrogate: not UTF-8
@example(("heartbeat", b'{"x": 1e400}'))                            # overflows to inf: jsonb refuses it
@example(("status", b'{"n": ' + b"[" * 30000 + b"]" * 30000 + b"}"))  # RecursionError in json.loads
@example(("status", b'{"n": ' + b"9" * 4400 + b"}"))                # ValueError: int digits limit
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads(MAC))
def test_only_rejected_escapes_and_accepted_messages_are_storable(kind_and_payload):
    kind, payload = kind_and_payload
    for limits in (LIMITS, LARGE_PAYLOADS):
        message = parse_or_reject(kind, payload, limits)
        if message is not None:
            assert_storable(message)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.binary(max_size=200))
def test_any_topic_and_bytes_only_reject(topic, payload):
    with contextlib.suppress(Rejected):
        parse_message(topic, payload, NOW, LIMITS)
