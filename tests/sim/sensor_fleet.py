#!/usr/bin/env python3
"""Simulated sensors run from the build machine: a thin wrapper over the product's
`datayoti simulate` (ingestor/src/datayoti_ingestor/simulate.py).

tests/sim/demo.sh runs it against a simulated Pi with copies of the Pi's sensor files
(/etc/datayoti/sensors/<MAC>.json), and the benchmark imports `load_credentials` and
`data_payload` from here.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ingestor" / "src"))

from datayoti_ingestor import appliance, simulate  # noqa: E402
from datayoti_ingestor.simulate import SensorCredentials, firmware_timestamp, load_credentials  # noqa: E402, F401


def data_payload(device_id: str, ts: str, rng: random.Random) -> dict:
    """A firmware data payload with uniform values: cheap enough for the benchmark's flat-out publishing."""
    return simulate.data_payload(device_id, ts, round(rng.uniform(18.0, 26.0), 1), round(rng.uniform(35.0, 70.0), 1))


def simulate_argv(args: argparse.Namespace) -> list[str]:
    """This script's options as `datayoti simulate` arguments."""
    argv = ["simulate", "--credentials", str(args.credentials), "--host", args.host,
            "--rate", repr(1 / args.interval), "--duration", repr(args.duration)]
    return argv + (["--tls"] if args.tls else [])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--credentials", type=Path, required=True, help="directory of <MAC>.json files")
    parser.add_argument("--host", required=True, help="broker address")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between readings (default 60)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to run (default 30)")
    parser.add_argument("--tls", action="store_true", help="connect to MQTT_TLS_PORT with the Pi's CA")
    args = parser.parse_args(argv)
    if not args.interval >= 1 or not args.duration > 0:
        parser.error("--interval must be at least 1 and --duration positive")
    return args


def main(argv: list[str] | None = None) -> int:
    return appliance.main(simulate_argv(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
