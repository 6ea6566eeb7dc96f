"""The broker's settings the `datayoti` program needs: /etc/datayoti/broker.toml, written by the mosquitto role.

    [broker]
    public_host = ""        # what sensors connect to (MQTT_SERVER); empty: this Pi's first address
    port = 1883
    tls_port = 8883
    tls_extra_sans = []     # extra names and addresses for the server certificate
    tls_ca_days = 3650
    tls_server_days = 825
"""

from __future__ import annotations

import json
import socket
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import layout
from .config import ConfigError


@dataclass(frozen=True)
class BrokerSettings:
    public_host: str = ""
    port: int = 1883
    tls_port: int = 8883
    tls_extra_sans: tuple[str, ...] = field(default_factory=tuple)
    tls_ca_days: int = 3650
    tls_server_days: int = 825


def parse(text: str, source: str) -> BrokerSettings:
    """TOML text -> settings; ConfigError naming the source and key on anything unexpected."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    section = raw.get("broker", {})
    if set(raw) - {"broker"} or not isinstance(section, dict):
        raise ConfigError(f"{source}: expected only a [broker] table")
    known = BrokerSettings.__dataclass_fields__
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) in [broker]: {', '.join(unknown)}")
    values = {}
    for key, value in section.items():
        where = f"{source}: broker.{key}"
        if key in ("public_host",):
            if not isinstance(value, str) or any(not c.isprintable() or c.isspace() for c in value):
                raise ConfigError(f"{where}: expected a host name or address, got {value!r}")
        elif key == "tls_extra_sans":
            if not isinstance(value, list) or not all(isinstance(v, str) and v and v.isprintable() and ","
                                                          not in v for v in value):
                raise ConfigError(f"{where}: expected a list of names or addresses, got {value!r}")
            value = tuple(value)
        else:
            upper = 65535 if key.endswith("port") else 36500
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= upper:
                raise ConfigError(f"{where}: expected an integer from 1 to {upper}, got {value!r}")
        values[key] = value
    return BrokerSettings(**values)


def load(path: Path = layout.BROKER_CONFIG) -> BrokerSettings:
    try:
        return parse(path.read_text(), str(path))
    except FileNotFoundError:
        return BrokerSettings()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def host_addresses() -> list[str]:
    """This Pi's global IPv4 addresses, in interface order."""
    try:
        done = subprocess.run(["ip", "-j", "-4", "addr", "show", "scope", "global"], capture_output=True,
                              text=True, timeout=10, check=True)
        return [info["local"] for link in json.loads(done.stdout) for info in link.get("addr_info", [])
                if info.get("local")]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return []


def public_host(settings: BrokerSettings) -> str:
    """What sensors connect to: the setting, else this Pi's first address, else its name."""
    if settings.public_host:
        return settings.public_host
    addresses = host_addresses()
    return addresses[0] if addresses else socket.gethostname()


def is_ip(text: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except OSError:
            continue
    return False


def server_names(settings: BrokerSettings, hostname: str, fqdn: str, addresses: list[str]) -> list[str]:
    """The server certificate's subjectAltName entries: loopback, the Pi's names and addresses, the extras."""
    names = {"DNS:localhost", "IP:127.0.0.1", f"DNS:{hostname}", f"DNS:{fqdn}"}
    names.update(f"IP:{a}" for a in addresses)
    extras = list(settings.tls_extra_sans) + ([settings.public_host] if settings.public_host else [])
    for extra in extras:
        if extra.startswith(("DNS:", "IP:")):
            names.add(extra)
        else:
            names.add(("IP:" if is_ip(extra) else "DNS:") + extra)
    return sorted(names)
