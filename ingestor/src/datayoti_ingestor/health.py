"""`datayoti status`: the appliance's health at a glance, and a verdict scripts can use.

Facts are gathered (systemd, the ingestor's STATUS= line, the database as `grafana_reader`,
the disk, /proc/diskstats), then judged and formatted by pure functions.

Unhealthy (exit 1): a service not active; the database unreachable (from here or in the
ingestor's STATUS=); the broker DOWN in STATUS=; an active device offline; less than
DISK_FREE_MIN_FRACTION of the PostgreSQL data directory's filesystem free. A device in
"warning" is shown but healthy: it has missed a reading or two, not gone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import config as config_module
from . import layout, storage
from .service import parse_status_line

INGESTOR_UNIT = layout.INGESTOR_UNIT
MOSQUITTO_UNIT = layout.MOSQUITTO_UNIT
RETENTION_TIMER = "datayoti-retention.timer"
READER_ROLE = "grafana_reader"
READER_PASSWORD_FILE = Path("/etc/datayoti/secrets/postgresql-grafana_reader.password")
POSTGRESQL_CONF_GLOB = "/etc/postgresql/*/*/postgresql.conf"
CARD_WRITES_STATE = Path("/var/lib/datayoti/card-writes.json")
DISK_FREE_MIN_FRACTION = 0.10
TOP_REJECT_REASONS = 5
SECTOR_BYTES = storage.SECTOR_BYTES
SYSTEMCTL_TIMEOUT_S = 15
QUERY_TIMEOUT_MS = 10_000


@dataclass
class Facts:
    """What was found; None where it could not be found (with the reason in `errors`)."""

    checked_at: datetime
    services: dict[str, dict] = field(default_factory=dict)  # unit -> {"load", "active", "sub"}
    ingestor_status_text: str = ""
    database_error: str | None = None
    database_size_bytes: int | None = None
    thresholds_minutes: dict | None = None  # {"online": 5, "warning": 30}
    rejects_last_hour: int | None = None
    top_reject_reasons: list[tuple[str, int]] = field(default_factory=list)
    devices: list[dict] = field(default_factory=list)  # device_id, site_id, last_seen, health, is_active
    disk: dict | None = None  # path, total_bytes, free_bytes
    card_writes: dict | None = None  # device, since_boot_bytes, boot_time, today_bytes, today_since
    errors: list[str] = field(default_factory=list)  # facts that could not be gathered


# ------------------------------------------------------------------ pure: parsing

def parse_systemctl_show(text: str, units: list[str]) -> dict[str, dict]:
    """`systemctl show --property=... UNIT...` output (blocks in argument order) -> {unit: {property: value}}."""
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
              for block in re.split(r"\n\s*\n", text.strip()) if block.strip()]
    if len(blocks) == len(units):
        return dict(zip(units, blocks, strict=True))
    by_id = {b.get("Id"): b for b in blocks}
    return {unit: by_id[unit] for unit in units if unit in by_id}


def postgresql_clusters(conf_paths: list[str]) -> list[tuple[str, str]]:
    """Debian's /etc/postgresql/<version>/<cluster>/postgresql.conf -> [(unit, conf path)]."""
    clusters = []
    for path in sorted(conf_paths):
        parts = Path(path).parts
        if len(parts) >= 3:
            clusters.append((f"postgresql@{parts[-3]}-{parts[-2]}.service", path))
    return clusters


def parse_data_directory(conf_text: str) -> str | None:
    """The data_directory setting of a postgresql.conf, if it has one."""
    settings = re.findall(r"^\s*data_directory\s*=\s*'([^']*)'", conf_text, re.M)
    return settings[-1] if settings else None  # the last one wins, as in PostgreSQL


def parse_boot_time(proc_stat: str) -> datetime | None:
    match = re.search(r"^btime (\d+)$", proc_stat, re.M)
    return datetime.fromtimestamp(int(match[1]), tz=UTC) if match else None


def writes_today(sectors: int, now: datetime, boot_time: datetime, boot_id: str, device: str,
                 state: dict | None) -> tuple[int, datetime, dict | None]:
    """(bytes written today, counted since when, the state to save or None).

    Booted today: the kernel's counter is today's. Otherwise the counter is compared with the
    first reading of it taken today (the state file), which the first call of a day records.
    """
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if boot_time >= midnight:
        return sectors * SECTOR_BYTES, boot_time, None
    if state and state.get("date") == now.date().isoformat() and state.get("boot_id") == boot_id \
            and state.get("device") == device and isinstance(state.get("sectors"), int) \
            and 0 <= state["sectors"] <= sectors:
        return (sectors - state["sectors"]) * SECTOR_BYTES, datetime.fromisoformat(state["at"]), None
    fresh = {"date": now.date().isoformat(), "boot_id": boot_id, "device": device, "sectors": sectors,
             "at": now.isoformat()}
    return 0, now, fresh


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "********") if secret else text


# ------------------------------------------------------------------ pure: verdict and output

def ingestor_summary(facts: Facts) -> dict:
    """The ingestor's STATUS= line, parsed (None values when it said something else, e.g. waiting).

    systemd keeps the last STATUS= of a stopped service: it is not shown then.
    """
    stopped = facts.services.get(INGESTOR_UNIT, {}).get("active") in ("inactive", "failed")
    text = "" if stopped else facts.ingestor_status_text
    parsed = parse_status_line(text)
    keys = ("rate", "backlog", "stored", "rejected", "refused", "duplicates", "database", "broker")
    doc = dict.fromkeys(keys) if parsed is None else parsed
    return {"status_text": text, **{("database_refused" if k == "refused" else k): doc[k] for k in keys}}


def problems(facts: Facts) -> list[str]:
    """Why the appliance is unhealthy; empty when it is healthy."""
    found = list(facts.errors)
    for unit, state in facts.services.items():
        if state.get("load") == "not-found":
            found.append(f"{unit} is not installed")
        elif state.get("active") != "active":
            found.append(f"{unit} is {state.get('active', 'unknown')} ({state.get('sub', '?')})")
    ingestor = ingestor_summary(facts)
    if facts.services.get(INGESTOR_UNIT, {}).get("active") == "active":
        if ingestor["database"] is None and ingestor["status_text"]:
            found.append(f"ingestor: {ingestor['status_text']}")
        if ingestor["database"] not in (None, "ok"):
            found.append(f"ingestor: database {ingestor['database']}")
        if ingestor["broker"] == "DOWN":
            found.append("ingestor: broker DOWN")
    if facts.database_error:
        found.append(f"database: {facts.database_error}")
    offline = [d for d in facts.devices if d["is_active"] and d["health"] == "offline"]
    if offline:
        names = ", ".join(d["device_id"] for d in offline[:10]) + (", ..." if len(offline) > 10 else "")
        found.append(f"{len(offline)} device{'s' if len(offline) > 1 else ''} offline: {names}")
    if facts.disk and facts.disk["total_bytes"] and \
            facts.disk["free_bytes"] < DISK_FREE_MIN_FRACTION * facts.disk["total_bytes"]:
        found.append(f"disk almost full: {human_bytes(facts.disk['free_bytes'])} free of "
                     f"{human_bytes(facts.disk['total_bytes'])} on {facts.disk['path']}")
    return found


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z") if value else None


def build_report(facts: Facts) -> dict:
    """The status document: what --json prints, and what the text is made from."""
    found = problems(facts)
    counts = {h: sum(1 for d in facts.devices if d["health"] == h) for h in ("online", "warning", "offline", "new")}
    return {
        "healthy": not found,
        "problems": found,
        "checked_at": iso(facts.checked_at),
        "services": facts.services,
        "ingestor": ingestor_summary(facts),
        "rejects_last_hour": None if facts.rejects_last_hour is None else {
            "total": facts.rejects_last_hour,
            "top_reasons": [{"reason": r, "count": n} for r, n in facts.top_reject_reasons]},
        "devices": {"total": len(facts.devices), **counts, "thresholds_minutes": facts.thresholds_minutes,
                    "list": [{**d, "last_seen": iso(d["last_seen"])} for d in facts.devices]},
        "database": {"reachable": facts.database_error is None, "error": facts.database_error,
                     "size_bytes": facts.database_size_bytes},
        "disk": facts.disk,
        "card_writes": None if facts.card_writes is None else {
            **facts.card_writes, "boot_time": iso(facts.card_writes["boot_time"]),
            "today_since": iso(facts.card_writes["today_since"])},
    }


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns


def human_age(since: str | None, now: str) -> str:
    if since is None:
        return "never"
    seconds = int((datetime.fromisoformat(now.replace("Z", "+00:00"))
                   - datetime.fromisoformat(since.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def format_text(report: dict) -> str:
    now = report["checked_at"]
    lines = [f"DataYoti Edge: {'healthy' if report['healthy'] else 'UNHEALTHY'} ({now})"]
    lines += [f"  ! {p}" for p in report["problems"]]
    lines.append("services")
    width = max((len(u) for u in report["services"]), default=0)
    for unit, state in report["services"].items():
        lines.append(f"  {unit:<{width}}  {state.get('active', '?')} ({state.get('sub', '?')})")
    ing = report["ingestor"]
    if ing["database"] is not None:
        lines.append(f"ingestor  {ing['rate']:.1f} msg/s, backlog {ing['backlog']}, database refused "
                     f"{ing['database_refused']}; database {ing['database']}, broker {ing['broker']}")
    else:
        running = report["services"].get(INGESTOR_UNIT, {}).get("active") not in ("inactive", "failed")
        lines.append(f"ingestor  {ing['status_text'] or ('no status reported yet' if running else 'not running')}")
    rejects = report["rejects_last_hour"]
    if rejects is not None:
        reasons = ", ".join(f"{r['reason']} {r['count']}" for r in rejects["top_reasons"])
        lines.append(f"rejects   {rejects['total']} in the last hour{': ' + reasons if reasons else ''}")
    devices = report["devices"]
    lines.append(f"devices   {devices['total']}: {devices['online']} online, {devices['warning']} warning, "
                 f"{devices['offline']} offline" + (f", {devices['new']} new" if devices["new"] else ""))
    for d in devices["list"]:
        health = d["health"] if d["is_active"] else f"{d['health']}, inactive"
        lines.append(f"  {d['device_id']}  {d['site_id'] or '-':<12} {health:<8} last seen "
                     f"{human_age(d['last_seen'], now)}")
    storage = [f"database {human_bytes(report['database']['size_bytes'])}"]
    if report["disk"]:
        disk = report["disk"]
        storage.append(f"disk free {human_bytes(disk['free_bytes'])} of {human_bytes(disk['total_bytes'])} "
                       f"({disk['path']})")
    writes = report["card_writes"]
    if writes:
        storage.append(f"written to {writes['device']} today {human_bytes(writes['today_bytes'])} "
                       f"(since {writes['today_since']})")
    else:
        storage.append("writes to the card unknown (root is not on a block device)")
    lines.append("storage   " + "; ".join(storage))
    return "\n".join(lines)


# ------------------------------------------------------------------ gathering (I/O)

def gather_services(units: list[str], facts: Facts) -> None:
    cmd = ["systemctl", "show", "--property=Id,LoadState,ActiveState,SubState,StatusText", "--", *units]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT_S, check=True).stdout
    except subprocess.CalledProcessError as exc:
        facts.errors.append(f"cannot ask systemd: {(exc.stderr.strip().splitlines() or ['systemctl failed'])[0]}")
        return
    except (OSError, subprocess.SubprocessError) as exc:
        facts.errors.append(f"cannot ask systemd: {exc}")
        return
    shown = parse_systemctl_show(out, units)
    for unit in units:
        props = shown.get(unit, {})
        facts.services[unit] = {"load": props.get("LoadState", "unknown"), "active": props.get("ActiveState",
                                "unknown"), "sub": props.get("SubState", "unknown")}
    facts.ingestor_status_text = shown.get(INGESTOR_UNIT, {}).get("StatusText", "")


def gather_database(cfg: config_module.Config, facts: Facts) -> None:
    """As the read-only grafana_reader, over TCP, with the ingestor's connection settings."""
    import psycopg2

    try:
        password = READER_PASSWORD_FILE.read_text().strip()
    except OSError as exc:
        facts.database_error = f"cannot read {READER_PASSWORD_FILE}: {exc.strerror}"
        return
    db = dataclasses.replace(cfg.database, user=READER_ROLE, password=password)
    kwargs = config_module.database_connect_kwargs(db)
    kwargs.update(application_name="datayoti-status",
                  options=f"-c statement_timeout={QUERY_TIMEOUT_MS} -c default_transaction_read_only=on")
    try:
        conn = psycopg2.connect(**kwargs)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_database_size(current_database())")
                facts.database_size_bytes = cur.fetchone()[0]
                cur.execute("SELECT extract(epoch FROM online_within)::int / 60, "
                            "extract(epoch FROM warning_within)::int / 60 FROM health_thresholds")
                row = cur.fetchone()
                facts.thresholds_minutes = {"online": row[0], "warning": row[1]} if row else None
                cur.execute("SELECT reason, count(*) FROM rejected_messages "
                            "WHERE received_at > now() - INTERVAL '1 hour' GROUP BY 1 ORDER BY 2 DESC, 1")
                reasons = cur.fetchall()
                facts.rejects_last_hour = sum(n for _, n in reasons)
                facts.top_reject_reasons = [(r, n) for r, n in reasons[:TOP_REJECT_REASONS]]
                # A device added but never heard from is "new": waiting for its first message, not offline.
                cur.execute("SELECT h.device_id, h.site_id, greatest(d.last_heartbeat_at, d.last_data_at), "
                            "CASE WHEN coalesce(d.last_heartbeat_at, d.last_data_at) IS NULL THEN 'new' "
                            "ELSE h.health_status END, d.is_active "
                            "FROM device_health h JOIN devices d USING (device_id) "
                            "ORDER BY h.site_id NULLS LAST, h.device_id")
                facts.devices = [{"device_id": r[0], "site_id": r[1], "last_seen": r[2], "health": r[3],
                                  "is_active": r[4]} for r in cur.fetchall()]
        finally:
            conn.close()
    except psycopg2.Error as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        facts.database_error = redact(first_line, password)


def gather_disk(data_dir: str, facts: Facts) -> None:
    try:
        free, total = storage.disk_usage(data_dir)
    except OSError as exc:
        facts.errors.append(f"cannot measure the disk of {data_dir}: {exc.strerror}")
        return
    facts.disk = {"path": data_dir, "total_bytes": total, "free_bytes": free}


def gather_card_writes(facts: Facts, state_file: Path = CARD_WRITES_STATE) -> None:
    device = storage.block_device_of("/")
    sectors = storage.sectors_written(device)
    if sectors is None:
        return
    try:
        boot_time = parse_boot_time(Path("/proc/stat").read_text())
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return
    if boot_time is None:
        return
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = None
    today, since, fresh = writes_today(sectors, facts.checked_at, boot_time, boot_id, device,
                                       state if isinstance(state, dict) else None)
    if fresh is not None:
        try:
            tmp = state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(fresh) + "\n")
            tmp.replace(state_file)
        except OSError:
            pass  # today's figure then starts again at the next call
    facts.card_writes = {"device": device, "since_boot_bytes": sectors * SECTOR_BYTES, "boot_time": boot_time,
                         "today_bytes": today, "today_since": since}


def gather(config_path: Path | None) -> Facts:
    facts = Facts(checked_at=datetime.now(UTC))
    clusters = postgresql_clusters(glob.glob(POSTGRESQL_CONF_GLOB)) or [("postgresql.service", "")]
    gather_services([MOSQUITTO_UNIT, *(unit for unit, _ in clusters), INGESTOR_UNIT, RETENTION_TIMER], facts)
    try:
        cfg = config_module.load(config_path)
    except config_module.ConfigError as exc:
        facts.errors.append(f"ingestor configuration: {exc}")
        cfg = config_module.Config()
    gather_database(cfg, facts)
    conf = clusters[0][1]
    data_dir = None
    if conf:
        with contextlib.suppress(OSError):
            data_dir = parse_data_directory(Path(conf).read_text())
        data_dir = data_dir or str(Path("/var/lib/postgresql").joinpath(*Path(conf).parts[-3:-1]))
    gather_disk(data_dir or "/var/lib/postgresql", facts)
    gather_card_writes(facts)
    return facts


# ------------------------------------------------------------------ the command

def add_parser(commands) -> None:
    p = commands.add_parser(
        "status", help="health at a glance; exit 1 when something is unhealthy",
        description="Services, the ingestor's rate and backlog, rejects of the last hour, each device's "
                    "health, database size, disk free and bytes written to the card today. Exit 0 when "
                    "healthy, 1 when not (a service down, the database or broker unreachable, a device "
                    f"offline, less than {DISK_FREE_MIN_FRACTION:.0%} disk free).")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--config", type=Path, help=f"the ingestor's TOML file (default {config_module.DEFAULT_PATH})")
    p.set_defaults(run=command, needs_root=lambda args: True)


def command(args: argparse.Namespace) -> int:
    report = build_report(gather(args.config))
    print(json.dumps(report, indent=2, default=str) if args.json else format_text(report))
    sys.stdout.flush()
    return 0 if report["healthy"] else 1

