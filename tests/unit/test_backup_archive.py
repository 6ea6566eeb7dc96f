"""`datayoti backup` and `restore`: the archive format, its verification, and what is refused."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest
from datayoti_ingestor import appliance, backup
from datayoti_ingestor.backup import BackupError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NOW = datetime(2026, 11, 24, 1, 2, 3, tzinfo=UTC)
MIGRATIONS = ["0001_schema", "0002_spare_the_sd_card"]
DUMP_BYTES = b"PGDMP" + bytes(range(256)) * 40  # any bytes: verification does not read the dump
ROWS = {"sensor_data": 1234, "devices": 3, "schema_migrations": 2}
FILES = [
    ("/etc/datayoti/secrets/postgresql-mqtt_ingestor.password", b"s3cret\n", "0600", "root", "root"),
    ("/etc/datayoti/secrets/mqtt-ca.key", b"(a stand-in for the CA key)\n", "0600", "root", "root"),
    ("/etc/datayoti/sensors/1C:69:20:E9:18:24.json", b'{"device_id": "1C:69:20:E9:18:24"}\n', "0600", "root",
     "root"),
    ("/etc/mosquitto/certs/server.key", b"key\n", "0600", "mosquitto", "mosquitto"),
    ("/etc/mosquitto/certs/datayoti-ca.crt", b"cert\n", "0644", "root", "mosquitto"),
    ("/var/lib/mosquitto/dynamic-security.json", b'{"clients": []}\n', "0600", "mosquitto", "mosquitto"),
]


def header(**database) -> dict:
    db = {"name": "datayoti_db", "server_version_num": 170012, "timescaledb_version": "2.19.3",
          "size_bytes": 9_000_000, "migrations": MIGRATIONS, "rows": dict.fromkeys(ROWS, 0), **database}
    return backup.build_manifest(host="pi1", created_at=NOW, datayoti_version="0.1.0", database=db, members=[])


def members(files=FILES) -> list[backup.Member]:
    return [backup.Member({"name": backup.member_name(Path(p)), "mode": mode, "owner": o, "group": g}, data, 1_700_000)
            for p, data, mode, o, g in files]


def make_archive(files=FILES, dump: bytes = DUMP_BYTES, rows=ROWS, chunk: int = 1000, **database) -> bytes:
    out = io.BytesIO()
    chunks = (dump[i:i + chunk] for i in range(0, len(dump), chunk))
    backup.write_archive(out, header(**database), members(files), chunks, lambda: dict(rows))
    return out.getvalue()


VALID = make_archive()


class Collect:
    """open_member for verify(): each member's content, in memory."""

    def __init__(self):
        self.contents: dict[str, bytes] = {}

    def __call__(self, name: str):
        sink = io.BytesIO()
        contents = self.contents

        @contextlib.contextmanager
        def opened():
            yield sink
            contents[name] = sink.getvalue()
        return opened()


def verify(data: bytes, **kwargs) -> dict:
    return backup.verify(io.BytesIO(data), **kwargs)


def craft(manifest: dict, entries: list[tuple[str, bytes]]) -> bytes:
    """An archive with this manifest and these members, whose trailer is right: only what the test changes is wrong."""
    out = io.BytesIO()
    writer = backup.ArchiveWriter(out)
    writer.add(backup.MANIFEST, backup.render_manifest(manifest))
    for name, data in entries:
        writer.add(name, data)
    length = out.tell()
    writer.finish(hashlib.sha256(out.getvalue()).hexdigest(), length)
    return out.getvalue()


def valid_parts() -> tuple[dict, list[tuple[str, bytes]]]:
    collect = Collect()
    manifest = verify(VALID, open_member=collect)
    return manifest, [(m["name"], collect.contents[m["name"]]) for m in manifest["members"]]


def with_hashes(manifest: dict, entries: list[tuple[str, bytes]]) -> dict:
    sums = {name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in entries}
    return dict(manifest, members=[dict(m, size=sums[m["name"]][0], sha256=sums[m["name"]][1])
                                   if m["name"] in sums else m for m in manifest["members"]])


# ------------------------------------------------------------------ the format

def test_a_backup_round_trips_with_every_member_and_its_checksum():
    collect = Collect()
    manifest = verify(VALID, open_member=collect)
    assert manifest["format"] == "datayoti-backup" and manifest["format_version"] == 1
    assert manifest["host"] == "pi1" and manifest["created_at"] == "2026-11-24T01:02:03Z"
    assert manifest["schema_version"] == "0002_spare_the_sd_card"
    assert manifest["database"]["rows"] == ROWS
    assert collect.contents[backup.DUMP] == DUMP_BYTES
    for path, data, mode, owner, group in FILES:
        name = "files" + path
        assert collect.contents[name] == data
        entry = next(m for m in manifest["members"] if m["name"] == name)
        assert entry == {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mode": mode,
                         "owner": owner, "group": group}


def test_the_file_is_a_plain_tar_with_the_manifest_first_and_the_checksum_last():
    with tarfile.open(fileobj=io.BytesIO(VALID)) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile(backup.MANIFEST).read())
        trailer = tar.extractfile(backup.TRAILER).read().decode()
        key = tar.getmember("files/etc/mosquitto/certs/server.key")
    assert names[0] == backup.MANIFEST and names[-1] == backup.TRAILER
    assert (key.uname, key.gname, key.mode) == ("mosquitto", "mosquitto", 0o600)
    assert manifest["schema_version"] == "0002_spare_the_sd_card"
    digest, length = trailer.split()
    # `head -c N FILE | sha256sum` checks the whole file by hand.
    assert hashlib.sha256(VALID[:int(length)]).hexdigest() == digest
    assert VALID.endswith(backup.END_OF_ARCHIVE) and len(VALID) % backup.BLOCK == 0


@pytest.mark.parametrize("chunk", [1, 511, 512, 513, 65536])
def test_a_streamed_dump_of_any_chunking_gives_the_same_archive(chunk):
    assert make_archive(chunk=chunk) == VALID


def test_the_manifest_slot_holds_the_largest_numbers():
    huge = dict.fromkeys(ROWS, 10**19)
    manifest = verify(make_archive(rows=huge))
    assert manifest["database"]["rows"] == huge


def test_a_manifest_larger_than_its_slot_is_an_error():
    with pytest.raises(BackupError, match="outgrew"):
        backup.render_manifest({"x": "y" * 100}, capacity=10)


def test_no_files_and_an_empty_dump_still_make_a_valid_backup():
    manifest = verify(make_archive(files=[], dump=b""))
    assert [m["name"] for m in manifest["members"]] == [backup.DUMP]


def test_a_long_file_name_survives():
    name = "/etc/datayoti/secrets/" + "x" * 200
    manifest = verify(make_archive(files=[(name, b"v", "0600", "root", "root")]))
    assert "files" + name in {m["name"] for m in manifest["members"]}


# ------------------------------------------------------------------ refused: corrupt, truncated, tampered, foreign

def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1:]


def offset_of(text: bytes) -> int:
    return VALID.index(text)


def foreign_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("etc/os-release")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    return out.getvalue()


def tar_starting_with_a_manifest(doc) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = json.dumps(doc).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


BAD_FILES = [
    # (case, bytes, what the one line says)
    ("empty file", b"", "not a DataYoti backup (too short"),
    ("text file", b"PRETTY_NAME=Debian\n" * 40, "not a DataYoti backup"),
    ("zeros", b"\0" * 4096, "does not start with its manifest"),
    ("foreign tar", foreign_tar(), "does not start with its manifest"),
    ("another program's manifest", tar_starting_with_a_manifest({"format": "other"}), "names another format"),
    ("a manifest that is not JSON", tar_starting_with_a_manifest("x")[:-2048].replace(b'"x"', b"{x "), "not JSON"),
    ("truncated in the first header", VALID[:300], "too short"),
    ("truncated in the manifest", VALID[:700], "truncated"),
    ("truncated in a file", VALID[:offset_of(b"s3cret")], "truncated"),
    ("truncated in the dump", VALID[:offset_of(b"PGDMP") + 100], "truncated: the file ends inside database.dump"),
    ("truncated before the checksum", VALID[:len(VALID) - 3 * 512], "truncated"),
    ("truncated in the end blocks", VALID[:-100], "truncated"),
    ("end blocks missing", VALID[:-1024], "truncated"),
    ("appended bytes", VALID + b"\0" * 512, "bytes follow the end"),
    ("appended text", VALID + b"x", "bytes follow the end"),
    ("a byte of a secret flipped", flip(VALID, offset_of(b"s3cret")), "postgresql-mqtt_ingestor.password does not "
                                                                       "match its checksum"),
    ("a byte of the dump flipped", flip(VALID, offset_of(b"PGDMP") + 3000), "database.dump does not match"),
    ("a header field flipped", flip(VALID, VALID.rindex(b"files/etc/mosquitto/certs/server.key") + 120),
     "bad tar header"),
    ("the manifest's padding changed", VALID.replace(b"   \0", b"  \n\0", 1), "does not match its checksum"),
    ("the checksum flipped", flip(VALID, len(VALID) - 1024 - 512 + 3), "does not match its checksum"),
    ("the checksum's header changed", flip(VALID, len(VALID) - 1024 - 1024 + 100), "bad tar header"),
    ("the end blocks not empty", flip(VALID, len(VALID) - 10), "end of the archive is not empty"),
]


@pytest.mark.parametrize(("case", "data", "message"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_bad_file_is_refused_with_one_line(case, data, message):
    with pytest.raises(BackupError) as refused:
        verify(data)
    assert message in str(refused.value), str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_consistent_rewrite_of_the_manifest_is_caught_by_the_checksum_of_the_whole():
    manifest, entries = valid_parts()
    entries = [(n, b"tamper\n" if n.endswith("mqtt_ingestor.password") else d) for n, d in entries]
    capacity = tarfile.TarInfo.frombuf(VALID[:backup.BLOCK], "utf-8", "strict").size
    # The same slot, the same sizes, right member checksums: only the trailer knows.
    forged = VALID[:backup.BLOCK] + backup.render_manifest(with_hashes(manifest, entries), capacity) \
        + VALID[backup.BLOCK + capacity:]
    forged = forged.replace(b"s3cret\n", b"tamper\n")
    assert len(forged) == len(VALID)
    with pytest.raises(BackupError, match="corrupt or tampered: the file does not match its checksum"):
        verify(forged)


def crafted_cases():
    manifest, entries = valid_parts()
    dump = [(n, d) for n, d in entries if n == backup.DUMP]
    secret = next((n, d) for n, d in entries if n.endswith("mqtt_ingestor.password"))
    entry = next(m for m in manifest["members"] if m["name"] == secret[0])

    def members_plus(*extra):
        return dict(manifest, members=[*manifest["members"], *extra])

    evil = [{"name": name, "size": 1, "sha256": hashlib.sha256(b"x").hexdigest(), "mode": "0600", "owner": "root",
             "group": "root"} for name in ("files/etc/shadow", "files/etc/datayoti/secrets/../../shadow",
                                           "files/etc/datayoti/secrets/.hidden", "files/etc/datayoti/sensors/x.sh",
                                           "etc/datayoti/secrets/x", "files//etc/datayoti/secrets/x")]
    return [
        ("consistent but a member is missing", craft(manifest, dump), "missing files/etc/"),
        ("a member twice", craft(manifest, [*entries, secret]), "is not in the manifest (or is there twice)"),
        ("a member not in the manifest", craft(manifest, [*entries, ("files/etc/datayoti/secrets/extra", b"x")]),
         "is not in the manifest"),
        ("no dump", craft(dict(manifest, members=[m for m in manifest["members"] if m["name"] != backup.DUMP]),
                          [e for e in entries if e[0] != backup.DUMP]), "no database dump"),
        ("a newer format", craft(dict(manifest, format_version=2), entries), "format 2 is newer"),
        ("format_version is not a number", craft(dict(manifest, format_version="1"), entries), "format_version"),
        ("a schema_version that is not its newest migration",
         craft(dict(manifest, schema_version="0001_schema"), entries), "schema_version"),
        ("a bad mode", craft(dict(manifest, members=[dict(m, mode="4755") if m is entry else m
                                                     for m in manifest["members"]]), entries), "mode of"),
        ("a bad owner", craft(dict(manifest, members=[dict(m, owner="root; rm") if m is entry else m
                                                      for m in manifest["members"]]), entries), "owner of"),
        ("a size that disagrees", craft(dict(manifest, members=[dict(m, size=99) if m is entry else m
                                                                for m in manifest["members"]]), entries),
         "the manifest says 99"),
        ("row counts that are not counts", craft(dict(manifest, database=dict(manifest["database"], rows={"x": -1})),
                                                 entries), "row counts"),
        *[(f"a member written to {e['name']}", craft(members_plus(e), [*entries, (e["name"], b"x")]),
           "is not a place a restore writes") for e in evil],
    ]


@pytest.mark.parametrize(("case", "data", "message"), crafted_cases(), ids=[c[0] for c in crafted_cases()])
def test_a_crafted_backup_is_refused(case, data, message):
    with pytest.raises(BackupError) as refused:
        verify(data)
    assert message in str(refused.value), str(refused.value)


def test_a_symbolic_link_member_is_refused():
    data = bytearray(VALID)
    at = VALID.rindex(b"files/etc/datayoti/secrets/mqtt-ca.key")
    block = bytearray(data[at:at + 512])
    block[156:157] = tarfile.SYMTYPE
    block[148:156] = b" " * 8
    block[148:155] = f"{sum(block):06o}\0".encode()
    data[at:at + 512] = block
    with pytest.raises(BackupError, match="is not a regular file"):
        verify(bytes(data))


def test_check_refuses_as_soon_as_the_manifest_is_read():
    seen = []

    def check(manifest):
        seen.append(manifest["host"])
        raise BackupError("this Pi cannot take this backup: nope")

    collect = Collect()
    with pytest.raises(BackupError, match="nope"):
        verify(VALID, open_member=collect, check=check)
    assert seen == ["pi1"] and collect.contents == {}


# ------------------------------------------------------------------ Hypothesis: nothing but BackupError

def mutate(data: bytes, op: str, at: int, blob: bytes) -> bytes:
    if not data:
        return blob
    at %= len(data)
    if op == "flip":
        return data[:at] + bytes([data[at] ^ (blob[0] if blob and blob[0] else 0x80)]) + data[at + 1:]
    if op == "truncate":
        return data[:at]
    if op == "insert":
        return data[:at] + (blob or b"\0") + data[at:]
    if op == "delete":
        return data[:at] + data[at + max(1, len(blob)):]
    if op == "overwrite":
        blob = blob or b"x"
        changed = data[:at] + blob + data[at + len(blob):]
        return changed if changed != data else data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]
    return data + (blob or b"\0")  # append


mutations = st.lists(st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite", "append"]),
                               st.integers(0, 2**31), st.binary(max_size=40)), min_size=1, max_size=4)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations)
def test_any_mutation_of_a_backup_is_refused_with_backup_error(ops):
    data = VALID
    for op in ops:
        data = mutate(data, *op)
    if data == VALID:  # e.g. an insert undone by a delete
        return
    with pytest.raises(BackupError) as refused:
        verify(data, open_member=Collect())
    assert "\n" not in str(refused.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000))
def test_arbitrary_bytes_are_refused_with_backup_error(data):
    with pytest.raises(BackupError):
        verify(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=120).filter(lambda s: "\0" not in s), st.binary(max_size=300)),
                max_size=4),
       st.one_of(st.none(), st.binary(max_size=600), st.recursive(
           st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
           lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=8), c, max_size=3)),
           max_leaves=8)))
def test_tars_made_by_others_are_refused_with_backup_error(entries, manifest):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        if manifest is not None:
            data = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
            info = tarfile.TarInfo(backup.MANIFEST)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(BackupError):
        verify(out.getvalue())


# ------------------------------------------------------------------ what this Pi can take

def manifest_with(**database) -> dict:
    return verify(make_archive(**database))


@pytest.mark.parametrize(("database", "local", "problem"), [
    ({}, (MIGRATIONS, 170012, ["2.19.3"]), None),
    ({}, ([*MIGRATIONS, "0003_next"], 170012, ["2.19.3"]), None),  # an older backup: migrate runs the rest
    ({"migrations": [*MIGRATIONS, "0003_next"]}, (MIGRATIONS, 170012, ["2.19.3"]),
     "its schema (0003_next) is newer than this Pi's (0002_spare_the_sd_card): it has migration(s) 0003_next"),
    ({"migrations": ["0001_schema", "0002_other"]}, (MIGRATIONS, 170012, ["2.19.3"]), "migration(s) 0002_other"),
    ({"server_version_num": 180001}, (MIGRATIONS, 170012, ["2.19.3"]), "PostgreSQL 18, newer than this Pi's 17"),
    ({"server_version_num": 160004}, (MIGRATIONS, 170012, ["2.19.3"]), None),
    ({"timescaledb_version": "2.20.0"}, (MIGRATIONS, 170012, ["2.19.3"]), "needs TimescaleDB 2.20.0"),
    ({"timescaledb_version": "2.19.2"}, (MIGRATIONS, 170012, ["2.19.2", "2.19.3"]), None),
])
def test_compatibility(database, local, problem):
    found = backup.compatibility_problem(manifest_with(**database), *local)
    assert found == problem if problem is None else problem in found


# ------------------------------------------------------------------ names and paths

@pytest.mark.parametrize(("name", "allowed"), [
    ("files/etc/datayoti/secrets/postgresql-datayoti_owner.password", True),
    ("files/etc/datayoti/secrets/mqtt-ca.key", True),
    ("files/etc/datayoti/sensors/1C:69:20:E9:18:24.json", True),
    ("files/etc/mosquitto/certs/server.crt", True),
    ("files/var/lib/mosquitto/dynamic-security.json", True),
    ("files/var/lib/mosquitto/mosquitto.db", False),
    ("files/etc/datayoti/sensors/1C:69:20:E9:18:24.txt", False),
    ("files/etc/datayoti/secrets/.x.password.tmp", False),
    ("files/etc/datayoti/secrets", False),
    ("files/etc/datayoti/secrets/sub/x", False),
    ("files/etc/datayoti/secrets/../ingestor.toml", False),
    ("files/etc/datayoti/./secrets/x", False),
    ("files/etc/datayoti/secrets/x\n", False),
    ("files/etc/passwd", False),
    ("database.dump", False),
])
def test_a_restore_writes_only_into_the_backed_up_places(name, allowed):
    assert (backup.target_of(name) is not None) is allowed


def test_every_backed_up_place_round_trips():
    for fs in backup.FILE_SETS:
        name = fs.pattern.replace("*", "x")
        path = PurePosixPath(str(fs.directory)) / name
        assert backup.target_of(backup.member_name(Path(path))) == path


def test_default_path_and_restore_names():
    assert backup.default_path(Path("/var/backups/datayoti"), "pi1", NOW) == \
        Path("/var/backups/datayoti/pi1-20261124T010203Z.tar")
    assert backup.default_path(Path("/b"), "a b/c", NOW).name == "a_b_c-20261124T010203Z.tar"
    assert backup.restore_names("datayoti_db") == ("datayoti_db_restore", "datayoti_db_replaced")
    new, replaced = backup.restore_names("d" * 63)
    assert len(new) == len(replaced) == 63 and new != replaced and new != "d" * 63


def test_collect_files_takes_regular_files_only(tmp_path, monkeypatch):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "a.password").write_text("a")
    (secrets / ".a.password.tmp").write_text("partial")
    (secrets / "link").symlink_to(secrets / "a.password")
    (secrets / "dir").mkdir()
    os.mkfifo(secrets / "fifo")
    monkeypatch.setattr(backup, "FILE_SETS", (backup.FileSet(secrets, "*"), backup.FileSet(tmp_path / "none", "*")))
    found = backup.collect_files()
    assert [(p.name, data) for p, data, _ in found] == [("a.password", b"a")]


# ------------------------------------------------------------------ pieces of the commands

def test_snapshot_facts_and_tagged_rows():
    rows = [["snapshot", "00000004-00000004-1"], ["migration", "0002_b"], ["migration", "0001_a"],
            ["server", "170012"], ["timescaledb", "2.19.3"], ["size", "123"], ["table", "sites"],
            ["table", "devices"]]
    assert backup.snapshot_facts(rows) == {"snapshot": "00000004-00000004-1", "migrations": ["0001_a", "0002_b"],
                                           "server_version_num": 170012, "timescaledb_version": "2.19.3",
                                           "size_bytes": 123, "tables": ["devices", "sites"]}
    with pytest.raises(BackupError, match="not the appliance's"):
        backup.snapshot_facts([["snapshot", "x"], ["server", "170012"]])


def test_progress_text():
    assert backup.progress_text("backup", "dumping datayoti_db", 12_345_678) == \
        "datayoti backup: dumping datayoti_db 12.3 MB"
    assert backup.progress_text("restore", "verifying", 500, 1000) == \
        "datayoti restore: verifying 500 B of 1.0 kB (50 %)"
    assert backup.progress_text("restore", "swapping the databases") == "datayoti restore: swapping the databases"
    assert backup.human_bytes(3.2e12) == "3200.0 GB"


def test_write_errors_are_one_line():
    full = OSError(28, "No space left on device")
    assert backup.write_error(full, Path("/mnt/full/x.tar")) == \
        "no space left on the device holding /mnt/full: nothing was written"
    assert backup.last_error(b"pg_dump: warning: x\npg_dump: error: query failed: boom\n") == \
        "pg_dump: error: query failed: boom"


def test_render_summary():
    result = {"path": "/b.tar", "bytes": 2_000_000, "seconds": 1.5, **backup.summary(manifest_with())}
    text = backup.render("backup", result)
    assert text.splitlines()[0] == "backup written: /b.tar (2.0 MB in 1.5 s)"
    assert "devices 3, schema_migrations 2, sensor_data 1234" in text and "files: 6" in text


def call(argv, euid=0):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = appliance.main(argv, euid=euid, run=lambda args: 0)
    return code, err.getvalue()


@pytest.mark.parametrize(("argv", "euid", "code", "message"), [
    (["backup"], 0, 0, ""),
    (["backup", "/tmp/x.tar", "--json"], 0, 0, ""),
    (["backup", "a", "b"], 0, 2, "unrecognized arguments: b"),
    (["backup"], 1000, 2, "must run as root"),
    (["restore"], 0, 2, "required: PATH"),
    (["restore", "x.tar", "--dry-run", "--json"], 0, 0, ""),
    (["restore", "x.tar"], 1000, 2, "must run as root"),
    (["restore", "x.tar", "--dry"], 0, 2, "unrecognized arguments: --dry"),
])
def test_arguments(argv, euid, code, message):
    got, err = call(argv, euid)
    assert got == code and message in err and err.count("\n") <= 1


def test_a_refusal_is_one_line_and_exit_1(tmp_path, capsys):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(VALID[:5000])
    args = appliance.build_parser().parse_args(["restore", str(bad), "--json"])
    code = backup.run_command("restore", args, lambda progress: backup.extract_verified(
        bad, tmp_path, lambda manifest: None, progress))
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.startswith("datayoti restore: truncated") and err.count("\n") == 1
