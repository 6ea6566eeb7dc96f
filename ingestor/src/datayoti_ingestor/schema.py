"""Schema management: versioned migrations, the views, retention. Runs as the owner role."""

from __future__ import annotations

import contextlib
import logging
from importlib import resources

import psycopg2

from .config import Config, database_connect_kwargs

log = logging.getLogger("datayoti.schema")
MIGRATION_LOCK = 7_212_001  # pg_advisory_lock key: one migrator at a time
VIEWS = ("device_health", "latest_sensor_readings", "sensor_data_hourly", "sensor_data_semi_hourly")


def migration_files() -> list[tuple[str, str]]:
    """[(version, sql)] in order, from the package's migrations/NNNN_name.sql."""
    folder = resources.files("datayoti_ingestor") / "migrations"
    files = sorted(f for f in folder.iterdir() if f.name[:4].isdigit() and f.name.endswith(".sql"))
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


def views_sql() -> str:
    return (resources.files("datayoti_ingestor") / "migrations" / "views.sql").read_text()


@contextlib.contextmanager
def transaction(config: Config):
    """A cursor in one transaction as the owner: committed on success, always closed."""
    conn = psycopg2.connect(**database_connect_kwargs(config.database, owner=True))
    try:
        with conn, conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def sync_thresholds(cur, config: Config) -> None:
    cur.execute(
        "UPDATE health_thresholds SET online_within = make_interval(mins => %s), "
        "warning_within = make_interval(mins => %s)",
        (config.health.online_minutes, config.health.warning_minutes),
    )


def migrate(config: Config) -> list[str]:
    """Apply the migrations not applied yet, then (re)create the views. Idempotent."""
    applied_now = []
    with transaction(config) as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        cur.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
        if cur.fetchone()[0] == 0:
            raise RuntimeError("the timescaledb extension is not installed in this database "
                               "(the timescaledb Ansible role installs it)")
        cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                    "version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        cur.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in cur.fetchall()}
        for version, sql in migration_files():
            if version in done:
                continue
            log.info("applying migration %s", version)
            cur.execute(sql)
            cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied_now.append(version)
        cur.execute(views_sql())
        sync_thresholds(cur, config)
    return applied_now


def views(config: Config, action: str) -> None:
    """The seeds' manage_views: create, recreate or drop the views."""
    with transaction(config) as cur:
        if action in ("drop", "recreate"):
            for view in VIEWS:
                cur.execute(f"DROP VIEW IF EXISTS {view}")
        if action in ("create", "recreate"):
            cur.execute(views_sql())
            sync_thresholds(cur, config)


def retention(config: Config) -> dict[str, tuple[int, str]]:
    """Drop what is past its limit: whole chunks of the hypertables, rows elsewhere."""
    r = config.retention
    dropped = {}
    with transaction(config) as cur:
        # appliance_stats is the appliance's own heartbeat: kept as long as the sensors'.
        for table, days in (("sensor_data", r.sensor_data_days), ("device_heartbeats", r.heartbeat_days),
                            ("device_status", r.status_days), ("appliance_stats", r.heartbeat_days)):
            cur.execute("SELECT count(*) FROM drop_chunks(%s, older_than => make_interval(days => %s))",
                        (table, days))
            dropped[table] = (cur.fetchone()[0], "chunks")
        for table, column, days in (("rollup_semi_hourly", "bucket_start", r.sensor_data_days),
                                    ("rollup_hourly", "bucket_start", r.sensor_data_days),
                                    ("rejected_messages", "received_at", r.rejected_days)):
            cur.execute(f"DELETE FROM {table} WHERE {column} < now() - make_interval(days => %s)", (days,))
            dropped[table] = (cur.rowcount, "rows")
    return dropped
