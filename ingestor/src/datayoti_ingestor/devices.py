"""`datayoti device add|list|show|set-model|rotate|remove|sync`: sensors' accounts and the device registry.

Each sensor has its own broker account (username: its MAC with hyphens), allowed to publish only
under datayoti/sensor/<MAC>/. Its credentials, what the firmware needs, are kept in
/etc/datayoti/sensors/<MAC>.json (root 0600): the registry that `secrets ensure` re-applies to the
broker, so an interrupted command is finished by the next run. Each file says who manages the
sensor: "cli" (an operator) or "inventory" (site.yml's `datayoti_sensors`, through `sync`), and
`sync` only ever removes sensors the inventory added.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from . import broker, dynsec, hostsecrets, layout, localdb
from .config import ConfigError, RulesConfig
from .config import load as load_config

MAC_PATTERN = re.compile(r"^[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}$")
MANAGERS = ("cli", "inventory")
# The DHT fitted: it decides the alert thresholds (devices.device_type, ESP32-<model>).
MODELS = ("DHT22", "DHT11")
MAX_NAME_CHARS = RulesConfig.max_text_chars
# Tables that hold a device's history, purged by `remove --purge` (devices last).
HISTORY_TABLES = ("sensor_data", "device_heartbeats", "device_status", "rollup_semi_hourly", "rollup_hourly",
                  "rollup_daily", "rejected_messages")


class DeviceError(Exception):
    """Bad input or an unknown device; the message is the whole story."""


# ------------------------------------------------------------------ pure

def canonical_mac(text: str) -> str:
    """'1c-69-20-e9-18-24' -> '1C:69:20:E9:18:24'; DeviceError for anything else."""
    if not isinstance(text, str) or not MAC_PATTERN.fullmatch(text):
        shown = text if isinstance(text, str) and len(text) <= 40 else f"{str(text)[:40]}..."
        raise DeviceError(f"{shown!r} is not a MAC address; write it as the firmware prints it, "
                          "e.g. 1C:69:20:E9:18:24 (':' or '-', any case)")
    return text.upper().replace("-", ":")


def username_of(mac: str) -> str:
    return mac.replace(":", "-")


def check_label(kind: str, value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    if not value or len(value) > limit or not value.isprintable():
        raise DeviceError(f"the {kind} must be 1 to {limit} printable characters, not {len(value)} "
                          f"({value[:20]!r}{'...' if len(value) > 20 else ''})")
    return value


def device_type(model: str) -> str:
    """devices.device_type for a sensor model: 'DHT11' -> 'ESP32-DHT11'."""
    if model not in MODELS:
        raise DeviceError(f"the model must be one of {', '.join(MODELS)}, not {model[:20]!r}")
    return f"ESP32-{model}"


def credentials(mac: str, password: str, *, server: str, settings: broker.BrokerSettings, ca_cert: str,
                site: str | None, name: str | None, managed_by: str, model: str = MODELS[0]) -> dict:
    """What a sensor's firmware needs, with the registry's own fields."""
    return {"device_id": mac, "MQTT_SERVER": server, "MQTT_PORT": settings.port, "MQTT_TLS_PORT": settings.tls_port,
            "MQTT_USER": username_of(mac), "MQTT_PASSWORD": password, "CA_CERT": ca_cert,
            "topic_prefix": f"datayoti/sensor/{mac}/", "site": site, "name": name, "managed_by": managed_by,
            "model": model}


def c_string(value: str) -> str:
    return json.dumps(value)  # a C string literal for these printable ASCII values


def config_h(creds: dict) -> str:
    """The firmware's config.h lines (FIRMWARE-PROTOCOL.md's names)."""
    lines = ["// DataYoti Edge: sensor " + creds["device_id"],
             f"#define MQTT_SERVER {c_string(creds['MQTT_SERVER'])}",
             f"#define MQTT_PORT {creds['MQTT_PORT']}",
             f"#define MQTT_USER {c_string(creds['MQTT_USER'])}",
             f"#define MQTT_PASSWORD {c_string(creds['MQTT_PASSWORD'])}",
             f"// TLS (optional): port {creds['MQTT_TLS_PORT']}, trusting this CA certificate:"]
    lines += ["// " + line for line in creds["CA_CERT"].strip().splitlines()]
    return "\n".join(lines)


def render_text(creds: dict) -> str:
    prefix = creds["topic_prefix"]
    return "\n".join([
        f"sensor     {creds['device_id']}" + (f" ({creds['name']})" if creds.get("name") else ""),
        f"site       {creds.get('site') or '(from its heartbeats)'}",
        f"model      {creds.get('model', MODELS[0])}",
        f"managed by {creds.get('managed_by', 'cli')}",
        f"broker     {creds['MQTT_SERVER']} port {creds['MQTT_PORT']}, TLS port {creds['MQTT_TLS_PORT']}",
        f"username   {creds['MQTT_USER']}",
        f"password   {creds['MQTT_PASSWORD']}",
        f"topics     {prefix}data, {prefix}heartbeat, {prefix}status",
        "CA certificate (for TLS):",
        creds["CA_CERT"].strip(),
    ])


def sync_plan(wanted: list[str], registry: dict[str, dict]) -> tuple[list[str], list[str]]:
    """(to add, to remove): the inventory's sensors that are missing, and those it added that it dropped."""
    to_add = sorted(set(wanted) - set(registry))
    to_remove = sorted(mac for mac, creds in registry.items()
                       if creds.get("managed_by") == "inventory" and mac not in wanted)
    return to_add, to_remove


# ------------------------------------------------------------------ the registry's files and places of use

def registry_path(mac: str) -> Path:
    return layout.SENSORS_DIR / f"{mac}.json"


def read_registry() -> dict[str, dict]:
    registry = {}
    for path in sorted(layout.SENSORS_DIR.glob("*.json")):
        try:
            registry[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DeviceError(f"{path} is unreadable ({type(exc).__name__}); fix or remove it") from None
    return registry


def read_device(mac: str) -> dict:
    path = registry_path(mac)
    if not path.exists():
        raise DeviceError(f"no sensor {mac} on this Pi (see `datayoti device list`)")
    return read_registry()[mac]


def write_device(creds: dict) -> None:
    hostsecrets.ensure_dir(layout.SENSORS_DIR, 0o700)
    hostsecrets.write_atomic(registry_path(creds["device_id"]), (json.dumps(creds, indent=2) + "\n").encode())


def settings() -> broker.BrokerSettings:
    try:
        return broker.load()
    except ConfigError as exc:
        raise DeviceError(str(exc)) from None


def broker_run(commands: list[dict]) -> None:
    try:
        dynsec.run(commands, admin_password=hostsecrets.admin_password(), port=settings().port)
    except (dynsec.DynsecError, hostsecrets.SecretsError) as exc:
        raise DeviceError(f"broker: {exc}") from None


def database_name() -> str | None:
    try:
        return load_config(layout.INGESTOR_CONFIG, env={}).database.name
    except ConfigError:
        return None


def site_limit() -> int:
    try:
        return load_config(layout.INGESTOR_CONFIG, env={}).rules.max_site_id_chars
    except ConfigError:
        return RulesConfig.max_site_id_chars


def database(sql: str, variables: dict[str, str]) -> list[list[str]] | None:
    """Run SQL in the appliance's database; None when it is not there (yet)."""
    name = database_name()
    if name is None or not layout.INGESTOR_CONFIG.exists():
        return None
    try:
        return localdb.psql(sql, database=name, variables=variables)
    except localdb.DatabaseUnavailable:
        return None
    except RuntimeError as exc:
        if "does not exist" in str(exc):
            return None
        raise DeviceError(str(exc)) from None


def register(mac: str, site: str | None, name: str | None, model: str = MODELS[0]) -> bool:
    rows = database("""
        INSERT INTO sites (site_id, site_name) SELECT :'site', :'site' WHERE :'site' <> ''
            ON CONFLICT (site_id) DO NOTHING;
        INSERT INTO devices AS d (device_id, site_id, device_name, device_type, is_active)
            VALUES (:'mac', NULLIF(:'site', ''), NULLIF(:'name', ''), :'type', true)
            ON CONFLICT (device_id) DO UPDATE SET site_id = coalesce(excluded.site_id, d.site_id),
                device_name = coalesce(excluded.device_name, d.device_name), device_type = excluded.device_type,
                is_active = true, updated_at = now();
        SELECT 1;
        """, {"mac": mac, "site": site or "", "name": name or "", "type": device_type(model)})
    return rows is not None


def unregister(mac: str, purge: bool) -> bool:
    if purge:
        deletes = "".join(f"DELETE FROM {table} WHERE device_id = :'mac';\n" for table in HISTORY_TABLES)
        sql = deletes + "DELETE FROM devices WHERE device_id = :'mac';\nSELECT 1;"
    else:
        sql = "UPDATE devices SET is_active = false, updated_at = now() WHERE device_id = :'mac';\nSELECT 1;"
    return database(sql, {"mac": mac}) is not None


def database_view() -> dict[str, dict]:
    """{device_id: {site, last_seen, health}} from device_health, when the database is there."""
    rows = database("SELECT d.device_id, coalesce(d.site_id, ''), "
                    "coalesce(greatest(d.last_heartbeat_at, d.last_data_at)::text, ''), "
                    "CASE WHEN coalesce(d.last_heartbeat_at, d.last_data_at) IS NULL THEN 'new' "
                    "ELSE h.health_status END "
                    "FROM devices d JOIN device_health h USING (device_id)", {})
    return {r[0]: {"site": r[1] or None, "last_seen": r[2] or None, "health": r[3]} for r in rows or []}


# ------------------------------------------------------------------ operations

def add(mac: str, site: str | None = None, name: str | None = None, managed_by: str = "cli",
        model: str = MODELS[0]) -> dict:
    """Create a sensor's account, register it, return its credentials."""
    mac = canonical_mac(mac)
    device_type(model)
    site = check_label("site name", site, site_limit())
    name = check_label("device name", name, MAX_NAME_CHARS)
    if registry_path(mac).exists():
        raise DeviceError(f"sensor {mac} already exists (see `datayoti device show {mac}`; "
                          "`rotate` gives it a new password)")
    conf = settings()
    ca_cert = layout.CA_CERT.read_text() if layout.CA_CERT.exists() else ""
    creds = credentials(mac, hostsecrets.new_password(), server=broker.public_host(conf), settings=conf,
                        ca_cert=ca_cert, site=site, name=name, managed_by=managed_by,
                        model=model)
    write_device(creds)  # first: whatever is interrupted after this, `secrets ensure` finishes
    username = username_of(mac)
    broker_run(hostsecrets.account_commands(dynsec.read_document(),
                                            [(username, creds["MQTT_PASSWORD"], dynsec.sensor_role(username, mac))]))
    register(mac, site, name, model)
    return creds


def rotate(mac: str) -> dict:
    mac = canonical_mac(mac)
    creds = read_device(mac)
    creds["MQTT_PASSWORD"] = hostsecrets.new_password()
    write_device(creds)
    broker_run([dynsec.set_password(creds["MQTT_USER"], creds["MQTT_PASSWORD"])])  # also disconnects it
    return creds


def set_model(mac: str, model: str) -> dict:
    """Record the DHT fitted to an existing sensor (its account and password stay)."""
    mac = canonical_mac(mac)
    device_type(model)
    creds = read_device(mac)
    creds["model"] = model
    write_device(creds)  # first: the registry is what `show` prints
    register(mac, None, None, model)
    return creds


def remove(mac: str, purge: bool = False) -> dict:
    """Revoke the account (the broker disconnects the sensor), then the registry entry."""
    mac = canonical_mac(mac)
    creds = read_device(mac)
    username = creds["MQTT_USER"]
    commands = []
    document = dynsec.read_document() or dynsec.empty_document()
    if dynsec.find(document, "clients", username):
        commands.append(dynsec.delete_client(username))
    if dynsec.find(document, "roles", dynsec.sensor_role_name(username)):
        commands.append(dynsec.delete_role(dynsec.sensor_role_name(username)))
    registry_path(mac).unlink()  # first: `secrets ensure` revokes accounts the registry lacks
    dynsec.fsync_path(layout.SENSORS_DIR)
    broker_run(commands)
    unregister(mac, purge)
    return {"device_id": mac, "removed": True, "purged": purge}


def sync(macs: list[str], managed_by: str, site: str | None = None, dry_run: bool = False) -> dict:
    wanted = [canonical_mac(m) for m in macs]  # every MAC checked before anything changes
    duplicates = sorted({m for m in wanted if wanted.count(m) > 1})
    if duplicates:
        raise DeviceError(f"listed twice: {', '.join(duplicates)}")
    to_add, to_remove = sync_plan(wanted, read_registry())
    if dry_run:
        return {"changed": bool(to_add or to_remove), "added": to_add, "removed": to_remove, "dry_run": True}
    for mac in to_add:
        add(mac, site=site, managed_by=managed_by)
    for mac in to_remove:
        remove(mac)
    return {"changed": bool(to_add or to_remove), "added": to_add, "removed": to_remove}


def listing() -> list[dict]:
    registry = read_registry()
    seen = database_view()
    rows = []
    for mac, creds in registry.items():
        db = seen.get(mac, {})
        rows.append({"device_id": mac, "name": creds.get("name"), "site": db.get("site") or creds.get("site"),
                     "managed_by": creds.get("managed_by", "cli"), "last_seen": db.get("last_seen"),
                     "health": db.get("health", "unknown")})
    return rows


# ------------------------------------------------------------------ CLI

def add_parser(commands) -> None:
    p = commands.add_parser("device", help="add, list, show, rotate and remove sensors",
                            description="Sensors: each has its own broker account, confined to its topics.")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_p = sub.add_parser("add", help="create a sensor's account and print what its firmware needs")
    add_p.add_argument("mac", metavar="MAC", help="e.g. 1C:69:20:E9:18:24")
    add_p.add_argument("--site", help="its site (the firmware's heartbeats may change it)")
    add_p.add_argument("--name", help="a label, e.g. 'greenhouse north'")
    add_p.add_argument("--model", choices=MODELS, default=MODELS[0],
                       help="the DHT fitted; it decides the alert thresholds (default: %(default)s)")
    model_p = sub.add_parser("set-model", help="record the DHT fitted to a sensor (it decides the alert thresholds)")
    model_p.add_argument("mac", metavar="MAC")
    model_p.add_argument("model", choices=MODELS, metavar="MODEL", help=f"one of: {', '.join(MODELS)}")
    model_p.add_argument("--json", action="store_true", help="print the sensor's record as JSON")
    show_p = sub.add_parser("show", help="print a sensor's credentials again")
    show_p.add_argument("mac", metavar="MAC")
    rotate_p = sub.add_parser("rotate", help="give a sensor a new password (it must be reflashed)")
    rotate_p.add_argument("mac", metavar="MAC")
    for q in (add_p, show_p, rotate_p):
        form = q.add_mutually_exclusive_group()
        form.add_argument("--json", action="store_true", help="print the credentials as JSON")
        form.add_argument("--config-h", action="store_true", help="print the firmware's config.h lines")
    remove_p = sub.add_parser("remove", help="revoke a sensor's account and disconnect it")
    remove_p.add_argument("mac", metavar="MAC")
    remove_p.add_argument("--purge", action="store_true", help="delete its history too")
    remove_p.add_argument("--json", action="store_true", help="print the result as JSON")
    list_p = sub.add_parser("list", help="every sensor, its site, last seen and health")
    list_p.add_argument("--json", action="store_true", help="print the list as JSON")
    sync_p = sub.add_parser("sync", help="make the sensors a manager lists exist, remove the ones it dropped")
    sync_p.add_argument("--managed-by", choices=MANAGERS, required=True, help="whose list this is")
    sync_p.add_argument("--site", help="site of the sensors it adds")
    sync_p.add_argument("macs", nargs="*", metavar="MAC")
    sync_p.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    sync_p.add_argument("--json", action="store_true", help="print what changed as JSON")
    p.set_defaults(run=command, needs_root=lambda args: True)


def command(args: argparse.Namespace) -> int:
    try:
        with hostsecrets.exclusive():
            result = run_action(args)
    except (DeviceError, hostsecrets.SecretsError, localdb.DatabaseUnavailable) as exc:
        print(f"datayoti device {args.action}: {exc}", file=sys.stderr)
        return 1
    print(result)
    return 0


def run_action(args: argparse.Namespace) -> str:
    action = args.action
    if action in ("add", "show", "rotate"):
        if action == "add":
            creds = add(args.mac, site=args.site, name=args.name, model=args.model)
        elif action == "show":
            creds = read_device(canonical_mac(args.mac))
        else:
            creds = rotate(args.mac)
        if args.json:
            return json.dumps(creds, sort_keys=True)
        return config_h(creds) if args.config_h else render_text(creds)
    if action == "set-model":
        creds = set_model(args.mac, args.model)
        return json.dumps(creds, sort_keys=True) if args.json else f"{creds['device_id']} is a {args.model}"
    if action == "remove":
        result = remove(args.mac, purge=args.purge)
        return json.dumps(result) if args.json else f"removed {result['device_id']}" + (
            " and its history" if args.purge else " (its history stays; --purge deletes it)")
    if action == "sync":
        result = sync(args.macs, args.managed_by, check_label("site name", args.site, site_limit()), args.dry_run)
        if args.json:
            return json.dumps(result, sort_keys=True)
        return f"added: {', '.join(result['added']) or 'none'}; removed: {', '.join(result['removed']) or 'none'}"
    rows = listing()
    if args.json:
        return json.dumps(rows, sort_keys=True)
    if not rows:
        return "no sensors yet: `datayoti device add MAC`"
    header = f"{'DEVICE':<17}  {'SITE':<16}  {'HEALTH':<8}  {'MANAGED':<9}  {'LAST SEEN':<25}  NAME"
    return "\n".join([header] + [f"{r['device_id']:<17}  {(r['site'] or '-')[:16]:<16}  {r['health']:<8}  "
                                 f"{r['managed_by']:<9}  {(r['last_seen'] or '-')[:25]:<25}  {r['name'] or ''}"
                                 for r in rows])
