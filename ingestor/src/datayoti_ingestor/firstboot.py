"""`datayoti firstboot`: a flashed card's first boot, run by datayoti-firstboot.service.

The image holds no secret and no database. This brings a card to the state site.yml leaves on a live
host, with the same code the roles call: `database ensure`, `secrets ensure`, the migrations, then the
sensors of the card file. Every step is idempotent, so a power cut anywhere is mended by the next boot,
which runs them all again; secrets already made are kept. The marker file is written last.

The card file (/boot/firmware/datayoti.toml, edited on a PC like cloud-init's user-data) says only what
cloud-init cannot: the site and the sensors to pre-register. A bad entry is reported and skipped; the
rest of the card still comes up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import psycopg2

from . import config, database, devices, dynsec, hostsecrets, layout, localdb, schema

PROG = "datayoti firstboot"
CARD_FILE = Path("/boot/firmware/datayoti.toml")
DONE_MARKER = Path("/var/lib/datayoti/firstboot.done")
POSTGRESQL_WAIT_S = 120  # PostgreSQL is started before us, but may still be recovering after a power cut
CARD_KEYS = {"site", "sensor"}
SENSOR_KEYS = {"mac", "site", "name", "model"}
# Ordered after datayoti-firstboot: started again here when an earlier, failed attempt left them failed.
DATA_UNITS = (layout.MOSQUITTO_UNIT, layout.MIGRATE_UNIT, layout.INGESTOR_UNIT, layout.GRAFANA_UNIT)


class CardError(Exception):
    """The card file cannot be read at all; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class CardSensor:
    mac: str
    site: str | None
    name: str | None
    model: str


@dataclasses.dataclass(frozen=True)
class Card:
    sensors: tuple[CardSensor, ...] = ()
    problems: tuple[str, ...] = ()  # one line per entry left out


# ------------------------------------------------------------------ pure: the card file

def parse_card(text: str, source: str = str(CARD_FILE), site_limit: int = 64) -> Card:
    """The card file's sensors; each bad entry becomes a problem line and is left out."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CardError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - CARD_KEYS)
    if unknown:
        raise CardError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; "
                        f"known: {', '.join(sorted(CARD_KEYS))}")
    site = raw.get("site")
    if site is not None and not isinstance(site, str):
        raise CardError(f"{source}: site must be a string, not {type(site).__name__}")
    try:
        site = devices.check_label("site name", site, site_limit)
    except devices.DeviceError as exc:
        raise CardError(f"{source}: {exc}") from None
    entries = raw.get("sensor", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CardError(f"{source}: sensors are [[sensor]] tables")
    sensors, problems, seen = [], [], set()
    for number, entry in enumerate(entries, 1):
        try:
            sensor = parse_sensor(entry, site, site_limit)
        except (devices.DeviceError, ValueError) as exc:
            problems.append(f"{source}: sensor {number}: {exc}; left out")
            continue
        if sensor.mac in seen:
            problems.append(f"{source}: sensor {number}: {sensor.mac} is listed twice; left out")
            continue
        seen.add(sensor.mac)
        sensors.append(sensor)
    return Card(tuple(sensors), tuple(problems))


def parse_sensor(entry: dict, default_site: str | None, site_limit: int) -> CardSensor:
    unknown = sorted(set(entry) - SENSOR_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(SENSOR_KEYS))}")
    for key, value in entry.items():
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string, not {type(value).__name__}")
    if "mac" not in entry:
        raise ValueError("mac is missing")
    model = entry.get("model", devices.MODELS[0])
    devices.device_type(model)
    return CardSensor(mac=devices.canonical_mac(entry["mac"]),
                      site=devices.check_label("site name", entry.get("site", default_site), site_limit),
                      name=devices.check_label("device name", entry.get("name"), devices.MAX_NAME_CHARS),
                      model=model)


# ------------------------------------------------------------------ the steps

def one_line(text: str) -> str:
    return " ".join(text.split())


def say(step: str, detail: str = "") -> None:
    """One console line per step: journald stamps it, and the boot test waits for it."""
    print(f"{PROG}: {step}{': ' + detail if detail else ''}", file=sys.stderr, flush=True)


def wait_for_postgresql(timeout_s: float = POSTGRESQL_WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not localdb.available():
        if time.monotonic() > deadline:
            raise localdb.DatabaseUnavailable(f"PostgreSQL did not answer within {timeout_s:.0f} s")
        time.sleep(1)


def migrate() -> list[str]:
    """The migrations, as datayoti-migrate.service runs them, with the owner's password from its file."""
    cfg = config.load(layout.INGESTOR_CONFIG, env={})
    owner = hostsecrets.read_secret(layout.password_file("postgresql-datayoti_owner"))
    cfg = dataclasses.replace(cfg, database=dataclasses.replace(cfg.database, owner_password=owner))
    return schema.migrate(cfg)


def register_sensors(card: Card) -> tuple[list[str], list[str]]:
    """Add the card's sensors; those already there are registered again (site, name, model), never re-keyed.
    Returns (registered, problems): one sensor that fails is reported and never stops the others."""
    done, problems = [], []
    for sensor in card.sensors:
        try:
            if devices.registry_path(sensor.mac).exists():
                devices.register(sensor.mac, sensor.site, sensor.name, sensor.model)
            else:
                devices.add(sensor.mac, site=sensor.site, name=sensor.name, model=sensor.model)
        except (devices.DeviceError, hostsecrets.SecretsError, OSError) as exc:
            problems.append(f"sensor {sensor.mac}: {exc}; run `datayoti firstboot` again once fixed")
            continue
        done.append(sensor.mac)
    return done, problems


def start_failed_units() -> list[str]:
    """The data services that failed for want of what this run made (an earlier attempt failed): start them."""
    failed = [unit for unit in DATA_UNITS
              if subprocess.run(["systemctl", "is-failed", "--quiet", unit], check=False).returncode == 0]
    if failed:
        subprocess.run(["systemctl", "reset-failed", *failed], check=False)
        subprocess.run(["systemctl", "start", "--no-block", *failed], check=False)
    return failed


def read_card(path: Path) -> Card:
    if not path.exists():
        return Card()
    try:
        text = path.read_text(encoding="utf-8-sig")  # Windows editors add a BOM
    except UnicodeDecodeError as exc:
        raise CardError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise CardError(f"{path}: {exc.strerror or exc}") from None
    return parse_card(text, str(path), devices.site_limit())


def write_marker(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as marker:
        marker.write(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        marker.flush()
        os.fsync(marker.fileno())
    dynsec.fsync_path(path.parent)


def run(card_file: Path = CARD_FILE, marker: Path = DONE_MARKER) -> dict:
    """Every step, in order; the summary printed with --json."""
    summary: dict = {"problems": []}
    say("start")
    wait_for_postgresql()
    summary["database"] = database.ensure(database.load()).as_dict()
    say("database", "roles, database, extension and privileges in place")
    summary["secrets"] = hostsecrets.ensure(restart_services=False).as_dict()
    say("secrets", f"{len(summary['secrets']['created'])} made, {len(summary['secrets']['applied'])} applied")
    summary["migrations"] = migrate()
    say("schema", f"{len(summary['migrations'])} migration(s) applied")
    try:
        card = read_card(card_file)
    except CardError as exc:
        card = Card(problems=(f"{exc}; no sensor pre-registered",))
    summary["sensors"], problems = register_sensors(card)
    summary["problems"] += list(card.problems) + problems
    for problem in summary["problems"]:
        say("problem", problem)
    say("sensors", f"{len(summary['sensors'])} from {card_file}")
    os.sync()  # what this boot made (secrets, SSH host keys, machine-id) is on the card before the marker
    write_marker(marker)
    summary["started"] = start_failed_units()
    say("done")
    return summary


def add_parser(commands) -> None:
    p = commands.add_parser(
        "firstboot", help="bring a flashed card up: database, secrets, schema, the card file's sensors",
        description="Run once by datayoti-firstboot.service on a card's first boot, and safe to run again: "
                    f"every step is idempotent. Reads {CARD_FILE} for the sensors to pre-register.")
    p.add_argument("--card", type=Path, default=CARD_FILE, help=f"the card file (default {CARD_FILE})")
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.set_defaults(run=command, needs_root=lambda args: True)


def command(args: argparse.Namespace) -> int:
    try:
        with hostsecrets.exclusive():
            summary = run(args.card)
    except (database.DatabaseError, hostsecrets.SecretsError, localdb.DatabaseUnavailable, devices.DeviceError,
            config.ConfigError, dynsec.DynsecError, RuntimeError, OSError, subprocess.SubprocessError,
            psycopg2.Error) as exc:
        # One line; systemd tries again (Restart=on-failure), and every step done so far is kept.
        print(f"{PROG}: {type(exc).__name__}: {one_line(str(exc))}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0
