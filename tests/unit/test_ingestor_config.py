"""The ingestor's configuration: TOML, environment, credentials, and clear errors."""

from __future__ import annotations

import json
import re

import pytest
from datayoti_ingestor.config import Config, ConfigError, database_connect_kwargs, load
from hypothesis import given, settings
from hypothesis import strategies as st


def write(tmp_path, text: str):
    path = tmp_path / "ingestor.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_seeds(tmp_path):
    cfg = load(write(tmp_path, ""), env={})
    assert isinstance(cfg, Config)
    assert (cfg.database.name, cfg.database.user, cfg.mqtt.topic) == ("datayoti_db", "mqtt_ingestor",
                                                                        "datayoti/sensor/#")
    assert (cfg.retention.sensor_data_days, cfg.retention.heartbeat_days) == (365, 183)
    assert cfg.rules.device_cache_ttl_s == 300
    assert (cfg.health.online_minutes, cfg.health.warning_minutes) == (5, 30)


def test_toml_then_environment_override(tmp_path):
    path = write(tmp_path, '[mqtt]\nhost = "broker"\nport = 1884\n[batch]\nmax_rows = 50\n')
    cfg = load(path, env={"DATAYOTI_MQTT_PORT": "1885"})
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.batch.max_rows) == ("broker", 1885, 50)


def test_secrets_come_from_systemd_credentials(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("m-secret\n")
    (creds / "db-password").write_text("d-secret")
    cfg = load(write(tmp_path, ""), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert (cfg.mqtt.password, cfg.database.password) == ("m-secret", "d-secret")
    assert "m-secret" not in repr(cfg) and "d-secret" not in repr(cfg)


def test_config_is_frozen(tmp_path):
    cfg = load(write(tmp_path, ""), env={})
    with pytest.raises(AttributeError):
        cfg.mqtt.port = 1


@pytest.mark.parametrize("text,message", [
    ("[mqtt\n", "ingestor.toml"),
    ("[mqtt]\nprot = 1\n", "unknown key(s) in [mqtt]: prot"),
    ("[mqt]\n", "unknown section(s): mqt"),
    ('[mqtt]\nport = "x"\n', "mqtt.port: expected int"),
    ("[batch]\nmax_rows = 0\n", "batch.max_rows must be positive"),
    ("[mqtt]\nport = true\n", "expected int"),
    ("[health]\nonline_minutes = 40\n", "warning_minutes must be greater"),
])
def test_bad_config_files_get_a_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(write(tmp_path, text), env={})


def test_bad_environment_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="DATAYOTI_BATCH_MAX_ROWS"):
        load(write(tmp_path, ""), env={"DATAYOTI_BATCH_MAX_ROWS": "many"})


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "absent.toml", env={})


# --- secrets come from systemd credentials only (issue 8)
@pytest.mark.parametrize("text,name", [
    ('[database]\npassword = "hunter2"\n', "database.password"),
    ('[database]\nowner_password = "hunter2"\n', "database.owner_password"),
    ('[mqtt]\npassword = "hunter2"\n', "mqtt.password"),
])
def test_a_secret_in_the_toml_file_is_refused(tmp_path, text, name):
    with pytest.raises(ConfigError, match=re.escape(name) + ".*systemd credential"):
        load(write(tmp_path, text), env={})


@pytest.mark.parametrize("variable", ["DATAYOTI_MQTT_PASSWORD", "DATAYOTI_DATABASE_PASSWORD",
                                      "DATAYOTI_DATABASE_OWNER_PASSWORD"])
def test_a_secret_in_the_environment_is_refused(tmp_path, variable):
    with pytest.raises(ConfigError, match=variable + ".*LoadCredential"):
        load(write(tmp_path, ""), env={variable: "hunter2"})


def test_connection_keywords_carry_any_password(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    password = "a b'c\\d\"e=f"
    (creds / "db-password").write_text(password)
    (creds / "db-owner-password").write_text("o " + password)
    cfg = load(write(tmp_path, ""), env={"CREDENTIALS_DIRECTORY": str(creds)})
    ingestor = database_connect_kwargs(cfg.database)
    owner = database_connect_kwargs(cfg.database, owner=True)
    assert (ingestor["user"], ingestor["password"]) == ("mqtt_ingestor", password)
    assert (owner["user"], owner["password"]) == ("datayoti_owner", "o " + password)
    assert "statement_timeout" in ingestor["options"] and "options" not in owner


@pytest.mark.parametrize("text,message", [
    ("[mqtt]\nport = 70000\n", "mqtt.port must be at most 65535"),
    ("[batch]\nretry_max_s = nan\n", "not a finite number"),
    ("[rules]\nmax_json_depth = 0\n", "rules.max_json_depth must be positive"),
    ("[batch]\nmax_unflushed = -1\n", "batch.max_unflushed must be between 0 and mqtt.receive_maximum - 1"),
    ("[mqtt]\nreceive_maximum = 100\n[batch]\nmax_unflushed = 100\n", "(99), not 100"),
])
def test_out_of_range_settings_are_refused(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(write(tmp_path, text), env={})


toml_scalars = st.one_of(st.integers(), st.floats(), st.booleans(), st.text(max_size=10))
toml_keys = st.sampled_from(["host", "port", "max_rows", "max_unflushed", "retry_max_s", "password", "temperature_min",
                             "online_minutes", "max_json_depth", "x"])


def toml_line(key: str, value) -> str:
    if isinstance(value, bool):
        return f"{key} = {str(value).lower()}"
    if isinstance(value, float):
        return f"{key} = {value!r}"
    if isinstance(value, str):
        return f"{key} = {json.dumps(value)}"
    return f"{key} = {value}"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["mqtt", "database", "batch", "rules", "health", "retention", "nope"]),
                          toml_keys, toml_scalars), max_size=6),
       st.dictionaries(st.sampled_from(["DATAYOTI_MQTT_PORT", "DATAYOTI_BATCH_RETRY_MAX_S",
                                        "DATAYOTI_RULES_MAX_TEXT_CHARS", "DATAYOTI_MQTT_PASSWORD"]),
                       st.text(max_size=8), max_size=2),
       st.binary(max_size=40))
def test_any_config_file_or_environment_gives_a_config_or_a_clear_error(tmp_path_factory, entries, env, garbage):
    sections: dict[str, list[str]] = {}
    for section, key, value in entries:
        sections.setdefault(section, []).append(toml_line(key, value))
    text = "".join(f"[{name}]\n" + "\n".join(dict.fromkeys(lines)) + "\n" for name, lines in sections.items())
    for candidate in (text.encode(), text.encode() + garbage):
        path = tmp_path_factory.mktemp("cfg") / "ingestor.toml"
        path.write_bytes(candidate)
        try:
            load(path, env=env)
        except ConfigError as exc:
            assert str(exc)
