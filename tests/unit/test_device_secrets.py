"""Pure logic of `datayoti device` and `datayoti secrets`: MACs, verifiers, the broker's accounts, settings."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re

import pytest
from datayoti_ingestor import appliance, broker, devices, dynsec, hostsecrets
from datayoti_ingestor.config import ConfigError
from hypothesis import given, settings
from hypothesis import strategies as st

MAC = "1C:69:20:E9:18:24"
# Mosquitto's own test file (test/broker/dynamic-security-init.json): user "admin", password "admin".
MOSQUITTO_ADMIN = {"username": "admin", "iterations": 101, "salt": "Ezuo4G1TqYtTQDL/",
                   "password": "Rko31yHY12ryMoyZTBNIUsCPb5SDa4WmUP3Xe2+V6P+QOSW3Gj6IDmpl6zQsAjutb476z"
                               "EYdBeTw9tU7WZ1new=="}


# ------------------------------------------------------------------ MACs and labels

@pytest.mark.parametrize(("text", "expected"), [
    ("1C:69:20:E9:18:24", MAC), ("1c-69-20-e9-18-24", MAC), ("1c:69:20:E9:18:24", MAC)])
def test_canonical_mac(text, expected):
    assert devices.canonical_mac(text) == expected
    assert devices.username_of(expected) == "1C-69-20-E9-18-24"


@pytest.mark.parametrize("text", ["", "1C:69:20:E9:18", "1C:69-20:E9:18:24", "1C:69:20:E9:18:2G", "1C6920E91824",
                                  " 1C:69:20:E9:18:24", "1C:69:20:E9:18:24\n", "x" * 1000])
def test_malformed_macs_are_refused(text):
    with pytest.raises(devices.DeviceError, match="is not a MAC address"):
        devices.canonical_mac(text)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=30), st.from_regex(devices.MAC_PATTERN, fullmatch=True)))
def test_any_text_is_a_canonical_mac_or_one_clear_error(text):
    try:
        mac = devices.canonical_mac(text)
    except devices.DeviceError as exc:
        assert len(str(exc)) < 250
        return
    assert devices.canonical_mac(mac) == mac and len(mac) == 17 and mac == mac.upper()


@pytest.mark.parametrize(("value", "ok"), [("LAB", True), ("S" * 64, True), ("S" * 65, False), ("", False),
                                           ("a\nb", False), ("tab\there", False), (None, True)])
def test_site_names(value, ok):
    if ok:
        assert devices.check_label("site name", value, 64) == value
    else:
        with pytest.raises(devices.DeviceError, match="1 to 64 printable"):
            devices.check_label("site name", value, 64)


def test_sync_plan_removes_only_what_the_inventory_added():
    registry = {"A": {"managed_by": "inventory"}, "B": {"managed_by": "cli"}, "C": {}, "D": {"managed_by": "inventory"}}
    assert devices.sync_plan(["A", "E"], registry) == (["E"], ["D"])
    assert devices.sync_plan([], registry) == ([], ["A", "D"])
    assert devices.sync_plan(["B", "C"], registry) == ([], ["A", "D"])  # CLI sensors listed: kept, not adopted


@given(wanted=st.sets(st.sampled_from("ABCDEFG")), registry=st.dictionaries(
    st.sampled_from("ABCDEFG"), st.fixed_dictionaries({"managed_by": st.sampled_from(["cli", "inventory"])})))
def test_sync_plan_properties(wanted, registry):
    to_add, to_remove = devices.sync_plan(sorted(wanted), registry)
    assert set(to_add) == wanted - set(registry)
    assert all(registry[m]["managed_by"] == "inventory" and m not in wanted for m in to_remove)
    assert not set(to_remove) & wanted


def test_credentials_and_config_h_use_the_firmwares_names():
    creds = devices.credentials(MAC, "pw", server="192.0.2.10", settings=broker.BrokerSettings(), ca_cert="CA\nPEM\n",
                                site="LAB", name=None, managed_by="cli")
    assert creds["MQTT_USER"] == "1C-69-20-E9-18-24" and creds["topic_prefix"] == f"datayoti/sensor/{MAC}/"
    text = devices.config_h(creds)
    for line in ('#define MQTT_SERVER "192.0.2.10"', "#define MQTT_PORT 1883", '#define MQTT_USER "1C-69-20-E9-18-24"',
                 '#define MQTT_PASSWORD "pw"', "// CA", "// PEM"):
        assert line in text
    assert "password   pw" in devices.render_text(creds)


# ------------------------------------------------------------------ PostgreSQL's SCRAM verifiers

def test_scram_verifier_round_trip():
    verifier = hostsecrets.scram_verifier("s3cret", salt=b"0123456789abcdef")
    assert verifier.startswith("SCRAM-SHA-256$4096:" + base64.b64encode(b"0123456789abcdef").decode() + "$")
    assert hostsecrets.scram_matches(verifier, "s3cret")
    assert not hostsecrets.scram_matches(verifier, "s3cret ")
    assert not hostsecrets.scram_matches("md5abcdef", "s3cret")
    assert not hostsecrets.scram_matches(None, "s3cret")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_any_stored_value_is_matched_or_not_without_an_error(stored):
    assert hostsecrets.scram_matches(stored, "pw") in (True, False)


# ------------------------------------------------------------------ the broker's accounts

def test_mosquittos_own_hash_is_recognised():
    assert dynsec.holds_password(MOSQUITTO_ADMIN, "admin")
    assert not dynsec.holds_password(MOSQUITTO_ADMIN, "Admin")
    assert not dynsec.holds_password({"username": "x"}, "admin")
    assert not dynsec.holds_password({**MOSQUITTO_ADMIN, "salt": "not base64!"}, "admin")


def accounts_for(sensors: list[tuple[str, str]]) -> list:
    base = [("datayoti_admin", "adminpw", dynsec.admin_role()), ("datayoti_ingestor", "ingpw", dynsec.ingestor_role())]
    return base + [(devices.username_of(mac), pw, dynsec.sensor_role(devices.username_of(mac), mac))
                   for mac, pw in sensors]


def test_account_commands_then_offline_application_converge():
    accounts = accounts_for([(MAC, "a")])
    commands = hostsecrets.account_commands(None, accounts)
    assert [c["command"] for c in commands] == ["createRole", "createClient"] * 3
    document = dynsec.apply_offline(dynsec.empty_document(), commands)
    assert hostsecrets.account_commands(document, accounts) == []
    sensor = dynsec.find(document, "clients", "1C-69-20-E9-18-24")
    assert dynsec.holds_password(sensor, "a") and sensor["roles"] == [{"rolename": "sensor-1C-69-20-E9-18-24"}]
    role = dynsec.find(document, "roles", "sensor-1C-69-20-E9-18-24")
    assert role["acls"] == [{"acltype": "publishClientSend", "topic": f"datayoti/sensor/{MAC}/#", "priority": 0,
                             "allow": True}]
    assert document["defaultACLAccess"]["publishClientSend"] is False
    assert document["defaultACLAccess"]["subscribe"] is False


def test_a_changed_password_and_a_dropped_sensor_are_repaired():
    document = dynsec.apply_offline(dynsec.empty_document(), hostsecrets.account_commands(
        None, accounts_for([(MAC, "a"), ("02:00:00:00:00:01", "b")])))
    wanted = accounts_for([(MAC, "new")])
    assert hostsecrets.account_commands(document, wanted) == [dynsec.set_password("1C-69-20-E9-18-24", "new")]
    commands = hostsecrets.account_commands(document, wanted, prune=True)
    assert commands == [dynsec.set_password("1C-69-20-E9-18-24", "new"), dynsec.delete_client("02-00-00-00-00-01"),
                        dynsec.delete_role("sensor-02-00-00-00-00-01")]
    assert hostsecrets.account_commands(dynsec.apply_offline(document, commands), wanted, prune=True) == []


@settings(max_examples=60, deadline=None)
@given(first=st.dictionaries(st.from_regex(devices.MAC_PATTERN, fullmatch=True).map(devices.canonical_mac),
                             st.text("abcdef", min_size=1, max_size=6), max_size=4),
       second=st.dictionaries(st.from_regex(devices.MAC_PATTERN, fullmatch=True).map(devices.canonical_mac),
                              st.text("abcdef", min_size=1, max_size=6), max_size=4))
def test_any_registry_change_converges_in_one_step(first, second):
    document = dynsec.apply_offline(dynsec.empty_document(),
                                    hostsecrets.account_commands(None, accounts_for(list(first.items()))))
    wanted = accounts_for(list(second.items()))
    repaired = dynsec.apply_offline(document, hostsecrets.account_commands(document, wanted, prune=True))
    assert hostsecrets.account_commands(repaired, wanted, prune=True) == []
    assert {c["username"] for c in repaired["clients"]} == {u for u, _, _ in wanted}


def test_offline_commands_fail_like_the_plugin():
    document = dynsec.apply_offline(dynsec.empty_document(), [dynsec.create_role(dynsec.ingestor_role())])
    with pytest.raises(dynsec.DynsecError, match="Role already exists"):
        dynsec.apply_offline(document, [dynsec.create_role(dynsec.ingestor_role())])
    with pytest.raises(dynsec.DynsecError, match="Client not found"):
        dynsec.apply_offline(document, [dynsec.set_password("nobody", "x")])
    with pytest.raises(dynsec.DynsecError, match="Role nope not found"):
        dynsec.apply_offline(document, [dynsec.create_client("u", "p", "nope")])


def test_response_errors_match_only_our_answer():
    ours = {"responses": [{"command": "createClient", "correlationData": "c1"},
                          {"command": "createRole", "error": "Role already exists", "correlationData": "c1"}]}
    assert dynsec.response_errors(ours, "c1") == ["createRole: Role already exists"]
    assert dynsec.response_errors(ours, "other") is None
    assert dynsec.response_errors({"responses": []}, "c1") is None


# ------------------------------------------------------------------ broker.toml

def test_broker_settings_parse_and_name_the_bad_key():
    parsed = broker.parse('[broker]\npublic_host = "pi.lan"\nport = 1884\ntls_extra_sans = ["edge.example"]\n', "f")
    assert parsed.public_host == "pi.lan" and parsed.port == 1884 and parsed.tls_extra_sans == ("edge.example",)
    for text, message in [('[broker]\nport = 0\n', "broker.port"), ('[broker]\nport = "1883"\n', "broker.port"),
                          ('[broker]\nbogus = 1\n', "unknown key"), ("[other]\n", "only a [broker] table"),
                          ('[broker]\npublic_host = "a b"\n', "broker.public_host"), ("port = ", "not valid TOML"),
                          ('[broker]\ntls_extra_sans = "x"\n', "broker.tls_extra_sans")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            broker.parse(text, "f")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_broker_file_parses_or_gets_one_config_error(text):
    try:
        broker.parse(text, "broker.toml")
    except ConfigError as exc:
        assert str(exc).startswith("broker.toml")


def test_server_names():
    settings_ = broker.BrokerSettings(public_host="192.0.2.10", tls_extra_sans=("edge.example", "IP:198.51.100.1"))
    names = broker.server_names(settings_, "pi1", "pi1.lan", ["10.0.0.2"])
    assert names == sorted({"DNS:localhost", "IP:127.0.0.1", "DNS:pi1", "DNS:pi1.lan", "IP:10.0.0.2",
                            "DNS:edge.example", "IP:198.51.100.1", "IP:192.0.2.10"})


# ------------------------------------------------------------------ the CLI

def call(argv, euid=0):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = appliance.main(argv, euid=euid, run=lambda args: 0)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(("argv", "euid", "code", "message"), [
    (["device"], 0, 2, "required: ACTION"),
    (["device", "add"], 0, 2, "required: MAC"),
    (["device", "add", MAC, "--json", "--config-h"], 0, 2, "not allowed with argument"),
    (["device", "list"], 1000, 2, "must run as root"),
    (["device", "sync", MAC], 0, 2, "--managed-by"),
    (["secrets", "rotate", "bogus"], 0, 2, "invalid choice"),
    (["secrets", "ensure"], 1000, 2, "must run as root"),
    (["device", "add", MAC, "--site", "X"], 0, 0, ""),
])
def test_device_and_secrets_arguments(argv, euid, code, message):
    got, _, err = call(argv, euid)
    assert got == code and message in err, err


DEVICE_TOKENS = ["device", "secrets", "add", "list", "show", "rotate", "remove", "sync", "ensure", "--json",
                 "--config-h", "--purge", "--site", "--name", "--managed-by", "inventory", "cli", "--dry-run",
                 "--no-restart", MAC, "1c-69-20-e9-18-24", "mqtt-ca", "postgresql-mqtt_ingestor", "", "\x00", "é"]


@settings(max_examples=400, deadline=None)
@given(argv=st.lists(st.one_of(st.sampled_from(DEVICE_TOKENS), st.text(max_size=10)), max_size=7),
       euid=st.sampled_from([0, 1000]))
def test_any_device_or_secrets_argv_exits_0_or_2_without_a_traceback(argv, euid):
    code, out, err = call(argv, euid)
    assert code in (0, 2) and "Traceback" not in out + err
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("datayoti"), err


def test_report_json_and_text():
    report = hostsecrets.Report(created=["mqtt-ca"], applied=["PostgreSQL role mqtt_ingestor"])
    assert json.loads(json.dumps(report.as_dict()))["changed"] is True
    assert hostsecrets.render(hostsecrets.Report()) == "every secret is in place; nothing changed"
    assert hostsecrets.render(hostsecrets.Report(created=["x"], dry_run=True)) == "would create: x"


def test_load_credentials_of_a_unit():
    shown = ('{"type":"a(ss)","data":[["mqtt-password","/etc/datayoti/secrets/mqtt-datayoti_ingestor.password"],'
             '["db-password","/etc/datayoti/secrets/postgresql-mqtt_ingestor.password"]]}\n')
    assert hostsecrets.parse_load_credentials(shown) == [
        ("mqtt-password", "/etc/datayoti/secrets/mqtt-datayoti_ingestor.password"),
        ("db-password", "/etc/datayoti/secrets/postgresql-mqtt_ingestor.password")]
    assert hostsecrets.parse_load_credentials('{"type":"a(ss)","data":[]}') == []


@pytest.mark.parametrize("shown", ["LoadCredential=[unprintable]\n", "", '{"type":"a(ss)"}', '{"data":[["x"]]}',
                                   '{"data":{"ab":1}}', '{"data":[["a",["b"]]]}', '[1]'])
def test_unreadable_load_credentials_are_an_error_not_an_empty_list(shown):
    """An answer that cannot be read must not pass as 'no credentials', or a stale service is never restarted."""
    with pytest.raises(hostsecrets.SecretsError, match="LoadCredential"):
        hostsecrets.parse_load_credentials(shown)


@pytest.mark.parametrize(("unit", "path"), [
    ("datayoti-ingestor.service", "/org/freedesktop/systemd1/unit/datayoti_2dingestor_2eservice"),
    ("grafana-server.service", "/org/freedesktop/systemd1/unit/grafana_2dserver_2eservice"),
    ("a@b_c.service", "/org/freedesktop/systemd1/unit/a_40b_5fc_2eservice"),
    ("", "/org/freedesktop/systemd1/unit/_"),
])
def test_unit_object_path_escapes_like_systemd(unit, path):
    assert hostsecrets.unit_object_path(unit) == path


@given(st.one_of(st.text(), st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                                         lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner))
                 .map(lambda doc: json.dumps({"type": "a(ss)", "data": doc}))))
def test_any_busctl_answer_is_pairs_or_one_clear_error(shown):
    try:
        pairs = hostsecrets.parse_load_credentials(shown)
    except hostsecrets.SecretsError as exc:
        assert "LoadCredential" in str(exc)
    else:
        assert all(isinstance(i, str) and isinstance(s, str) for i, s in pairs)
