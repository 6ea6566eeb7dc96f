"""Pure logic of the ingestor's store: last-seen throttling and the redelivery bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from datayoti_ingestor.messages import Limits, parse_message
from datayoti_ingestor.store import REDELIVERY_WINDOW, Incoming, Store, TouchThrottle


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
