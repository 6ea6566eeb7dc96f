"""Pure logic of the ingestor's store and service: throttling, the redelivery bound, failure kinds, status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg2
import psycopg2.errors
import pytest
from datayoti_ingestor import service
from datayoti_ingestor.messages import Limits, parse_message
from datayoti_ingestor.service import Stats, database_state, status_line
from datayoti_ingestor.store import (
    BROKEN,
    REDELIVERY_WINDOW,
    REFUSED,
    TRANSIENT,
    UNREACHABLE,
    Incoming,
    Store,
    TouchThrottle,
    WriteFailed,
    failure_kind,
    interval_seconds,
    parse_lsn,
    refusal_detail,
)


def test_a_device_is_touched_at_once_then_once_per_period():
    throttle = TouchThrottle(every_s=30)
    assert throttle.due(["b", "a", "a"], now=5.0) == ["a", "b"]
    throttle.mark(["a", "b"], now=5.0)
    assert throttle.due(["a", "b", "c"], now=20.0) == ["c"]
    assert throttle.due(["a"], now=35.0) == ["a"]


def test_redelivery_bound_is_a_week_before_the_oldest_receipt():
    assert REDELIVERY_WINDOW == "7 days"
    first = datetime(2025, 1, 8, tzinfo=UTC)
    items = []
    for i in range(3):
        received = first + timedelta(seconds=i)
        payload = (b'{"device_id":"AA:BB:CC:DD:EE:FF","timestamp":"2025-01-08T00:00:00Z",'
                   b'"temperature":20,"humidity":50}')
        topic = "datayoti/sensor/AA:BB:CC:DD:EE:FF/data"
        items.append(Incoming(mid=i, dup=False, received_at=received, topic=topic, payload=payload,
                              parsed=parse_message(topic, payload, received, Limits())))
    assert Store._stamp_params(items)["redelivery_since"] == datetime(2025, 1, 1, tzinfo=UTC)


# --- what a failed write means (issue 8)
def pg_error(base: type, sqlstate: str | None):
    """A psycopg2 error as the server would raise it, with its SQLSTATE."""
    return type("ServerError", (base,), {"pgcode": sqlstate})("server says no")


@pytest.mark.parametrize("error,kind", [
    (pg_error(psycopg2.DataError, "22003"), REFUSED),                 # integer out of range
    (pg_error(psycopg2.DataError, "22P05"), REFUSED),                 # \u0000 in jsonb
    (pg_error(psycopg2.IntegrityError, "23503"), REFUSED),            # foreign key
    (ValueError("A string literal cannot contain NUL (0x00) characters."), REFUSED),
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), REFUSED),
    (TypeError("a bug only some message reaches"), REFUSED),
    (pg_error(psycopg2.OperationalError, None), UNREACHABLE),         # connection lost
    (pg_error(psycopg2.InterfaceError, None), UNREACHABLE),           # connection already closed
    (pg_error(psycopg2.OperationalError, "57P01"), UNREACHABLE),      # admin shutdown
    (pg_error(psycopg2.OperationalError, "57P03"), UNREACHABLE),      # the server is starting
    (pg_error(psycopg2.OperationalError, "08006"), UNREACHABLE),
    (pg_error(psycopg2.errors.SerializationFailure, "40001"), TRANSIENT),
    (pg_error(psycopg2.errors.DeadlockDetected, "40P01"), TRANSIENT),
    (pg_error(psycopg2.OperationalError, "53100"), TRANSIENT),        # disk full
    (pg_error(psycopg2.errors.QueryCanceled, "57014"), TRANSIENT),    # statement timeout
    (pg_error(psycopg2.ProgrammingError, "42501"), BROKEN),           # permission denied
    (pg_error(psycopg2.ProgrammingError, "42P01"), BROKEN),           # a table is missing
])
def test_failures_are_told_apart(error, kind):
    assert failure_kind(error) == kind


def test_status_says_down_only_when_the_database_is_unreachable():
    stats = Stats(stored=5, rejected=2, refused=1)
    down = WriteFailed(UNREACHABLE, pg_error(psycopg2.OperationalError, None))
    broken = WriteFailed(BROKEN, pg_error(psycopg2.ProgrammingError, "42501"))
    assert "database DOWN" in status_line(stats, 0, 0.0, database_state(down), True)
    for state in (database_state(None), database_state(broken)):
        line = status_line(stats, 0, 0.0, state, True)
        assert "DOWN" not in line and "database refused 1" in line
    assert "database ERROR 42501" in status_line(stats, 0, 0.0, database_state(broken), True)
    assert "broker DOWN" in status_line(stats, 0, 0.0, "ok", False)


def test_refusal_detail_carries_the_database_words():
    assert refusal_detail(pg_error(psycopg2.DataError, "22003")) == "22003: server says no"
    assert refusal_detail(ValueError("NUL\x00")) == "ValueError: NUL\\x00"


def test_a_surprise_while_parsing_becomes_a_reject(monkeypatch):
    def explode(*args):
        raise KeyError("surprise")

    monkeypatch.setattr(service, "parse_message", explode)
    item = Incoming(mid=1, dup=False, received_at=datetime.now(UTC), topic="datayoti/sensor/x/data", payload=b"{}")
    service.classify(item, Limits())
    assert (item.parsed, item.reason) == (None, "internal_error") and "KeyError" in item.detail


# ------------------------------------------------------------------ asynchronous commits, acknowledged once flushed

@pytest.mark.parametrize("text,position", [("0/0", 0), ("0/16B3F48", 0x16B3F48), ("1/0", 1 << 32),
                                           ("A/FF", (10 << 32) | 0xFF)])
def test_a_wal_position_reads_as_a_byte_offset(text, position):
    assert parse_lsn(text) == position


@pytest.mark.parametrize("text,seconds", [("10s", 10.0), ("200ms", 0.2), ("1min", 60.0), ("500", 0.5)])
def test_a_time_setting_reads_in_seconds(text, seconds):
    assert interval_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("max_unflushed,unflushed,incoming,oldest,expected", [
    (0, 0, 1, None, True),        # asynchronous commits off
    (500, 0, 20, None, False),    # nothing waits yet
    (500, 480, 20, 1.0, False),   # exactly at the bound
    (500, 481, 20, 1.0, True),    # one more would pass it
    (500, 10, 1, 11.9, False),
    (500, 10, 1, 12.0, True),     # the oldest waited past the deadline
])
def test_a_commit_waits_for_the_disk_when_too_much_or_too_old_waits_for_the_flush(
        max_unflushed, unflushed, incoming, oldest, expected):
    assert service.must_wait_for_disk(max_unflushed, unflushed, incoming, oldest, deadline_s=12.0) is expected


def test_only_batches_whose_commit_is_flushed_are_acknowledged():
    batches = [service.Unflushed(lsn, 0.0, []) for lsn in (100, 200, 300)]
    assert [service.flushed_prefix(batches, flushed) for flushed in (99, 100, 250, 300, 10**9)] == [0, 1, 2, 3, 3]
    assert service.flushed_prefix([], 10) == 0
    # A batch whose end is not bounded yet is never taken as flushed, nor is any after it.
    assert service.flushed_prefix([service.Unflushed(None, 0.0, []), *batches], 10**9) == 0


def test_batches_committed_before_a_wal_position_was_read_end_before_it():
    batches = [service.Unflushed(lsn, 0.0, []) for lsn in (100, None, None)]
    service.bound_unflushed(batches, 500)
    assert [b.lsn for b in batches] == [100, 500, 500]
    batches.append(service.Unflushed(None, 0.0, []))
    service.bound_unflushed(batches, 900)
    assert [b.lsn for b in batches] == [100, 500, 500, 900]


def test_the_inbox_wakes_the_main_loop_once_enough_messages_wait():
    import threading

    inbox = service.Inbox()
    woke = threading.Event()

    def sleeper():
        inbox.wait(5.0, wake_at=3)
        woke.set()

    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        for mid in range(2):
            inbox.put(Incoming(mid=mid, dup=False, received_at=datetime.now(UTC), topic="t", payload=b""))
        assert not woke.wait(0.3), "woken before 3 messages waited"
        inbox.put(Incoming(mid=2, dup=False, received_at=datetime.now(UTC), topic="t", payload=b""))
        assert woke.wait(2.0), "not woken by the third message"
    finally:
        inbox.wake()
        thread.join(5)
    assert len(inbox.take_all()) == 3


def test_the_main_loop_sleeps_until_a_forming_batch_is_due_or_full():
    from datayoti_ingestor.config import Config

    ingestor = service.Ingestor(Config(), notify=lambda state: None)
    assert ingestor.next_wake(now=100.0, retry_at=0.0) == (1.0, 1)  # idle: the first message wakes it
    ingestor.pending = [Incoming(mid=1, dup=False, received_at=datetime.now(UTC), topic="t", payload=b"")]
    wait, wake_at = ingestor.next_wake(now=100.0, retry_at=0.0)
    assert 0.0 <= wait <= 0.020 and wake_at == ingestor.config.batch.max_rows - 1
    ingestor.unflushed.append(service.Unflushed(None, 99.0, []))
    ingestor.flush_check_at = 100.005
    assert ingestor.next_wake(now=100.0, retry_at=0.0)[0] <= 0.005  # time to ask how far the WAL is flushed
    # The database is failing: new messages wait for the retry, whatever their number.
    assert ingestor.next_wake(now=100.0, retry_at=100.5) == (0.5, ingestor.config.batch.max_rows)


class RecordingStore:
    """Stands in for Store in the acknowledgement logic only: each write returns the WAL positions given."""

    asynchronous = True
    wal_writer_delay_s = 10.0
    connects = 1
    conn = object()

    def __init__(self, positions):
        self.positions = list(positions)
        self.synchronous = []

    def write_batch(self, batch, synchronous=False):
        from datayoti_ingestor.store import BatchResult

        self.synchronous.append(synchronous)
        return BatchResult(readings=len(batch), wal_positions=self.positions.pop(0))


def test_a_batch_is_acknowledged_once_a_later_batch_reads_the_wal_flushed_past_it():
    from datayoti_ingestor.config import Config

    ingestor = service.Ingestor(Config(), notify=lambda state: None)
    acked = []
    ingestor.client.ack = lambda mid, qos: acked.append(mid)
    # Batch 1 reads nothing useful; batch 2 bounds batch 1 at 100, flushed 50; batch 3 reads flushed 100.
    ingestor.store = RecordingStore([None, (100, 50), (150, 100)])

    def message(mid):
        return Incoming(mid=mid, dup=False, received_at=datetime.now(UTC), topic="t", payload=b"")

    assert ingestor.flush([message(1)]) and acked == []
    assert ingestor.flush([message(2)]) and acked == []        # batch 1 ends before 100, not flushed yet
    assert ingestor.flush([message(3)]) and acked == [1]       # flushed to 100: batch 1 is on disk
    assert ingestor.store.synchronous == [False, False, False]
    assert [e.lsn for e in ingestor.unflushed] == [150, None]  # batch 2 bounded, batch 3 not yet
    ingestor.store.positions.append(None)
    assert ingestor.flush([message(4)], final=True) and acked == [1, 2, 3, 4]  # a synchronous commit: all
    assert ingestor.unflushed_count == 0
