"""One case per parsing and validation rule of the ingestor."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from datayoti_ingestor.messages import (
    Heartbeat,
    Limits,
    Reading,
    Rejected,
    Status,
    canonical_mac,
    parse_message,
    parse_time_value,
)

MAC = "1C:69:20:E9:18:24"
NOW = datetime(2025, 11, 3, 14, 31, 5, tzinfo=UTC)


def encode(body) -> bytes:
    return json.dumps(body).encode() if not isinstance(body, bytes) else body


def parse(kind: str, body, device: str = MAC):
    return parse_message(f"datayoti/sensor/{device}/{kind}", encode(body), NOW)


def rejected(kind: str, body, device: str = MAC) -> str:
    with pytest.raises(Rejected) as info:
        parse(kind, body, device)
    return info.value.reason


FIRMWARE_DATA = {"device_id": MAC, "timestamp": "2025-11-03T14:30:00.000Z", "temperature": 22.5, "humidity": 65.3}
FIRMWARE_BEAT = {"device_id": MAC, "site_id": "SITE_001", "timestamp": "2025-11-03T14:30:00.000Z", "rssi": -67,
                 "free_heap": 180000, "uptime": 3600, "min_heap": 150000, "ntp_sync": True}


# --- the firmware's own messages
def test_firmware_data_message():
    reading = parse("data", FIRMWARE_DATA)
    assert isinstance(reading, Reading)
    assert (reading.device_id, reading.temperature, reading.humidity) == (MAC, 22.5, 65.3)
    assert reading.stamp.time == datetime(2025, 11, 3, 14, 30, tzinfo=UTC) and reading.stamp.from_device


def test_firmware_heartbeat_assigns_a_site():
    beat = parse("heartbeat", FIRMWARE_BEAT)
    assert isinstance(beat, Heartbeat)
    assert (beat.site_id, beat.rssi, beat.free_heap, beat.uptime, beat.min_heap, beat.ntp_sync) == \
        ("SITE_001", -67, 180000, 3600, 150000, True)


def test_heartbeat_keeps_ip_and_firmware():
    beat = parse("heartbeat", {**FIRMWARE_BEAT, "ip": "192.0.2.7", "firmware": "1.4.2"})
    assert beat.extra == {"ip": "192.0.2.7", "firmware": "1.4.2"}


def test_status_online_and_will_are_the_same_announce():
    status = parse("status", {"device_id": MAC, "timestamp": "2025-11-03T14:00:00.000Z"})
    assert isinstance(status, Status) and status.status_type == "announce"


# --- device identity
@pytest.mark.parametrize("text", ["1c:69:20:e9:18:24", "1C-69-20-E9-18-24", "1c6920e91824"])
def test_mac_in_any_case_and_separator_is_one_device(text):
    assert canonical_mac(text) == MAC
    assert parse("data", {**FIRMWARE_DATA, "device_id": text}, device=text).device_id == MAC


@pytest.mark.parametrize("text", ["1C:69:20:E9:18", "1C:69-20:E9:18:24", "ZZ:69:20:E9:18:24", ""])
def test_bad_mac_is_refused(text):
    with pytest.raises(ValueError):
        canonical_mac(text)


def test_topic_with_a_bad_device_is_rejected():
    assert rejected("data", FIRMWARE_DATA, device="not-a-mac") == "bad_device_id"


def test_unknown_topic_is_rejected():
    with pytest.raises(Rejected) as info:
        parse_message(f"datayoti/sensor/{MAC}/firmware", b"{}", NOW)
    assert info.value.reason == "bad_topic"


def test_device_id_contradicting_the_topic_is_rejected():
    assert rejected("data", {**FIRMWARE_DATA, "device_id": "1C:69:20:E9:18:25"}) == "device_mismatch"


# --- payload shape
def test_oversized_payload_is_rejected():
    assert rejected("data", b"{" + b" " * Limits().max_payload_bytes + b"}") == "oversized"


def test_non_utf8_payload_is_rejected():
    assert rejected("data", b'{"temperature": "\xff\xfe"}') == "not_utf8"


def test_malformed_json_is_rejected():
    assert rejected("data", b'{"temperature": 22.5,') == "malformed_json"


def test_json_that_is_not_an_object_is_rejected():
    assert rejected("data", b"[22.5, 65.3]") == "not_an_object"


# --- values
def test_missing_temperature_is_rejected():
    assert rejected("data", {k: v for k, v in FIRMWARE_DATA.items() if k != "temperature"}) == "missing_field"


@pytest.mark.parametrize("value", ["22.5", True, None, [22.5]])
def test_wrong_type_is_rejected(value):
    assert rejected("data", {**FIRMWARE_DATA, "temperature": value}) == "wrong_type"


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_rejected(constant):
    body = b'{"device_id": "%s", "temperature": %s, "humidity": 50}' % (MAC.encode(), constant)
    assert rejected("data", body) == "not_finite"


@pytest.mark.parametrize("field,value", [("temperature", -40.1), ("temperature", 80.1),
                                         ("humidity", -0.1), ("humidity", 100.1)])
def test_out_of_dht22_range_is_rejected(field, value):
    assert rejected("data", {**FIRMWARE_DATA, field: value}) == "out_of_range"


@pytest.mark.parametrize("field,value", [("temperature", -40), ("temperature", 80), ("humidity", 0),
                                         ("humidity", 100)])
def test_dht22_range_limits_are_accepted(field, value):
    assert getattr(parse("data", {**FIRMWARE_DATA, field: value}), field) == value


def test_other_numeric_fields_are_kept():
    reading = parse("data", {**FIRMWARE_DATA, "pressure": 1013.2, "co2": 415, "label": "x"})
    assert reading.extra == {"pressure": 1013.2, "co2": 415}


def test_heartbeat_with_wrong_types_is_rejected():
    assert rejected("heartbeat", {**FIRMWARE_BEAT, "rssi": "strong"}) == "wrong_type"
    assert rejected("heartbeat", {**FIRMWARE_BEAT, "ntp_sync": "yes"}) == "wrong_type"


# --- timestamps
@pytest.mark.parametrize("value", ["2025-11-03T14:30:00Z", "2025-11-03T14:30:00.000Z", "2025-11-03T15:30:00+01:00",
                                   1762180200, 1762180200000, "1762180200"])
def test_timestamp_forms_are_accepted_and_stored_in_utc(value):
    assert parse_time_value(value) == datetime(2025, 11, 3, 14, 30, tzinfo=UTC)


def test_missing_timestamp_uses_the_time_of_receipt():
    reading = parse("data", {k: v for k, v in FIRMWARE_DATA.items() if k != "timestamp"})
    assert reading.stamp.time == NOW and reading.stamp.device_time is None


def test_1970_timestamp_before_ntp_uses_receipt_and_keeps_the_device_value():
    reading = parse("data", {**FIRMWARE_DATA, "timestamp": "1970-01-01T00:00:07.000Z"})
    assert reading.stamp.time == NOW
    assert reading.stamp.device_time == datetime(1970, 1, 1, 0, 0, 7, tzinfo=UTC)
    assert reading.stamp.device_time_raw == "1970-01-01T00:00:07.000Z"


def test_far_future_timestamp_uses_receipt_and_keeps_the_device_value():
    future = (NOW + timedelta(days=30)).isoformat()
    reading = parse("data", {**FIRMWARE_DATA, "timestamp": future})
    assert reading.stamp.time == NOW and reading.stamp.device_time == NOW + timedelta(days=30)


def test_heartbeat_without_ntp_sync_is_not_wall_clock_time():
    beat = parse("heartbeat", {**FIRMWARE_BEAT, "ntp_sync": False})
    assert beat.stamp.time == NOW and beat.stamp.device_time == datetime(2025, 11, 3, 14, 30, tzinfo=UTC)


@pytest.mark.parametrize("value", ["yesterday", "2025-11-03T14:30:00", True, {"s": 1}])
def test_unreadable_timestamp_is_rejected(value):
    assert rejected("data", {**FIRMWARE_DATA, "timestamp": value}) == "bad_timestamp"


# --- what the database would refuse is stopped at the door (issue 8), one named rule each
FIRMWARE_STATUS = {"device_id": MAC, "timestamp": "2025-11-03T14:30:00.000Z"}


@pytest.mark.parametrize("field,value", [("rssi", 2**31), ("rssi", -(2**31) - 1), ("free_heap", 2**70),
                                         ("min_heap", 1e300), ("uptime", 2**63)])
def test_integer_that_does_not_fit_its_column_is_rejected(field, value):
    assert rejected("heartbeat", {**FIRMWARE_BEAT, field: value}) == "integer_out_of_range"


@pytest.mark.parametrize("field,value", [("rssi", 2**31 - 1), ("uptime", 2**63 - 1), ("free_heap", -(2**31))])
def test_integer_at_its_column_limit_is_accepted(field, value):
    assert getattr(parse("heartbeat", {**FIRMWARE_BEAT, field: value}), field) == value


@pytest.mark.parametrize("kind,body", [
    ("heartbeat", {**FIRMWARE_BEAT, "site_id": "SITE\x00001"}),
    ("heartbeat", {**FIRMWARE_BEAT, "firmware": "1.4\x00"}),
    ("heartbeat", {**FIRMWARE_BEAT, "wifi": {"ssid\x00": "x"}}),
    ("status", {**FIRMWARE_STATUS, "status": "on\x00line"}),
    ("status", {**FIRMWARE_STATUS, "note": ["a", "\x00"]}),
])
def test_nul_character_in_any_stored_string_is_rejected(kind, body):
    assert rejected(kind, body) == "nul_character"


@pytest.mark.parametrize("kind,body", [
    ("heartbeat", b'{"site_id": "SITE_\\ud800"}'),
    ("status", b'{"note": "\\udfff"}'),
    ("heartbeat", b'{"extra": {"\\ud83d": 1}}'),
])
def test_lone_surrogate_is_rejected(kind, body):
    assert rejected(kind, body) == "invalid_unicode"


def test_text_length_is_bounded():
    limits = Limits()
    assert rejected("heartbeat", {**FIRMWARE_BEAT, "site_id": "S" * (limits.max_site_id_chars + 1)}) == "text_too_long"
    assert parse("heartbeat", {**FIRMWARE_BEAT, "site_id": "S" * limits.max_site_id_chars}).site_id
    assert rejected("status", {**FIRMWARE_STATUS, "status": "x" * (limits.max_text_chars + 1)}) == "text_too_long"
    assert rejected("heartbeat", {**FIRMWARE_BEAT, "k" * (limits.max_key_chars + 1): 1}) == "key_too_long"


def test_json_depth_and_key_count_are_bounded():
    limits = Limits()
    nested: object = 1
    for _ in range(limits.max_json_depth):
        nested = [nested]
    assert rejected("heartbeat", {**FIRMWARE_BEAT, "n": nested}) == "too_deep"
    assert parse("heartbeat", {**FIRMWARE_BEAT, "n": nested[0]}).extra == {"n": nested[0]}
    many = {f"k{i}": i for i in range(limits.max_json_keys + 1)}
    assert rejected("heartbeat", {**FIRMWARE_BEAT, **many}) == "too_many_keys"
    assert rejected("data", {**FIRMWARE_DATA, **many}) == "too_many_keys"


LARGE = Limits(max_payload_bytes=65536)  # rules.max_payload_bytes may be raised


def test_json_too_deep_to_decode_is_rejected():
    with pytest.raises(Rejected) as info:
        parse_message(f"datayoti/sensor/{MAC}/status", b'{"n": ' + b"[" * 30000 + b"]" * 30000 + b"}", NOW, LARGE)
    assert info.value.reason == "too_deep"


def test_overflowing_number_anywhere_is_not_finite():
    assert rejected("heartbeat", b'{"extra": 1e400}') == "not_finite"
    assert rejected("data", b'{"temperature": 20, "humidity": 50, "pressure": -1e999}') == "not_finite"


def test_integer_with_too_many_digits_is_malformed():
    with pytest.raises(Rejected) as info:
        parse_message(f"datayoti/sensor/{MAC}/status", b'{"n": ' + b"9" * 4400 + b"}", NOW, LARGE)
    assert info.value.reason == "malformed_json"


def test_rejected_detail_is_printable():
    with pytest.raises(Rejected) as info:
        parse("heartbeat", {**FIRMWARE_BEAT, "rssi": "\x00\ud800" + "x" * 2000})
    detail = info.value.detail
    assert "\x00" not in detail and len(detail) <= 500
    detail.encode("utf-8")
