"""Pure logic of the simulated sensors' wrapper (tests/sim/sensor_fleet.py) and the test bed."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import random

import pytest
import sensor_fleet
from conftest import TESTBED


def load_testbed():
    loader = importlib.machinery.SourceFileLoader("testbed", str(TESTBED))
    spec = importlib.util.spec_from_loader("testbed", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_firmware_timestamp_format():
    assert sensor_fleet.firmware_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert sensor_fleet.firmware_timestamp(1762180200.7) == "2025-11-03T14:30:00.000Z"


def test_benchmark_payload_carries_the_firmware_fields():
    data = sensor_fleet.data_payload("1C:69:20:E9:18:24", "t", random.Random(1))
    assert list(data) == ["device_id", "timestamp", "temperature", "humidity"]


def test_fleet_options_become_datayoti_simulate_arguments(tmp_path):
    args = sensor_fleet.parse_args(["--credentials", str(tmp_path), "--host", "10.0.0.2", "--interval", "2",
                                    "--duration", "20", "--tls"])
    assert sensor_fleet.simulate_argv(args) == ["simulate", "--credentials", str(tmp_path), "--host", "10.0.0.2",
                                                "--rate", "0.5", "--duration", "20.0", "--tls"]


def test_credentials_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="x.json"):
        sensor_fleet.load_credentials(bad)
    bad.write_text(json.dumps({"device_id": "A"}))
    with pytest.raises(ValueError, match="missing keys MQTT_USER"):
        sensor_fleet.load_credentials(bad)


def test_testbed_sensor_macs_are_unique_and_locally_administered():
    testbed = load_testbed()
    macs = testbed.simulated_macs(1, 300) + testbed.simulated_macs(2, 300)
    assert len(set(macs)) == 600
    assert all(int(mac[:2], 16) & 0b10 for mac in macs)
    assert testbed.simulated_macs(3, 1) == ["02:D7:00:03:00:01"]


def test_testbed_rejects_bad_bed_names():
    testbed = load_testbed()
    with pytest.raises(testbed.TestbedError, match="bed name"):
        testbed.Bed("../etc")
