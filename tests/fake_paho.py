"""A fake paho client for unit tests of the simulator: records what a sensor does, in order."""

from __future__ import annotations

import json


class Reason:
    """paho's ReasonCode, as a CONNACK gives it."""

    def __init__(self, failure: bool):
        self.is_failure = failure

    def __str__(self):
        return "Not authorized" if self.is_failure else "Success"


class Info:
    """paho's MQTTMessageInfo: `acked` False is a QoS 1 message the broker never PUBACKs."""

    def __init__(self, acked: bool = True):
        self.rc, self.acked = 0, acked

    def is_published(self):
        return self.acked

    def wait_for_publish(self, timeout=None):
        pass


class Client:
    """`refuse` makes the broker refuse the login; `ack_qos1` False leaves QoS 1 messages unacknowledged.
    `calls` has every call in order; `published` the publications, with JSON payloads parsed."""

    def __init__(self, client_id: str, refuse: bool = False, ack_qos1: bool = True):
        self.client_id, self.refuse, self.ack_qos1 = client_id, refuse, ack_qos1
        self.calls, self.published, self.on_connect = [], [], None

    def username_pw_set(self, username, password):
        self.calls.append(("login", username))

    def will_set(self, topic, payload, qos, retain):
        self.calls.append(("will", topic, json.loads(payload), qos, retain))

    def connect(self, host, port, keepalive):
        self.calls.append(("connect", host, port, keepalive))
        self.on_connect(self, None, None, Reason(self.refuse), None)

    def loop_start(self):
        pass

    def publish(self, topic, payload, qos=0, retain=False):
        self.calls.append(("publish", topic, payload, qos, retain))
        self.published.append((topic, parsed(payload), qos, retain))
        return Info(acked=qos == 0 or self.ack_qos1)

    def disconnect(self):
        self.calls.append(("disconnect",))

    def loop_stop(self):
        pass


def parsed(payload):
    """A JSON payload as data; a bad one (the simulator sends some on purpose) as it is."""
    try:
        return json.loads(payload)
    except (ValueError, TypeError):
        return payload
