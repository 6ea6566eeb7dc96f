"""Issue 9, acceptance 5 and the backup's bad input: `datayoti backup`, `restore` and ansible/backup.yml.

A backup of pi1 taken while `simulate` runs is restored onto pi2, provisioned by site.yml like pi1.
pi2 gets its own backup back at the end of the module, so later tests find it as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import TESTBED, play_summary
from datayoti_ingestor import backup
from test_datayoti import wait_for
from test_ingestor import ROLLUP_CHECK
from test_site import Session, address

SOURCE, TARGET = "pi1", "pi2"
A = "02:D7:00:BA:C0:01"  # a sensor added with `device add` on pi1 by this module
WORK = "/var/tmp/datayoti-backup-test"
FULL = "/mnt/datayoti-full"  # a tmpfs too small for a backup


def datayoti(fleet, host: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    argv = " ".join(shlex.quote(a) for a in args)
    return fleet.sh(host, f"cd / && /usr/bin/datayoti {argv}", check=False, timeout=timeout)


def ok_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def sql(fleet, host: str, query: str) -> str:
    result = fleet.sh(host, "cd / && runuser -u postgres -- psql -d datayoti_db -v ON_ERROR_STOP=1 -qAt",
                      stdin=query, check=False)
    assert result.returncode == 0, f"{query}\n{result.stdout}{result.stderr}"
    return result.stdout.strip()


def put(fleet, host: str, path: str, data: bytes) -> None:
    """Binary-safe upload (Bed.sh is text), mode 0600."""
    done = subprocess.run([str(TESTBED), "--bed", fleet.name, "exec", host, "sh", "-c",
                           f"umask 077 && cat > {shlex.quote(path)}"], input=data, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr


def get(fleet, host: str, path: str) -> bytes:
    done = subprocess.run([str(TESTBED), "--bed", fleet.name, "exec", host, "cat", path], capture_output=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout


def healthy(fleet, host: str, seconds: float) -> dict:
    def check():
        result = datayoti(fleet, host, "status", "--json")
        return json.loads(result.stdout) if result.returncode == 0 else None
    return wait_for(check, seconds, f"`datayoti status` healthy on {host}")


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def target_saved(fleet):
    """pi2's own backup, restored onto it once the module is done."""
    fleet.sh(TARGET, f"rm -rf {WORK} && mkdir -m 700 {WORK}")
    ok_json(datayoti(fleet, TARGET, "backup", f"{WORK}/own.tar", "--json"))
    yield
    restored = datayoti(fleet, TARGET, "restore", f"{WORK}/own.tar", "--json")
    fleet.sh(TARGET, f"rm -rf {WORK}")
    assert restored.returncode == 0, restored.stdout + restored.stderr


@pytest.fixture(scope="module")
def sensor_a(fleet):
    """A sensor added with the CLI on pi1; removed again at the end."""
    added = datayoti(fleet, SOURCE, "device", "add", A, "--site", "BACKUP", "--json")
    creds = ok_json(added if added.returncode == 0 else datayoti(fleet, SOURCE, "device", "show", A, "--json"))
    yield creds
    datayoti(fleet, SOURCE, "device", "remove", A, "--purge")


# ------------------------------------------------------------------ acceptance 5

def committed_keys(fleet, host: str) -> set[str]:
    rows = sql(fleet, host, "SELECT 'd ' || device_id || ' ' || time FROM sensor_data UNION ALL "
                            "SELECT 'h ' || device_id || ' ' || time FROM device_heartbeats")
    return set(rows.splitlines())


def test_a_backup_taken_while_simulate_runs_restores_onto_a_second_pi(fleet, target_saved, sensor_a, tmp_path):
    fleet.sh(SOURCE, f"rm -rf {WORK} && mkdir -m 700 {WORK}")
    fleet.sh(SOURCE, f"setsid nohup /usr/bin/datayoti simulate --rate 1 --duration 45 --json > {WORK}/sim.json "
                     f"2> {WORK}/sim.err < /dev/null &")
    start = sql(fleet, SOURCE, "SELECT count(*) FROM sensor_data")
    wait_for(lambda: int(sql(fleet, SOURCE, "SELECT count(*) FROM sensor_data")) > int(start) + 20, 60,
             "simulated readings on pi1")
    before = committed_keys(fleet, SOURCE)  # every row committed before the backup starts

    # The backup, through the playbook that pulls it to the controller.
    run = fleet.playbook("-l", SOURCE, "-e", f"datayoti_backup_dir={tmp_path}", playbook="backup.yml")
    assert run.returncode == 0, play_summary(run)
    pulled = tmp_path / f"{SOURCE}.tar"
    assert pulled.stat().st_mode & 0o777 == 0o600 and tmp_path.stat().st_mode & 0o777 == 0o700
    assert fleet.sh(SOURCE, "ls -d /var/tmp/datayoti-backup.* 2>/dev/null || true").stdout.strip() == ""
    data = pulled.read_bytes()
    manifest = backup.verify(io.BytesIO(data))
    assert manifest["host"] == SOURCE and manifest["format"] == "datayoti-backup"
    rows = manifest["database"]["rows"]
    assert rows["sensor_data"] + rows["device_heartbeats"] >= len(before)
    members = {m["name"] for m in manifest["members"]}
    assert f"files/etc/datayoti/sensors/{A}.json" in members
    assert {"files/var/lib/mosquitto/dynamic-security.json", "files/etc/mosquitto/certs/datayoti-ca.crt",
            "files/etc/datayoti/secrets/mqtt-ca.key"} <= members

    # Ingestion went on during the backup.
    during = int(sql(fleet, SOURCE, "SELECT count(*) FROM sensor_data"))
    wait_for(lambda: int(sql(fleet, SOURCE, "SELECT count(*) FROM sensor_data")) > during, 30,
             "readings stored after the backup")
    wait_for(lambda: fleet.sh(SOURCE, f"cat {WORK}/sim.json").stdout.strip().endswith("}"), 90, "simulate's end")
    simulated = json.loads(fleet.sh(SOURCE, f"cat {WORK}/sim.json").stdout)
    assert A in simulated["connected"], simulated["errors"]  # the others' accounts are acceptance 1's

    # The restore, onto the second Pi.
    fleet.sh(TARGET, f"mkdir -p -m 700 {WORK}")
    put(fleet, TARGET, f"{WORK}/{SOURCE}.tar", data)
    restored = ok_json(datayoti(fleet, TARGET, "restore", f"{WORK}/{SOURCE}.tar", "--json"))
    assert restored["host"] == SOURCE and restored["rows"] == rows

    missing = before - committed_keys(fleet, TARGET)
    assert not missing, f"{len(missing)} rows committed before the backup are missing, e.g. {sorted(missing)[:3]}"
    for view, width in (("sensor_data_semi_hourly", "30 minutes"), ("sensor_data_hourly", "1 hour")):
        assert sql(fleet, TARGET, ROLLUP_CHECK.format(view=view, width=width)) == "0", view

    # A logs in to pi2 with the credentials it had on pi1, in clear and over TLS (a certificate for
    # pi2's names, from pi1's CA), and its readings are stored.
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    for port, tls in ((sensor_a["MQTT_PORT"], False), (sensor_a["MQTT_TLS_PORT"], True)):
        client = Session(address(fleet, TARGET), port, sensor_a["MQTT_USER"], sensor_a["MQTT_PASSWORD"],
                         ca_pem=sensor_a["CA_CERT"], tls=tls)
        try:
            assert client.accepted, f"port {port}: {client.reason}"
            client.publish(f"datayoti/sensor/{A}/data", json.dumps({"device_id": A, "timestamp": now,
                                                                    "temperature": 21.5, "humidity": 40.0}))
        finally:
            client.close()
    wait_for(lambda: sql(fleet, TARGET, f"SELECT count(*) FROM sensor_data WHERE device_id = '{A}' "
                                        f"AND time = '{now}'") == "1", 30, "A's reading on pi2")

    # Every restored sensor logs in with its old credentials; then the Pi is healthy.
    sim = ok_json(datayoti(fleet, TARGET, "simulate", "--readings", "1", "--duration", "15", "--json"))
    accounts = fleet.sh(TARGET, "ls /etc/datayoti/sensors").stdout.split()
    assert sim["ok"] and sorted(sim["connected"]) == sorted(a.removesuffix(".json") for a in accounts), sim
    status = healthy(fleet, TARGET, 60)
    assert status["healthy"] and status["ingestor"]["database"] == "ok"


def test_the_restored_database_has_the_privileges_site_yml_gives(fleet, target_saved):
    """What pg_dump leaves out (database-level ACL and settings) and what it keeps, as on the source."""
    query = """
        SELECT 'db ' || coalesce(datacl::text, '-') || ' ' || pg_get_userbyid(datdba) FROM pg_database
            WHERE datname = current_database()
        UNION ALL SELECT 'settings ' || count(*) FROM pg_db_role_setting s JOIN pg_database d
            ON d.oid = s.setdatabase WHERE d.datname = current_database()
        UNION ALL SELECT 'schema ' || nspname || ' ' || pg_get_userbyid(nspowner) || ' ' || coalesce(nspacl::text, '-')
            FROM pg_namespace WHERE nspname = 'public'
        UNION ALL SELECT 'default ' || defaclobjtype::text || ' ' || defaclacl::text FROM pg_default_acl
        UNION ALL SELECT 'rel ' || relname || ' ' || pg_get_userbyid(relowner) || ' ' || coalesce(relacl::text, '-')
            FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'v', 'S')
        ORDER BY 1"""
    assert sql(fleet, TARGET, query) == sql(fleet, SOURCE, query)
    reader = ("PGPASSWORD=$(cat /etc/datayoti/secrets/postgresql-grafana_reader.password) psql -h 127.0.0.1 "
              "-U grafana_reader -d datayoti_db -v ON_ERROR_STOP=1 -Atc 'SELECT count(*) FROM sensor_data_hourly'")
    assert fleet.sh(TARGET, reader, check=False).returncode == 0


# ------------------------------------------------------------------ bad input: one line, nothing changed

STATE_SCRIPT = r"""
cd /
for f in /etc/datayoti/secrets/* /etc/datayoti/sensors/* /etc/mosquitto/certs/* \
         /var/lib/mosquitto/dynamic-security.json; do
  [ -f "$f" ] && echo "$(sha256sum "$f" | cut -c1-64) $(stat -c '%a %U %G' "$f") $f"
done
systemctl show -p InvocationID mosquitto.service datayoti-ingestor.service postgresql@17-main.service | sort
runuser -u postgres -- psql -qAt -c "SELECT oid, datname FROM pg_database ORDER BY 2" \
    -c "SELECT count(*) FROM sensor_data" -d datayoti_db
ls -A /var/tmp | grep '^datayoti-restore' || true
ls -A /var/backups/datayoti 2>/dev/null || true
ls -A {full} 2>/dev/null || true
"""


def state(fleet, host: str) -> str:
    return fleet.sh(host, STATE_SCRIPT.replace("{full}", FULL)).stdout


def newer_schema(valid: bytes) -> bytes:
    """The valid backup, with a migration this Pi does not have, consistently checksummed."""
    collect: dict[str, io.BytesIO] = {}

    def open_member(name):
        collect[name] = io.BytesIO()
        return _Keep(collect[name])

    manifest = backup.verify(io.BytesIO(valid), open_member=open_member)
    db = dict(manifest["database"], migrations=[*manifest["database"]["migrations"], "9999_from_the_future"])
    out = io.BytesIO()
    writer = backup.ArchiveWriter(out)
    writer.add(backup.MANIFEST, backup.render_manifest(dict(manifest, database=db,
                                                            schema_version="9999_from_the_future")))
    for m in manifest["members"]:
        writer.add(m["name"], collect[m["name"]].getvalue())
    length = out.tell()
    writer.finish(hashlib.sha256(out.getvalue()).hexdigest(), length)
    return out.getvalue()


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x20]) + data[offset + 1:]


def content_at(archive: bytes, path: str) -> int:
    """Where a file's content starts in a backup: after its header, the last occurrence of its name."""
    return archive.rindex(f"files{path}".encode()) + backup.BLOCK


class _Keep:
    """A BytesIO that verify() may close without losing its content."""

    def __init__(self, buffer: io.BytesIO):
        self.buffer = buffer

    def __enter__(self):
        return self.buffer

    def __exit__(self, *exc):
        return False


@pytest.fixture(scope="module")
def valid_backup(fleet) -> bytes:
    fleet.sh(SOURCE, f"mkdir -p -m 700 {WORK}")
    ok_json(datayoti(fleet, SOURCE, "backup", f"{WORK}/valid.tar", "--json"))
    data = get(fleet, SOURCE, f"{WORK}/valid.tar")
    yield data
    fleet.sh(SOURCE, f"rm -rf {WORK}; umount {FULL} 2>/dev/null; rmdir {FULL} 2>/dev/null; true")


BAD_INPUT = [
    # (case, setup script on the Pi (or a function of the valid backup's bytes), datayoti arguments, exit, message)
    ("restore: no such file", None, ["restore", f"{WORK}/none.tar"], 1,
     f"datayoti restore: cannot read {WORK}/none.tar: No such file or directory"),
    ("restore: a directory", None, ["restore", WORK], 1, f"datayoti restore: {WORK} is not a regular file"),
    ("restore: unreadable", f"mkfifo {WORK}/fifo.tar", ["restore", f"{WORK}/fifo.tar"], 1, "is not a regular file"),
    ("restore: a foreign file", f"cp /etc/os-release {WORK}/foreign.tar", ["restore", f"{WORK}/foreign.tar"], 1,
     "not a DataYoti backup"),
    ("restore: a foreign tar", f"tar -C /etc -cf {WORK}/foreign.tar os-release hostname",
     ["restore", f"{WORK}/foreign.tar"], 1, "not a DataYoti backup (it does not start with its manifest)"),
    ("restore: truncated", lambda valid: valid[:len(valid) // 2], ["restore", f"{WORK}/crafted.tar"], 1,
     "truncated"),
    ("restore: tampered dump", lambda valid: flip(valid, len(valid) - 3000), ["restore", f"{WORK}/crafted.tar"], 1,
     "tampered"),
    ("restore: tampered secret", lambda valid: flip(valid, content_at(valid, "/etc/datayoti/secrets/mqtt-ca.key")),
     ["restore", f"{WORK}/crafted.tar"], 1, "corrupt or tampered: files/etc/datayoti/secrets/mqtt-ca.key does not "
                                            "match its checksum"),
    ("restore: a newer schema", newer_schema, ["restore", f"{WORK}/crafted.tar"], 1,
     "this Pi cannot take this backup: its schema (9999_from_the_future) is newer than this Pi's"),
    ("restore: no path", None, ["restore"], 2, "the following arguments are required: PATH"),
    ("backup: a full disk", f"mkdir -p {FULL} && (mountpoint -q {FULL} || mount -t tmpfs -o size=48k,mode=0700 "
                            f"datayoti-full {FULL})",
     ["backup", f"{FULL}/b.tar"], 1, f"datayoti backup: no space left on the device holding {FULL}: nothing was "
                                     "written"),
    ("backup: no such directory", None, ["backup", "/nonexistent/b.tar"], 1, "/nonexistent: no such directory"),
    ("backup: the file exists", None, ["backup", f"{WORK}/valid.tar"], 1, "exists already"),
]


@pytest.mark.parametrize(("case", "setup", "args", "code", "message"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_one_line_and_changes_nothing(fleet, valid_backup, case, setup, args, code, message):
    if callable(setup):
        put(fleet, SOURCE, f"{WORK}/crafted.tar", setup(valid_backup))
    elif setup:
        fleet.sh(SOURCE, setup)
    before = state(fleet, SOURCE)
    result = datayoti(fleet, SOURCE, *args, "--json", timeout=300)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert state(fleet, SOURCE) == before


def test_a_backup_on_a_full_disk_left_nothing_on_it(fleet, valid_backup):
    fleet.sh(SOURCE, f"mountpoint -q {FULL} || (mkdir -p {FULL} && mount -t tmpfs -o size=48k,mode=0700 "
                     f"datayoti-full {FULL})")
    datayoti(fleet, SOURCE, "backup", f"{FULL}/b.tar")
    assert fleet.sh(SOURCE, f"ls -A {FULL}").stdout == ""
    assert fleet.sh(SOURCE, f"df --output=used -B1 {FULL} | tail -1").stdout.strip() == "0"


def test_a_verified_backup_passes_dry_run_and_changes_nothing(fleet, valid_backup):
    before = state(fleet, SOURCE)
    result = ok_json(datayoti(fleet, SOURCE, "restore", f"{WORK}/valid.tar", "--dry-run", "--json"))
    assert result["dry_run"] is True and result["host"] == SOURCE
    assert state(fleet, SOURCE) == before


def test_manifest_and_permissions_of_a_default_backup(fleet):
    result = ok_json(datayoti(fleet, SOURCE, "backup", "--json"))
    path = result["path"]
    try:
        assert path.startswith("/var/backups/datayoti/pi1-") and path.endswith("Z.tar")
        listing = fleet.sh(SOURCE, f"stat -c '%a %U %G' /var/backups/datayoti {shlex.quote(path)}").stdout.split("\n")
        assert listing[:2] == ["700 root root", "600 root root"]
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "b.tar"
            local.write_bytes(get(fleet, SOURCE, path))
            with open(local, "rb") as f:
                manifest = backup.verify(f)
        assert manifest["schema_version"] == result["schema_version"] and manifest["host"] == SOURCE
        assert set(manifest["database"]["rows"]) >= {"sensor_data", "device_heartbeats", "devices", "sites",
                                                     "rollup_hourly", "rollup_semi_hourly", "schema_migrations"}
    finally:
        fleet.sh(SOURCE, f"rm -f {shlex.quote(path)}")
