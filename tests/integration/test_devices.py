"""Issue 9: sensors' accounts (`datayoti device`) and secrets (`datayoti secrets`) on Pis provisioned by site.yml."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from conftest import parse_recap, play_summary
from datayoti_ingestor import simulate
from test_datayoti import PI, datayoti, healthy_status, sql, wait_for
from test_site import MQTT_WAIT_S, Session, address, ingestor_password

SENSOR_A = "02:D7:AA:00:00:01"  # added by these tests; no sensor of the test bed has it
SENSOR_D = "02:D7:AA:00:00:04"
KICK_WAIT_S = 5


def device(fleet, *args: str) -> dict:
    result = datayoti(fleet, "device", *args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def connect(fleet, creds: dict, password: str | None = None) -> Session:
    return Session(address(fleet, PI), creds["MQTT_PORT"], creds["MQTT_USER"],
                   creds["MQTT_PASSWORD"] if password is None else password)


def reading(mac: str, temperature: float) -> str:
    """A reading as the firmware sends it, built by the simulator; stamped to the millisecond, since two readings
    of one sensor in the same second are one row (the firmware's .000 timestamps made this test flaky)."""
    return json.dumps(simulate.data_payload(mac, simulate.firmware_timestamp(time.time(), ms=True), temperature, 41.0))


def inventory_sensor(fleet, index: int) -> dict:
    mac = fleet.status()["hosts"][PI]["sensors"][index]
    return json.loads(fleet.read(PI, f"/etc/datayoti/sensors/{mac}.json"))


@pytest.fixture
def sensor_a(fleet):
    datayoti(fleet, "device", "remove", SENSOR_A, "--purge")  # a leftover of an interrupted run
    creds = device(fleet, "add", SENSOR_A, "--site", "LAB_A", "--name", "test sensor A")
    yield creds
    datayoti(fleet, "device", "remove", SENSOR_A, "--purge")


def test_device_add_rotate_remove_touch_only_that_sensor(fleet, sensor_a):
    """Acceptance 1: A publishes and is stored, cannot publish as B, loses its old password on rotate and
    its live connection on remove; C stays connected throughout."""
    sensor_c = connect(fleet, inventory_sensor(fleet, 2))
    sensor_b = inventory_sensor(fleet, 1)
    watcher = Session(address(fleet, PI), 1883, "datayoti_ingestor", ingestor_password(fleet, PI))
    try:
        assert sensor_c.accepted, sensor_c.reason
        assert sensor_a["MQTT_USER"] == SENSOR_A.replace(":", "-") and sensor_a["MQTT_SERVER"]
        assert "BEGIN CERTIFICATE" in sensor_a["CA_CERT"]
        assert sql(fleet, f"SELECT site_id || '/' || device_name FROM devices WHERE device_id = '{SENSOR_A}'") \
            == "LAB_A/test sensor A"

        # A's credentials publish, and the reading is stored.
        watcher.subscribe("datayoti/#")
        first = connect(fleet, sensor_a)
        assert first.accepted, first.reason
        first.publish(f"datayoti/sensor/{SENSOR_A}/data", reading(SENSOR_A, 21.5))
        wait_for(lambda: sql(fleet, f"SELECT count(*) FROM sensor_data WHERE device_id = '{SENSOR_A}'") == "1",
                 15, "A's reading in sensor_data")

        # A cannot publish as B: the spoof never reaches a subscriber, the marker after it does.
        spoof = f"datayoti/sensor/{sensor_b['device_id']}/data"
        first.publish(spoof, reading(sensor_b["device_id"], -5.0))
        first.publish(f"datayoti/sensor/{SENSOR_A}/data", reading(SENSOR_A, 22.5))
        own = f"datayoti/sensor/{SENSOR_A}/data"  # retained statuses of other sensors arrive too
        wait_for(lambda: [t for t, _ in watcher.messages].count(own) >= 2, MQTT_WAIT_S, "A's marker", step=0.1)
        assert spoof not in [t for t, _ in watcher.messages]

        # rotate: the connected A is dropped, its old password refused, the new one accepted.
        rotated = device(fleet, "rotate", SENSOR_A)
        assert rotated["MQTT_PASSWORD"] != sensor_a["MQTT_PASSWORD"]
        assert first.disconnected.wait(KICK_WAIT_S), "rotate left A connected with its old password"
        old = connect(fleet, sensor_a)
        assert old.reason is not None and old.reason.is_failure, f"old password accepted: {old.reason}"
        old.close()
        second = connect(fleet, rotated)
        assert second.accepted, second.reason

        # remove: A's live connection is closed and it can no longer connect; its history stays.
        datayoti(fleet, "device", "remove", SENSOR_A)
        assert second.disconnected.wait(KICK_WAIT_S), "remove left A connected"
        again = connect(fleet, rotated)
        assert again.reason is not None and again.reason.is_failure, f"removed A connected: {again.reason}"
        again.close()
        assert sql(fleet, f"SELECT count(*) FROM sensor_data WHERE device_id = '{SENSOR_A}'") == "2"
        assert sql(fleet, f"SELECT is_active FROM devices WHERE device_id = '{SENSOR_A}'") == "f"

        assert not sensor_c.disconnected.is_set(), "sensor C was disconnected"
        first.close()
        second.close()
    finally:
        sensor_c.close()
        watcher.close()


def test_cli_sensors_survive_site_yml_and_inventory_removals_revoke(fleet):
    """Acceptance 2, on pi1 only: a CLI sensor survives site.yml, an inventory sensor the inventory drops loses
    its account, and a second run reports changed=0."""
    macs = fleet.status()["hosts"][PI]["sensors"]
    dropped = macs[-1]
    datayoti(fleet, "device", "remove", SENSOR_D)
    added = device(fleet, "add", SENSOR_D)
    assert added["managed_by"] == "cli"
    dropped_creds = inventory_sensor(fleet, len(macs) - 1)
    try:
        shorter = json.dumps({"datayoti_sensors": macs[:-1]})
        run = fleet.playbook("--limit", PI, "-e", shorter)
        assert run.returncode == 0, play_summary(run)
        listed = {d["device_id"]: d for d in json.loads(datayoti(fleet, "device", "list", "--json").stdout)}
        assert SENSOR_D in listed and listed[SENSOR_D]["managed_by"] == "cli"
        assert dropped not in listed
        gone = connect(fleet, dropped_creds)
        assert gone.reason is not None and gone.reason.is_failure, f"dropped sensor connected: {gone.reason}"
        gone.close()
        cli = connect(fleet, added)
        assert cli.accepted, cli.reason
        cli.close()
    finally:
        restore = fleet.playbook("--limit", PI)
    assert restore.returncode == 0, play_summary(restore)
    assert dropped in {d["device_id"] for d in json.loads(datayoti(fleet, "device", "list", "--json").stdout)}
    again = fleet.playbook("--limit", PI)
    assert again.returncode == 0, play_summary(again)
    assert parse_recap(again.stdout)[PI]["changed"] == 0, play_summary(again)
    assert datayoti(fleet, "device", "show", SENSOR_D).returncode == 0
    datayoti(fleet, "device", "remove", SENSOR_D, "--purge")


def secrets_ensure(fleet) -> dict:
    result = datayoti(fleet, "secrets", "ensure", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def secret_digests(fleet) -> dict[str, str]:
    listing = fleet.sh(PI, "cd /etc/datayoti/secrets && sha256sum * /var/lib/mosquitto/dynamic-security.json "
                           "/etc/mosquitto/certs/*").stdout
    return {line.split()[1]: line.split()[0] for line in listing.splitlines()}


def assert_everything_works(fleet, mac: str, value: float) -> None:
    """Every service healthy, and a new reading of an inventory sensor stored."""
    code, doc = healthy_status(fleet, 90)
    assert code == 0, doc["problems"]
    creds = json.loads(fleet.read(PI, f"/etc/datayoti/sensors/{mac}.json"))
    sensor = connect(fleet, creds)
    try:
        assert sensor.accepted, sensor.reason
        sensor.publish(f"datayoti/sensor/{mac}/data", reading(mac, value))
    finally:
        sensor.close()
    wait_for(lambda: sql(fleet, f"SELECT count(*) FROM sensor_data WHERE device_id = '{mac}' "
                                f"AND temperature = {value}") == "1", 30, f"the reading {value} of {mac}")


def test_secrets_ensure_twice_changes_nothing(fleet):
    before = secret_digests(fleet)
    first, second = secrets_ensure(fleet), secrets_ensure(fleet)
    assert not first["changed"] and not second["changed"], (first, second)
    assert secret_digests(fleet) == before
    dry = datayoti(fleet, "secrets", "ensure", "--dry-run", "--json")
    assert dry.returncode == 0 and json.loads(dry.stdout)["changed"] is False


@pytest.mark.parametrize("secret", ["postgresql-mqtt_ingestor", "mqtt-datayoti_ingestor"])
def test_a_rotation_killed_halfway_is_finished_by_the_next_run(fleet, secret):
    """Acceptance 3: SIGKILL at several points of a rotation; `ensure` afterwards leaves every service working
    with the file's password, in the database or broker and in the ingestor alike."""
    mac = fleet.status()["hosts"][PI]["sensors"][3]
    for step, delay in enumerate((0.15, 0.35, 0.6, 1.0)):
        old = fleet.read(PI, f"/etc/datayoti/secrets/{secret}.password")
        fleet.sh(PI, f"timeout -s KILL {delay} /usr/bin/datayoti secrets rotate {secret} >/dev/null 2>&1; true")
        report = secrets_ensure(fleet)
        assert secrets_ensure(fleet)["changed"] is False, report
        assert fleet.sh(PI, "ls /etc/datayoti/secrets").stdout.count(".new") == 0
        new = fleet.read(PI, f"/etc/datayoti/secrets/{secret}.password")
        print(f"{secret}: killed after {delay} s: {'rotated' if new != old else 'not rotated'}; ensure: {report}")
        assert_everything_works(fleet, mac, 30.0 + step + (0.5 if secret.startswith("mqtt") else 0.0))
    whole = datayoti(fleet, "secrets", "rotate", secret, "--json")
    assert whole.returncode == 0, whole.stderr
    assert_everything_works(fleet, mac, 39.0 + (0.5 if secret.startswith("mqtt") else 0.0))


def test_ensure_restarts_a_service_still_holding_the_old_password(fleet):
    """The state a rotation killed between its rename and its restart leaves, made on purpose: the broker and the
    file hold the new password, the running ingestor the old one. `ensure` must restart it."""
    mac = fleet.status()["hosts"][PI]["sensors"][3]
    path = "/etc/datayoti/secrets/mqtt-datayoti_ingestor.password"
    held = "/run/credentials/datayoti-ingestor.service/mqtt-password"
    fleet.sh(PI, f"umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > {path}.new")
    applied = datayoti(fleet, "secrets", "ensure", "--no-restart", "--json")
    assert applied.returncode == 0 and json.loads(applied.stdout)["restarted"] == [], applied.stdout + applied.stderr
    assert fleet.read(PI, held) != fleet.read(PI, path)
    report = secrets_ensure(fleet)
    assert report["restarted"] == ["datayoti-ingestor.service"] and not report["changed"], report
    assert fleet.read(PI, held) == fleet.read(PI, path)
    assert secrets_ensure(fleet)["restarted"] == []
    assert_everything_works(fleet, mac, 38.5)


def digest_of_state(fleet) -> str:
    """Everything a bad `device` call could change: registry files, broker accounts, devices rows."""
    files = fleet.sh(PI, "cd /etc/datayoti/sensors && sha256sum * && sha256sum /var/lib/mosquitto/dynamic-security.json"
                     ).stdout
    rows = sql(fleet, "SELECT string_agg(device_id || coalesce(site_id, '') || coalesce(device_name, '') "
                      "|| device_type || is_active, ',' ORDER BY device_id) FROM devices")
    return hashlib.sha256((files + rows).encode()).hexdigest()


@pytest.mark.parametrize(("args", "code", "message"), [
    (("device", "add", "1C:69:20:E9:18"), 1, "is not a MAC address"),
    (("device", "add", "1C:69:20:E9:18:ZZ"), 1, "is not a MAC address"),
    (("device", "add", "1C:69-20:E9:18:24"), 1, "is not a MAC address"),
    (("device", "add", "02:D7:AA:00:00:09", "--site", "S" * 65), 1, "site name must be 1 to 64"),
    (("device", "add", "02:D7:AA:00:00:09", "--site", "bad\nsite"), 1, "site name must be 1 to 64"),
    (("device", "show", "02:D7:AA:00:00:0A"), 1, "no sensor 02:D7:AA:00:00:0A"),
    (("device", "rotate", "02:D7:AA:00:00:0A"), 1, "no sensor 02:D7:AA:00:00:0A"),
    (("device", "remove", "02:D7:AA:00:00:0A"), 1, "no sensor 02:D7:AA:00:00:0A"),
    (("device", "add", "DUPLICATE"), 1, "already exists"),
    (("device", "sync", "--managed-by", "inventory", "02:D7:00:01:00:01", "nonsense"), 1, "is not a MAC"),
    (("device", "sync", "--managed-by", "someone", "02:D7:00:01:00:01"), 2, "invalid choice"),
    (("device", "frobnicate"), 2, "invalid choice"),
    (("device", "add", "02:D7:AA:00:00:09", "--model", "BME280"), 2, "invalid choice"),
    (("device", "set-model", "02:D7:AA:00:00:0A", "DHT11"), 1, "no sensor 02:D7:AA:00:00:0A"),
    (("device", "set-model", "02:D7:AA:00:00:0A", "AM2302"), 2, "invalid choice"),
    (("secrets", "rotate", "nothing-like-it"), 2, "invalid choice"),
    # It encrypts what Grafana stores: never replaced.
    (("secrets", "rotate", "grafana-secret_key"), 2, "invalid choice"),
])
def test_bad_input_gets_one_line_and_changes_nothing(fleet, args, code, message):
    """Acceptance 6 (devices and secrets; backups: test_backup.py)."""
    if "DUPLICATE" in args:
        args = ("device", "add", fleet.status()["hosts"][PI]["sensors"][0])
    before = digest_of_state(fleet)
    result = datayoti(fleet, *args)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""
    time.sleep(0.2)
    assert digest_of_state(fleet) == before, f"{args} changed something"


def test_the_sensor_model_decides_the_device_type_the_alerts_read(fleet):
    mac = "02:D7:AA:00:00:0B"
    try:
        added = datayoti(fleet, "device", "add", mac, "--model", "DHT11", "--json")
        assert added.returncode == 0, added.stdout + added.stderr
        assert json.loads(added.stdout)["model"] == "DHT11"
        assert sql(fleet, f"SELECT device_type FROM devices WHERE device_id = '{mac}'") == "ESP32-DHT11"
        assert "model      DHT11" in datayoti(fleet, "device", "show", mac).stdout
        # A sensor added as a DHT22 (the inventory's, for one) is told its model later; its password stays.
        before = device(fleet, "show", mac)
        changed = datayoti(fleet, "device", "set-model", mac, "DHT22", "--json")
        assert changed.returncode == 0, changed.stdout + changed.stderr
        after = json.loads(changed.stdout)
        assert after["model"] == "DHT22" and after["MQTT_PASSWORD"] == before["MQTT_PASSWORD"]
        assert sql(fleet, f"SELECT device_type FROM devices WHERE device_id = '{mac}'") == "ESP32-DHT22"
    finally:
        datayoti(fleet, "device", "remove", mac, "--purge")


def test_simulate_create_adds_the_missing_accounts_once(fleet):
    """`simulate --create` makes its sensors with `device add`; their readings arrive; a second run creates none."""
    first = datayoti(fleet, "simulate", "--create", "--devices", str(len(fleet.status()["hosts"][PI]["sensors"]) + 2),
                     "--readings", "1", "--rate", "1", "--json", timeout=180)
    assert first.returncode == 0, first.stdout + first.stderr
    created = json.loads(first.stdout)["created"]
    try:
        assert len(created) == 2 and all(m.startswith("02:DA:7A:53:") for m in created), created
        for mac in created:
            wait_for(lambda mac=mac: sql(fleet, f"SELECT count(*) FROM sensor_data WHERE device_id = '{mac}'") != "0",
                     30, f"a reading of the created sensor {mac}")
            assert device(fleet, "show", mac)["managed_by"] == "cli"
        again = datayoti(fleet, "simulate", "--create", "--devices",
                         str(len(fleet.status()["hosts"][PI]["sensors"]) + 2), "--readings", "1", "--json", timeout=180)
        assert again.returncode == 0 and json.loads(again.stdout)["created"] == [], again.stdout + again.stderr
    finally:
        for mac in created:
            datayoti(fleet, "device", "remove", mac, "--purge")
