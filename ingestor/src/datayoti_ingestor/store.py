"""Writes batches of parsed messages to PostgreSQL in one transaction each.

A batch is committed whole or not at all. A commit is asynchronous unless the
caller asks otherwise: its rows are visible at once, and the caller acknowledges
its MQTT messages once `wal_positions()` shows the WAL flushed past it. Redelivered
messages find their row
through the natural keys and are not stored twice; the rollups are updated from
the rows actually inserted, in the same statement, so they always equal an
aggregate over the raw rows.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg2
import psycopg2.extras

from .messages import Heartbeat, Reading, Status, printable

log = logging.getLogger("datayoti.store")

# devices.last_data_at / last_heartbeat_at are rewritten at most this often per
# device: device_health's thresholds are minutes, and each rewrite costs the SD
# card a row version.
TOUCH_EVERY_S = 30.0

# Redelivered (dup) readings whose device clock was not believed are matched on
# the device's own value within this window.
REDELIVERY_WINDOW_DELTA = timedelta(days=7)
REDELIVERY_WINDOW = f"{REDELIVERY_WINDOW_DELTA.days} days"

ROLLUPS = (("rollup_semi_hourly", "30 minutes"), ("rollup_hourly", "1 hour"))

# How far the WAL is written (every commit returned so far ends before it), and how far it is on disk:
# read by the readings' and heartbeats' statements too, so that a batch needs no query of its own for it.
WAL_POSITIONS_COLUMNS = "pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text"
WAL_POSITIONS = f"SELECT {WAL_POSITIONS_COLUMNS}"


def rollup_upsert(table: str, width: str) -> str:
    return f"""
    {table}_up AS (
        INSERT INTO {table} AS r (device_id, bucket_start, measurement_count,
                                  sum_temperature, min_temperature, max_temperature,
                                  sum_humidity, min_humidity, max_humidity)
        SELECT device_id, time_bucket(INTERVAL '{width}', time), count(*),
               sum(temperature), min(temperature), max(temperature),
               sum(humidity), min(humidity), max(humidity)
        FROM inserted GROUP BY 1, 2
        ON CONFLICT (device_id, bucket_start) DO UPDATE SET
            measurement_count = r.measurement_count + excluded.measurement_count,
            sum_temperature = r.sum_temperature + excluded.sum_temperature,
            min_temperature = least(r.min_temperature, excluded.min_temperature),
            max_temperature = greatest(r.max_temperature, excluded.max_temperature),
            sum_humidity = r.sum_humidity + excluded.sum_humidity,
            min_humidity = least(r.min_humidity, excluded.min_humidity),
            max_humidity = greatest(r.max_humidity, excluded.max_humidity)
        RETURNING 1
    )"""


INSERT_READINGS = f"""
WITH incoming AS (
    SELECT * FROM unnest(%(time)s::timestamptz[], %(device_id)s::text[], %(temperature)s::float8[],
                         %(humidity)s::float8[], %(reception_time)s::timestamptz[],
                         %(device_time)s::timestamptz[], %(extra)s::jsonb[], %(dup)s::bool[])
        AS r(time, device_id, temperature, humidity, reception_time, device_time, extra, dup)
),
fresh AS (
    SELECT i.* FROM incoming i
    WHERE NOT (i.dup AND i.device_time IS NOT NULL AND EXISTS (
        SELECT 1 FROM sensor_data s
        WHERE s.device_id = i.device_id AND s.device_time = i.device_time
          AND s.temperature = i.temperature AND s.humidity = i.humidity
          AND s.time > i.reception_time - INTERVAL '{REDELIVERY_WINDOW}'
          AND s.time > %(redelivery_since)s::timestamptz))
),
inserted AS (
    INSERT INTO sensor_data (time, device_id, site_id, temperature, humidity, reception_time, device_time, extra)
    SELECT f.time, f.device_id, d.site_id, f.temperature, f.humidity, f.reception_time, f.device_time, f.extra
    FROM fresh f LEFT JOIN devices d USING (device_id)
    ON CONFLICT (device_id, time) DO NOTHING
    RETURNING time, device_id, temperature, humidity
),
{",".join(rollup_upsert(table, width) for table, width in ROLLUPS)},
seen AS (
    UPDATE devices d SET last_data_at = greatest(d.last_data_at, m.latest)
    FROM (SELECT device_id, max(reception_time) AS latest FROM incoming GROUP BY 1) m
    WHERE d.device_id = m.device_id AND m.device_id = ANY(%(touch)s::text[])
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM seen), {WAL_POSITIONS_COLUMNS}
"""

INSERT_HEARTBEATS = f"""
WITH incoming AS (
    SELECT * FROM unnest(%(time)s::timestamptz[], %(device_id)s::text[], %(rssi)s::int[], %(free_heap)s::int[],
                         %(uptime)s::bigint[], %(min_heap)s::int[], %(ntp_sync)s::bool[],
                         %(reception_time)s::timestamptz[], %(device_time)s::timestamptz[], %(extra)s::jsonb[],
                         %(dup)s::bool[])
        AS r(time, device_id, rssi, free_heap, uptime, min_heap, ntp_sync, reception_time, device_time, extra, dup)
),
inserted AS (
    INSERT INTO device_heartbeats (time, device_id, site_id, rssi, free_heap, uptime, min_heap, ntp_sync,
                                   reception_time, device_time, extra)
    SELECT i.time, i.device_id, d.site_id, i.rssi, i.free_heap, i.uptime, i.min_heap, i.ntp_sync,
           i.reception_time, i.device_time, i.extra
    FROM incoming i LEFT JOIN devices d USING (device_id)
    WHERE NOT (i.dup AND i.device_time IS NOT NULL AND EXISTS (
        SELECT 1 FROM device_heartbeats h
        WHERE h.device_id = i.device_id AND h.device_time = i.device_time
          AND h.uptime IS NOT DISTINCT FROM i.uptime
          AND h.time > i.reception_time - INTERVAL '{REDELIVERY_WINDOW}'
          AND h.time > %(redelivery_since)s::timestamptz))
    ON CONFLICT (device_id, time) DO NOTHING
    RETURNING 1
),
seen AS (
    UPDATE devices d SET last_heartbeat_at = greatest(d.last_heartbeat_at, m.latest)
    FROM (SELECT device_id, max(reception_time) AS latest FROM incoming GROUP BY 1) m
    WHERE d.device_id = m.device_id AND m.device_id = ANY(%(touch)s::text[])
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM seen), {WAL_POSITIONS_COLUMNS}
"""

INSERT_STATUSES = """
INSERT INTO device_status (time, device_id, site_id, status_type, status_data, reception_time)
SELECT i.time, i.device_id, d.site_id, i.status_type, i.status_data, i.reception_time
FROM unnest(%(time)s::timestamptz[], %(device_id)s::text[], %(status_type)s::text[], %(status_data)s::jsonb[],
            %(reception_time)s::timestamptz[]) AS i(time, device_id, status_type, status_data, reception_time)
LEFT JOIN devices d USING (device_id)
ON CONFLICT (device_id, time, status_type) DO NOTHING
"""

INSERT_REJECTS = """
INSERT INTO rejected_messages (received_at, topic, payload, payload_bytes, reason, detail)
SELECT * FROM unnest(%(received_at)s::timestamptz[], %(topic)s::text[], %(payload)s::bytea[],
                     %(payload_bytes)s::int[], %(reason)s::text[], %(detail)s::text[])
"""


@dataclass
class Incoming:
    """One MQTT message on its way to the database."""

    mid: int
    dup: bool
    received_at: datetime
    topic: str
    payload: bytes
    qos: int = 1
    parsed: Reading | Heartbeat | Status | None = None
    reason: str | None = None
    detail: str | None = None


def parse_lsn(text: str) -> int:
    """PostgreSQL's 'X/Y' (two hexadecimal halves) -> a byte position."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def interval_seconds(text: str) -> float:
    """A time setting as SHOW prints it ('10s', '200ms', '1min') -> seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    return float(number) * units.get(text[len(number):], 1e-3)


@dataclass
class BatchResult:
    readings: int = 0
    heartbeats: int = 0
    statuses: int = 0
    rejected: int = 0
    duplicates: int = 0
    # Of `rejected`: messages the database refused, found by splitting the batch.
    refused: int = 0
    # Writes tried while isolating them (0 when the batch went in at once).
    isolation_attempts: int = 0
    # Rejects that could not even be stored as rejects: logged in full, then dropped.
    dropped: int = 0
    # (inserted, flushed) WAL positions read while writing (None if no statement read them): see wal_positions().
    wal_positions: tuple[int, int] | None = None

    def add(self, other: BatchResult) -> None:
        for name in ("readings", "heartbeats", "statuses"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.wal_positions = other.wal_positions or self.wal_positions


# Why a write failed, which decides what happens to its batch.
UNREACHABLE = "unreachable"  # connection lost, server starting or stopping: keep the batch, retry
TRANSIENT = "transient"      # deadlock, serialization, disk full, timeout: keep the batch, retry
REFUSED = "refused"          # the data itself (SQLSTATE 22, 23, a driver ValueError): isolate the culprits
BROKEN = "broken"            # anything else about the database (privileges, schema): keep the batch, retry

UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")
TRANSIENT_SQLSTATES = ("40001", "40P01", "53", "57014", "58", "25P02", "55P03")


def failure_kind(exc: BaseException) -> str:
    """Classify an exception raised while writing a batch."""
    if isinstance(exc, psycopg2.Error):
        code = exc.pgcode or ""
        if not code:
            # Raised by libpq or the driver without a server answer: the connection.
            return UNREACHABLE if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError) else BROKEN
        if code.startswith(UNREACHABLE_SQLSTATES):
            return UNREACHABLE
        if code.startswith(TRANSIENT_SQLSTATES):
            return TRANSIENT
        if code[:2] in ("22", "23"):
            return REFUSED
        return BROKEN
    # Anything else comes from one message's values: psycopg2's ValueError for a NUL,
    # an encoding error, or a bug that only some message reaches.
    return REFUSED


def under_savepoint(cur, action):
    """(action(), None), or (None, the refusal) with the transaction as it was before action()."""
    cur.execute("SAVEPOINT attempt")
    try:
        value = action()
    except Exception as exc:  # noqa: BLE001 - sorted by failure_kind
        if failure_kind(exc) != REFUSED:
            raise
        cur.execute("ROLLBACK TO SAVEPOINT attempt")
        cur.execute("RELEASE SAVEPOINT attempt")
        return None, exc
    cur.execute("RELEASE SAVEPOINT attempt")
    return value, None


class WriteFailed(Exception):
    """A batch that was not written; nothing of it is committed. `kind` is UNREACHABLE, TRANSIENT or BROKEN."""

    def __init__(self, kind: str, cause: BaseException):
        self.kind = kind
        self.sqlstate = getattr(cause, "pgcode", None)
        super().__init__(printable(str(cause).strip() or type(cause).__name__, 300))


def refusal_detail(exc: BaseException) -> str:
    """The database's (or the driver's) own words for a refused message."""
    state = getattr(exc, "pgcode", None)
    words = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return printable(f"{state}: {words}" if state else f"{type(exc).__name__}: {words}")


@dataclass
class DeviceCache:
    """Devices known to exist, and their site, for `ttl_s` (the seeds' 5 minutes)."""

    ttl_s: float
    known: dict[str, tuple[str | None, float]] = field(default_factory=dict)

    def needs_write(self, device_id: str, site_id: str | None, now: float) -> bool:
        entry = self.known.get(device_id)
        if entry is None or now - entry[1] > self.ttl_s:
            return True
        return site_id is not None and entry[0] != site_id

    def remember(self, device_id: str, site_id: str | None, now: float) -> None:
        previous = self.known.get(device_id, (None, now))[0]
        self.known[device_id] = (site_id if site_id is not None else previous, now)


@dataclass
class TouchThrottle:
    """Which devices' last-seen columns are due for a rewrite."""

    every_s: float
    written: dict[str, float] = field(default_factory=dict)

    def due(self, device_ids: list[str], now: float) -> list[str]:
        return sorted({d for d in device_ids if now - self.written.get(d, -self.every_s) >= self.every_s})

    def mark(self, device_ids: list[str], now: float) -> None:
        for d in device_ids:
            self.written[d] = now


def column(items, attr_path: str) -> list:
    values = []
    for item in items:
        value = item
        for attr in attr_path.split("."):
            value = getattr(value, attr)
        values.append(value)
    return values


def jsonb(values: list) -> list:
    return [json.dumps(v) if v else None for v in values]


APPLIANCE_STATS_INSERT = """
INSERT INTO appliance_stats (time, interval_s, received, stored, rejected, database_refused, duplicates,
                             backlog, database_bytes, disk_free_bytes, disk_total_bytes, card_written_bytes)
VALUES (%(time)s, %(interval_s)s, %(received)s, %(stored)s, %(rejected)s, %(database_refused)s, %(duplicates)s,
        %(backlog)s, pg_database_size(current_database()), %(disk_free_bytes)s, %(disk_total_bytes)s,
        %(card_written_bytes)s)
"""


class Store:
    def __init__(self, connect_kwargs: dict, device_cache_ttl_s: float, payload_limit: int,
                 asynchronous: bool = True):
        self.connect_kwargs = connect_kwargs
        self.payload_limit = payload_limit
        self.asynchronous = asynchronous
        self.cache = DeviceCache(device_cache_ttl_s)
        self.data_touch = TouchThrottle(TOUCH_EVERY_S)
        self.heartbeat_touch = TouchThrottle(TOUCH_EVERY_S)
        self.conn = None
        # Connections made so far: WAL positions of one server run mean nothing to the next.
        self.connects = 0
        # PostgreSQL's wal_writer_delay: an asynchronous commit is on disk about this long after it.
        self.wal_writer_delay_s = 0.2

    def connect(self) -> None:
        self.close()
        self.connects += 1
        self.conn = psycopg2.connect(**self.connect_kwargs)
        self.conn.autocommit = False
        if self.asynchronous:
            try:
                with self.conn.cursor() as cur:
                    # This session's commits return before the disk has them (write_batch says where they are).
                    cur.execute("SET synchronous_commit TO off")
                    cur.execute("SHOW wal_writer_delay")
                    self.wal_writer_delay_s = interval_seconds(cur.fetchone()[0])
                self.conn.commit()
            except psycopg2.Error:
                self.close()
                raise

    def wal_positions(self) -> tuple[int, int]:
        """(inserted, flushed): every commit returned so far ends before `inserted`, and the WAL is on disk up
        to `flushed`. Raises psycopg2.Error."""
        with self.conn.cursor() as cur:
            cur.execute(WAL_POSITIONS)
            inserted, flushed = cur.fetchone()
        self.conn.rollback()
        return parse_lsn(inserted), parse_lsn(flushed)

    def _begin(self, cur, synchronous: bool) -> None:
        if self.asynchronous and synchronous:
            cur.execute("SET LOCAL synchronous_commit TO on")

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def ping(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT 1")
        self.conn.rollback()

    def write_stats(self, row: dict, synchronous: bool = False) -> None:
        """One appliance_stats row, committed on its own; raises psycopg2.Error (the caller logs it).

        A synchronous one also puts every earlier asynchronous commit on disk.
        """
        if self.conn is None:
            self.connect()
        try:
            with self.conn.cursor() as cur:
                self._begin(cur, synchronous)
                cur.execute(APPLIANCE_STATS_INSERT, row)
            self.conn.commit()
        except psycopg2.Error:
            self._abandon()
            raise

    def write_batch(self, batch: list[Incoming], synchronous: bool = False) -> BatchResult:
        """Store a batch in one transaction, or raise WriteFailed with nothing stored.

        Messages the database refuses are found by splitting the batch under
        savepoints, in the same transaction: each becomes a `database_refused`
        reject and the rest is committed once. A synchronous commit returns once
        it, and every commit before it, is on disk; otherwise the result says
        where the commit is in the WAL.
        """
        try:
            if self.conn is None:
                self.connect()
        except psycopg2.Error as exc:
            raise WriteFailed(failure_kind(exc), exc) from exc
        now = time.monotonic()
        try:
            with self.conn.cursor() as cur:
                self._begin(cur, synchronous)
                outcome = self._write(cur, batch, now)
            self.conn.commit()
        except Exception as exc:  # noqa: BLE001 - sorted by failure_kind
            self._abandon()
            kind = failure_kind(exc)
            if kind != REFUSED:
                raise WriteFailed(kind, exc) from exc
            outcome = self._write_isolating(batch, now, synchronous)
        result, bookkeeping = outcome
        self._remember(bookkeeping, now)
        accepted = len(batch) - result.rejected - result.dropped
        result.duplicates = accepted - result.readings - result.heartbeats - result.statuses
        return result

    def _write(self, cur, batch: list[Incoming], now: float) -> tuple[BatchResult, list]:
        """Every statement of a batch, without committing."""
        result, bookkeeping = self._write_parsed(cur, [m for m in batch if m.parsed is not None], now)
        rejects = [m for m in batch if m.parsed is None]
        if rejects:
            cur.execute(INSERT_REJECTS, self._reject_params(rejects))
            result.rejected = len(rejects)
        return result, bookkeeping

    def _write_parsed(self, cur, items: list[Incoming], now: float) -> tuple[BatchResult, list]:
        """The parsed messages' statements; returns what to remember once committed."""
        result = BatchResult()
        beats = [m for m in items if isinstance(m.parsed, Heartbeat)]
        readings = [m for m in items if isinstance(m.parsed, Reading)]
        statuses = [m for m in items if isinstance(m.parsed, Status)]
        bookkeeping: list = [("cache", self._register_devices(cur, items, now))]
        # Statuses and heartbeats carry free-form JSON, the likeliest to be refused: written before the
        # readings, so that a refusal aborts as few written rows as possible.
        if statuses:
            cur.execute(INSERT_STATUSES, self._status_params(statuses))
            result.statuses = cur.rowcount
        if beats:
            params = self._heartbeat_params(beats)
            params["touch"] = self.heartbeat_touch.due(params["device_id"], now)
            bookkeeping.append((self.heartbeat_touch, params["touch"]))
            cur.execute(INSERT_HEARTBEATS, params)
            row = cur.fetchone()
            result.heartbeats, result.wal_positions = row[0], (parse_lsn(row[2]), parse_lsn(row[3]))
        if readings:
            params = self._reading_params(readings)
            params["touch"] = self.data_touch.due(params["device_id"], now)
            bookkeeping.append((self.data_touch, params["touch"]))
            cur.execute(INSERT_READINGS, params)
            row = cur.fetchone()
            result.readings, result.wal_positions = row[0], (parse_lsn(row[2]), parse_lsn(row[3]))
        return result, bookkeeping

    def _write_isolating(self, batch: list[Incoming], now: float, synchronous: bool) -> tuple[BatchResult, list]:
        """Split the parsed messages under savepoints until each refused one stands alone.

        Messages of a part that fails are halved and tried again; a part that
        succeeds is written once. The failed tries are rolled back.
        """
        result, bookkeeping = BatchResult(), []
        try:
            with self.conn.cursor() as cur:
                self._begin(cur, synchronous)
                # One part per kind first, so that only the failing kind's good messages are tried again.
                parsed = [m for m in batch if m.parsed is not None]
                pending = [[m for m in parsed if isinstance(m.parsed, kind)] for kind in (Status, Heartbeat, Reading)]
                while pending:
                    part = pending.pop()
                    if not part:
                        continue
                    result.isolation_attempts += 1
                    written, refusal = under_savepoint(cur, lambda part=part: self._write_parsed(cur, part, now))
                    if refusal is None:
                        result.add(written[0])
                        bookkeeping += written[1]
                    elif len(part) == 1:
                        self._refuse(part[0], refusal)
                    else:
                        middle = len(part) // 2
                        pending += [part[middle:], part[:middle]]
                rejects = [m for m in batch if m.parsed is None]
                result.rejected = len(rejects)
                result.refused = sum(1 for m in rejects if m.reason == "database_refused")
                result.dropped = self._write_rejects_one_by_one(cur, rejects)
                result.rejected -= result.dropped
            self.conn.commit()
        except Exception as exc:  # noqa: BLE001 - sorted by failure_kind
            self._abandon()
            kind = failure_kind(exc)
            raise WriteFailed(BROKEN if kind == REFUSED else kind, exc) from exc
        log.info("isolated %d refused message(s) in a batch of %d with %d writes",
                 result.refused, len(batch), result.isolation_attempts)
        return result, bookkeeping

    @staticmethod
    def _refuse(item: Incoming, exc: BaseException) -> None:
        """Turn a message the database refused into a reject."""
        item.parsed, item.reason, item.detail = None, "database_refused", refusal_detail(exc)

    def _write_rejects_one_by_one(self, cur, rejects: list[Incoming]) -> int:
        """Store rejects; one that even the reject table refuses is logged whole and dropped. Returns drops."""
        def insert(items: list[Incoming]):
            return under_savepoint(cur, lambda: cur.execute(INSERT_REJECTS, self._reject_params(items)))[1]

        if not rejects or insert(rejects) is None:
            return 0
        dropped = 0
        for item in rejects:
            refusal = insert([item])
            if refusal is not None:
                log.error("dropped a message not even storable as a reject (%s): topic %s payload %s",
                          refusal_detail(refusal), printable(item.topic), item.payload[:4096].hex())
                dropped += 1
        return dropped

    def _remember(self, bookkeeping: list, now: float) -> None:
        """After a commit: the devices now known, and the last-seen columns now written."""
        for owner, entries in bookkeeping:
            if owner == "cache":
                for device_id, site_id in entries:
                    self.cache.remember(device_id, site_id, now)
            else:
                owner.mark(entries, now)

    def _abandon(self) -> None:
        try:
            if self.conn is not None and not self.conn.closed:
                self.conn.rollback()
        except psycopg2.Error:
            pass
        if self.conn is not None and self.conn.closed:
            self.conn = None

    def _register_devices(self, cur, messages: list[Incoming], now: float) -> list[tuple[str, str | None]]:
        """Create unknown sites and devices; move a device to the site its heartbeat names."""
        wanted: dict[str, str | None] = {}
        for m in messages:
            site = m.parsed.site_id if isinstance(m.parsed, Heartbeat) else None
            if site is not None or m.parsed.device_id not in wanted:
                wanted[m.parsed.device_id] = site
        todo = [(d, s) for d, s in wanted.items() if self.cache.needs_write(d, s, now)]
        if not todo:
            return []
        sites = sorted({s for _, s in todo if s is not None})
        if sites:
            cur.execute("INSERT INTO sites (site_id, site_name) SELECT s, s FROM unnest(%s::text[]) s "
                        "ON CONFLICT (site_id) DO NOTHING", (sites,))
        cur.execute(
            """
            INSERT INTO devices AS d (device_id, site_id)
            SELECT * FROM unnest(%s::text[], %s::text[])
            ON CONFLICT (device_id) DO UPDATE SET site_id = excluded.site_id, updated_at = now()
                WHERE excluded.site_id IS NOT NULL AND d.site_id IS DISTINCT FROM excluded.site_id
            """,
            ([d for d, _ in todo], [s for _, s in todo]),
        )
        return todo

    @staticmethod
    def _stamp_params(items: list[Incoming]) -> dict:
        parsed = [m.parsed for m in items]
        return {
            "time": column(parsed, "stamp.time"),
            "device_id": column(parsed, "device_id"),
            "reception_time": [m.received_at for m in items],
            "device_time": column(parsed, "stamp.device_time"),
            "dup": [m.dup for m in items],
            # A constant to the planner (psycopg2 interpolates it), so that the
            # redelivery check only plans the last week's chunks, not a year's.
            "redelivery_since": min(m.received_at for m in items) - REDELIVERY_WINDOW_DELTA,
        }

    def _reading_params(self, items: list[Incoming]) -> dict:
        parsed = [m.parsed for m in items]
        return {**self._stamp_params(items), "temperature": column(parsed, "temperature"),
                "humidity": column(parsed, "humidity"), "extra": jsonb(column(parsed, "extra"))}

    def _heartbeat_params(self, items: list[Incoming]) -> dict:
        parsed = [m.parsed for m in items]
        params = self._stamp_params(items)
        for name in ("rssi", "free_heap", "uptime", "min_heap", "ntp_sync"):
            params[name] = column(parsed, name)
        params["extra"] = jsonb(column(parsed, "extra"))
        return params

    def _status_params(self, items: list[Incoming]) -> dict:
        parsed = [m.parsed for m in items]
        params = self._stamp_params(items)
        return {"time": params["time"], "device_id": params["device_id"],
                "reception_time": params["reception_time"], "status_type": column(parsed, "status_type"),
                "status_data": [json.dumps(s) for s in column(parsed, "status_data")]}

    def _reject_params(self, items: list[Incoming]) -> dict:
        return {
            "received_at": [m.received_at for m in items],
            "topic": [printable(m.topic, 1000) for m in items],
            "payload": [psycopg2.Binary(m.payload[: self.payload_limit]) for m in items],
            "payload_bytes": [len(m.payload) for m in items],
            "reason": [printable(m.reason or "unknown", 100) for m in items],
            "detail": [printable(m.detail or "") for m in items],
        }
