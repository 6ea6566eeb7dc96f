"""Pure logic of the test bed's simulated Pis and their sensors (tests/testbed/testbed).

The simulated sensors themselves are `datayoti simulate`'s: tests/unit/test_simulate.py.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util

import pytest
from conftest import TESTBED


def load_testbed():
    loader = importlib.machinery.SourceFileLoader("testbed", str(TESTBED))
    spec = importlib.util.spec_from_loader("testbed", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


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
