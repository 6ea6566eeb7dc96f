"""Where the appliance keeps its state on a Pi: the one list of paths and names the `datayoti` program uses.

The roles create these (roles/*/vars); the program reads and writes them.
"""

from __future__ import annotations

from pathlib import Path

ETC_DIR = Path("/etc/datayoti")
SECRETS_DIR = ETC_DIR / "secrets"  # root 0700: one file per secret, read by systemd's LoadCredential=
SENSORS_DIR = ETC_DIR / "sensors"  # root 0700: the device registry, one <MAC>.json per sensor account
INGESTOR_CONFIG = ETC_DIR / "ingestor.toml"
BROKER_CONFIG = ETC_DIR / "broker.toml"  # written by the mosquitto role: ports, public host, TLS names
DATABASE_CONFIG = ETC_DIR / "database.toml"  # written by the timescaledb role: database, login roles, limits
BACKUP_DIR = Path("/var/backups/datayoti")

MOSQUITTO_CERTS_DIR = Path("/etc/mosquitto/certs")
CA_CERT = MOSQUITTO_CERTS_DIR / "datayoti-ca.crt"
CA_KEY = SECRETS_DIR / "mqtt-ca.key"
SERVER_KEY = MOSQUITTO_CERTS_DIR / "server.key"
SERVER_CERT = MOSQUITTO_CERTS_DIR / "server.crt"
# Mosquitto's dynamic security plugin keeps the broker's accounts and roles here.
DYNSEC_FILE = Path("/var/lib/mosquitto/dynamic-security.json")
MOSQUITTO_USER = "mosquitto"

INGESTOR_UNIT = "datayoti-ingestor.service"
MIGRATE_UNIT = "datayoti-migrate.service"
MOSQUITTO_UNIT = "mosquitto.service"
GRAFANA_UNIT = "grafana-server.service"

# MQTT accounts of the appliance itself; sensors' accounts are their MACs with hyphens.
MQTT_ADMIN_USER = "datayoti_admin"
MQTT_INGESTOR_USER = "datayoti_ingestor"
MQTT_ALERTS_USER = "grafana_alerts"  # Grafana's MQTT contact point


def password_file(name: str) -> Path:
    """The file of secret NAME: postgresql-mqtt_ingestor -> SECRETS_DIR/postgresql-mqtt_ingestor.password."""
    return SECRETS_DIR / f"{name}.password"
