"""`datayoti database ensure`: its settings file, and the plan of statements it derives from the server's state."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from dataclasses import replace

import pytest
from conftest import REPO, VENV_BIN, tool
from datayoti_ingestor import appliance, database, localdb
from datayoti_ingestor.database import (
    PUBLIC,
    ROLE_ATTRIBUTES,
    ClusterState,
    DatabaseError,
    DatabaseState,
    InsideState,
    Role,
    RoleState,
    Settings,
    parse,
    plan_cluster,
    plan_inside,
)
from hypothesis import given, settings
from hypothesis import strategies as st

ROLE = REPO / "roles" / "timescaledb"
GOOD = """
[database]
name = "datayoti_db"

[roles.datayoti_owner]
access = "owner"
connection_limit = 3

[roles.mqtt_ingestor]
access = "write"
connection_limit = 4

[roles.grafana_reader]
access = "read"
connection_limit = 8
"""
APPLIANCE = Settings("datayoti_db", (Role("datayoti_owner", "owner", 3), Role("mqtt_ingestor", "write", 4),
                                     Role("grafana_reader", "read", 8)))


# ------------------------------------------------------------------ the settings file

def test_the_appliances_file_parses():
    assert parse(GOOD, "database.toml") == APPLIANCE
    assert APPLIANCE.owner.name == "datayoti_owner"


def test_the_roles_template_with_its_defaults_gives_the_appliances_settings():
    """roles/timescaledb renders the file from its variables: the one place these names and limits live."""
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
           "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json", "ANSIBLE_LOCALHOST_WARNING": "0",
           "ANSIBLE_NOCOLOR": "1"}
    template = ROLE / "templates" / "database.toml.j2"
    result = subprocess.run(
        [tool("ansible"), "localhost", "-c", "local", "-i", "localhost,", "-m", "ansible.builtin.debug",
         "-a", f"msg={{{{ lookup('ansible.builtin.template', '{template}') }}}}",
         "-e", f"@{ROLE / 'defaults' / 'main.yml'}", "-e", f"@{ROLE / 'vars' / 'main.yml'}",
         "-e", "timescaledb_memory_mb=1024"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    text = json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]
    assert parse(text, "rendered") == APPLIANCE


def test_a_missing_file_says_who_writes_it(tmp_path):
    with pytest.raises(DatabaseError, match=r"database.toml is missing; the timescaledb role writes it"):
        database.load(tmp_path / "database.toml")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t + "\n[extra]\n", r"unknown key\(s\): extra"),
    (lambda t: t.replace('name = "datayoti_db"', 'name = "Datayoti"'), r"database\.name: expected a lower-case"),
    (lambda t: t.replace('name = "datayoti_db"', 'name = "template1"'), r"database\.name: 'template1' is reserved"),
    (lambda t: t.replace('name = "datayoti_db"', 'title = "x"'), r"unknown key\(s\) in \[database\]: title"),
    (lambda t: t.replace('name = "datayoti_db"\n', ''), r"database\.name: missing"),
    (lambda t: t.replace("[roles.mqtt_ingestor]", "[roles.postgres]"), r"roles\.postgres: 'postgres' is reserved"),
    (lambda t: t.replace("[roles.mqtt_ingestor]", "[roles.pg_monitor]"), r"roles\.pg_monitor: 'pg_monitor' is"),
    (lambda t: t.replace('access = "write"', 'access = "admin"'), r"roles\.mqtt_ingestor\.access: expected one"),
    (lambda t: t.replace("connection_limit = 4", "connection_limit = 0"),
     r"roles\.mqtt_ingestor\.connection_limit: expected an integer from 1"),
    (lambda t: t.replace("connection_limit = 4", "connection_limit = true"), r"mqtt_ingestor\.connection_limit"),
    (lambda t: t.replace("connection_limit = 4\n", ""), r"roles\.mqtt_ingestor\.connection_limit: missing"),
    (lambda t: t.replace("connection_limit = 4", "connection_limit = 4\nlogin = false"),
     r"roles\.mqtt_ingestor: unknown key\(s\): login"),
    (lambda t: t.replace('access = "write"', 'access = "owner"'), r"exactly one role .* got 2"),
    (lambda t: t.replace('access = "owner"', 'access = "read"'), r"exactly one role .* got 0 \(none\)"),
    (lambda t: t.split("[roles.")[0], r"roles: expected a \[roles\.<name>\] table"),
    (lambda t: t + "[[", r"not valid TOML"),
])
def test_a_bad_file_is_one_line_naming_the_key(edit, message):
    with pytest.raises(DatabaseError, match=message) as caught:
        parse(edit(GOOD), "/etc/datayoti/database.toml")
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("/etc/datayoti/database.toml: ")


names = st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True).filter(
    lambda n: not n.startswith("pg_") and n not in database.RESERVED_ROLES | database.RESERVED_DATABASES)
good_settings = st.builds(
    lambda db, owner, others: Settings(db, (Role(owner[0], "owner", owner[1]),
                                            *(Role(n, a, lim) for n, (a, lim) in others.items() if n != owner[0]))),
    names, st.tuples(names, st.integers(1, database.MAX_CONNECTION_LIMIT)),
    st.dictionaries(names, st.tuples(st.sampled_from(["write", "read"]), st.integers(1, 500)), max_size=4))


def to_toml(s: Settings) -> str:
    text = f'[database]\nname = "{s.database}"\n'
    for role in s.roles:
        text += f'\n[roles.{role.name}]\naccess = "{role.access}"\nconnection_limit = {role.connection_limit}\n'
    return text


@given(good_settings)
def test_any_good_file_parses_back(s):
    assert parse(to_toml(s), "f") == s


toml_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2, 300000), st.text(max_size=12)),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=8)


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_any_text_parses_or_is_one_line_error(text):
    try:
        parse(text, "f")
    except DatabaseError as exc:
        assert "\n" not in str(exc)


@given(st.dictionaries(st.sampled_from(["database", "roles", "x"]),
                       st.one_of(toml_values, st.dictionaries(names, toml_values, max_size=3),
                                 st.dictionaries(names, st.fixed_dictionaries(
                                     {}, optional={"access": toml_values | st.sampled_from(database.ACCESS),
                                                   "connection_limit": toml_values}), max_size=3)),
                       max_size=3))
@settings(max_examples=300)
def test_any_structure_parses_or_names_what_is_wrong(raw):
    text = "\n".join(f"{key} = {json.dumps(value)}" for key, value in raw.items()
                     if value is not None and not contains_none(value))
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # json is not always TOML; the text test covers bad TOML
    try:
        result = parse(text, "f")
    except DatabaseError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("f: ")
        return
    assert sum(r.access == "owner" for r in result.roles) == 1
    assert all(1 <= r.connection_limit <= database.MAX_CONNECTION_LIMIT for r in result.roles)


def contains_none(value) -> bool:
    if isinstance(value, dict):
        return any(contains_none(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_none(v) for v in value)
    return value is None


# ------------------------------------------------------------------ the plan

def held_cluster(s: Settings) -> ClusterState:
    """The cluster as `ensure` leaves it."""
    acl = {(s.owner.name, p) for p in ("CREATE", "TEMPORARY", "CONNECT")}
    acl |= {(r.name, "CONNECT") for r in s.roles if r.access != "owner"}
    return ClusterState({r.name: RoleState(dict(ROLE_ATTRIBUTES), r.connection_limit) for r in s.roles},
                        DatabaseState(s.owner.name, "UTF8", "C.UTF-8", "C.UTF-8", frozenset(acl)))


def held_inside(s: Settings, tables=("sensor_data",), sequences=("devices_id_seq",)) -> InsideState:
    """The database as `ensure` (and tables made by the owner later) leave it."""
    owner = s.owner.name
    table_acl = {(owner, p) for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")}
    seq_acl = {(owner, p) for p in ("USAGE", "SELECT", "UPDATE")}
    for role in s.roles:
        if role.access != "owner":
            table_acl |= {(role.name, p) for p in database.TABLE_PRIVILEGES[role.access]}
            seq_acl |= {(role.name, p) for p in database.SEQUENCE_PRIVILEGES[role.access]}
    users = {(r.name, "USAGE") for r in s.roles if r.access != "owner"}
    return InsideState(True, owner, frozenset({(owner, "USAGE"), (owner, "CREATE"), (PUBLIC, "USAGE")} | users),
                       {t: frozenset(table_acl) for t in tables}, {q: frozenset(seq_acl) for q in sequences},
                       {"tables": frozenset(table_acl - {(owner, p) for p in ("SELECT", "INSERT", "UPDATE",
                                                                              "DELETE", "TRUNCATE")}),
                        "sequences": frozenset(seq_acl - {(owner, p) for p in ("USAGE", "SELECT", "UPDATE")})})


@given(good_settings)
def test_nothing_to_do_where_everything_holds(s):
    assert plan_cluster(s, held_cluster(s)) == []
    assert plan_inside(s, held_inside(s)) == []


def descriptions(steps) -> list[str]:
    return [step.description for step in steps]


def test_an_empty_server_gets_everything_in_order():
    cluster = descriptions(plan_cluster(APPLIANCE, ClusterState({}, None)))
    assert cluster == ["create role datayoti_owner", "create role mqtt_ingestor", "create role grafana_reader",
                       "create database datayoti_db owned by datayoti_owner",
                       "revoke PUBLIC's privileges on database datayoti_db",
                       "grant CONNECT on database datayoti_db to mqtt_ingestor",
                       "grant CONNECT on database datayoti_db to grafana_reader"]
    inside = descriptions(plan_inside(APPLIANCE, database.new_database_inside()))
    assert inside == [
        "create extension timescaledb", "give schema public to datayoti_owner",
        "grant USAGE on schema public to mqtt_ingestor", "grant USAGE on schema public to grafana_reader",
        "grant SELECT, INSERT, UPDATE, DELETE on the tables datayoti_owner creates in public to mqtt_ingestor",
        "grant SELECT on the tables datayoti_owner creates in public to grafana_reader",
        "grant USAGE, SELECT on the sequences datayoti_owner creates in public to mqtt_ingestor"]


def test_the_sql_names_everything_through_psql_variables():
    steps = plan_cluster(APPLIANCE, ClusterState({}, None)) + plan_inside(APPLIANCE, database.new_database_inside())
    sql = "\n".join(step.sql for step in steps)
    for value in ("datayoti_db", "datayoti_owner", "mqtt_ingestor", "grafana_reader", " 3", " 4", " 8"):
        assert value not in sql
    used = set(re.findall(r":\"?([a-z0-9_]+)\"?", sql))
    assert used <= set(APPLIANCE.variables())
    assert 'CONNECTION LIMIT :limit1;' in sql and 'TO :"role2";' in sql


@given(good_settings, st.data())
def test_each_difference_gives_exactly_its_statement(s, data):
    cluster = held_cluster(s)
    role = data.draw(st.sampled_from(s.roles))
    attribute = data.draw(st.sampled_from(sorted(ROLE_ATTRIBUTES)))
    wrong = RoleState({**ROLE_ATTRIBUTES, attribute: not ROLE_ATTRIBUTES[attribute]}, role.connection_limit)
    steps = plan_cluster(s, replace(cluster, roles={**cluster.roles, role.name: wrong}))
    assert descriptions(steps) == [f"set role {role.name}'s attributes and connection limit {role.connection_limit}"]
    i = s.roles.index(role)
    assert steps[0].sql.startswith(f'ALTER ROLE :"role{i}" LOGIN NOSUPERUSER') and f":limit{i};" in steps[0].sql

    limited = RoleState(dict(ROLE_ATTRIBUTES), role.connection_limit + 1)
    assert len(plan_cluster(s, replace(cluster, roles={**cluster.roles, role.name: limited}))) == 1

    missing_role = {n: r for n, r in cluster.roles.items() if n != role.name}
    assert descriptions(plan_cluster(s, replace(cluster, roles=missing_role))) == [f"create role {role.name}"]

    db = cluster.database
    other_owner = replace(db, owner="someone_else")
    assert descriptions(plan_cluster(s, replace(cluster, database=other_owner))) == [
        f"give database {s.database} to {s.owner.name}"]
    public = replace(db, acl=db.acl | {(PUBLIC, data.draw(st.sampled_from(["CONNECT", "TEMPORARY", "CREATE"])))})
    assert descriptions(plan_cluster(s, replace(cluster, database=public))) == [
        f"revoke PUBLIC's privileges on database {s.database}"]


def test_a_database_of_another_encoding_is_refused_in_one_line():
    cluster = held_cluster(APPLIANCE)
    latin = replace(cluster, database=replace(cluster.database, encoding="LATIN1", collate="C"))
    with pytest.raises(DatabaseError, match="exists with encoding LATIN1, collation C") as caught:
        plan_cluster(APPLIANCE, latin)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("change", "expected"), [
    (lambda s: replace(s, extension=False), ["create extension timescaledb"]),
    (lambda s: replace(s, schema_owner="pg_database_owner"), ["give schema public to datayoti_owner"]),
    (lambda s: replace(s, schema_acl=s.schema_acl | {(PUBLIC, "CREATE")}),
     ["revoke CREATE on schema public from PUBLIC"]),
    (lambda s: replace(s, schema_acl=s.schema_acl - {("grafana_reader", "USAGE")}),
     ["grant USAGE on schema public to grafana_reader"]),
    (lambda s: replace(s, tables={**s.tables, "made_by_postgres": frozenset({("postgres", "SELECT")})}),
     ["grant SELECT, INSERT, UPDATE, DELETE on the tables in public to mqtt_ingestor",
      "grant SELECT on the tables in public to grafana_reader"]),
    (lambda s: replace(s, sequences={"x_seq": frozenset({("mqtt_ingestor", "USAGE")})}),
     ["grant USAGE, SELECT on the sequences in public to mqtt_ingestor"]),
    (lambda s: replace(s, default_acl={**s.default_acl, "tables": s.default_acl["tables"]
                                       - {("mqtt_ingestor", "DELETE")}}),
     ["grant SELECT, INSERT, UPDATE, DELETE on the tables datayoti_owner creates in public to mqtt_ingestor"]),
    (lambda s: replace(s, default_acl={"tables": s.default_acl["tables"]}),
     ["grant USAGE, SELECT on the sequences datayoti_owner creates in public to mqtt_ingestor"]),
    (lambda s: replace(s, schema_owner=None, schema_acl=frozenset()),
     ["create schema public owned by datayoti_owner", "grant USAGE on schema public to mqtt_ingestor",
      "grant USAGE on schema public to grafana_reader"]),
])
def test_each_difference_inside_gives_its_statements(change, expected):
    assert descriptions(plan_inside(APPLIANCE, change(held_inside(APPLIANCE)))) == expected


def test_no_tables_need_no_grant_on_all_tables():
    assert plan_inside(APPLIANCE, held_inside(APPLIANCE, tables=(), sequences=())) == []


def test_state_queries_parse_into_states():
    cluster = database.cluster_state_from({
        "roles": {"datayoti_owner": {**ROLE_ATTRIBUTES, "connection_limit": 3}},
        "database": {"owner": "datayoti_owner", "encoding": "UTF8", "collate": "C.UTF-8", "ctype": "C.UTF-8",
                     "acl": [["datayoti_owner", "CONNECT"], ["PUBLIC", "TEMPORARY"]]}})
    assert cluster.roles["datayoti_owner"].connection_limit == 3
    assert cluster.database.acl == {("datayoti_owner", "CONNECT"), (PUBLIC, "TEMPORARY")}
    assert database.cluster_state_from({"roles": {}, "database": None}) == ClusterState({}, None)
    inside = database.inside_state_from({
        "extension": True, "schema_owner": "datayoti_owner", "schema_acl": [["PUBLIC", "USAGE"]],
        "relations": [{"name": "t", "kind": "r", "acl": [["x", "SELECT"]]}, {"name": "v", "kind": "v", "acl": []},
                      {"name": "s", "kind": "S", "acl": [["x", "USAGE"]]}, {"name": "i", "kind": "i", "acl": []}],
        "default_acl": [["r", "x", "SELECT"], ["S", "x", "USAGE"], ["f", "x", "EXECUTE"]]})
    assert set(inside.tables) == {"t", "v"} and set(inside.sequences) == {"s"}
    assert inside.default_acl == {"tables": {("x", "SELECT")}, "sequences": {("x", "USAGE")}}


# ------------------------------------------------------------------ the command

def run_command(monkeypatch, tmp_path, psql, argv=("database", "ensure", "--json")):
    path = tmp_path / "database.toml"
    path.write_text(GOOD)
    monkeypatch.setattr(database, "load", lambda: parse(path.read_text(), str(path)))
    monkeypatch.setattr(database.localdb, "psql", psql)
    monkeypatch.setattr(database, "exclusive", lambda: _null())
    return appliance.main(list(argv), euid=0)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_postgresql_not_running_is_one_line_and_exit_1(monkeypatch, tmp_path, capsys):
    def down(*args, **kwargs):
        raise localdb.DatabaseUnavailable("Is the server running locally and accepting connections?")
    assert run_command(monkeypatch, tmp_path, down) == 1
    err = capsys.readouterr().err
    assert err.startswith("datayoti database ensure: PostgreSQL is not running here") and err.count("\n") == 1


def test_dry_run_on_an_empty_server_changes_nothing_and_reports_everything(monkeypatch, tmp_path, capsys):
    calls = []

    def psql(sql, *, database="postgres", variables=None, **kwargs):
        calls.append((database, sql))
        assert "SELECT json_build_object" in sql, "a dry run only reads"
        return [[json.dumps({"roles": {}, "database": None})]]
    assert run_command(monkeypatch, tmp_path, psql, ("database", "ensure", "--dry-run", "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["changed"] and report["dry_run"] and len(report["applied"]) == 14
    assert [db for db, _ in calls] == ["postgres"]


def test_a_held_state_reports_unchanged(monkeypatch, tmp_path, capsys):
    cluster = held_cluster(APPLIANCE)
    inside = held_inside(APPLIANCE)
    as_json = {"roles": {n: {**r.attributes, "connection_limit": r.connection_limit} for n, r in cluster.roles.items()},
               "database": {"owner": "datayoti_owner", "encoding": "UTF8", "collate": "C.UTF-8", "ctype": "C.UTF-8",
                            "acl": sorted(cluster.database.acl)}}
    inside_json = {"extension": True, "schema_owner": "datayoti_owner", "schema_acl": sorted(inside.schema_acl),
                   "relations": [{"name": "t", "kind": "r", "acl": sorted(inside.tables["sensor_data"])}],
                   "default_acl": [[code, *g] for kind, code in database.DEFAULT_ACL_KINDS.items()
                                   for g in sorted(inside.default_acl[kind])]}

    def psql(sql, *, database="postgres", variables=None, **kwargs):
        assert "SELECT json_build_object" in sql
        return [[json.dumps(as_json if database == "postgres" else inside_json)]]
    assert run_command(monkeypatch, tmp_path, psql) == 0
    assert json.loads(capsys.readouterr().out) == {"changed": False, "dry_run": False, "database": "datayoti_db",
                                                   "applied": []}
