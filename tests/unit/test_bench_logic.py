"""Pure logic of the benchmark: percentiles, commit times, the publishers' share, profiles, targets."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench  # noqa: E402
import pi_agent  # noqa: E402


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert pi_agent.percentile(values, 50) == 50
    assert pi_agent.percentile(values, 99) == 99
    assert pi_agent.percentile(values, 100) == 100
    assert pi_agent.percentile([], 50) is None


def test_commit_times_follow_each_devices_watermark():
    rows = [("a", 1.0), ("a", 2.0), ("b", 1.5), ("a", 3.0)]
    timeline = [(1.1, {"a": 1.0}), (2.2, {"a": 2.0, "b": 1.5}), (3.5, {"a": 3.0, "b": 1.5})]
    assert sorted(pi_agent.commit_times(rows, timeline)) == [(1.0, 1.1), (1.5, 2.2), (2.0, 2.2), (3.0, 3.5)]


def test_commit_times_leave_out_rows_never_seen():
    assert pi_agent.commit_times([("a", 5.0)], [(1.0, {"a": 4.0})]) == []


def test_rate_needs_a_span():
    assert pi_agent.rate(100, 10.0, 12.0) == 50
    assert pi_agent.rate(0, 10.0, 12.0) is None
    assert pi_agent.rate(10, 10.0, 10.0) is None


def test_mosquitto_sub_lines():
    line = '1700000000.250000000 {"device_id":"AA","timestamp":"2023-11-14T22:13:20.000Z","temperature":1}\n'
    device, sent, received = pi_agent.parse_mosquitto_sub_line(line)
    assert device == "AA" and received - sent == pytest.approx(0.25)
    assert pi_agent.parse_mosquitto_sub_line("1700000000.1 not json") is None


def test_dataset_rows_are_copy_text_in_range():
    at = datetime.fromisoformat("2025-01-01T00:00:00+00:00")
    for minute in range(0, 1440, 37):
        fields = pi_agent.reading_row("AA:BB", "SITE_001", at, minute, 3).rstrip("\n").split("\t")
        assert len(fields) == 6
        assert -40 <= float(fields[3]) <= 80 and 0 <= float(fields[4]) <= 100


def test_sites_spread_devices():
    assert {pi_agent.site_of(i, 5) for i in range(50)} == {f"SITE_00{n}" for n in range(1, 6)}


def test_agent_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        pi_agent.parse_args(["copy", "--count", "0", "--devices", "a"])
    with pytest.raises(SystemExit):
        pi_agent.parse_args(["consume", "--kind", "fast", "--count", "1", "--since", "0", "--devices", "a"])


def test_a_steps_readings_spread_evenly_over_the_sensors():
    assert bench.per_sensor(2000, None) == (40, None)
    assert bench.per_sensor(1000, 1000.0) == (20, 20.0)
    for count in (30, 1001):
        with pytest.raises(bench.BenchError, match="spread evenly"):
            bench.per_sensor(count, None)
    for steps in (bench.plan(True), bench.plan(False)):
        for count in steps["rates"].values():
            bench.per_sensor(count, None)



def test_py_spy_self_time():
    collapsed = "main;loop;execute (store.py:1) 6\nmain;loop;parse (messages.py:2) 3\nmain;wait 1\n"
    top = bench.top_frames(collapsed)
    assert top[0] == {"frame": "execute (store.py:1)", "share": 0.6}
    assert [t["frame"] for t in top] == ["execute (store.py:1)", "parse (messages.py:2)", "wait"]


def test_targets_say_met_or_missed():
    assert bench.target("x", 0.7, 0.6, "≥")["met"]
    assert not bench.target("x", 60.0, 50.0, "≤")["met"]
    assert not bench.target("x", None, 50.0, "≤")["met"]


def test_bad_options_are_refused():
    with pytest.raises(bench.BenchError, match="--days"):
        bench.validate(argparse.Namespace(days=0, publishers=2))
    with pytest.raises(bench.BenchError, match="--publishers"):
        bench.validate(argparse.Namespace(days=None, publishers=0))


def test_bytes_per_reading():
    assert bench.per_reading({"wal_bytes": 3000, "data_bytes": 1000}, 10) == {"wal": 300, "data": 100,
                                                                               "total": 400}
    assert bench.per_reading({"wal_bytes": 1, "data_bytes": 1}, 0)["total"] is None


def test_whole_disks_leave_out_virtual_and_stacked_devices():
    names = ["vda", "sda", "mmcblk0", "nvme0n1", "loop0", "ram1", "zram0", "sr0", "dm-0", "md127", "nbd3"]
    assert pi_agent.whole_disks(names) == {"vda", "sda", "mmcblk0", "nvme0n1"}


def test_disk_written_bytes_sums_sectors_written_of_the_disks_only():
    diskstats = ("   7       0 loop0 10 0 80 1 5 0 4000 2 0 3 3 0 0 0 0\n"
                 " 254       0 vda 3042821 356823 136134396 1477026 10384385 2987817 715135255 4590919 0 16 7\n"
                 " 254       1 vda1 1 0 2 0 1 0 999 0 0 0 0\n"
                 " 179       0 mmcblk0 1 0 2 0 1 0 8\n"
                 "bad line\n")
    assert pi_agent.disk_written_bytes(diskstats, {"vda", "mmcblk0"}) == (715135255 + 8) * 512
    assert pi_agent.disk_written_bytes(diskstats, set()) == 0
