"""Hypothesis strategies for what a sensor, buggy firmware or a holder of a sensor's
credentials may publish. Shared by the unit fuzz test of `parse_message` and the
integration fuzz test on a simulated Pi, so both try the same inputs."""

from __future__ import annotations

import json

from hypothesis import strategies as st

KINDS = ("data", "heartbeat", "status")
FIRMWARE_FIELDS = {
    "data": {"timestamp": "2025-11-03T14:30:00.000Z", "temperature": 22.5, "humidity": 65.3},
    "heartbeat": {"site_id": "SITE_001", "timestamp": "2025-11-03T14:30:00.000Z", "rssi": -67, "free_heap": 180000,
                  "uptime": 3600, "min_heap": 150000, "ntp_sync": True},
    "status": {"timestamp": "2025-11-03T14:30:00.000Z"},
}

# Integers at the edges of PostgreSQL's int4 and int8, and past them.
BOUNDARY_INTS = [0, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**70, 10**40]
BOUNDARY_FLOATS = [0.0, -0.0, 1e308, -1e308, 5e-324, float("inf"), float("-inf"), float("nan"), 1e400]

# Text with what PostgreSQL refuses (NUL, lone surrogates) and odd Unicode it takes.
odd_characters = st.one_of(
    st.characters(codec="utf-8"),
    st.sampled_from(["\x00", "\ud800", "\udfff", "\ufeff", "\u202e", "\U0001f600", "\u0301", "\uffff", "\\"]),
)
texts = st.one_of(
    st.text(odd_characters, max_size=20),
    st.integers(60, 5000).map(lambda n: "x" * n),  # long strings
    st.sampled_from(["", "SITE_001", "SITE_UNKNOWN", "1970-01-01T00:00:07.000Z", "NaN", "null"]),
)
numbers = st.one_of(
    st.sampled_from(BOUNDARY_INTS), st.sampled_from(BOUNDARY_FLOATS),
    st.integers(), st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)),
    max_leaves=12,
)


@st.composite
def bodies(draw, kind: str, device_id: str) -> dict:
    """A firmware-shaped body with some fields replaced, removed or added."""
    body = {"device_id": device_id, **FIRMWARE_FIELDS[kind]}
    for key in draw(st.lists(st.sampled_from(sorted(body)), max_size=3, unique=True)):
        if draw(st.booleans()):
            body[key] = draw(json_values)
        else:
            del body[key]
    body.update(draw(st.dictionaries(texts, json_values, max_size=3)))
    return body


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def payloads(draw, device_id: str) -> tuple[str, bytes]:
    """(kind, payload bytes): mostly JSON bodies serialised in several ways, sometimes raw bytes."""
    kind = draw(st.sampled_from(KINDS))
    form = draw(st.sampled_from(["json", "json", "json", "ascii", "bytes", "deep", "number"]))
    if form == "bytes":
        return kind, draw(st.binary(max_size=300))
    if form == "deep":
        body = json.dumps({"device_id": device_id, **FIRMWARE_FIELDS[kind]})
        nested = deep(draw(st.integers(2, 3000)))
        return kind, (body[:-1] + f', "nested": {nested}}}').encode()
    if form == "number":
        body = json.dumps({"device_id": device_id, **FIRMWARE_FIELDS[kind]})
        digits = "9" * draw(st.integers(300, 4500))
        return kind, (body[:-1] + f', "big": {digits}}}').encode()
    body = draw(bodies(kind, device_id))
    text = json.dumps(body, ensure_ascii=form == "ascii", allow_nan=True)
    # ensure_ascii=False leaves lone surrogates as they are: invalid UTF-8 once encoded.
    return kind, text.encode("utf-8", "surrogatepass")


def generate(strategy, count: int, seed: int) -> list:
    """`count` examples of `strategy`, the same ones for the same seed (for tests that publish them)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fixed_seed

    drawn: list = []

    @fixed_seed(seed)
    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example):
        drawn.append(example)

    collect()
    return drawn
