"""The ingestor's main loop: MQTT in, batched transactions out, ack after commit.

Commits are asynchronous (store.py): a batch's rows are visible at once, and its
messages are acknowledged once PostgreSQL's WAL flush has passed its commit, which
the next batch's statements read, or the main loop once a second between batches.
A commit waits for the disk itself when too many messages, or too old ones, wait
for that flush, and on the way out.

Threads: paho's network thread only appends to `Inbox`; everything else
(parsing, writing, acknowledging, notifying systemd) happens in the main thread,
so WATCHDOG=1 proves that the main loop itself is making progress.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import psycopg2

from . import storage
from .config import Config, database_connect_kwargs
from .messages import Limits, Rejected, parse_message, printable
from .store import UNREACHABLE, Incoming, Store, WriteFailed

log = logging.getLogger("datayoti.ingestor")
STATUS_EVERY_S = 5.0
DB_PING_EVERY_S = 10.0
STATS_RETRY_S = 10.0
# Committed messages wait for the WAL writer's flush at most wal_writer_delay plus this; then the
# next commit is synchronous.
FLUSH_GRACE_S = 2.0
# How often to ask how far the WAL is written and flushed while committed messages wait.
FLUSH_POLL_S = 1.0
# WATCHDOG=1 at most this often (WatchdogSec is 30 s): one datagram a second, not one per pass of the loop.
WATCHDOG_EVERY_S = 1.0


class Notifier:
    """sd_notify, or nothing when not run by systemd."""

    def __init__(self):
        try:
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()
        except ImportError:  # pragma: no cover - sdnotify is a declared dependency
            self._notifier = None

    def __call__(self, state: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(state)


class Inbox:
    """What paho's thread hands to the main loop.

    The main loop is woken only when enough messages wait (see `wait`), not for each one: at 1,000 msg/s
    it wakes once per batch.
    """

    def __init__(self):
        self._items: deque[Incoming] = deque()
        self._ready = threading.Condition()
        self._wake_at = 1

    def put(self, item: Incoming) -> None:
        with self._ready:
            self._items.append(item)
            if len(self._items) >= self._wake_at:
                self._ready.notify()

    def take_all(self) -> list[Incoming]:
        with self._ready:
            items = list(self._items)
            self._items.clear()
            return items

    def wait(self, timeout: float, wake_at: int = 1) -> None:
        """Sleep up to `timeout` s, or until `wake_at` messages wait, or until `wake()`."""
        with self._ready:
            if len(self._items) < wake_at:
                self._wake_at = wake_at
                self._ready.wait(timeout)
                self._wake_at = 1

    def wake(self) -> None:
        with self._ready:
            self._ready.notify()

    def __len__(self) -> int:
        return len(self._items)


def limits_from(config: Config) -> Limits:
    from datetime import timedelta

    rules = config.rules
    return Limits(max_payload_bytes=rules.max_payload_bytes, temperature_min=rules.temperature_min,
                  temperature_max=rules.temperature_max, humidity_min=rules.humidity_min,
                  humidity_max=rules.humidity_max, max_clock_ahead=timedelta(seconds=rules.max_clock_ahead_s),
                  max_site_id_chars=rules.max_site_id_chars, max_text_chars=rules.max_text_chars,
                  max_json_depth=rules.max_json_depth, max_json_keys=rules.max_json_keys,
                  max_key_chars=rules.max_key_chars)


def classify(item: Incoming, limits: Limits) -> Incoming:
    """Parse in place: either `parsed` or `reason`/`detail` gets set. Never raises for a message."""
    try:
        item.parsed = parse_message(item.topic, item.payload, item.received_at, limits)
    except Rejected as exc:
        item.reason, item.detail = exc.reason, exc.detail
    except Exception as exc:  # noqa: BLE001 - one message's surprise must not stop the service
        log.exception("parsing a message on %s failed unexpectedly", printable(item.topic))
        item.reason, item.detail = "internal_error", printable(f"{type(exc).__name__}: {exc}")
    return item


@dataclass
class Unflushed:
    """A committed batch whose WAL is not known to be on disk yet: its messages are not acknowledged.

    `lsn` bounds where its commit ends in the WAL: the insert position read after it (None until read).
    """

    lsn: int | None
    committed_at: float
    items: list[Incoming]


def must_wait_for_disk(max_unflushed: int, unflushed: int, incoming: int, oldest_age_s: float | None,
                       deadline_s: float) -> bool:
    """Whether the next commit must be synchronous.

    Always when asynchronous commits are off (max_unflushed 0); else when the messages waiting for
    the flush would pass max_unflushed, or the oldest has waited past the deadline.
    """
    if max_unflushed <= 0 or unflushed + incoming > max_unflushed:
        return True
    return oldest_age_s is not None and oldest_age_s >= deadline_s


def flushed_prefix(unflushed: list[Unflushed] | deque, flushed_lsn: int) -> int:
    """How many of the oldest committed batches are on disk (commit LSNs only grow; None is not known yet)."""
    count = 0
    for entry in unflushed:
        if entry.lsn is None or entry.lsn > flushed_lsn:
            break
        count += 1
    return count


def bound_unflushed(unflushed: list[Unflushed] | deque, inserted_lsn: int) -> None:
    """Batches committed before the WAL insert position was read end before it."""
    for entry in reversed(unflushed):
        if entry.lsn is not None:
            break
        entry.lsn = inserted_lsn


def next_backoff(current: float, initial: float, maximum: float) -> float:
    return initial if current <= 0 else min(maximum, current * 2)


def database_state(failure: WriteFailed | None) -> str:
    """'ok', 'DOWN' (unreachable) or 'ERROR <sqlstate>' (reachable, but failing every write)."""
    if failure is None:
        return "ok"
    if failure.kind == UNREACHABLE:
        return "DOWN"
    return f"ERROR {failure.sqlstate or failure.kind}"


def status_line(stats: Stats, backlog: int, now: float, db_state: str, mqtt_ok: bool) -> str:
    rate = stats.rate(now)
    return (f"{rate:.1f} msg/s, backlog {backlog}, stored {stats.stored}, rejected {stats.rejected} "
            f"(database refused {stats.refused}), duplicates {stats.duplicates}; database {db_state}, "
            f"broker {'ok' if mqtt_ok else 'DOWN'}")


# status_line's format read back (`datayoti status` parses `systemctl show -P StatusText`): change both together.
STATUS_LINE = re.compile(
    r"(?P<rate>\d+(?:\.\d+)?) msg/s, backlog (?P<backlog>\d+), stored (?P<stored>\d+), "
    r"rejected (?P<rejected>\d+) \(database refused (?P<refused>\d+)\), duplicates (?P<duplicates>\d+); "
    r"database (?P<database>ok|DOWN|ERROR \S+), broker (?P<broker>ok|DOWN)")


def parse_status_line(text: str) -> dict | None:
    """A STATUS= line written by status_line -> its fields; None for anything else ("waiting for ...")."""
    match = STATUS_LINE.fullmatch(text.strip())
    if match is None:
        return None
    fields = {key: int(match[key]) for key in ("backlog", "stored", "rejected", "refused", "duplicates")}
    return {"rate": float(match["rate"]), **fields, "database": match["database"], "broker": match["broker"]}


@dataclass(frozen=True)
class Totals:
    """The ingestor's counters since it started, at one moment."""

    received: int = 0
    stored: int = 0
    rejected: int = 0
    refused: int = 0
    duplicates: int = 0


def stats_row(at: datetime, interval_s: float, before: Totals, after: Totals, backlog: int,
              disk: tuple[int, int] | None, sectors_before: int | None, sectors_after: int | None) -> dict:
    """An appliance_stats row for the interval between two samples.

    Card writes are unknown (None) without both samples, or when the counter went back (a new device).
    """
    card = None
    if sectors_before is not None and sectors_after is not None and sectors_after >= sectors_before:
        card = (sectors_after - sectors_before) * storage.SECTOR_BYTES
    free, total = disk if disk else (None, None)
    return {"time": at, "interval_s": round(interval_s, 3), "received": after.received - before.received,
            "stored": after.stored - before.stored, "rejected": after.rejected - before.rejected,
            "database_refused": after.refused - before.refused,
            "duplicates": after.duplicates - before.duplicates, "backlog": backlog,
            "disk_free_bytes": free, "disk_total_bytes": total, "card_written_bytes": card}


@dataclass
class Stats:
    received: int = 0
    stored: int = 0
    rejected: int = 0
    refused: int = 0
    duplicates: int = 0
    window_start: float = 0.0
    window_count: int = 0
    last_rate: float = 0.0

    def count(self, n: int, now: float) -> None:
        self.window_count += n
        if now - self.window_start >= STATUS_EVERY_S:
            self.roll(now)

    def roll(self, now: float) -> None:
        span = now - self.window_start
        if span > 0:
            self.last_rate = self.window_count / span
        self.window_start, self.window_count = now, 0

    def rate(self, now: float) -> float:
        if now - self.window_start >= STATUS_EVERY_S:
            self.roll(now)
        return self.last_rate

    def totals(self) -> Totals:
        return Totals(self.received, self.stored, self.rejected, self.refused, self.duplicates)


@dataclass(frozen=True)
class Sample:
    """What the last appliance_stats row was measured from."""

    monotonic: float
    totals: Totals
    sectors: int | None


class Ingestor:
    def __init__(self, config: Config, notify: Notifier | None = None):
        self.config = config
        self.notify = notify or Notifier()
        self.limits = limits_from(config)
        self.inbox = Inbox()
        self.pending: list[Incoming] = []
        # Committed batches not acknowledged yet, oldest first, and their message count.
        self.unflushed: deque[Unflushed] = deque()
        self.unflushed_count = 0
        # The store's connection the unflushed batches were committed on.
        self.unflushed_connection = 0
        self.flush_check_at = 0.0
        self.stats = Stats()
        self.stop_requested = False
        self.mqtt_connected = threading.Event()
        # None while the database takes writes; the last WriteFailed otherwise.
        self.db_failure: WriteFailed | None = None
        self.store = Store(
            connect_kwargs=database_connect_kwargs(config.database),
            device_cache_ttl_s=config.rules.device_cache_ttl_s,
            payload_limit=config.rules.rejected_payload_bytes,
            asynchronous=config.batch.max_unflushed > 0,
        )
        self.client = self._make_client()
        self.card_device = storage.block_device_of(config.stats.disk_path)
        self.stats_base: Sample | None = None
        self.stats_due_at = 0.0

    # ------------------------------------------------------------ MQTT (paho's thread)

    def _make_client(self) -> mqtt.Client:
        m = self.config.mqtt
        # MQTT 3.1.1 with a persistent session (clean_session false): the broker keeps it while the ingestor
        # is away (Mosquitto's persistent_client_expiration). Unlike MQTT 5, it costs no properties object
        # per message and acknowledgement; the broker's max_inflight_messages bounds what is unacknowledged.
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=m.client_id,
                             protocol=mqtt.MQTTv311, clean_session=False, manual_ack=True)
        client.username_pw_set(m.username, m.password)
        if m.ca_file:
            client.tls_set(ca_certs=m.ca_file)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        # Subscribing here renews the subscription after every reconnect.
        client.subscribe(self.config.mqtt.topic, qos=1)
        self.mqtt_connected.set()
        log.info("connected to the broker (session present: %s)", flags.session_present)
        self.inbox.wake()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.mqtt_connected.clear()
        if not self.stop_requested:
            log.warning("disconnected from the broker (%s); paho reconnects", reason_code)

    def _on_message(self, client, userdata, message):
        # Never raises: an exception here would end paho's network thread.
        topic = message._topic.decode("utf-8", "replace") if isinstance(message._topic, bytes) else str(message._topic)
        self.inbox.put(Incoming(mid=message.mid, dup=bool(message.dup), qos=message.qos,
                                received_at=datetime.now(UTC), topic=topic, payload=bytes(message.payload)))

    # ------------------------------------------------------------ main thread

    def request_stop(self, signum, frame) -> None:
        """Signal handler: only sets the flag."""
        self.stop_requested = True
        self.inbox.wake()

    def connect_mqtt(self) -> None:
        m = self.config.mqtt
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self.client.loop_start()

    def wait_until_ready(self) -> bool:
        """Connect the database and the broker; False if asked to stop first."""
        backoff = 0.0
        while not self.stop_requested:
            try:
                self.store.connect()
                self.db_failure = None
                break
            except psycopg2.Error as exc:
                backoff = next_backoff(backoff, self.config.batch.retry_initial_s, self.config.batch.retry_max_s)
                log.warning("database not reachable (%s); retrying in %.1f s", str(exc).strip(), backoff)
                self.notify(f"STATUS=waiting for the database: {str(exc).strip()[:120]}")
                self.sleep(backoff)
        self.connect_mqtt()
        while not self.stop_requested and not self.mqtt_connected.wait(1.0):
            self.notify("STATUS=waiting for the broker")
        return not self.stop_requested

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def flush(self, batch: list[Incoming], final: bool = False) -> bool:
        """Commit a batch; acknowledge it once it is on disk. False if it was kept for a retry."""
        now = time.monotonic()
        oldest = now - self.unflushed[0].committed_at if self.unflushed else None
        deadline = self.store.wal_writer_delay_s + FLUSH_GRACE_S
        synchronous = final or must_wait_for_disk(self.config.batch.max_unflushed, self.unflushed_count, len(batch),
                                                  oldest, deadline)
        try:
            result = self.store.write_batch(batch, synchronous=synchronous)
        except WriteFailed as failure:
            self.note_database_failure(failure, f"keeping {len(batch)} messages unacknowledged")
            return False
        if self.db_failure is not None:
            log.info("database is back; writing resumed")
        self.db_failure = None
        if result.wal_positions is not None:  # read in this batch's transaction: after every earlier commit
            inserted, flushed = result.wal_positions
            self.acknowledge(flushed_prefix(self.unflushed, flushed))
            bound_unflushed(self.unflushed, inserted)
            self.flush_check_at = now + FLUSH_POLL_S
        if not self.unflushed:
            self.flush_check_at = now + FLUSH_POLL_S
            self.unflushed_connection = self.store.connects
        self.unflushed.append(Unflushed(None, now, batch))
        self.unflushed_count += len(batch)
        if synchronous or not self.store.asynchronous:
            self.acknowledge(len(self.unflushed))  # a synchronous commit: everything before it is on disk too
        for item in batch:
            if item.reason:
                log.warning("rejected %s: %s (%s)", printable(item.topic), item.reason, item.detail)
        self.stats.stored += result.readings + result.heartbeats + result.statuses
        self.stats.rejected += result.rejected
        self.stats.refused += result.refused
        self.stats.duplicates += result.duplicates
        return True

    def acknowledge(self, batches: int) -> None:
        """Acknowledge the `batches` oldest committed batches to the broker: they are on disk."""
        for _ in range(batches):
            entry = self.unflushed.popleft()
            self.unflushed_count -= len(entry.items)
            for item in entry.items:
                self.client.ack(item.mid, item.qos)

    def check_flushed(self, now: float) -> None:
        """Acknowledge the batches the WAL writer has flushed; bound where the newer ones end."""
        self.flush_check_at = now + FLUSH_POLL_S
        if self.unflushed_connection_lost():
            return
        try:
            inserted, flushed = self.store.wal_positions()
        except psycopg2.Error as exc:
            self.note_database_failure(WriteFailed(UNREACHABLE, exc), "checking the WAL flush")
            self.store.close()
            return
        self.acknowledge(flushed_prefix(self.unflushed, flushed))
        bound_unflushed(self.unflushed, inserted)

    def unflushed_connection_lost(self) -> bool:
        """Whether the connection the unflushed batches were committed on is gone: if so, they are written again.

        The server may have crashed meanwhile, and a new server run reuses the WAL positions it lost.
        """
        if self.unflushed and (self.store.conn is None or self.store.connects != self.unflushed_connection):
            self.rewrite_unflushed()
            return True
        return False

    def rewrite_unflushed(self) -> None:
        """The database failed: committed batches not known to be on disk are written again.

        A crash of the server loses them; the natural keys make the second write of a stored row a no-op.
        """
        if not self.unflushed:
            return
        items = [item for entry in self.unflushed for item in entry.items]
        self.unflushed.clear()
        self.unflushed_count = 0
        self.pending[:0] = items
        log.warning("writing %d committed messages again: the database failed before they were on disk",
                    len(items))

    def note_database_failure(self, failure: WriteFailed, consequence: str) -> None:
        """Log a database failure once per change of state; committed messages not on disk are written again."""
        self.rewrite_unflushed()
        previous = self.db_failure
        self.db_failure = failure
        if previous is None or (previous.kind, previous.sqlstate) != (failure.kind, failure.sqlstate):
            what = "not reachable" if failure.kind == UNREACHABLE else f"failing ({failure.kind})"
            log.error("database %s, %s: %s", what, consequence, failure)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        if not self.wait_until_ready():
            self.shutdown()
            return 0
        self.notify("READY=1")
        log.info("ready: consuming %s", self.config.mqtt.topic)
        batch_cfg = self.config.batch
        max_delay = batch_cfg.max_delay_ms / 1000
        backoff, retry_at, last_status, last_ping, last_watchdog = 0.0, 0.0, 0.0, time.monotonic(), 0.0
        self.stats.window_start = time.monotonic()
        self.stats_base = self.sample(time.monotonic())
        self.stats_due_at = self.stats_base.monotonic + self.config.stats.interval_s
        while not self.stop_requested:
            now = time.monotonic()
            self.unflushed_connection_lost()
            taken = self.inbox.take_all()
            self.stats.received += len(taken)
            self.pending.extend(classify(i, self.limits) for i in taken)
            oldest = self.pending[0].received_at.timestamp() if self.pending else None
            due = self.pending and (len(self.pending) >= batch_cfg.max_rows
                                    or time.time() - oldest >= max_delay)
            if due and now >= retry_at:
                batch = self.pending[: batch_cfg.max_rows]
                if self.flush(batch):
                    del self.pending[: len(batch)]
                    self.stats.count(len(batch), now)
                    backoff, retry_at = 0.0, 0.0
                    last_ping = now
                else:
                    backoff = next_backoff(backoff, batch_cfg.retry_initial_s, batch_cfg.retry_max_s)
                    retry_at = now + backoff
            elif not self.pending and not self.unflushed and now - last_ping >= DB_PING_EVERY_S:
                self.check_database()
                last_ping = now
            if self.unflushed and now >= self.flush_check_at and now >= retry_at:
                self.check_flushed(now)
                last_ping = now
            if self.db_failure is None and now >= self.stats_due_at:
                self.record_stats(now)
            # One pass of the loop done: this is the progress the watchdog waits for.
            if now - last_watchdog >= WATCHDOG_EVERY_S:
                self.notify("WATCHDOG=1")
                last_watchdog = now
            if now - last_status >= STATUS_EVERY_S:
                self.notify("STATUS=" + status_line(self.stats, len(self.pending) + len(self.inbox), now,
                                                    database_state(self.db_failure), self.mqtt_connected.is_set()))
                last_status = now
            if not (self.pending and len(self.pending) >= batch_cfg.max_rows and now >= retry_at):
                self.inbox.wait(*self.next_wake(now, retry_at))
        self.shutdown()
        return 0

    def next_wake(self, now: float, retry_at: float) -> tuple[float, int]:
        """How long the main loop may sleep, and how many new messages wake it earlier."""
        max_delay = self.config.batch.max_delay_ms / 1000
        if retry_at > now:  # the database is failing: new messages wait for the retry
            return min(1.0, retry_at - now), self.config.batch.max_rows
        wait, wake_at = 1.0, 1
        if self.pending:  # a batch is forming: until it is due, or full
            age = time.time() - self.pending[0].received_at.timestamp()
            wait, wake_at = max(0.0, max_delay - age), max(1, self.config.batch.max_rows - len(self.pending))
        if self.unflushed:
            wait = min(wait, max(0.0, self.flush_check_at - now))
        return wait, wake_at

    def sample(self, now: float) -> Sample:
        return Sample(now, self.stats.totals(), storage.sectors_written(self.card_device))

    def record_stats(self, now: float, synchronous: bool = False) -> bool:
        """Write the appliance_stats row for the interval since the last one written.

        If it fails, the next attempt covers the longer interval: no count is lost.
        """
        current = self.sample(now)
        try:
            disk = storage.disk_usage(self.config.stats.disk_path)
        except OSError:
            disk = None
        row = stats_row(datetime.now(UTC), now - self.stats_base.monotonic, self.stats_base.totals, current.totals,
                        len(self.pending) + len(self.inbox), disk, self.stats_base.sectors, current.sectors)
        try:
            self.store.write_stats(row, synchronous=synchronous)
        except psycopg2.Error as exc:
            log.warning("appliance_stats not written (%s); the next row covers this interval too",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            self.stats_due_at = now + min(self.config.stats.interval_s, STATS_RETRY_S)
            return False
        self.stats_base = current
        self.stats_due_at = now + self.config.stats.interval_s
        return True

    def check_database(self) -> None:
        """An idle ping, so that the status notices a database that went away between batches."""
        try:
            if self.store.conn is None:
                self.store.connect()
            self.store.ping()
            if self.db_failure is not None and self.db_failure.kind == UNREACHABLE:
                log.info("database is reachable again")
                self.db_failure = None
        except psycopg2.Error as exc:
            self.note_database_failure(WriteFailed(UNREACHABLE, exc), "idle")
            self.store.close()

    def shutdown(self) -> None:
        """Flush what can be committed, then leave; the rest stays unacknowledged at the broker."""
        self.notify("STOPPING=1")
        self.pending.extend(classify(i, self.limits) for i in self.inbox.take_all())
        flushed = 0
        self.unflushed_connection_lost()
        while self.pending:
            batch = self.pending[: self.config.batch.max_rows]
            # The last commit waits for the disk, and so puts every commit before it there.
            if not self.flush(batch, final=len(batch) == len(self.pending)):
                break
            del self.pending[: len(batch)]
            flushed += len(batch)
        # The interval's counts so far, in a synchronous commit: it puts any batch still waiting on disk.
        if (self.db_failure is None and self.stats_base is not None
                and self.record_stats(time.monotonic(), synchronous=True)):
            self.acknowledge(len(self.unflushed))
        left = len(self.pending) + self.unflushed_count
        if left:
            log.warning("stopping with %d messages unacknowledged; the broker redelivers them", left)
        log.info("stopped after flushing %d messages", flushed)
        self.client.disconnect()
        self.client.loop_stop()
        self.store.close()
