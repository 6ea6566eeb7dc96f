"""The ingestor's main loop: MQTT in, batched transactions out, ack after commit.

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
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from . import storage
from .config import Config, database_connect_kwargs
from .messages import Limits, Rejected, parse_message, printable
from .store import UNREACHABLE, Incoming, Store, WriteFailed

log = logging.getLogger("datayoti.ingestor")
STATUS_EVERY_S = 5.0
DB_PING_EVERY_S = 10.0
STATS_RETRY_S = 10.0


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
    """What paho's thread hands to the main loop."""

    def __init__(self):
        self._items: deque[Incoming] = deque()
        self._ready = threading.Condition()

    def put(self, item: Incoming) -> None:
        with self._ready:
            self._items.append(item)
            self._ready.notify()

    def take_all(self) -> list[Incoming]:
        with self._ready:
            items = list(self._items)
            self._items.clear()
            return items

    def wait(self, timeout: float) -> None:
        with self._ready:
            if not self._items:
                self._ready.wait(timeout)

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
        self.stats = Stats()
        self.stop_requested = False
        self.mqtt_connected = threading.Event()
        # None while the database takes writes; the last WriteFailed otherwise.
        self.db_failure: WriteFailed | None = None
        self.store = Store(
            connect_kwargs=database_connect_kwargs(config.database),
            device_cache_ttl_s=config.rules.device_cache_ttl_s,
            payload_limit=config.rules.rejected_payload_bytes,
        )
        self.client = self._make_client()
        self.card_device = storage.block_device_of(config.stats.disk_path)
        self.stats_base: Sample | None = None
        self.stats_due_at = 0.0

    # ------------------------------------------------------------ MQTT (paho's thread)

    def _make_client(self) -> mqtt.Client:
        m = self.config.mqtt
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=m.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
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
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = m.session_expiry_s
        props.ReceiveMaximum = m.receive_maximum
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=False, properties=props)
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

    def flush(self, batch: list[Incoming]) -> bool:
        """Commit a batch, then acknowledge it. False if it was kept for a retry."""
        try:
            result = self.store.write_batch(batch)
        except WriteFailed as failure:
            self.note_database_failure(failure, f"keeping {len(batch)} messages unacknowledged")
            return False
        if self.db_failure is not None:
            log.info("database is back; writing resumed")
        self.db_failure = None
        for item in batch:
            self.client.ack(item.mid, item.qos)
        for item in batch:
            if item.reason:
                log.warning("rejected %s: %s (%s)", printable(item.topic), item.reason, item.detail)
        self.stats.stored += result.readings + result.heartbeats + result.statuses
        self.stats.rejected += result.rejected
        self.stats.refused += result.refused
        self.stats.duplicates += result.duplicates
        return True

    def note_database_failure(self, failure: WriteFailed, consequence: str) -> None:
        """Log a database failure once per change of state."""
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
        backoff, retry_at, last_status, last_ping = 0.0, 0.0, 0.0, time.monotonic()
        self.stats.window_start = time.monotonic()
        self.stats_base = self.sample(time.monotonic())
        self.stats_due_at = self.stats_base.monotonic + self.config.stats.interval_s
        while not self.stop_requested:
            now = time.monotonic()
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
            elif not self.pending and now - last_ping >= DB_PING_EVERY_S:
                self.check_database()
                last_ping = now
            if self.db_failure is None and now >= self.stats_due_at:
                self.record_stats(now)
            # One pass of the loop done: this is the progress the watchdog waits for.
            self.notify("WATCHDOG=1")
            if now - last_status >= STATUS_EVERY_S:
                self.notify("STATUS=" + status_line(self.stats, len(self.pending) + len(self.inbox), now,
                                                    database_state(self.db_failure), self.mqtt_connected.is_set()))
                last_status = now
            if not (self.pending and len(self.pending) >= batch_cfg.max_rows and now >= retry_at):
                wait = max_delay if self.pending else 1.0
                if retry_at > now:
                    wait = min(1.0, retry_at - now)
                self.inbox.wait(wait)
        self.shutdown()
        return 0

    def sample(self, now: float) -> Sample:
        return Sample(now, self.stats.totals(), storage.sectors_written(self.card_device))

    def record_stats(self, now: float) -> None:
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
            self.store.write_stats(row)
        except psycopg2.Error as exc:
            log.warning("appliance_stats not written (%s); the next row covers this interval too",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            self.stats_due_at = now + min(self.config.stats.interval_s, STATS_RETRY_S)
            return
        self.stats_base = current
        self.stats_due_at = now + self.config.stats.interval_s

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
        while self.pending:
            batch = self.pending[: self.config.batch.max_rows]
            if not self.flush(batch):
                break
            del self.pending[: len(batch)]
            flushed += len(batch)
        if self.db_failure is None and self.stats_base is not None:
            self.record_stats(time.monotonic())  # the interval's counts so far
        if self.pending:
            log.warning("stopping with %d messages unacknowledged; the broker redelivers them", len(self.pending))
        log.info("stopped after flushing %d messages", flushed)
        self.client.disconnect()
        self.client.loop_stop()
        self.store.close()
