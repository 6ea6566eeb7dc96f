"""Schema management: versioned migrations, the views, retention, the daily rollup. Runs as the owner role."""

from __future__ import annotations

import contextlib
import logging
from importlib import resources

import psycopg2

from .config import Config, database_connect_kwargs

log = logging.getLogger("datayoti.schema")
MIGRATION_LOCK = 7_212_001  # pg_advisory_lock key: one migrator at a time
VIEWS = ("device_health", "latest_sensor_readings", "sensor_data_daily", "sensor_data_hourly",
         "sensor_data_semi_hourly")
# Every complete day, recomputed from rollup_hourly (late readings included); only changed rows are written.
FOLD_DAILY = """
INSERT INTO rollup_daily AS r (device_id, bucket_start, measurement_count, sum_temperature, min_temperature,
                               max_temperature, sum_humidity, min_humidity, max_humidity)
SELECT device_id, time_bucket(INTERVAL '1 day', bucket_start), sum(measurement_count),
       sum(sum_temperature), min(min_temperature), max(max_temperature),
       sum(sum_humidity), min(min_humidity), max(max_humidity)
FROM rollup_hourly
WHERE bucket_start < time_bucket(INTERVAL '1 day', now())
GROUP BY 1, 2
ON CONFLICT (device_id, bucket_start) DO UPDATE SET
    measurement_count = excluded.measurement_count,
    sum_temperature = excluded.sum_temperature, min_temperature = excluded.min_temperature,
    max_temperature = excluded.max_temperature, sum_humidity = excluded.sum_humidity,
    min_humidity = excluded.min_humidity, max_humidity = excluded.max_humidity
    WHERE (r.measurement_count, r.sum_temperature, r.sum_humidity)
          IS DISTINCT FROM (excluded.measurement_count, excluded.sum_temperature, excluded.sum_humidity)
"""


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


def fold_daily(cur) -> int:
    """Fold the hourly rollup's complete days into rollup_daily; the number of rows changed."""
    cur.execute(FOLD_DAILY)
    return cur.rowcount


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
        fold_daily(cur)
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
    """Drop what is past its limit (whole chunks of the hypertables, rows elsewhere), then fold rollup_daily."""
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
                                    ("rollup_daily", "bucket_start", r.sensor_data_days),
                                    ("rejected_messages", "received_at", r.rejected_days)):
            cur.execute(f"DELETE FROM {table} WHERE {column} < now() - make_interval(days => %s)", (days,))
            dropped[table] = (cur.rowcount, "rows")
        folded = fold_daily(cur)
    return {table: (count, f"{unit} dropped") for table, (count, unit) in dropped.items()} | {
        "rollup_daily from rollup_hourly": (folded, "rows folded")}
