"""Filters of the timescaledb role: memory sizing and address checks.

The memory sizing lives here and nowhere else: vars/main.yml feeds it
timescaledb_memory_mb, the configuration template writes what it returns, and
tests/unit/test_timescaledb_memory_table.py checks the README table against it.
"""

from __future__ import annotations

import ipaddress

# RAM kept for the OS, Grafana, Mosquitto and the ingestor (MB).
RESERVED_MB = 384
# PostgreSQL is sized for at least this much, even on a 512 MB Pi (MB).
POSTGRES_FLOOR_MB = 128


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))


def _size(mb: int) -> str:
    """MB as PostgreSQL prints it back (SHOW): whole GB when exact, else MB."""
    return f"{mb // 1024}GB" if mb % 1024 == 0 else f"{mb}MB"


def timescaledb_memory_settings(memory_mb) -> dict[str, str | int]:
    """postgresql.conf memory, WAL and worker settings for a host with memory_mb of RAM."""
    total = int(memory_mb)
    postgres = max(total - RESERVED_MB, POSTGRES_FLOOR_MB)  # what PostgreSQL and its page cache may use

    max_connections = _clamp(total // 64, 20, 50)
    # A sixth, in 16 MB steps: the page cache serves reads too, and a 1 GB Pi keeps
    # the whole stack (PostgreSQL + Mosquitto + ingestor) under 250 MB for Grafana.
    shared_buffers = max(postgres // 96 * 16, 32)
    work_mem = _clamp((postgres - shared_buffers) // (max_connections * 4), 2, 64)
    maintenance_work_mem = _clamp(postgres // 16, 16, 512)
    max_wal_size = _clamp(total, 512, 4096)
    background_workers = _clamp(total // 1024 + 1, 2, 4)
    parallel_workers = _clamp(total // 1024, 0, 4)

    return {
        "max_connections": max_connections,
        "shared_buffers": _size(shared_buffers),
        "effective_cache_size": _size(postgres * 3 // 4 // 16 * 16),
        "work_mem": _size(work_mem),
        "maintenance_work_mem": _size(maintenance_work_mem),
        "autovacuum_work_mem": _size(_clamp(maintenance_work_mem // 2, 8, 256)),
        "autovacuum_max_workers": 2 if total < 4096 else 3,
        "wal_buffers": _size(_clamp(shared_buffers // 32, 1, 16)),
        "max_wal_size": _size(max_wal_size),
        "min_wal_size": _size(max_wal_size // 4),
        "timescaledb.max_background_workers": background_workers,
        "max_parallel_workers": parallel_workers,
        "max_parallel_workers_per_gather": parallel_workers // 2,
        "max_parallel_maintenance_workers": parallel_workers // 2,
        # The TimescaleDB launcher, its workers, parallel query and 2 spare.
        "max_worker_processes": background_workers + parallel_workers + 3,
    }


def timescaledb_invalid_networks(networks) -> list:
    """Entries that are not an explicit CIDR network (address/prefix, no host bits)."""
    invalid = []
    for network in networks:
        try:
            if "/" not in str(network):
                raise ValueError
            ipaddress.ip_network(str(network), strict=True)
        except ValueError:
            invalid.append(network)
    return invalid


def timescaledb_invalid_listen_addresses(addresses) -> list:
    """Entries that PostgreSQL's listen_addresses would not take: not an IP, localhost or *."""
    invalid = []
    for address in addresses:
        if str(address) in ("localhost", "*"):
            continue
        try:
            ipaddress.ip_address(str(address))
        except ValueError:
            invalid.append(address)
    return invalid


def timescaledb_is_loopback_only(addresses) -> bool:
    """True when every listen address is localhost or a loopback address."""
    for address in addresses:
        if str(address) == "localhost":
            continue
        try:
            if not ipaddress.ip_address(str(address)).is_loopback:
                return False
        except ValueError:
            return False
    return True


class FilterModule:
    def filters(self):
        return {
            "timescaledb_memory_settings": timescaledb_memory_settings,
            "timescaledb_invalid_networks": timescaledb_invalid_networks,
            "timescaledb_invalid_listen_addresses": timescaledb_invalid_listen_addresses,
            "timescaledb_is_loopback_only": timescaledb_is_loopback_only,
        }
