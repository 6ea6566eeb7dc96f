"""The ingestor's configuration: one frozen object, built once at start-up.

Sources, later ones winning:
1. the defaults below;
2. a TOML file (default /etc/datayoti/ingestor.toml);
3. environment variables DATAYOTI_<SECTION>_<KEY>, e.g. DATAYOTI_MQTT_HOST.

Secrets come only from files in $CREDENTIALS_DIRECTORY (systemd LoadCredential=):
`mqtt-password`, `db-password` and, for migrations and retention,
`db-owner-password`. A secret in the TOML file or the environment (where
`systemctl show` would print it) is refused with a ConfigError.

Any unknown key, wrong type or out-of-range value raises ConfigError naming it.
"""

from __future__ import annotations

import dataclasses
import math
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
    # Unacknowledged messages the broker sends at once (Mosquitto's max_inflight_messages, which the
    # mosquitto role sets from the same variable): the bound of the in-memory backlog.
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
    # Commits return before their WAL is on the card (synchronous_commit off for the ingestor's own
    # transactions): rows are visible at once, and a message is acknowledged to the broker only once
    # PostgreSQL's WAL writer has flushed its commit. At most this many messages wait for that flush;
    # one more makes the next commit synchronous. 0: every commit waits for the card.
    max_unflushed: int = 500
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
    # Bounds on what is stored (see messages.Limits): text, and JSON kept in jsonb.
    max_site_id_chars: int = 64
    max_text_chars: int = 256
    max_json_depth: int = 4
    max_json_keys: int = 32
    max_key_chars: int = 64
    rejected_payload_bytes: int = 2048
    device_cache_ttl_s: int = 300


@dataclass(frozen=True)
class HealthConfig:
    online_minutes: int = 5
    warning_minutes: int = 30


@dataclass(frozen=True)
class StatsConfig:
    # One appliance_stats row (counters, backlog, disk, card writes) this often: 5 minutes keeps a year of
    # System Health panels within the dashboards' 50 ms and writes little.
    interval_s: int = 300
    # Where PostgreSQL keeps its data: its filesystem's free space and block device are reported.
    disk_path: str = "/var/lib/postgresql"


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
    stats: StatsConfig = StatsConfig()
    retention: RetentionConfig = RetentionConfig()


POSITIVE = {
    "mqtt.port", "mqtt.keepalive_s", "mqtt.receive_maximum", "database.port",
    "database.connect_timeout_s", "batch.max_rows", "batch.max_delay_ms", "batch.retry_initial_s",
    "batch.retry_max_s", "rules.max_payload_bytes", "rules.rejected_payload_bytes", "rules.max_site_id_chars",
    "rules.max_text_chars", "rules.max_json_depth", "rules.max_json_keys", "rules.max_key_chars",
    "health.online_minutes",
    "health.warning_minutes", "retention.sensor_data_days", "retention.heartbeat_days", "retention.status_days",
    "retention.rejected_days", "stats.interval_s",
}


# Upper bounds: TCP ports, and MQTT's 16-bit receive maximum.
AT_MOST = {"mqtt.port": 65535, "database.port": 65535, "mqtt.receive_maximum": 65535, "mqtt.keepalive_s": 65535}

# Secret fields and the systemd credential each one comes from; nowhere else.
SECRETS = {"mqtt.password": "mqtt-password", "database.password": "db-password",
           "database.owner_password": "db-owner-password"}


def secret_refusal(where: str, key: str) -> ConfigError:
    return ConfigError(f"{where}: {key} is a secret, read only from the systemd credential "
                       f"'{SECRETS[key]}' ($CREDENTIALS_DIRECTORY/{SECRETS[key]}, LoadCredential=); remove it here")


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
    if expected is float and not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
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
        if f"{name}.{key}" in SECRETS:
            if key in raw:
                raise secret_refusal(source, f"{name}.{key}")
            if env_name in env:
                raise secret_refusal(f"environment variable {env_name}", f"{name}.{key}")
            continue
        if env_name in env:
            values[key] = coerce(env_name, expected, env[env_name], from_env=True)
        elif key in raw:
            values[key] = coerce(f"{source}: {name}.{key}", expected, raw[key])
        if f"{name}.{key}" in POSITIVE and key in values and values[key] <= 0:
            raise ConfigError(f"{name}.{key} must be positive, not {values[key]}")
        if f"{name}.{key}" in AT_MOST and key in values and values[key] > AT_MOST[f"{name}.{key}"]:
            raise ConfigError(f"{name}.{key} must be at most {AT_MOST[f'{name}.{key}']}, not {values[key]}")
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
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
    elif path != DEFAULT_PATH:
        raise ConfigError(f"{path}: no such file")
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s): {', '.join(unknown)}")
    classes = {"mqtt": MqttConfig, "database": DatabaseConfig, "batch": BatchConfig, "rules": RulesConfig,
               "health": HealthConfig, "stats": StatsConfig, "retention": RetentionConfig}
    built = {name: build_section(name, cls, raw.get(name, {}), env, str(path)) for name, cls in classes.items()}
    credentials = env.get("CREDENTIALS_DIRECTORY")
    for dotted, credential in SECRETS.items():
        value = read_credential(credentials, credential)
        if value is not None:
            section, key = dotted.split(".")
            built[section] = dataclasses.replace(built[section], **{key: value})
    if not 0 <= built["batch"].max_unflushed < built["mqtt"].receive_maximum:
        raise ConfigError(f"batch.max_unflushed must be between 0 and mqtt.receive_maximum - 1 "
                          f"({built['mqtt'].receive_maximum - 1}), not {built['batch'].max_unflushed}: the broker "
                          "sends no more than receive_maximum unacknowledged messages")
    if built["health"].warning_minutes <= built["health"].online_minutes:
        raise ConfigError("health.warning_minutes must be greater than health.online_minutes")
    return Config(**built)


def database_connect_kwargs(db: DatabaseConfig, owner: bool = False) -> dict:
    """psycopg2.connect() keyword arguments: the one place a database connection is described.

    Keywords, not a pasted DSN string, so that any password works as it is.
    """
    kwargs = {"host": db.host, "port": db.port, "dbname": db.name,
              "user": db.owner_user if owner else db.user,
              "password": db.owner_password if owner else db.password,
              "connect_timeout": db.connect_timeout_s,
              "application_name": "datayoti-schema" if owner else "datayoti-ingestor"}
    if not owner:
        # Notice a dead server within ~25 s; no statement of the ingestor may hang.
        kwargs.update(keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                      options="-c statement_timeout=30000")
    return kwargs
