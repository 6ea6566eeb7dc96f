"""Issue 2 acceptance on two simulated Pis provisioned by ansible/site.yml."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import parse_recap, play_summary

PIS = ("pi1", "pi2")
SECRET_GLOBS = ("/etc/datayoti/secrets/*", "/etc/datayoti/sensors/*.json", "/etc/mosquitto/certs/server.key",
                "/var/lib/mosquitto/dynamic-security.json")
MQTT_WAIT_S = 10


# ------------------------------------------------------------------ convergence

def test_site_converges_both_pis(fleet):
    recap = parse_recap(fleet.first_run.stdout)
    assert fleet.first_run.returncode == 0, play_summary(fleet.first_run)
    assert set(recap) == set(PIS)
    for host, counts in recap.items():
        assert counts["failed"] == 0 and counts["unreachable"] == 0, host


def init_cgroup(nspawn_pid: int) -> str:
    """The cgroup (v2, or v1 name=systemd) of a simulated Pi's PID 1, as the build machine sees it."""
    (init,) = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()[:1]
    lines = Path(f"/proc/{init}/cgroup").read_text().splitlines()
    unified = [ln[3:] for ln in lines if ln.startswith("0::")]
    legacy = [ln.split(":", 2)[2] for ln in lines if ":name=systemd:" in ln]
    return (unified or legacy)[0]


def test_each_simulated_pi_has_a_cgroup_of_its_own(fleet):
    """Issue 8, the flaky first converge: systemd-nspawn puts a container into <its own cgroup>/payload, and
    every nspawn started from the build machine's root cgroup, so all Pis of all beds shared /payload. Their
    systemds then removed each other's unit cgroups: a Pi restarting datayoti-migrate while another one did
    failed with "Failed to spawn executor: No such file or directory" (Result=resources). The test bed must
    start each Pi in a cgroup of its own."""
    cgroups = {host: init_cgroup(info["pid"]) for host, info in fleet.status()["hosts"].items()}
    assert len(set(cgroups.values())) == len(cgroups), f"simulated Pis share a cgroup: {cgroups}"


def test_second_run_changes_nothing(fleet):
    second = fleet.playbook()
    assert second.returncode == 0, play_summary(second)
    recap = parse_recap(second.stdout)
    assert set(recap) == set(PIS)
    assert {h: c["changed"] for h, c in recap.items()} == {h: 0 for h in PIS}, play_summary(second)


def test_check_mode_on_converged_hosts_changes_nothing(fleet):
    check = fleet.playbook("--check")
    assert check.returncode == 0, play_summary(check)
    recap = parse_recap(check.stdout)
    assert {h: c["changed"] for h, c in recap.items()} == {h: 0 for h in PIS}, play_summary(check)


# ------------------------------------------------------------------ MQTT

def address(fleet, host: str) -> str:
    return fleet.status()["hosts"][host]["address"]


def sensor_credentials(fleet, host: str, index: int) -> dict:
    mac = fleet.status()["hosts"][host]["sensors"][index]
    return json.loads(fleet.read(host, f"/etc/datayoti/sensors/{mac}.json"))


def ingestor_password(fleet, host: str) -> str:
    return fleet.read(host, "/etc/datayoti/secrets/mqtt-datayoti_ingestor.password").strip()


class Session:
    """A paho client that waits, boundedly, for CONNACK and for messages."""

    def __init__(self, host: str, port: int, username: str | None = None, password: str | None = None,
                 ca_pem: str | None = None, tls: bool = False):
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.subscribed = threading.Event()
        self.reason = None
        self.messages: list[tuple[str, bytes]] = []
        # No automatic reconnection: a disconnect stays visible.
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, reconnect_on_failure=False)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls:
            ctx = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
            self.client.tls_set_context(ctx)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.disconnected.set()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        self.connected.wait(MQTT_WAIT_S)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.reason = reason_code
        self.connected.set()

    @property
    def accepted(self) -> bool:
        return self.reason is not None and not self.reason.is_failure

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(MQTT_WAIT_S)

    def publish(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(MQTT_WAIT_S)

    def wait_for(self, count: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def ingestor_sub(fleet):
    session = Session(address(fleet, "pi1"), 1883, "datayoti_ingestor", ingestor_password(fleet, "pi1"))
    assert session.accepted, session.reason
    session.subscribe("datayoti/#")
    yield session
    session.close()


def test_anonymous_mqtt_connection_is_refused(fleet):
    session = Session(address(fleet, "pi1"), 1883)
    try:
        assert session.reason is not None, "no CONNACK"
        assert session.reason.is_failure, f"anonymous login accepted: {session.reason}"
    finally:
        session.close()


def test_sensor_publishes_on_its_own_topic(fleet, ingestor_sub):
    creds = sensor_credentials(fleet, "pi1", 0)
    sensor = Session(address(fleet, "pi1"), creds["MQTT_PORT"], creds["MQTT_USER"], creds["MQTT_PASSWORD"])
    try:
        assert sensor.accepted, sensor.reason
        own = f"datayoti/sensor/{creds['device_id']}/data"
        sensor.publish(own, '{"probe": "own"}')
        ingestor_sub.wait_for(1, MQTT_WAIT_S)
        assert (own, b'{"probe": "own"}') in ingestor_sub.messages
    finally:
        sensor.close()


def test_sensor_cannot_publish_on_another_sensors_topic(fleet, ingestor_sub):
    creds_a = sensor_credentials(fleet, "pi1", 0)
    creds_b = sensor_credentials(fleet, "pi1", 1)
    sensor_a = Session(address(fleet, "pi1"), 1883, creds_a["MQTT_USER"], creds_a["MQTT_PASSWORD"])
    try:
        assert sensor_a.accepted, sensor_a.reason
        foreign = f"datayoti/sensor/{creds_b['device_id']}/data"
        own = f"datayoti/sensor/{creds_a['device_id']}/data"
        sensor_a.publish(foreign, '{"probe": "spoof"}')
        sensor_a.publish(own, '{"probe": "marker"}')  # arrives after the spoof would have
        ingestor_sub.wait_for(1, MQTT_WAIT_S)
        topics = [t for t, _ in ingestor_sub.messages]
        assert own in topics, "the marker never arrived, so the check proves nothing"
        assert foreign not in topics
    finally:
        sensor_a.close()


def test_tls_handshake_needs_the_hosts_ca(fleet):
    ca_pem = fleet.read("pi1", "/etc/mosquitto/certs/datayoti-ca.crt")
    with_ca = Session(address(fleet, "pi1"), 8883, "datayoti_ingestor", ingestor_password(fleet, "pi1"),
                      ca_pem=ca_pem, tls=True)
    try:
        assert with_ca.accepted, with_ca.reason
    finally:
        with_ca.close()
    with pytest.raises(ssl.SSLCertVerificationError):
        Session(address(fleet, "pi1"), 8883, tls=True)
    # Another Pi's CA is no better than none: every host has its own.
    other_ca = fleet.read("pi2", "/etc/mosquitto/certs/datayoti-ca.crt")
    with pytest.raises(ssl.SSLCertVerificationError):
        Session(address(fleet, "pi1"), 8883, ca_pem=other_ca, tls=True)


# ------------------------------------------------------------------ database

def psql_as(fleet, host: str, role: str, sql: str) -> tuple[int, str]:
    """Run SQL as a login role over TCP with its generated password (SCRAM)."""
    script = (
        f"PGPASSWORD=$(cat /etc/datayoti/secrets/postgresql-{role}.password) "
        f"psql -h 127.0.0.1 -U {role} -d datayoti_db -v ON_ERROR_STOP=1 -Atc \"{sql}\" 2>&1"
    )
    result = fleet.sh(host, script, check=False)
    return result.returncode, result.stdout


def psql_admin(fleet, host: str, sql: str) -> str:
    return fleet.sh(host, f"cd / && sudo -u postgres psql -d datayoti_db -Atc \"{sql}\"").stdout.strip()


@pytest.fixture
def owner_table(fleet):
    rc, out = psql_as(fleet, "pi1", "datayoti_owner", "CREATE TABLE IF NOT EXISTS acceptance_probe (v int)")
    assert rc == 0, out
    yield "acceptance_probe"
    psql_as(fleet, "pi1", "datayoti_owner", "DROP TABLE IF EXISTS acceptance_probe")


def test_grafana_reader_cannot_insert(fleet, owner_table):
    rc, out = psql_as(fleet, "pi1", "grafana_reader", f"SELECT count(*) FROM {owner_table}")
    assert rc == 0, out
    rc, out = psql_as(fleet, "pi1", "grafana_reader", f"INSERT INTO {owner_table} VALUES (1)")
    assert rc != 0 and "permission denied" in out, out


def test_mqtt_ingestor_cannot_create_or_drop(fleet, owner_table):
    rc, out = psql_as(fleet, "pi1", "mqtt_ingestor", f"INSERT INTO {owner_table} VALUES (1)")
    assert rc == 0, out
    rc, out = psql_as(fleet, "pi1", "mqtt_ingestor", "CREATE TABLE intruder (v int)")
    assert rc != 0 and "permission denied" in out, out
    rc, out = psql_as(fleet, "pi1", "mqtt_ingestor", f"DROP TABLE {owner_table}")
    assert rc != 0 and "must be owner" in out, out


def test_timescaledb_is_installed_in_datayoti_db(fleet):
    for host in PIS:
        assert psql_admin(fleet, host, "SELECT extname FROM pg_extension WHERE extname = 'timescaledb'") == \
            "timescaledb"


def test_no_login_role_has_a_non_scram_password(fleet):
    for host in PIS:
        weak = psql_admin(fleet, host, "SELECT rolname FROM pg_authid WHERE rolcanlogin AND rolpassword "
                                       "IS NOT NULL AND rolpassword NOT LIKE 'SCRAM-SHA-256$%'")
        assert weak == "", f"{host}: roles with non-SCRAM passwords: {weak}"
        methods = psql_admin(fleet, host, "SELECT DISTINCT auth_method FROM pg_hba_file_rules")
        assert set(methods.split()) <= {"scram-sha-256", "peer"}, f"{host}: pg_hba methods {methods}"
        assert psql_admin(fleet, host, "SHOW password_encryption") == "scram-sha-256"


# ------------------------------------------------------------------ secrets

def secret_files(fleet, host: str) -> dict[str, tuple[str, str]]:
    """{path: (octal mode, owner)} for every secret on a host."""
    listing = fleet.sh(host, "stat -c '%a %U %n' " + " ".join(SECRET_GLOBS)).stdout
    files = {}
    for line in listing.splitlines():
        mode, owner, path = line.split(" ", 2)
        files[path] = (mode, owner)
    return files


def test_secrets_are_private_and_differ_between_hosts(fleet):
    files = {host: secret_files(fleet, host) for host in PIS}
    shared_names = [p for p in files["pi1"] if p in files["pi2"]]
    assert len(shared_names) >= 6, f"expected the secret set on both hosts, got {shared_names}"
    for host, listing in files.items():
        for path, (mode, owner) in listing.items():
            assert int(mode, 8) & 0o077 == 0, f"{host}:{path} is mode {mode}"
            assert owner in ("root", "mosquitto"), f"{host}:{path} is owned by {owner}"
    for path in shared_names:
        digests = {hashlib.sha256(fleet.read(h, path).encode()).hexdigest() for h in PIS}
        assert len(digests) == 2, f"{path} is the same on pi1 and pi2"


# ------------------------------------------------------------------ firewall
# Last in this module: it changes the fleet, then restores it and checks that site.yml finds nothing to do,
# so that the modules after this one (test_ingestor) see the fleet as site.yml left it.

EXTRA_PORT = 8080
ROLE_PORTS = {22, 1883, 8883, 3000}  # base's SSH, mosquitto's and grafana's snippets


def live_tcp_ports(fleet, host: str) -> set[int]:
    """The ports of the set `tcp_ports` in the kernel's ruleset (not in a file)."""
    listing = json.loads(fleet.sh(host, "nft --json list set inet datayoti_filter tcp_ports").stdout)
    (found,) = [item["set"] for item in listing["nftables"] if "set" in item]
    return {e for e in found.get("elem", []) if isinstance(e, int)}


def port_answers(fleet, host: str, port: int) -> bool:
    """True when the Pi lets a SYN in (no listener: refused at once); False when the firewall drops it."""
    try:
        socket.create_connection((address(fleet, host), port), timeout=3).close()
    except ConnectionRefusedError:
        return True
    except TimeoutError:
        return False
    return True


def test_base_alone_applies_a_firewall_change_and_its_undoing(fleet):
    """`--tags base` once applied nothing: its handler's name was shared with timescaledb's, whose
    conditions skipped it. Now every role notifies base's topic `datayoti firewall changed`."""
    for host in PIS:
        # mosquitto's and grafana's ports went live through the same topic during the first converge.
        assert live_tcp_ports(fleet, host) >= ROLE_PORTS
        assert EXTRA_PORT not in live_tcp_ports(fleet, host)
        assert not port_answers(fleet, host, EXTRA_PORT)

    opened = fleet.playbook("--tags", "base", "-e", json.dumps({"base_firewall_extra_tcp_ports": [EXTRA_PORT]}))
    try:
        assert opened.returncode == 0, play_summary(opened)
        for host in PIS:
            ports = live_tcp_ports(fleet, host)
            assert EXTRA_PORT in ports, f"{host}: {sorted(ports)}\n{play_summary(opened)}"
            assert ports >= ROLE_PORTS, f"{host}: the reload lost the roles' ports: {sorted(ports)}"
            assert port_answers(fleet, host, EXTRA_PORT), f"{host}: port {EXTRA_PORT} still dropped"
    finally:
        restored = fleet.playbook("--tags", "base")
    assert restored.returncode == 0, play_summary(restored)
    for host in PIS:
        ports = live_tcp_ports(fleet, host)
        assert EXTRA_PORT not in ports and ports >= ROLE_PORTS, f"{host}: {sorted(ports)}"
        assert not port_answers(fleet, host, EXTRA_PORT)

    again = fleet.playbook()
    assert again.returncode == 0, play_summary(again)
    assert {h: c["changed"] for h, c in parse_recap(again.stdout).items()} == {h: 0 for h in PIS}, \
        play_summary(again)
