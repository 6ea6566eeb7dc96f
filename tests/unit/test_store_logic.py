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
