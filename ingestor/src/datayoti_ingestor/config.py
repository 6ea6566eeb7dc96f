"""The ingestor's configuration: one frozen object, built once at start-up.

Sources, later ones winning:
1. the defaults below;
2. a TOML file (default /etc/datayoti/ingestor.toml);
3. environment variables DATAYOTI_<SECTION>_<KEY>, e.g. DATAYOTI_MQTT_HOST;
4. secrets, read from files in $CREDENTIALS_DIRECTORY (systemd LoadCredential=):
   `mqtt-password`, `db-password` and, for migrations and retention,
   `db-owner-password`.

Any unknown key, wrong type or out-of-range value raises ConfigError naming it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/datayoti/ingestor.toml")
ENV_PREFIX = "DATAYOTI_"


class ConfigError(Exception):
    """A configuration problem the operator can fix; the message says where."""


@dataclass(frozen=True)
class MqttConfig:
    host: str = "localhost"
    port: int = 1883
    username: str = "datayoti_ingestor"
    password: str = field(default="", repr=False)
    # Fixed, so the broker keeps this session's queue while the ingestor is away.
    client_id: str = "datayoti-ingestor"
    topic: str = "datayoti/sensor/#"
    keepalive_s: int = 60
    # Session kept by the broker this long after a disconnect (MQTT 5 session expiry).
    session_expiry_s: int = 7 * 24 * 3600
    # Unacknowledged messages the broker may send at once: the bound of the in-memory backlog.
    receive_maximum: int = 2000
    ca_file: str = ""


@dataclass(frozen=True)
class DatabaseConfig:
    host: str = "127.0.0.1"
    port: int = 5432
    name: str = "datayoti_db"
    user: str = "mqtt_ingestor"
    password: str = field(default="", repr=False)
    owner_user: str = "datayoti_owner"
    owner_password: str = field(default="", repr=False)
    connect_timeout_s: int = 5


@dataclass(frozen=True)
class BatchConfig:
    max_rows: int = 1000
    max_delay_ms: int = 20
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0


@dataclass(frozen=True)
class RulesConfig:
    max_payload_bytes: int = 4096
    temperature_min: float = -40.0
    temperature_max: float = 80.0
    humidity_min: float = 0.0
    humidity_max: float = 100.0
    max_clock_ahead_s: int = 3600
    rejected_payload_bytes: int = 2048
    device_cache_ttl_s: int = 300


@dataclass(frozen=True)
class HealthConfig:
    online_minutes: int = 5
    warning_minutes: int = 30


@dataclass(frozen=True)
class RetentionConfig:
    sensor_data_days: int = 365
    heartbeat_days: int = 183
    status_days: int = 183
    rejected_days: int = 30


@dataclass(frozen=True)
class Config:
    mqtt: MqttConfig = MqttConfig()
    database: DatabaseConfig = DatabaseConfig()
    batch: BatchConfig = BatchConfig()
    rules: RulesConfig = RulesConfig()
    health: HealthConfig = HealthConfig()
    retention: RetentionConfig = RetentionConfig()


POSITIVE = {
    "mqtt.port", "mqtt.keepalive_s", "mqtt.session_expiry_s", "mqtt.receive_maximum", "database.port",
    "database.connect_timeout_s", "batch.max_rows", "batch.max_delay_ms", "batch.retry_initial_s",
    "batch.retry_max_s", "rules.max_payload_bytes", "rules.rejected_payload_bytes", "health.online_minutes",
    "health.warning_minutes", "retention.sensor_data_days", "retention.heartbeat_days", "retention.status_days",
    "retention.rejected_days",
}


def coerce(where: str, expected: type, value: Any, from_env: bool = False) -> Any:
    """Check a TOML value's type; turn an environment string into the expected type."""
    if from_env and expected is not str:
        try:
            value = expected(value)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a valid {expected.__name__}") from None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def build_section(name: str, cls: type, raw: dict, env: dict[str, str], source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) in [{name}]: {', '.join(unknown)}")
    values = {}
    for key, f in fields.items():
        expected = {"str": str, "int": int, "float": float}[f.type]
        env_name = f"{ENV_PREFIX}{name}_{key}".upper()
        if env_name in env:
            values[key] = coerce(env_name, expected, env[env_name], from_env=True)
        elif key in raw:
            values[key] = coerce(f"{source}: {name}.{key}", expected, raw[key])
        if f"{name}.{key}" in POSITIVE and key in values and values[key] <= 0:
            raise ConfigError(f"{name}.{key} must be positive, not {values[key]}")
    return cls(**values)


def read_credential(directory: str | None, name: str) -> str | None:
    if not directory:
        return None
    path = Path(directory) / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"credential {path}: {exc.strerror}") from None


def load(path: Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Build the configuration; a missing default file means defaults."""
    env = dict(os.environ if env is None else env)
    path = path or Path(env.get(f"{ENV_PREFIX}CONFIG", DEFAULT_PATH))
    raw: dict = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
    elif path != DEFAULT_PATH:
        raise ConfigError(f"{path}: no such file")
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s): {', '.join(unknown)}")
    classes = {"mqtt": MqttConfig, "database": DatabaseConfig, "batch": BatchConfig, "rules": RulesConfig,
               "health": HealthConfig, "retention": RetentionConfig}
    built = {name: build_section(name, cls, raw.get(name, {}), env, str(path)) for name, cls in classes.items()}
    credentials = env.get("CREDENTIALS_DIRECTORY")
    mqtt_password = read_credential(credentials, "mqtt-password")
    db_password = read_credential(credentials, "db-password")
    if mqtt_password is not None:
        built["mqtt"] = dataclasses.replace(built["mqtt"], password=mqtt_password)
    if db_password is not None:
        built["database"] = dataclasses.replace(built["database"], password=db_password)
    owner_password = read_credential(credentials, "db-owner-password")
    if owner_password is not None:
        built["database"] = dataclasses.replace(built["database"], owner_password=owner_password)
    if built["health"].warning_minutes <= built["health"].online_minutes:
        raise ConfigError("health.warning_minutes must be greater than health.online_minutes")
    return Config(**built)
