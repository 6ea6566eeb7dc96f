"""The storage under the appliance: free space and bytes written to the card.

Shared by `datayoti status` and the ingestor's appliance_stats rows.
"""

from __future__ import annotations

import os
from pathlib import Path

SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors, whatever the device's own


def parse_diskstats(text: str, device: str) -> int | None:
    """Sectors written to `device` since boot (the 10th field of /proc/diskstats)."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 10 and fields[2] == device:
            try:
                return int(fields[9])
            except ValueError:
                return None
    return None


def existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_usage(path: str) -> tuple[int, int]:
    """(free bytes for unprivileged users, total bytes) of the filesystem holding `path`; raises OSError."""
    st = os.statvfs(existing_ancestor(Path(path)))
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def block_device_of(path: str) -> str | None:
    """The disk holding `path` (mmcblk0 on a Pi, not its partition); None on overlay, tmpfs and the like."""
    try:
        dev = os.stat(existing_ancestor(Path(path))).st_dev
    except OSError:
        return None
    node = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not node.exists():
        return None
    real = node.resolve()
    return real.parent.name if (real / "partition").exists() else real.name


def sectors_written(device: str | None, diskstats: Path = Path("/proc/diskstats")) -> int | None:
    """Sectors written to `device` since boot; None when it cannot be read."""
    if device is None:
        return None
    try:
        return parse_diskstats(diskstats.read_text(), device)
    except OSError:
        return None
