"""The ingestor's configuration: TOML, environment, credentials, and clear errors."""

from __future__ import annotations

import re

import pytest
from datayoti_ingestor.config import Config, ConfigError, load


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
