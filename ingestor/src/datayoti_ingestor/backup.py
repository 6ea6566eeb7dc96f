"""`datayoti backup [PATH]` and `datayoti restore PATH`: this Pi in one file, and back onto a fresh card.

The file is a tar (GNU format), 0600, made only by this module:

  manifest.json    first: format, versions, host, time, schema version, row counts, and the size,
                   sha256, owner and mode of every member
  database.dump    pg_dump -Fc of the appliance's database, in one snapshot taken while ingestion runs
  files/<path>     the device registry (sensors/*.json), the broker's accounts (dynamic security file),
                   the CA and server key/certificate, and the secrets
  archive.sha256   last: "<sha256> <N>", the checksum of the N bytes before it

followed by the two zero blocks that end a tar. Every byte is checked before a restore touches
anything: a corrupt, truncated, tampered or foreign file is refused with one line.

A restore follows Timescale's procedure (CREATE EXTENSION, timescaledb_pre_restore(), pg_restore,
timescaledb_post_restore()) into a new database, checks its row counts against the manifest, and only
then swaps it for the old one; so a failed restore leaves the old database as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fnmatch
import grp
import hashlib
import json
import os
import pwd
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from . import config as config_module
from . import dynsec, hostsecrets, layout, localdb, schema

FORMAT = "datayoti-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DUMP = "database.dump"
TRAILER = "archive.sha256"
FILES_PREFIX = "files"
BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 16 << 20
MAX_LONGNAME_BYTES = 4096
DUMP_COMPRESSION = "zstd:3"  # smaller and faster than pg_dump's default gzip (measured on the test bed)
RESTORE_TMP = Path("/var/tmp")
RESTORE_SUFFIX = "_restore"  # the new database, swapped in once it is complete
REPLACED_SUFFIX = "_replaced"  # the old one, dropped after the swap
POSTGRES_TIMEOUT_S = 6 * 3600
SERVICE_TIMEOUT_S = 300
SPACE_MARGIN = 1.1
INGESTOR_UNIT, MIGRATE_UNIT = layout.INGESTOR_UNIT, layout.MIGRATE_UNIT
HEX64 = re.compile(r"[0-9a-f]{64}")
ACCOUNT_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why, in one line."""


@dataclass(frozen=True)
class FileSet:
    directory: Path
    pattern: str
    mirror: bool = False  # a restore also removes the files of this set that the backup does not hold


# What a backup holds besides the database, so that every sensor keeps working without reflashing.
FILE_SETS = (
    FileSet(layout.SECRETS_DIR, "*"),
    FileSet(layout.SENSORS_DIR, "*.json", mirror=True),  # the device registry
    FileSet(layout.MOSQUITTO_CERTS_DIR, "*"),
    FileSet(layout.DYNSEC_FILE.parent, layout.DYNSEC_FILE.name),
)


# ------------------------------------------------------------------ pure: names

def member_name(path: Path) -> str:
    return FILES_PREFIX + str(path)


def plain_name(name: str) -> bool:
    """A file name a restore may write: no directory part, not hidden, printable, short."""
    return (0 < len(name.encode("utf-8", "surrogatepass")) <= 255 and "/" not in name and not name.startswith(".")
            and name.isprintable())


def file_set_of(path: PurePosixPath) -> FileSet | None:
    """The set an absolute path belongs to, or None: a restore writes nowhere else."""
    for fs in FILE_SETS:
        if str(path.parent) == str(fs.directory) and plain_name(path.name) \
                and fnmatch.fnmatchcase(path.name, fs.pattern):
            return fs
    return None


def target_of(name: str) -> PurePosixPath | None:
    """files/etc/... -> /etc/..., when that is a place a restore may write."""
    if not name.startswith(FILES_PREFIX + "/"):
        return None
    path = PurePosixPath(name[len(FILES_PREFIX):])
    if str(path) != name[len(FILES_PREFIX):] or ".." in path.parts:
        return None
    return path if file_set_of(path) else None


def default_path(directory: Path, host: str, when: datetime) -> Path:
    safe_host = re.sub(r"[^A-Za-z0-9._-]", "_", host) or "datayoti"
    return directory / f"{safe_host}-{when.strftime('%Y%m%dT%H%M%SZ')}.tar"


def restore_names(database: str) -> tuple[str, str]:
    """(new database, replaced database) names, within PostgreSQL's 63 bytes."""
    def with_suffix(suffix: str) -> str:
        return database[:63 - len(suffix)] + suffix
    return with_suffix(RESTORE_SUFFIX), with_suffix(REPLACED_SUFFIX)


# ------------------------------------------------------------------ pure: the manifest

def build_manifest(*, host: str, created_at: datetime, datayoti_version: str, database: dict,
                   members: list[dict]) -> dict:
    migrations = sorted(database["migrations"])
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "datayoti_version": datayoti_version,
            "host": host, "created_at": created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "schema_version": migrations[-1] if migrations else None, "database": database, "members": members}


def render_manifest(manifest: dict, capacity: int | None = None) -> bytes:
    """JSON, padded with spaces to `capacity` bytes (the slot reserved for it at the start of the file)."""
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    if capacity is None:
        return data
    if len(data) > capacity:
        raise BackupError(f"the manifest outgrew its reserved {capacity} bytes")
    return data + b" " * (capacity - len(data))


def manifest_capacity(manifest: dict) -> int:
    """Room for the final manifest: the template with the widest values the dump can bring."""
    widest = dict(manifest, members=[dict(m, size=10**20, sha256="f" * 64) for m in manifest["members"]])
    return len(render_manifest(widest)) + 64


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise BackupError(f"not a valid DataYoti backup: {what}")


def _is_int(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_manifest(doc) -> dict[str, dict]:
    """Refuse what is not our format (or is a newer one); return the members by name."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupError("not a DataYoti backup (its manifest names another format)")
    version = doc.get("format_version")
    _expect(_is_int(version, 1), "format_version")
    if version > FORMAT_VERSION:
        raise BackupError(f"backup format {version} is newer than this datayoti reads ({FORMAT_VERSION}): "
                          "update datayoti here first")
    for key in ("host", "created_at", "datayoti_version"):
        _expect(isinstance(doc.get(key), str), key)
    db = doc.get("database")
    _expect(isinstance(db, dict), "database")
    _expect(isinstance(db.get("name"), str) and isinstance(db.get("timescaledb_version"), str), "database name")
    _expect(_is_int(db.get("server_version_num")) and _is_int(db.get("size_bytes")), "database versions")
    migrations = db.get("migrations")
    _expect(isinstance(migrations, list) and migrations and all(isinstance(m, str) for m in migrations),
            "migrations")
    _expect(doc.get("schema_version") == max(migrations), "schema_version")
    rows = db.get("rows")
    _expect(isinstance(rows, dict) and all(isinstance(t, str) and TABLE_NAME.fullmatch(t) and _is_int(n)
                                           for t, n in rows.items()), "row counts")
    members = doc.get("members")
    _expect(isinstance(members, list), "members")
    by_name: dict[str, dict] = {}
    for m in members:
        _expect(isinstance(m, dict) and isinstance(m.get("name"), str), "a member without a name")
        name = m["name"]
        _expect(name not in by_name and name not in (MANIFEST, TRAILER), f"member {name!r} twice")
        _expect(_is_int(m.get("size")) and isinstance(m.get("sha256"), str) and HEX64.fullmatch(m["sha256"]),
                f"member {name!r}")
        if name != DUMP:
            _expect(target_of(name) is not None, f"member {name!r} is not a place a restore writes")
            _expect(isinstance(m.get("mode"), str) and re.fullmatch(r"0[0-7]{3}", m["mode"]) is not None,
                    f"mode of {name!r}")
            _expect(all(isinstance(m.get(k), str) and ACCOUNT_NAME.fullmatch(m[k]) for k in ("owner", "group")),
                    f"owner of {name!r}")
        by_name[name] = m
    _expect(DUMP in by_name, "no database dump")
    return by_name


def compatibility_problem(manifest: dict, local_migrations: list[str], local_server_version: int,
                          timescaledb_versions: list[str]) -> str | None:
    """Why this Pi cannot take this backup (a newer schema, PostgreSQL or TimescaleDB), or None."""
    db = manifest["database"]
    unknown = sorted(set(db["migrations"]) - set(local_migrations))
    if unknown:
        newest = max(local_migrations) if local_migrations else "none"
        return (f"its schema ({manifest['schema_version']}) is newer than this Pi's ({newest}): it has "
                f"migration(s) {', '.join(unknown)}; update this Pi first (site.yml)")
    if db["server_version_num"] // 10000 > local_server_version // 10000:
        return (f"it comes from PostgreSQL {db['server_version_num'] // 10000}, newer than this Pi's "
                f"{local_server_version // 10000}")
    if db["timescaledb_version"] not in timescaledb_versions:
        return (f"it needs TimescaleDB {db['timescaledb_version']}, which this Pi does not have "
                f"(available: {', '.join(timescaledb_versions) or 'none'})")
    return None


def summary(manifest: dict) -> dict:
    """What an operator wants to know about a backup, without its member list."""
    db = manifest["database"]
    return {"host": manifest["host"], "created_at": manifest["created_at"],
            "datayoti_version": manifest["datayoti_version"], "schema_version": manifest["schema_version"],
            "database": db["name"], "timescaledb_version": db["timescaledb_version"], "rows": db["rows"],
            "files": sorted(m["name"][len(FILES_PREFIX):] for m in manifest["members"] if m["name"] != DUMP)}


# ------------------------------------------------------------------ pure: writing the archive

def tar_header(name: str, size: int, mode: int = 0o600, mtime: int = 0, owner: str = "root",
               group: str = "root") -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uname, info.gname = size, mode, mtime, owner, group
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def trailer_text(digest: str, length: int) -> bytes:
    return f"{digest} {length}\n".encode()


class ArchiveWriter:
    """Writes members into a seekable file; a member may be reserved now and filled in later."""

    def __init__(self, out: BinaryIO):
        self.out = out

    def add(self, name: str, data: bytes, **header) -> dict:
        self.out.write(tar_header(name, len(data), **header) + data + padding(len(data)))
        return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def reserve(self, name: str, size: int) -> int:
        """Room for a member written later by `fill`; returns its offset."""
        offset = self.out.tell()
        self.out.write(tar_header(name, size) + b"\0" * (size + len(padding(size))))
        return offset

    def fill(self, offset: int, name: str, data: bytes) -> None:
        end = self.out.tell()
        self.out.seek(offset)
        self.out.write(tar_header(name, len(data)) + data)
        self.out.seek(end)

    def add_stream(self, name: str, chunks: Iterable[bytes], on_progress: Callable[[int], None] = lambda n: None
                   ) -> dict:
        """A member of unknown size: its header is written again once the size is known."""
        start = self.out.tell()
        self.out.write(tar_header(name, 0))
        digest, size = hashlib.sha256(), 0
        for chunk in chunks:
            self.out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            on_progress(size)
        self.out.write(padding(size))
        end = self.out.tell()
        self.out.seek(start)
        self.out.write(tar_header(name, size))
        self.out.seek(end)
        return {"name": name, "size": size, "sha256": digest.hexdigest()}

    def finish(self, digest: str, length: int) -> None:
        """The trailer (the checksum of the first `length` bytes) and the end of the archive."""
        self.add(TRAILER, trailer_text(digest, length), mode=0o644)
        self.out.write(END_OF_ARCHIVE)


def hash_prefix(stream: BinaryIO, length: int) -> str:
    stream.seek(0)
    digest, left = hashlib.sha256(), length
    while left:
        chunk = stream.read(min(CHUNK, left))
        if not chunk:
            raise BackupError("the file shrank while it was checksummed")
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------ pure: reading and verifying

class _Reader:
    """Exact reads, counting the offset and hashing every byte while `hashing`."""

    def __init__(self, stream: BinaryIO, on_progress: Callable[[int], None] = lambda offset: None):
        self.stream, self.offset, self.hash, self.hashing = stream, 0, hashlib.sha256(), True
        self.on_progress = on_progress

    def read(self, n: int, what: str) -> bytes:
        data = b""
        while len(data) < n:
            try:
                chunk = self.stream.read(min(CHUNK, n - len(data)))
            except OSError as exc:
                raise BackupError(f"cannot read the backup: {exc.strerror or exc}") from None
            if not chunk:
                raise BackupError(f"truncated: the file ends inside {what} (at byte {self.offset + len(data)})")
            data += chunk
        if self.hashing:
            self.hash.update(data)
        self.offset += n
        self.on_progress(self.offset)
        return data

    def copy(self, n: int, what: str, sink: Callable[[bytes], None]) -> str:
        """Read n bytes in chunks into sink; their sha256."""
        digest = hashlib.sha256()
        while n:
            chunk = self.read(min(CHUNK, n), what)
            digest.update(chunk)
            sink(chunk)
            n -= len(chunk)
        return digest.hexdigest()


def _header(reader: _Reader) -> tuple[tarfile.TarInfo | None, bytes]:
    """The next member's header (a GNU long name resolved), or None at the end of the archive."""
    at = reader.offset
    block = reader.read(BLOCK, "a header")
    if block == b"\0" * BLOCK:
        return None, block
    longname = None
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        if info.type == tarfile.GNUTYPE_LONGNAME:
            if not 0 < info.size <= MAX_LONGNAME_BYTES:
                raise BackupError(f"not a valid DataYoti backup: a long name of {info.size} bytes")
            longname = reader.read(info.size + len(padding(info.size)), "a long name")[:info.size]
            block = reader.read(BLOCK, "a header")
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            info.name = longname.rstrip(b"\0").decode("utf-8", "surrogateescape")
    except (tarfile.HeaderError, ValueError) as exc:
        raise BackupError(f"not a valid DataYoti backup: bad tar header at byte {at} ({exc})") from None
    return info, block


def _regular(info: tarfile.TarInfo) -> tarfile.TarInfo:
    if info.type != tarfile.REGTYPE:
        raise BackupError(f"not a valid DataYoti backup: {info.name!r} is not a regular file")
    return info


def verify(stream: BinaryIO, open_member: Callable[[str], BinaryIO] | None = None,
           check: Callable[[dict], None] = lambda manifest: None,
           on_progress: Callable[[int], None] = lambda offset: None) -> dict:
    """Read a whole backup, checking every byte; return its manifest, or raise BackupError.

    `open_member(name)` gives a writable file for a member's content (None: content discarded);
    `check(manifest)` may refuse the backup as soon as its manifest is read.
    """
    reader = _Reader(stream, on_progress)
    info, _ = _first_header(reader)
    text = reader.read(info.size + len(padding(info.size)), "the manifest")[:info.size]
    try:
        manifest = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BackupError("not a DataYoti backup (its manifest is not JSON)") from None
    members = check_manifest(manifest)
    check(manifest)
    seen: set[str] = set()
    while True:
        before, at = reader.hash.copy(), reader.offset
        info, block = _header(reader)
        if info is None:
            raise BackupError("truncated or tampered: the archive ends without its checksum")
        _regular(info)
        if info.name == TRAILER:
            _check_trailer(reader, info, block, before.hexdigest(), at)
            break
        entry = members.get(info.name)
        if entry is None or info.name in seen:
            raise BackupError(f"tampered: member {info.name!r} is not in the manifest (or is there twice)")
        if info.size != entry["size"]:
            raise BackupError(f"tampered: {info.name} has {info.size} bytes, the manifest says {entry['size']}")
        seen.add(info.name)
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open_member(info.name)) if open_member else None
            digest = reader.copy(info.size, info.name, out.write if out else lambda chunk: None)
        reader.read(len(padding(info.size)), info.name)
        if digest != entry["sha256"]:
            raise BackupError(f"corrupt or tampered: {info.name} does not match its checksum")
    missing = sorted(set(members) - seen)
    if missing:
        raise BackupError(f"truncated or tampered: missing {', '.join(missing)}")
    return manifest


def _first_header(reader: _Reader) -> tuple[tarfile.TarInfo, bytes]:
    try:
        info, block = _header(reader)
    except BackupError as exc:
        if "truncated" in str(exc) and reader.offset == 0:
            raise BackupError("not a DataYoti backup (too short to be one)") from None
        raise BackupError(f"not a DataYoti backup ({str(exc).split(': ', 1)[-1]})") from None
    if info is None or info.name != MANIFEST:
        raise BackupError("not a DataYoti backup (it does not start with its manifest)")
    _regular(info)
    if info.size > MAX_MANIFEST_BYTES:
        raise BackupError(f"not a DataYoti backup (a manifest of {info.size} bytes)")
    return info, block


def _check_trailer(reader: _Reader, info: tarfile.TarInfo, block: bytes, digest: str, length: int) -> None:
    """The trailer holds the checksum of everything before it; nothing but the end blocks may follow it."""
    reader.hashing = False
    expected = trailer_text(digest, length)
    if info.size != len(expected) or block != tar_header(TRAILER, len(expected), mode=0o644):
        raise BackupError("tampered: the checksum trailer is not the one this archive needs")
    if reader.read(info.size + len(padding(info.size)), "the checksum") != expected + padding(len(expected)):
        raise BackupError("corrupt or tampered: the file does not match its checksum")
    if reader.read(len(END_OF_ARCHIVE), "the end of the archive") != END_OF_ARCHIVE:
        raise BackupError("tampered: the end of the archive is not empty")
    try:
        extra = reader.stream.read(1)
    except OSError as exc:
        raise BackupError(f"cannot read the backup: {exc.strerror or exc}") from None
    if extra:
        raise BackupError("tampered: bytes follow the end of the archive")


# ------------------------------------------------------------------ progress on a terminal

def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def progress_text(action: str, step: str, done: int | None = None, total: int | None = None) -> str:
    text = f"datayoti {action}: {step}"
    if done is not None:
        text += f" {human_bytes(done)}"
        if total:
            text += f" of {human_bytes(total)} ({min(100, 100 * done // total)} %)"
    return text


class Progress:
    """One line on stderr, rewritten in place; silent unless stderr is a terminal and --json is off."""

    def __init__(self, action: str, enabled: bool):
        self.action, self.enabled, self.last, self.shown = action, enabled, 0.0, False

    def step(self, step: str, done: int | None = None, total: int | None = None, force: bool = True) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.2):
            return
        self.last, self.shown = now, True
        sys.stderr.write("\r\033[K" + progress_text(self.action, step, done, total))
        sys.stderr.flush()

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.shown = False


# ------------------------------------------------------------------ this Pi: PostgreSQL

def database_name() -> str:
    try:
        return config_module.load(layout.INGESTOR_CONFIG, env={}).database.name
    except config_module.ConfigError as exc:
        raise BackupError(str(exc)) from None


def psql(sql: str, *, database: str = "postgres", variables: dict[str, str] | None = None,
         timeout: float = localdb.PSQL_TIMEOUT_S) -> list[list[str]]:
    try:
        return localdb.psql(sql, database=database, variables=variables, timeout=timeout)
    except localdb.DatabaseUnavailable as exc:
        raise BackupError(f"PostgreSQL is not running here: {exc}") from None
    except RuntimeError as exc:
        raise BackupError(str(exc)) from None
    except subprocess.TimeoutExpired:
        raise BackupError(f"PostgreSQL did not finish within {timeout:.0f} s") from None


def tagged(rows: list[list[str]]) -> dict[str, list[list[str]]]:
    """Rows whose first field is a tag -> {tag: [rest of each row]}."""
    out: dict[str, list[list[str]]] = {}
    for row in rows:
        out.setdefault(row[0], []).append(row[1:])
    return out


POSTGRES = ["runuser", "-u", "postgres", "--"]
PSQL_SESSION = ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1"]
SNAPSHOT_SQL = r"""
BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
SELECT 'snapshot', pg_export_snapshot();
SELECT 'migration', version FROM schema_migrations;
SELECT 'server', current_setting('server_version_num');
SELECT 'timescaledb', extversion FROM pg_extension WHERE extname = 'timescaledb';
SELECT 'size', pg_database_size(current_database());
SELECT 'table', relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p');
\echo @end
"""
COUNT_SQL = r"""
SELECT format('SELECT %L, %L, count(*) FROM public.%I', 'rows', t, t)
FROM json_array_elements_text(:'tables'::json) t ORDER BY 1 \gexec
"""


class Snapshot:
    """A psql session as postgres holding one exported snapshot: pg_dump and the row counts share it."""

    def __init__(self, database: str):
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen([*POSTGRES, *PSQL_SESSION, "-d", database], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.errors, bufsize=0)
        self.buffer = b""

    def send(self, sql: str) -> None:
        try:
            self.proc.stdin.write(sql.encode())
        except BrokenPipeError:
            raise BackupError(f"PostgreSQL: {self.error()}") from None

    def error(self) -> str:
        self.errors.seek(0)
        lines = self.errors.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "psql ended"

    def until_end(self, timeout: float) -> list[list[str]]:
        """The rows printed before the next `\\echo @end`."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"@end\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackupError(f"PostgreSQL did not answer within {timeout:.0f} s")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise BackupError(f"PostgreSQL: {self.error()}")
                self.buffer += chunk
        text, self.buffer = self.buffer.split(b"@end\n", 1)
        return [line.split("\t") for line in text.decode().splitlines() if line]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.errors.close()


def snapshot_facts(rows: list[list[str]]) -> dict:
    facts = tagged(rows)
    try:
        return {"snapshot": facts["snapshot"][0][0], "migrations": sorted(r[0] for r in facts.get("migration", [])),
                "server_version_num": int(facts["server"][0][0]),
                "timescaledb_version": facts["timescaledb"][0][0], "size_bytes": int(facts["size"][0][0]),
                "tables": sorted(r[0] for r in facts.get("table", []))}
    except (KeyError, IndexError, ValueError):
        raise BackupError("this database is not the appliance's (no TimescaleDB or no schema)") from None


def pg_dump_argv(database: str, snapshot: str) -> list[str]:
    return [*POSTGRES, "pg_dump", "--format=custom", f"--compress={DUMP_COMPRESSION}", f"--snapshot={snapshot}",
            "--lock-wait-timeout=5min", "--no-password", "-d", database]


# ------------------------------------------------------------------ this Pi: files

def owner_names(st: os.stat_result, path: Path) -> tuple[str, str]:
    try:
        return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        raise BackupError(f"{path} belongs to uid {st.st_uid}/gid {st.st_gid}, which have no name here") from None


def collect_files() -> list[tuple[Path, bytes, os.stat_result]]:
    """Every file of FILE_SETS that exists here: (path, content, stat)."""
    found = []
    for fs in FILE_SETS:
        try:
            names = sorted(os.listdir(fs.directory))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise BackupError(f"cannot read {fs.directory}: {exc.strerror}") from None
        for name in names:
            path = fs.directory / name
            if not (plain_name(name) and fnmatch.fnmatchcase(name, fs.pattern)):
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOENT):
                    continue  # a symbolic link, or gone
                raise BackupError(f"cannot read {path}: {exc.strerror}") from None
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode):
                    found.append((path, read_all(fd), st))
            finally:
                os.close(fd)
    return found


def read_all(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, CHUNK):
        parts.append(chunk)
    return b"".join(parts)


def datayoti_version() -> str:
    """The package's __version__, else its installed metadata (a Pi has the package copied, without it)."""
    from importlib import metadata

    version = getattr(sys.modules[__package__], "__version__", None)
    if version:
        return version
    try:
        return metadata.version("datayoti-ingestor")
    except metadata.PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------ backup

def resolve_path(path: Path | None, host: str, now: datetime) -> Path:
    if path is None:
        layout.BACKUP_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        return default_path(layout.BACKUP_DIR, host, now)
    if path.is_dir():
        return default_path(path, host, now)
    if path.exists() or path.is_symlink():
        raise BackupError(f"{path} exists already; give a new file name or a directory")
    if not path.parent.is_dir():
        raise BackupError(f"{path.parent}: no such directory")
    return path


def dump_chunks(proc: subprocess.Popen) -> Iterable[bytes]:
    while chunk := proc.stdout.read(CHUNK):
        yield chunk


@dataclass
class Member:
    """A file to back up: its manifest entry (name, mode, owner, group), content and mtime."""

    entry: dict
    data: bytes
    mtime: int = 0


def file_member(path: Path, data: bytes, st: os.stat_result) -> Member:
    owner, group = owner_names(st, path)
    return Member({"name": member_name(path), "mode": f"{stat.S_IMODE(st.st_mode):04o}", "owner": owner,
                   "group": group}, data, int(st.st_mtime))


def write_archive(out: BinaryIO, header: dict, files: list[Member], dump: Iterable[bytes],
                  rows: Callable[[], dict[str, int]], on_progress: Callable[[int], None] = lambda n: None) -> dict:
    """The whole backup into `out` (seekable); returns its manifest.

    `header` is the manifest without members; `rows()` gives the row counts once the dump is written.
    The manifest goes first, in a slot reserved for it and filled in last.
    """
    placeholders = [{"name": DUMP, "size": 0, "sha256": "0" * 64},
                    *({**f.entry, "size": len(f.data), "sha256": "0" * 64} for f in files)]
    widest_rows = dict.fromkeys(header["database"]["rows"], 10**20)
    capacity = manifest_capacity(dict(header, database=dict(header["database"], rows=widest_rows),
                                      members=placeholders))
    writer = ArchiveWriter(out)
    slot = writer.reserve(MANIFEST, capacity)
    members = [writer.add(f.entry["name"], f.data, mode=int(f.entry["mode"], 8), mtime=f.mtime,
                          owner=f.entry["owner"], group=f.entry["group"]) | f.entry for f in files]
    dumped = writer.add_stream(DUMP, dump, on_progress)
    manifest = dict(header, database=dict(header["database"], rows=rows()), members=[dumped, *members])
    writer.fill(slot, MANIFEST, render_manifest(manifest, capacity))
    length = out.tell()  # the trailer's checksum reads the file again: its start was written last
    out.flush()
    writer.finish(hash_prefix(out, length), length)
    return manifest


def take_backup(path: Path | None, progress: Progress) -> dict:
    started = time.monotonic()
    now = datetime.now(UTC)
    host = socket.gethostname()
    database = database_name()
    target = resolve_path(path, host, now)
    progress.step("taking a snapshot of the database and the files")
    session = Snapshot(database)
    try:
        with hostsecrets.exclusive():  # no `device add` or `secrets rotate` between the snapshot and the files
            session.send(SNAPSHOT_SQL)
            facts = snapshot_facts(session.until_end(POSTGRES_TIMEOUT_S))
            files = [file_member(*found) for found in collect_files()]
        if not facts["migrations"]:
            raise BackupError(f"{database} has no schema yet (datayoti-migrate has not run)")
        db = {"name": database, "server_version_num": facts["server_version_num"],
              "timescaledb_version": facts["timescaledb_version"], "size_bytes": facts["size_bytes"],
              "migrations": facts["migrations"], "rows": dict.fromkeys(facts["tables"], 0),
              "dump": {"format": "pg_dump custom", "compression": DUMP_COMPRESSION}}
        header = build_manifest(host=host, created_at=now, datayoti_version=datayoti_version(), database=db,
                                members=[])

        def rows() -> dict[str, int]:
            progress.step("counting rows")
            session.send(COUNT_SQL.replace(":'tables'", quote_literal(json.dumps(facts["tables"])))
                         + "\\echo @end\nCOMMIT;\n")
            return {r[0]: int(r[1]) for r in tagged(session.until_end(POSTGRES_TIMEOUT_S)).get("rows", [])}

        manifest, size = write_file(target, header, files, pg_dump_argv(database, facts["snapshot"]), rows,
                                    lambda n: progress.step(f"dumping {database}", n, force=False))
    finally:
        session.close()
    return {"ok": True, "path": str(target), "bytes": size, "seconds": round(time.monotonic() - started, 1),
            **summary(manifest)}


def write_file(target: Path, header: dict, files: list[Member], dump_argv: list[str],
               rows: Callable[[], dict[str, int]], on_progress: Callable[[int], None]) -> tuple[dict, int]:
    """The archive into a private temporary file beside `target`, renamed into place once complete.

    Whatever fails (a full disk included), nothing is left behind.
    """
    tmp_path = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")  # 0600
        tmp_path = Path(tmp_name)
        with os.fdopen(fd, "w+b") as out, tempfile.TemporaryFile() as errors:
            dump = subprocess.Popen(dump_argv, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)

            def rows_after_dump() -> dict[str, int]:
                if dump.wait() != 0:
                    errors.seek(0)
                    raise BackupError(f"pg_dump failed: {last_error(errors.read())}")
                return rows()

            try:
                manifest = write_archive(out, header, files, dump_chunks(dump), rows_after_dump, on_progress)
            finally:
                if dump.poll() is None:
                    dump.kill()
                dump.wait()
                dump.stdout.close()
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        try:
            os.link(tmp_path, target)  # never replaces a file that appeared meanwhile
        except FileExistsError:
            raise BackupError(f"{target} exists already") from None
        dynsec.fsync_path(target.parent)
    except OSError as exc:
        raise BackupError(write_error(exc, target)) from None
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
    return manifest, size


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def write_error(exc: OSError, target: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device holding {target.parent}: nothing was written"
    return f"{exc.filename or target}: {exc.strerror or exc}"


def last_error(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if "error" in ln.lower()]
    return (lines or stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]


# ------------------------------------------------------------------ restore

LOCAL_FACTS_SQL = """
SELECT 'server', current_setting('server_version_num');
SELECT 'data_directory', current_setting('data_directory');
SELECT 'timescaledb', version FROM pg_available_extension_versions WHERE name = 'timescaledb';
SELECT 'database', datname FROM pg_database WHERE datname IN (:'old', :'new', :'replaced');
"""

# The new database is made like the old one (owner, encoding, locale, connection limit), with its
# database-level privileges and settings, which pg_dump does not dump without --create.
CREATE_SQL = r"""
SELECT format('CREATE DATABASE %I OWNER %I TEMPLATE template0 ENCODING %L LC_COLLATE %L LC_CTYPE %L',
              :'new', pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype)
       || CASE datlocprovider WHEN 'i' THEN format(' LOCALE_PROVIDER icu ICU_LOCALE %L', datlocale)
                              WHEN 'b' THEN format(' LOCALE_PROVIDER builtin BUILTIN_LOCALE %L', datlocale)
                              ELSE '' END
       || CASE WHEN datconnlimit <> -1 THEN format(' CONNECTION LIMIT %s', datconnlimit) ELSE '' END
FROM pg_database WHERE datname = :'old' \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'new')
FROM pg_database WHERE datname = :'old' AND datacl IS NOT NULL \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM %I', :'new', pg_get_userbyid(datdba))
FROM pg_database WHERE datname = :'old' AND datacl IS NOT NULL \gexec
SELECT format('GRANT %s ON DATABASE %I TO %s%s', a.privilege_type, :'new',
              CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
              CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) a WHERE d.datname = :'old' \gexec
SELECT format('ALTER %s SET %s TO %L',
              CASE WHEN s.setrole = 0 THEN format('DATABASE %I', :'new')
                   ELSE format('ROLE %I IN DATABASE %I', pg_get_userbyid(s.setrole), :'new') END,
              split_part(c, '=', 1), substr(c, strpos(c, '=') + 1))
FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase CROSS JOIN LATERAL unnest(s.setconfig) c
WHERE d.datname = :'old' AND split_part(c, '=', 1) <> 'timescaledb.restoring' \gexec
"""
PRE_RESTORE_SQL = """
CREATE EXTENSION timescaledb VERSION :'version';
SELECT timescaledb_pre_restore();
"""
POST_RESTORE_SQL = """
SELECT timescaledb_post_restore();
ANALYZE;
"""
# No session may hold the old database while it is renamed; none may connect meanwhile.
SWAP_OUT_SQL = """
ALTER DATABASE :"old" WITH ALLOW_CONNECTIONS false;
SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity
WHERE datname = :'old' AND pid <> pg_backend_pid();
ALTER DATABASE :"old" RENAME TO :"replaced";
"""
SWAP_IN_SQL = 'ALTER DATABASE :"new" RENAME TO :"old";'
SWAP_BACK_SQL = """
ALTER DATABASE :"replaced" RENAME TO :"old";
ALTER DATABASE :"old" WITH ALLOW_CONNECTIONS true;
"""


@dataclass
class LocalFacts:
    server_version_num: int
    data_directory: str
    timescaledb_versions: list[str]
    databases: list[str]


def local_facts(old: str, new: str, replaced: str) -> LocalFacts:
    facts = tagged(psql(LOCAL_FACTS_SQL, variables={"old": old, "new": new, "replaced": replaced}))
    return LocalFacts(int(facts["server"][0][0]), facts["data_directory"][0][0],
                      [r[0] for r in facts.get("timescaledb", [])], [r[0] for r in facts.get("database", [])])


def free_bytes(path: Path | str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_space(path: Path | str, needed: int, what: str) -> None:
    free = free_bytes(path)
    if free < needed * SPACE_MARGIN:
        raise BackupError(f"not enough space for {what} in {path}: {human_bytes(free)} free, about "
                          f"{human_bytes(needed * SPACE_MARGIN)} needed")


def restore_entries(dump: Path) -> int:
    """The number of entries in the dump's table of contents; refuses a dump pg_restore cannot read."""
    with open(dump, "rb") as stdin:
        done = subprocess.run([*POSTGRES, "pg_restore", "--list"], stdin=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        raise BackupError(f"the database dump is unreadable: {last_error(done.stderr)}")
    return sum(1 for line in done.stdout.decode(errors="replace").splitlines() if line and not line.startswith(";"))


def run_pg_restore(dump: Path, database: str, entries: int, progress: Progress) -> None:
    argv = [*POSTGRES, "pg_restore", "--exit-on-error", "--verbose", "--no-password", "-d", database]
    tail: list[str] = []
    with open(dump, "rb") as stdin:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        done = 0
        try:
            for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                tail = (tail + [line])[-20:]
                if line.startswith(("pg_restore: creating", "pg_restore: processing", "pg_restore: executing")):
                    done += 1
                    progress.step(f"restoring the database: {min(done, entries)}/{entries} entries", force=False)
        finally:
            if proc.poll() is None and sys.exc_info()[0] is not None:
                proc.terminate()
            proc.wait()
    if proc.returncode != 0:
        errors = [ln for ln in tail if "error" in ln.lower()]
        raise BackupError(f"pg_restore failed: {(errors or tail or ['no message'])[-1]}")


def restore_database(manifest: dict, dump: Path, old: str, new: str, entries: int, progress: Progress) -> None:
    """The backup's database as `new`, made like `old`, its row counts checked; dropped again on failure."""
    db = manifest["database"]
    names = {"old": old, "new": new}
    try:
        progress.step("creating the new database")
        psql(CREATE_SQL, variables=names)
        psql(PRE_RESTORE_SQL, database=new, variables={"version": db["timescaledb_version"]})
        run_pg_restore(dump, new, entries, progress)
        progress.step("finishing the restore (timescaledb_post_restore, ANALYZE)")
        psql(POST_RESTORE_SQL, database=new, timeout=POSTGRES_TIMEOUT_S)
        psql("ALTER EXTENSION timescaledb UPDATE;", database=new)  # a no-op when the versions are the same
        progress.step("checking the row counts")
        rows = tagged(psql(COUNT_SQL, database=new, variables={"tables": json.dumps(sorted(db["rows"]))},
                           timeout=POSTGRES_TIMEOUT_S)).get("rows", [])
        counted = {r[0]: int(r[1]) for r in rows}
        if counted != db["rows"]:
            wrong = sorted(t for t in db["rows"] if counted.get(t) != db["rows"][t])
            raise BackupError(f"the restored database has other row counts than the backup in: {', '.join(wrong)}")
    except BaseException:
        with contextlib.suppress(BackupError):
            psql('DROP DATABASE IF EXISTS :"new" WITH (FORCE);', variables={"new": new})
        raise


def swap_databases(old: str, new: str, replaced: str) -> None:
    """`new` becomes `old`; on failure `old` stays as it was and `new` is dropped."""
    names = {"old": old, "new": new, "replaced": replaced}
    try:
        try:
            psql(SWAP_OUT_SQL, variables=names)
        except BackupError:
            with contextlib.suppress(BackupError):
                psql('ALTER DATABASE :"old" WITH ALLOW_CONNECTIONS true;', variables=names)
            raise
        try:
            psql(SWAP_IN_SQL, variables=names)
        except BackupError:
            psql(SWAP_BACK_SQL, variables=names)
            raise
    except BackupError:
        with contextlib.suppress(BackupError):
            psql('DROP DATABASE IF EXISTS :"new" WITH (FORCE);', variables=names)
        raise
    with contextlib.suppress(BackupError):  # a leftover is dropped by the next restore
        psql('DROP DATABASE IF EXISTS :"replaced" WITH (FORCE);', variables=names)


def put_files(manifest: dict, workdir: Path) -> list[str]:
    """Each file back in place with its owner and mode; a mirrored set loses what the backup lacks."""
    from .hostsecrets import write_atomic

    written = []
    for m in manifest["members"]:
        if m["name"] == DUMP:
            continue
        target = Path(target_of(m["name"]))
        write_atomic(target, (workdir / m["name"]).read_bytes(), int(m["mode"], 8), m["owner"], m["group"])
        written.append(str(target))
    for fs in FILE_SETS:
        if fs.mirror and fs.directory.is_dir():
            for path in sorted(fs.directory.glob(fs.pattern)):
                if str(path) not in written and path.is_file():
                    path.unlink()
    return written


def check_targets(manifest: dict) -> None:
    """Refuse, before anything changes, files whose owner or directory this Pi does not have."""
    for m in manifest["members"]:
        if m["name"] == DUMP:
            continue
        target = Path(target_of(m["name"]))
        try:
            pwd.getpwnam(m["owner"])
            grp.getgrnam(m["group"])
        except KeyError:
            raise BackupError(f"{target} belongs to {m['owner']}:{m['group']}, unknown here: provision this Pi "
                              "with site.yml first") from None
        if not target.parent.is_dir():
            raise BackupError(f"{target.parent} does not exist: provision this Pi with site.yml first")


def systemctl(verb: str, *units: str) -> None:
    try:
        done = subprocess.run(["systemctl", verb, *units], capture_output=True, text=True, check=False,
                              timeout=SERVICE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BackupError(f"systemctl {verb} {' '.join(units)} took more than {SERVICE_TIMEOUT_S} s") from None
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]
        raise BackupError(f"systemctl {verb} {' '.join(units)}: {message}")


@contextlib.contextmanager
def signals_deferred():
    """SIGINT/SIGTERM wait until the block is done: a swap half-made is worse than a late stop."""
    received: list[int] = []
    handlers = {sig: signal.signal(sig, lambda s, _f: received.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


def open_backup(path: Path) -> BinaryIO:
    """The backup, opened for reading; a FIFO or a device is refused without blocking on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BackupError(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def extract_verified(path: Path, workdir: Path, check: Callable[[dict], None], progress: Progress) -> dict:
    """Verify the whole file, copying its members into workdir; the manifest."""
    with open_backup(path) as stream:
        total = os.fstat(stream.fileno()).st_size
        check_space(workdir, total, "unpacking the backup")

        def open_member(name: str) -> BinaryIO:
            target = workdir / name
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            return open(target, "wb")  # noqa: SIM115 - closed by verify

        return verify(stream, open_member, check, lambda offset: progress.step("verifying", offset, total,
                                                                               force=False))


def do_restore(path: Path, progress: Progress, dry_run: bool = False) -> dict:
    started = time.monotonic()
    database = database_name()
    new, replaced = restore_names(database)
    with hostsecrets.exclusive():
        local = local_facts(database, new, replaced)
        if database not in local.databases and replaced in local.databases:
            raise BackupError(f"a restore was interrupted while it swapped the databases: the old one is {replaced} "
                              f"now (ALTER DATABASE {replaced} RENAME TO {database}, as postgres, brings it back)")
        if database not in local.databases:
            raise BackupError(f"database {database} does not exist here: provision this Pi with site.yml first")
        local_migrations = [v for v, _ in schema.migration_files()]

        def check(manifest: dict) -> None:
            problem = compatibility_problem(manifest, local_migrations, local.server_version_num,
                                            local.timescaledb_versions)
            if problem:
                raise BackupError(f"this Pi cannot take this backup: {problem}")

        workdir = Path(tempfile.mkdtemp(prefix="datayoti-restore-", dir=RESTORE_TMP))
        try:
            progress.step("verifying")
            manifest = extract_verified(path, workdir, check, progress)
            check_targets(manifest)
            dump = workdir / DUMP
            entries = restore_entries(dump)
            check_space(local.data_directory, manifest["database"]["size_bytes"], "the restored database")
            result = {"ok": True, "path": str(path), "dry_run": dry_run, **summary(manifest)}
            if dry_run:
                return result
            if new in local.databases:  # a failed restore's leftover
                psql('DROP DATABASE :"new" WITH (FORCE);', variables={"new": new})
            if replaced in local.databases:
                psql('DROP DATABASE :"replaced" WITH (FORCE);', variables={"replaced": replaced})
            restore_database(manifest, dump, database, new, entries, progress)
            result["secrets"] = switch_over(manifest, workdir, database, new, replaced, progress)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def switch_over(manifest: dict, workdir: Path, database: str, new: str, replaced: str, progress: Progress) -> dict:
    """Services stopped, database swapped, files back, secrets applied; the services start again in any case.

    The broker stops too: its accounts file is replaced. Sensors reconnect by themselves.
    """
    report, failure = None, None
    with signals_deferred():
        try:
            progress.step("stopping the ingestor and the broker")
            systemctl("stop", INGESTOR_UNIT, layout.MOSQUITTO_UNIT)
            progress.step("swapping the databases")
            swap_databases(database, new, replaced)
            progress.step("restoring the files")
            put_files(manifest, workdir)
            progress.step("applying the secrets")
            report = hostsecrets.ensure(restart_services=False)
        except (hostsecrets.SecretsError, localdb.DatabaseUnavailable, OSError) as exc:
            failure = BackupError(f"the database is restored, but not everything else ({exc}): run "
                                  "`datayoti secrets ensure`, then `datayoti status`")
        finally:
            progress.step("starting the broker, the migrations and the ingestor")
            started = [start_unit(verb, unit) for verb, unit in (("start", layout.MOSQUITTO_UNIT),
                                                                  ("restart", MIGRATE_UNIT),
                                                                  ("restart", INGESTOR_UNIT))]
    if failure:
        raise failure
    problems = [p for p in started if p]
    if problems:
        raise BackupError(f"restored, but {'; '.join(problems)}")
    return report.as_dict()


def start_unit(verb: str, unit: str) -> str | None:
    try:
        systemctl(verb, unit)
    except BackupError as exc:
        return f"{exc} (see journalctl -u {unit})"
    return None


# ------------------------------------------------------------------ the commands

def add_parser(commands) -> None:
    b = commands.add_parser(
        "backup", help="this Pi's database, sensors, accounts and secrets in one file",
        description="A consistent backup taken while ingestion runs: the database (pg_dump, one snapshot), the "
                    "device registry, the broker's accounts, the CA and server key, and the secrets, in one "
                    f"checksummed file (mode 0600). Default: {layout.BACKUP_DIR}/<host>-<UTC time>.tar.")
    b.add_argument("path", nargs="?", type=Path, metavar="PATH", help="the file to write, or a directory for it")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    b.set_defaults(run=backup_command, needs_root=lambda args: True)
    r = commands.add_parser(
        "restore", help="restore a backup onto this Pi (a freshly provisioned one)",
        description="Verifies the whole file first and refuses a corrupt, truncated, tampered or foreign one, "
                    "or one whose schema is newer than this Pi's, before changing anything. Then restores the "
                    "database beside the old one, swaps them, puts the files back, applies the secrets and "
                    "restarts the services. Sensors keep working without reflashing.")
    r.add_argument("path", type=Path, metavar="PATH", help="a file made by `datayoti backup`")
    r.add_argument("--dry-run", action="store_true", help="verify the file and this Pi, change nothing")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.set_defaults(run=restore_command, needs_root=lambda args: True)


def backup_command(args: argparse.Namespace) -> int:
    return run_command("backup", args, lambda progress: take_backup(args.path, progress))


def restore_command(args: argparse.Namespace) -> int:
    return run_command("restore", args, lambda progress: do_restore(args.path, progress, args.dry_run))


def run_command(action: str, args: argparse.Namespace, work: Callable[[Progress], dict]) -> int:
    progress = Progress(action, enabled=not args.json and sys.stderr.isatty())
    try:
        result = work(progress)
    except (BackupError, localdb.DatabaseUnavailable) as exc:
        progress.clear()
        print(f"datayoti {action}: {one_line(str(exc))}", file=sys.stderr)
        return 1
    finally:
        progress.clear()
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else render(action, result))
    return 0


def one_line(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)


def render(action: str, result: dict) -> str:
    rows = ", ".join(f"{t} {n}" for t, n in sorted(result["rows"].items()) if n)
    if action == "backup":
        head = f"backup written: {result['path']} ({human_bytes(result['bytes'])} in {result['seconds']} s)"
    elif result.get("dry_run"):
        head = f"{result['path']} is a valid backup this Pi can take (nothing changed)"
    else:
        head = f"restored {result['path']} in {result['seconds']} s"
    return "\n".join([head, f"  from {result['host']} at {result['created_at']}, schema {result['schema_version']}",
                      f"  rows: {rows or 'none'}", f"  files: {len(result['files'])}"])

