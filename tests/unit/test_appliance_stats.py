"""The ingestor's appliance_stats rows and the storage facts behind them (pure parts)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from datayoti_ingestor import devices, hostsecrets, storage
from datayoti_ingestor.service import Totals, stats_row
from hypothesis import given
from hypothesis import strategies as st

AT = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
DISKSTATS = """\
 179       0 mmcblk0 5000 10 400000 900 7000 20 123456 5000 0 3000 6000 0 0 0 0
 179       1 mmcblk0p1 100 0 2000 10 2 0 16 1 0 20 20 0 0 0 0
 259       0 nvme0n1 1 2 3 4 5 6 bad 8 9
"""


def test_a_row_holds_the_counters_of_its_interval_only():
    before = Totals(received=100, stored=90, rejected=10, refused=2, duplicates=0)
    after = Totals(received=160, stored=140, rejected=15, refused=3, duplicates=5)
    row = stats_row(AT, 60.0004, before, after, backlog=7, disk=(1_000, 8_000), sectors_before=1_000,
                    sectors_after=1_016)
    assert row == {"time": AT, "interval_s": 60.0, "received": 60, "stored": 50, "rejected": 5,
                   "database_refused": 1, "duplicates": 5, "backlog": 7, "disk_free_bytes": 1_000,
                   "disk_total_bytes": 8_000, "card_written_bytes": 16 * 512}


def test_card_writes_are_unknown_without_two_samples_or_when_the_counter_went_back():
    zero = Totals()
    assert stats_row(AT, 60, zero, zero, 0, None, None, 5)["card_written_bytes"] is None
    assert stats_row(AT, 60, zero, zero, 0, None, 5, None)["card_written_bytes"] is None
    assert stats_row(AT, 60, zero, zero, 0, None, 9, 5)["card_written_bytes"] is None
    row = stats_row(AT, 60, zero, zero, 0, None, 5, 5)
    assert row["card_written_bytes"] == 0 and row["disk_free_bytes"] is None and row["disk_total_bytes"] is None


@given(st.lists(st.integers(0, 10**6), min_size=5, max_size=5),
       st.lists(st.integers(0, 10**6), min_size=5, max_size=5))
def test_consecutive_rows_add_up_to_the_totals(first, second):
    """Whatever the counters, the rows of two intervals sum to the change over both."""
    start = Totals()
    middle = Totals(*first)
    end = Totals(*(a + b for a, b in zip(first, second, strict=True)))
    one = stats_row(AT, 60, start, middle, 0, None, None, None)
    two = stats_row(AT, 60, middle, end, 0, None, None, None)
    for key, total in zip(("received", "stored", "rejected", "database_refused", "duplicates"),
                              dataclasses.astuple(end), strict=True):
        assert one[key] + two[key] == total


def test_diskstats_is_read_by_device_name_and_bad_lines_give_none():
    assert storage.parse_diskstats(DISKSTATS, "mmcblk0") == 123456
    assert storage.parse_diskstats(DISKSTATS, "mmcblk0p1") == 16
    assert storage.parse_diskstats(DISKSTATS, "nvme0n1") is None
    assert storage.parse_diskstats(DISKSTATS, "sda") is None
    assert storage.parse_diskstats("", "mmcblk0") is None


@given(st.text(max_size=300))
def test_any_diskstats_text_gives_a_count_or_none(text):
    value = storage.parse_diskstats(text, "mmcblk0")
    assert value is None or isinstance(value, int)


def test_a_path_that_does_not_exist_is_measured_on_its_nearest_ancestor(tmp_path):
    free, total = storage.disk_usage(str(tmp_path / "not" / "there"))
    assert 0 <= free <= total


def test_sensor_models_map_to_device_types_and_others_are_refused():
    assert devices.device_type("DHT11") == "ESP32-DHT11"
    assert devices.device_type("DHT22") == "ESP32-DHT22"
    try:
        devices.device_type("BME280")
    except devices.DeviceError as exc:
        assert "DHT22, DHT11" in str(exc)
    else:
        raise AssertionError("an unknown model was accepted")


def test_grafana_secrets_are_made_by_ensure_but_never_rotated():
    names = {p.name for p in hostsecrets.PASSWORDS}
    assert {"grafana-admin", "grafana-secret_key", "mqtt-grafana_alerts", "postgresql-grafana_reader"} <= names
    assert "grafana-secret_key" not in hostsecrets.ROTATABLE
    assert "grafana-admin" not in hostsecrets.ROTATABLE
    assert "mqtt-grafana_alerts" in hostsecrets.ROTATABLE


def test_grafana_may_publish_only_under_the_alerts_topic():
    accounts = {user: role for user, _, role in hostsecrets.broker_accounts(
        {"mqtt-datayoti_admin": "a", "mqtt-datayoti_ingestor": "i", "mqtt-grafana_alerts": "g"})}
    acls = accounts["grafana_alerts"]["acls"]
    assert acls == [{"acltype": "publishClientSend", "topic": "datayoti/alerts/#", "priority": 0, "allow": True}]
