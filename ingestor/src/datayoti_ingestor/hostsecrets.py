"""`datayoti secrets ensure|rotate`: every secret of this Pi, made here, once, and applied where it is used.

The one implementation: the roles call it, so will the image's first boot.

Secrets (files in /etc/datayoti/secrets, root 0600):
- postgresql-<role>.password  -> ALTER ROLE ... PASSWORD (a SCRAM verifier made here, never plain text);
- mqtt-<account>.password     -> the broker's dynamic security accounts (admin, ingestor, Grafana's alerts);
- grafana-admin, grafana-secret_key -> read by Grafana (systemd credentials), never rotated here;
- mqtt-ca.key                 -> the Pi's own CA (certificate in /etc/mosquitto/certs);
- the broker's server key and certificate, re-issued when the Pi's names change or the CA does.
Sensors' accounts (/etc/datayoti/sensors/<MAC>.json) are applied to the broker too.

`ensure` never replaces a secret that exists. It brings each place of use in line with the file
(a verifier or hash that does not match is re-applied), so an interrupted run is finished by the
next. `rotate` writes the new value beside the old (<name>.password.new), applies it, renames it
over the old, then restarts the services that hold it; an interrupted rotation is finished by the
next `ensure` or `rotate`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import grp
import hashlib
import hmac
import json
import os
import pwd
import secrets
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import broker, dynsec, layout, localdb

SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations
SERVER_CERT_RENEW_S = 30 * 24 * 3600
LOCK_FILE = Path("/run/datayoti.lock")


@dataclass(frozen=True)
class Password:
    name: str  # file stem in /etc/datayoti/secrets
    target: str  # "postgresql", "mqtt", or "grafana" (read by Grafana itself, nothing to apply)
    account: str  # PostgreSQL role or MQTT username
    units: tuple[str, ...] = ()  # services that hold it, restarted after a rotation
    rotatable: bool = True


PASSWORDS = (
    Password("postgresql-datayoti_owner", "postgresql", "datayoti_owner", (layout.MIGRATE_UNIT,)),
    Password("postgresql-mqtt_ingestor", "postgresql", "mqtt_ingestor", (layout.INGESTOR_UNIT,)),
    Password("postgresql-grafana_reader", "postgresql", "grafana_reader", (layout.GRAFANA_UNIT,)),
    Password("mqtt-datayoti_admin", "mqtt", layout.MQTT_ADMIN_USER),
    Password("mqtt-datayoti_ingestor", "mqtt", layout.MQTT_INGESTOR_USER, (layout.INGESTOR_UNIT,)),
    Password("mqtt-grafana_alerts", "mqtt", layout.MQTT_ALERTS_USER, (layout.GRAFANA_UNIT,)),
    # Grafana sets its admin's password from this file at its first start only; after that it is
    # changed in Grafana (`grafana cli admin reset-admin-password`), so it is not rotated here.
    Password("grafana-admin", "grafana", "admin", (layout.GRAFANA_UNIT,), rotatable=False),
    # [security] secret_key encrypts what Grafana stores: a new one would make that unreadable.
    Password("grafana-secret_key", "grafana", "secret_key", (layout.GRAFANA_UNIT,), rotatable=False),
)
TLS_NAMES = ("mqtt-ca", "mqtt-server")
ROTATABLE = tuple(p.name for p in PASSWORDS if p.rotatable) + TLS_NAMES


class SecretsError(Exception):
    """A secret could not be made or applied; the message says which and why."""


@dataclass
class Report:
    created: list[str] = field(default_factory=list)  # secrets generated
    applied: list[str] = field(default_factory=list)  # places of use brought in line
    waiting: list[str] = field(default_factory=list)  # places of use not there yet (applied by a later run)
    restarted: list[str] = field(default_factory=list)
    dry_run: bool = False
    restart: set[str] = field(default_factory=set)  # services to restart once everything is applied

    @property
    def changed(self) -> bool:
        return bool(self.created or self.applied)

    def as_dict(self) -> dict:
        return {"changed": self.changed, "dry_run": self.dry_run, "created": self.created,
                "applied": self.applied, "waiting": self.waiting, "restarted": self.restarted}


# ------------------------------------------------------------------ pure: values and verifiers

def new_password() -> str:
    return secrets.token_urlsafe(32)


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier (RFC 5802/7677) for an ASCII password."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def scram_matches(verifier: str | None, password: str) -> bool:
    """Whether a stored verifier (pg_authid.rolpassword) accepts this password."""
    try:
        scheme, rest = (verifier or "").split("$", 1)
        params, keys = rest.split("$", 1)
        iterations, salt = params.split(":", 1)
        stored, server = keys.split(":", 1)
        if scheme != "SCRAM-SHA-256":
            return False
        expected = scram_verifier(password, base64.b64decode(salt, validate=True), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected.rsplit("$", 1)[1], f"{stored}:{server}")


def pending_path(path: Path) -> Path:
    return path.with_name(path.name + ".new")


# ------------------------------------------------------------------ files

@contextlib.contextmanager
def exclusive():
    """One stateful `datayoti` command at a time on this Pi."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_atomic(path: Path, data: bytes, mode: int = 0o600, owner: str = "root", group: str = "root") -> None:
    """Write, fsync and rename into place, so a power cut leaves the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        os.fchown(fd, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    dynsec.fsync_path(path.parent)


def read_secret(path: Path) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise SecretsError(f"cannot read {path}: {exc.strerror}") from None
    if not value:
        raise SecretsError(f"{path} is empty; remove it and run `datayoti secrets ensure`")
    return value


def ensure_dir(path: Path, mode: int, group: str = "root") -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 0, grp.getgrnam(group).gr_gid)
    os.chmod(path, mode)


def broker_installed() -> bool:
    try:
        pwd.getpwnam(layout.MOSQUITTO_USER)
    except KeyError:
        return False
    return True


# ------------------------------------------------------------------ PostgreSQL

def postgresql_verifiers(roles: list[str]) -> dict[str, str] | None:
    """{role: rolpassword} of the roles that exist; None when PostgreSQL is not running here."""
    try:
        rows = localdb.psql("SELECT rolname, coalesce(rolpassword, '') FROM pg_authid "
                            "WHERE rolname = ANY (string_to_array(:'roles', ','))",
                            variables={"roles": ",".join(roles)})
    except localdb.DatabaseUnavailable:
        return None
    return {row[0]: row[1] if len(row) > 1 else "" for row in rows}


def alter_role_password(role: str, password: str) -> None:
    verifier = scram_verifier(password)
    localdb.psql(f"\\set verifier '{verifier}'\nALTER ROLE :\"role\" PASSWORD :'verifier';\n",
                 variables={"role": role})


# ------------------------------------------------------------------ the broker's accounts

def sensor_accounts() -> list[dict]:
    """The device registry's accounts (SENSORS_DIR/<MAC>.json), in MAC order."""
    accounts = []
    for path in sorted(layout.SENSORS_DIR.glob("*.json")):
        try:
            creds = json.loads(path.read_text())
            accounts.append({"mac": creds["device_id"], "username": creds["MQTT_USER"],
                             "password": creds["MQTT_PASSWORD"]})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SecretsError(f"{path} is not a sensor account ({type(exc).__name__}); fix or remove it") from None
    return accounts


def account_commands(document: dict | None, accounts: list[tuple[str, str, dict]], prune: bool = False) -> list[dict]:
    """Commands that make each (username, password, role) hold in the plugin's document; with `prune`
    (accounts is then every account), also those that delete sensors' accounts not in it."""
    document = document or dynsec.empty_document()
    commands = []
    for username, password, role in accounts:
        if not dynsec.find(document, "roles", role["rolename"]):
            commands.append(dynsec.create_role(role))
        client = dynsec.find(document, "clients", username)
        if client is None:
            commands.append(dynsec.create_client(username, password, role["rolename"]))
        elif not dynsec.holds_password(client, password):
            commands.append(dynsec.set_password(username, password))
    wanted = {username for username, _, _ in accounts}
    for client in document.get("clients", []) if prune else []:  # sensors the registry no longer has
        username = client.get("username")
        roles = [r.get("rolename", "") for r in client.get("roles", [])]
        if username not in wanted and roles and all(r.startswith(dynsec.SENSOR_ROLE_PREFIX) for r in roles):
            commands.append(dynsec.delete_client(username))
            commands += [dynsec.delete_role(r) for r in roles]
    return commands


def broker_accounts(passwords: dict[str, str]) -> list[tuple[str, str, dict]]:
    """Every account the broker must hold: admin, ingestor, then each registered sensor."""
    accounts = [(layout.MQTT_ADMIN_USER, passwords["mqtt-datayoti_admin"], dynsec.admin_role()),
                (layout.MQTT_INGESTOR_USER, passwords["mqtt-datayoti_ingestor"], dynsec.ingestor_role()),
                (layout.MQTT_ALERTS_USER, passwords["mqtt-grafana_alerts"], dynsec.alerts_role())]
    for sensor in sensor_accounts():
        accounts.append((sensor["username"], sensor["password"],
                         dynsec.sensor_role(sensor["username"], sensor["mac"])))
    return accounts


def admin_password() -> str:
    return read_secret(layout.password_file("mqtt-datayoti_admin"))


def run_broker_commands(commands: list[dict], settings: broker.BrokerSettings, admin: str) -> str:
    try:
        return dynsec.run(commands, admin_password=admin, port=settings.port)
    except dynsec.DynsecError as exc:
        raise SecretsError(f"broker accounts: {exc}") from None


# ------------------------------------------------------------------ TLS

def openssl(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SecretsError(f"openssl {args[0]}: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
    return done.stdout


def new_key_pem() -> bytes:
    return openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256").encode()


def ca_certificate(key_path: Path, days: int, hostname: str) -> bytes:
    return openssl("req", "-x509", "-new", "-key", str(key_path), "-sha256", "-days", str(days),
                   "-subj", f"/O=DataYoti Edge/CN=DataYoti Edge CA {hostname}",
                   "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                   "-addext", "keyUsage=critical,keyCertSign,cRLSign").encode()


def server_certificate(names: list[str], days: int, hostname: str) -> bytes:
    with tempfile.TemporaryDirectory() as work:
        ext = Path(work) / "san.cnf"
        ext.write_text(f"subjectAltName={','.join(names)}\n")
        csr = openssl("req", "-new", "-key", str(layout.SERVER_KEY), "-subj", f"/O=DataYoti Edge/CN={hostname}")
        return openssl("x509", "-req", "-CA", str(layout.CA_CERT), "-CAkey", str(layout.CA_KEY), "-set_serial",
                       str(int.from_bytes(secrets.token_bytes(15), "big")), "-sha256", "-days", str(days),
                       "-extfile", str(ext), stdin=csr).encode()


def certificate_names(path: Path) -> list[str]:
    """The subjectAltName entries of a certificate, as 'DNS:x' / 'IP:y', sorted."""
    text = openssl("x509", "-in", str(path), "-noout", "-ext", "subjectAltName")
    entries = " ".join(text.splitlines()[1:]).replace("IP Address:", "IP:").split(",")
    return sorted(e.strip() for e in entries if e.strip())


def server_certificate_current(names: list[str]) -> bool:
    if not layout.SERVER_CERT.exists():
        return False
    try:
        openssl("verify", "-CAfile", str(layout.CA_CERT), str(layout.SERVER_CERT))
        openssl("x509", "-in", str(layout.SERVER_CERT), "-noout", "-checkend", str(SERVER_CERT_RENEW_S))
        return certificate_names(layout.SERVER_CERT) == names
    except SecretsError:
        return False


def this_host_names(settings: broker.BrokerSettings) -> list[str]:
    return broker.server_names(settings, socket.gethostname(), socket.getfqdn(), broker.host_addresses())


def ensure_tls(report: Report, settings: broker.BrokerSettings, rotate: str | None = None) -> None:
    """The CA (made once) and the server certificate (re-issued when names, CA or expiry require)."""
    dry = report.dry_run
    hostname = socket.gethostname()
    if not dry:
        ensure_dir(layout.MOSQUITTO_CERTS_DIR, 0o750, layout.MOSQUITTO_USER)
    new_ca = rotate == "mqtt-ca" or not layout.CA_KEY.exists()
    if new_ca:
        report.created.append("mqtt-ca")
    elif not layout.CA_CERT.exists():
        report.applied.append("CA certificate")
    if not dry and new_ca:
        write_atomic(layout.CA_KEY, new_key_pem())
    if not dry and (new_ca or not layout.CA_CERT.exists()):
        write_atomic(layout.CA_CERT, ca_certificate(layout.CA_KEY, settings.tls_ca_days, hostname), 0o644,
                     group=layout.MOSQUITTO_USER)
    new_server_key = rotate == "mqtt-server" or not layout.SERVER_KEY.exists()
    if new_server_key:
        report.created.append("mqtt-server")
        if not dry:
            write_atomic(layout.SERVER_KEY, new_key_pem(), 0o600, layout.MOSQUITTO_USER, layout.MOSQUITTO_USER)
    names = this_host_names(settings)
    if new_ca or new_server_key or not server_certificate_current(names):
        if not new_server_key:
            report.applied.append("server certificate")
        report.restart.add(layout.MOSQUITTO_UNIT)
        if not dry:
            write_atomic(layout.SERVER_CERT, server_certificate(names, settings.tls_server_days, hostname), 0o644,
                         group=layout.MOSQUITTO_USER)


# ------------------------------------------------------------------ ensure and rotate

def ensure_files(report: Report, rotate: str | None) -> dict[str, str]:
    """Every password file, made if missing; a rotation's new value written beside the old. -> {name: value}"""
    if not report.dry_run:
        ensure_dir(layout.SECRETS_DIR, 0o700)
    values = {}
    for secret in PASSWORDS:
        path = layout.password_file(secret.name)
        pending = pending_path(path)
        if secret.name == rotate and not pending.exists() and not report.dry_run:
            write_atomic(pending, (new_password() + "\n").encode())
        if pending.exists():
            values[secret.name] = read_secret(pending)
            report.created.append(secret.name)
            report.restart.update(secret.units)
        elif path.exists():
            values[secret.name] = read_secret(path)
        else:
            values[secret.name] = new_password()
            report.created.append(secret.name)
            if not report.dry_run:
                write_atomic(path, (values[secret.name] + "\n").encode())
    return values


def apply_postgresql(report: Report, values: dict[str, str]) -> None:
    secrets_pg = [s for s in PASSWORDS if s.target == "postgresql"]
    verifiers = postgresql_verifiers([s.account for s in secrets_pg])
    for secret in secrets_pg:
        place = f"PostgreSQL role {secret.account}"
        if verifiers is None or secret.account not in verifiers:
            report.waiting.append(place + (" (PostgreSQL is not running)" if verifiers is None else " (no role yet)"))
        elif not scram_matches(verifiers[secret.account], values[secret.name]):
            report.applied.append(place)
            if not report.dry_run:
                alter_role_password(secret.account, values[secret.name])


def apply_broker(report: Report, values: dict[str, str], settings: broker.BrokerSettings) -> None:
    document = dynsec.read_document()
    accounts = broker_accounts(values)
    commands = account_commands(document, accounts, prune=True)
    if not commands:
        return
    for cmd in commands:
        report.applied.append(f"broker {cmd['command']} {cmd.get('username') or cmd.get('rolename')}")
    if report.dry_run:
        return
    # The admin authenticates with what the broker holds: the old password while rotating it.
    admin = values["mqtt-datayoti_admin"]
    if any(c.get("username") == layout.MQTT_ADMIN_USER and c["command"] == "setClientPassword" for c in commands):
        admin = read_secret(layout.password_file("mqtt-datayoti_admin"))
    try:
        run_broker_commands(commands, settings, admin)
    except SecretsError:
        # The plugin kicks the admin whose password it just changed, maybe before answering:
        # what its file holds now decides.
        if account_commands(dynsec.read_document(), accounts, prune=True):
            raise


def finish_rotations() -> None:
    """Rename each applied new value over the old one."""
    for secret in PASSWORDS:
        path = layout.password_file(secret.name)
        pending = pending_path(path)
        if pending.exists():
            os.replace(pending, path)
            dynsec.fsync_path(path.parent)


def unit_object_path(unit: str) -> str:
    """A unit's D-Bus object path in systemd (bus_label_escape: [A-Za-z0-9] kept, any other byte as _xx)."""
    label = "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else f"_{b:02x}" for b in unit.encode())
    return "/org/freedesktop/systemd1/unit/" + (label or "_")


def parse_load_credentials(text: str) -> list[tuple[str, str]]:
    """`busctl --json=short get-property ... LoadCredential` output -> [(credential id, source path)].

    (`systemctl show --property=LoadCredential` prints "[unprintable]" on trixie's systemd 257.)"""
    try:
        data = json.loads(text)["data"]
    except (ValueError, KeyError, TypeError):
        data = None
    if not isinstance(data, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair) for pair in data):
        raise SecretsError(f"cannot read a unit's LoadCredential= from systemd: {text.strip()[:200]!r}")
    return [(cred_id, source) for cred_id, source in data]


def unit_credentials(unit: str) -> list[tuple[str, str]]:
    """The LoadCredential= pairs systemd holds for a unit (drop-ins included)."""
    done = subprocess.run(["busctl", "--json=short", "get-property", "org.freedesktop.systemd1",
                           unit_object_path(unit), "org.freedesktop.systemd1.Service", "LoadCredential"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SecretsError(f"cannot ask systemd for {unit}'s credentials: {done.stderr.strip()}")
    return parse_load_credentials(done.stdout)


def stale_units() -> set[str]:
    """Running services whose systemd credential differs from its file: a rotation killed before it restarted them."""
    stale = set()
    for unit in sorted({u for secret in PASSWORDS for u in secret.units}):
        held_dir = Path("/run/credentials") / unit
        if not held_dir.is_dir():  # not running: it reads the files when it starts
            continue
        for cred_id, source in unit_credentials(unit):
            with contextlib.suppress(OSError):
                if (held_dir / cred_id).read_bytes() != Path(source).read_bytes():
                    stale.add(unit)
    return stale


def restart(units: set[str]) -> list[str]:
    ordered = sorted(units)
    if ordered:
        subprocess.run(["systemctl", "try-restart", *ordered], check=False, capture_output=True)
    return ordered


def ensure(dry_run: bool = False, restart_services: bool = True, rotate: str | None = None) -> Report:
    """Make what is missing, apply everything where it is used, finish any rotation."""
    report = Report(dry_run=dry_run)
    settings = load_settings()
    values = ensure_files(report, rotate)
    apply_postgresql(report, values)
    if broker_installed():
        ensure_tls(report, settings, rotate if rotate in TLS_NAMES else None)
        apply_broker(report, values, settings)
    if not dry_run:
        finish_rotations()
        if restart_services:
            report.restarted = restart(report.restart | stale_units())
    return report


def load_settings() -> broker.BrokerSettings:
    from .config import ConfigError

    try:
        return broker.load()
    except ConfigError as exc:
        raise SecretsError(str(exc)) from None


def rotate(name: str) -> Report:
    if name not in ROTATABLE:
        raise SecretsError(f"unknown secret {name!r}; one of: {', '.join(ROTATABLE)}")
    secret = next((s for s in PASSWORDS if s.name == name), None)
    if secret and secret.target == "postgresql" and postgresql_verifiers([secret.account]) is None:
        raise SecretsError(f"cannot rotate {name}: PostgreSQL is not running, so it cannot take the new password")
    report = ensure(rotate=name)
    if name == "mqtt-ca":
        report.waiting.append("every sensor's firmware: it must trust the new CA certificate for TLS")
    return report


# ------------------------------------------------------------------ CLI

def add_parser(commands) -> None:
    p = commands.add_parser("secrets", help="make, apply and rotate this Pi's secrets",
                            description="This Pi's secrets: database and broker passwords, the TLS CA and "
                                        "certificate. Made here, never copied from elsewhere.")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ensure_p = sub.add_parser("ensure", help="make every missing secret and apply each where it is used")
    ensure_p.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    ensure_p.add_argument("--no-restart", action="store_true", help="do not restart services (first boot, image)")
    ensure_p.add_argument("--json", action="store_true", help="print the report as JSON")
    rotate_p = sub.add_parser("rotate", help="replace one secret everywhere it is used")
    rotate_p.add_argument("name", choices=ROTATABLE, metavar="NAME", help=f"one of: {', '.join(ROTATABLE)}")
    rotate_p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=command, needs_root=lambda args: True)


def command(args: argparse.Namespace) -> int:
    try:
        with exclusive():
            if args.action == "ensure":
                report = ensure(dry_run=args.dry_run, restart_services=not args.no_restart)
            else:
                report = rotate(args.name)
    except (SecretsError, localdb.DatabaseUnavailable) as exc:
        print(f"datayoti secrets {args.action}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.as_dict(), sort_keys=True))
    else:
        print(render(report))
    return 0


def render(report: Report) -> str:
    titles = (("would create", "would apply") if report.dry_run else ("created", "applied")) + ("waiting",
                                                                                                "restarted")
    items = (report.created, report.applied, report.waiting, report.restarted)
    lines = [f"{title}: {', '.join(found)}" for title, found in zip(titles, items, strict=True) if found]
    return "\n".join(lines) or "every secret is in place; nothing changed"
