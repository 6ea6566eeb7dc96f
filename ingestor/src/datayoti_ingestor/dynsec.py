"""The broker's accounts, kept by Mosquitto's dynamic security plugin (mosquitto_dynamic_security.so).

Each change is one list of control-API commands (createClient, setClientPassword, ...), run one of
two ways:
- online, while the broker runs: published as datayoti_admin to `$CONTROL/dynamic-security/v1`;
  the plugin applies it, saves its file, and kicks only the client a command names;
- offline, while it does not: applied to the plugin's JSON file by `apply_offline`, the same
  semantics, so the image build and a stopped broker need no second implementation.

Password hashes are the plugin's own: PBKDF2-HMAC-SHA512, 12-byte salt, 101 iterations
(plugins/dynamic-security/auth.c, src/password_mosq.h in Mosquitto 2.0).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import threading
from pathlib import Path

from . import layout

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
ITERATIONS = 101
SALT_BYTES = 12
HASH_BYTES = 64
ADMIN_ROLE = "datayoti-admin"
INGESTOR_ROLE = "datayoti-ingestor"
ALERTS_ROLE = "datayoti-alerts"
ALERTS_TOPIC = "datayoti/alerts"  # Grafana's MQTT contact point publishes under it
ANSWER_TIMEOUT_S = 10.0
PLUGIN_LIBRARY = "mosquitto_dynamic_security.so"

# Nothing is allowed unless a role allows it, as with the ACL file before.
DEFAULT_ACL_ACCESS = {"publishClientSend": False, "publishClientReceive": True, "subscribe": False,
                      "unsubscribe": True}


class DynsecError(Exception):
    """The broker's accounts could not be read or changed; the message says why."""


# ------------------------------------------------------------------ pure: hashes, roles, commands

def password_hash(password: str, salt: bytes, iterations: int = ITERATIONS) -> str:
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    return base64.b64encode(digest).decode()


def holds_password(client: dict | None, password: str) -> bool:
    """Whether the plugin's entry for a client accepts this password."""
    if not client or "password" not in client or "salt" not in client:
        return False
    try:
        salt = base64.b64decode(client["salt"], validate=True)
        expected = password_hash(password, salt, int(client.get("iterations", ITERATIONS)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected, client["password"])


def admin_role() -> dict:
    acls = [{"acltype": kind, "topic": CONTROL_TOPIC + "/#", "priority": 0, "allow": True}
            for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")]
    return {"rolename": ADMIN_ROLE, "textname": "the datayoti program", "acls": acls}


def ingestor_role() -> dict:
    return {"rolename": INGESTOR_ROLE, "textname": "the ingestor reads every sensor",
            "acls": [{"acltype": "subscribePattern", "topic": "datayoti/#", "priority": 0, "allow": True}]}


def alerts_role() -> dict:
    return {"rolename": ALERTS_ROLE, "textname": "Grafana publishes its alerts",
            "acls": [{"acltype": "publishClientSend", "topic": ALERTS_TOPIC + "/#", "priority": 0, "allow": True}]}


SENSOR_ROLE_PREFIX = "sensor-"


def sensor_role_name(username: str) -> str:
    # One role per sensor: changing a shared role would kick every client holding it.
    return SENSOR_ROLE_PREFIX + username


def sensor_role(username: str, mac: str) -> dict:
    return {"rolename": sensor_role_name(username), "textname": f"sensor {mac} publishes its own topics",
            "acls": [{"acltype": "publishClientSend", "topic": f"datayoti/sensor/{mac}/#", "priority": 0,
                      "allow": True}]}


def create_role(role: dict) -> dict:
    return {"command": "createRole", **role}


def create_client(username: str, password: str, rolename: str, textname: str = "",
                  textdescription: str = "") -> dict:
    return {"command": "createClient", "username": username, "password": password, "textname": textname,
            "textdescription": textdescription, "roles": [{"rolename": rolename}]}


def set_password(username: str, password: str) -> dict:
    return {"command": "setClientPassword", "username": username, "password": password}


def delete_client(username: str) -> dict:
    return {"command": "deleteClient", "username": username}


def delete_role(rolename: str) -> dict:
    return {"command": "deleteRole", "rolename": rolename}


def empty_document() -> dict:
    return {"clients": [], "groups": [], "roles": [], "defaultACLAccess": dict(DEFAULT_ACL_ACCESS)}


def find(document: dict, kind: str, name: str) -> dict | None:
    """kind "clients" (by username) or "roles" (by rolename)."""
    key = "username" if kind == "clients" else "rolename"
    return next((item for item in document.get(kind, []) if item.get(key) == name), None)


def apply_offline(document: dict, commands: list[dict], salt=lambda: secrets.token_bytes(SALT_BYTES)) -> dict:
    """The plugin's semantics on its file: a new document; DynsecError on the first failing command."""
    doc = copy.deepcopy(document)
    for cmd in commands:
        name = cmd["command"]
        if name == "createRole":
            if find(doc, "roles", cmd["rolename"]):
                raise DynsecError(f"createRole {cmd['rolename']}: Role already exists")
            doc["roles"].append({k: v for k, v in cmd.items() if k != "command"})
        elif name == "deleteRole":
            doc["roles"] = [r for r in doc["roles"] if r.get("rolename") != cmd["rolename"]]
            for client in doc["clients"]:
                client["roles"] = [r for r in client.get("roles", []) if r.get("rolename") != cmd["rolename"]]
        elif name == "createClient":
            if find(doc, "clients", cmd["username"]):
                raise DynsecError(f"createClient {cmd['username']}: Client already exists")
            for ref in cmd.get("roles", []):
                if not find(doc, "roles", ref["rolename"]):
                    raise DynsecError(f"createClient {cmd['username']}: Role {ref['rolename']} not found")
            client = {"username": cmd["username"], "textname": cmd.get("textname", ""),
                      "textdescription": cmd.get("textdescription", ""), "roles": cmd.get("roles", [])}
            doc["clients"].append(client)
            set_offline_password(client, cmd["password"], salt())
        elif name == "setClientPassword":
            client = find(doc, "clients", cmd["username"])
            if client is None:
                raise DynsecError(f"setClientPassword {cmd['username']}: Client not found")
            set_offline_password(client, cmd["password"], salt())
        elif name == "deleteClient":
            doc["clients"] = [c for c in doc["clients"] if c.get("username") != cmd["username"]]
        else:
            raise DynsecError(f"{name}: not supported offline")
    return doc


def set_offline_password(client: dict, password: str, salt: bytes) -> None:
    if not password:
        raise DynsecError(f"{client['username']}: Empty password is not allowed")
    client.update(password=password_hash(password, salt), salt=base64.b64encode(salt).decode(),
                  iterations=ITERATIONS)


def response_errors(answer: dict, correlation: str) -> list[str] | None:
    """The errors of our answer ("command: error"), or None when the answer is someone else's."""
    responses = answer.get("responses")
    if not isinstance(responses, list) or not responses:
        return None
    if any(r.get("correlationData") != correlation for r in responses):
        return None
    return [f"{r.get('command')}: {r['error']}" for r in responses if r.get("error")]


# ------------------------------------------------------------------ the plugin's file

def read_document(path: Path = layout.DYNSEC_FILE) -> dict | None:
    """The plugin's file, or None when it does not exist yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DynsecError(f"cannot read {path}: {exc.strerror}") from None
    try:
        document = json.loads(text)
    except ValueError:
        raise DynsecError(f"{path} is not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("clients", []), list):
        raise DynsecError(f"{path} is not a dynamic security file")
    document.setdefault("clients", [])
    document.setdefault("roles", [])
    document.setdefault("groups", [])
    return document


def write_document(document: dict, path: Path = layout.DYNSEC_FILE) -> None:
    """Atomically, owned by the broker's user, 0600."""
    import pwd

    candidate = path.with_name(path.name + ".datayoti-new")
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(document, out, indent=1)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(KeyError):
            user = pwd.getpwnam(layout.MOSQUITTO_USER)
            os.chown(candidate, user.pw_uid, user.pw_gid)
        os.replace(candidate, path)
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def broker_uses_plugin() -> bool:
    """Whether a running broker has loaded the plugin: only then does it hold the accounts in memory."""
    done = subprocess.run(["systemctl", "show", "--property=MainPID", "--value", layout.MOSQUITTO_UNIT],
                          capture_output=True, text=True, check=False)
    pid = done.stdout.strip()
    if done.returncode != 0 or not pid.isdigit() or pid == "0":
        return False
    try:
        return PLUGIN_LIBRARY in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


# ------------------------------------------------------------------ running commands

def run(commands: list[dict], *, admin_password: str, port: int = 1883, path: Path = layout.DYNSEC_FILE,
        online: bool | None = None) -> str:
    """Run commands online if the broker runs, else on its file; returns "online" or "offline"."""
    if not commands:
        return "none"
    if online is None:
        online = path.exists() and broker_uses_plugin()
    if online:
        run_online(commands, admin_password=admin_password, port=port)
        sync_broker_file(path)
        return "online"
    document = read_document(path) or empty_document()
    write_document(apply_offline(document, commands), path)
    return "offline"


def sync_broker_file(path: Path) -> None:
    """Put the broker's own save of its file on disk.

    The plugin saves the file before it answers, but never syncs it: a power cut in the next half minute
    would take the change back (an account added, a password rotated, a sensor revoked).
    """
    with contextlib.suppress(FileNotFoundError):
        fsync_path(path)
        fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_online(commands: list[dict], *, admin_password: str, port: int, host: str = "localhost",
               timeout: float = ANSWER_TIMEOUT_S) -> None:
    """Publish the commands as datayoti_admin and wait for the plugin's answer."""
    import paho.mqtt.client as mqtt

    correlation = secrets.token_hex(8)
    payload = json.dumps({"commands": [{**c, "correlationData": correlation} for c in commands]})
    done = threading.Event()
    state: dict = {"errors": None, "connect": None}

    def on_connect(client, _userdata, _flags, reason_code, _properties):
        state["connect"] = reason_code
        if reason_code.is_failure:
            done.set()
            return
        client.subscribe(RESPONSE_TOPIC, qos=1)

    def on_subscribe(client, _userdata, _mid, _codes, _properties):
        client.publish(CONTROL_TOPIC, payload, qos=1)

    def on_message(_client, _userdata, message):
        try:
            errors = response_errors(json.loads(message.payload), correlation)
        except ValueError:
            return
        if errors is not None:
            state["errors"] = errors
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"datayoti-admin-{os.getpid()}",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(layout.MQTT_ADMIN_USER, admin_password)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise DynsecError(f"cannot reach the broker on {host}:{port}: {exc.strerror or exc}") from None
    client.loop_start()
    try:
        answered = done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    if state["connect"] is not None and state["connect"].is_failure:
        raise DynsecError(f"the broker refused {layout.MQTT_ADMIN_USER}: {state['connect']}")
    if not answered:
        raise DynsecError(f"no answer from the broker's dynamic security plugin on {host}:{port} in "
                          f"{timeout:.0f} s (is mosquitto configured by site.yml and running?)")
    if state["errors"]:
        raise DynsecError("; ".join(state["errors"]))
