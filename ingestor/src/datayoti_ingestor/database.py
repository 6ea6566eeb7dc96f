"""`datayoti database ensure`: this Pi's database, its login roles, the timescaledb extension and privileges.

The one implementation: the timescaledb role calls it, and so does a flashed card's first boot. Its inputs
are /etc/datayoti/database.toml, which the timescaledb role writes from its variables:

    [database]
    name = "datayoti_db"

    [roles.datayoti_owner]
    access = "owner"        # owns the database and its schema public: migrations run as it
    connection_limit = 3

    [roles.mqtt_ingestor]
    access = "write"        # reads and writes rows
    connection_limit = 4

    [roles.grafana_reader]
    access = "read"         # reads rows
    connection_limit = 8

What `ensure` makes hold (a statement runs only where the server shows it does not hold yet):
- each role: LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS and its connection limit;
  no password (`datayoti secrets ensure` sets them once the roles exist);
- the database, owned by the owner role, UTF8 with the C.UTF-8 collation, from template0;
- PUBLIC has no privilege on the database, and each write or read role has CONNECT;
- the extension timescaledb, and the schema public owned by the owner, with no CREATE for PUBLIC and
  USAGE for each write or read role;
- write roles: SELECT, INSERT, UPDATE, DELETE on the tables and USAGE, SELECT on the sequences of public;
  read roles: SELECT on its tables; on those there now and (default privileges) those the owner creates later.
Nothing is revoked from the login roles: a privilege granted by hand stays.

Statements run as `postgres` through localdb.psql; names and numbers go in as psql variables only.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import layout, localdb
from .hostsecrets import exclusive

ACCESS = ("owner", "write", "read")
MAX_CONNECTION_LIMIT = 262143  # PostgreSQL's largest max_connections
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Names PostgreSQL reserves, or that belong to the cluster itself: never managed here.
RESERVED_ROLES = frozenset({"postgres", "public", "none", "current_role", "current_user", "session_user"})
RESERVED_DATABASES = frozenset({"postgres", "template0", "template1"})

ENCODING = "UTF8"
LOCALE = "C.UTF-8"
EXTENSION = "timescaledb"
SCHEMA = "public"
PUBLIC = "PUBLIC"  # the grantee name the state queries give to PUBLIC
# pg_roles columns -> the value every managed login role must have.
ROLE_ATTRIBUTES = {"login": True, "superuser": False, "createdb": False, "createrole": False,
                   "replication": False, "bypassrls": False}
ROLE_FLAGS = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
TABLE_PRIVILEGES = {"write": ("SELECT", "INSERT", "UPDATE", "DELETE"), "read": ("SELECT",)}
SEQUENCE_PRIVILEGES = {"write": ("USAGE", "SELECT"), "read": ()}
TABLE_KINDS = frozenset("rpvmf")  # what GRANT ... ON ALL TABLES covers: tables, partitioned, views, matviews, foreign
SEQUENCE_KIND = "S"
DEFAULT_ACL_KINDS = {"tables": "r", "sequences": "S"}  # pg_default_acl.defaclobjtype


class DatabaseError(Exception):
    """The database could not be set up; the message says why, on one line."""


# ------------------------------------------------------------------ the settings file

@dataclass(frozen=True)
class Role:
    name: str
    access: str  # one of ACCESS
    connection_limit: int


@dataclass(frozen=True)
class Settings:
    database: str
    roles: tuple[Role, ...]  # in the file's order; exactly one is the owner

    @property
    def owner(self) -> Role:
        return next(role for role in self.roles if role.access == "owner")

    def variables(self) -> dict[str, str]:
        """The psql variables every statement may use: database, owner, role<i>, limit<i>."""
        values = {"database": self.database, "owner": self.owner.name,
                  "roles": ",".join(role.name for role in self.roles)}
        for i, role in enumerate(self.roles):
            values[f"role{i}"] = role.name
            values[f"limit{i}"] = str(role.connection_limit)
        return values


def check_identifier(value, where: str, reserved: frozenset[str]) -> str:
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise DatabaseError(f"{where}: expected a lower-case SQL name (a-z, 0-9, _; at most 63), got {value!r}")
    if value in reserved or value.startswith("pg_"):
        raise DatabaseError(f"{where}: {value!r} is reserved by PostgreSQL")
    return value


def parse_role(name: str, table, where: str) -> Role:
    check_identifier(name, where, RESERVED_ROLES)
    if not isinstance(table, dict):
        raise DatabaseError(f"{where}: expected a table with access and connection_limit, got {table!r}")
    unknown = sorted(set(table) - {"access", "connection_limit"})
    if unknown:
        raise DatabaseError(f"{where}: unknown key(s): {', '.join(unknown)}")
    for key in ("access", "connection_limit"):
        if key not in table:
            raise DatabaseError(f"{where}.{key}: missing")
    access, limit = table["access"], table["connection_limit"]
    if access not in ACCESS:
        raise DatabaseError(f"{where}.access: expected one of {', '.join(ACCESS)}, got {access!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_CONNECTION_LIMIT:
        raise DatabaseError(f"{where}.connection_limit: expected an integer from 1 to {MAX_CONNECTION_LIMIT}, "
                            f"got {limit!r}")
    return Role(name, access, limit)


def parse(text: str, source: str) -> Settings:
    """TOML text -> settings; DatabaseError naming the source and the key on anything unexpected."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DatabaseError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"database", "roles"})
    if unknown:
        raise DatabaseError(f"{source}: unknown key(s): {', '.join(unknown)}; expected [database] and [roles.*]")
    section = raw.get("database")
    if not isinstance(section, dict):
        raise DatabaseError(f"{source}: database: expected a [database] table with its name")
    unknown = sorted(set(section) - {"name"})
    if unknown:
        raise DatabaseError(f"{source}: unknown key(s) in [database]: {', '.join(unknown)}")
    if "name" not in section:
        raise DatabaseError(f"{source}: database.name: missing")
    name = check_identifier(section["name"], f"{source}: database.name", RESERVED_DATABASES)
    roles_table = raw.get("roles")
    if not isinstance(roles_table, dict) or not roles_table:
        raise DatabaseError(f"{source}: roles: expected a [roles.<name>] table for each login role")
    roles = tuple(parse_role(role, table, f"{source}: roles.{role}") for role, table in roles_table.items())
    owners = [role.name for role in roles if role.access == "owner"]
    if len(owners) != 1:
        raise DatabaseError(f"{source}: roles: expected exactly one role with access = \"owner\", "
                            f"got {len(owners)} ({', '.join(owners) or 'none'})")
    return Settings(name, roles)


def load(path: Path = layout.DATABASE_CONFIG) -> Settings:
    try:
        return parse(path.read_text(), str(path))
    except FileNotFoundError:
        raise DatabaseError(f"{path} is missing; the timescaledb role writes it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatabaseError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


# ------------------------------------------------------------------ what the server holds

Grant = tuple[str, str]  # (grantee, privilege), grantee PUBLIC for PUBLIC


@dataclass(frozen=True)
class RoleState:
    attributes: dict[str, bool]  # the ROLE_ATTRIBUTES keys
    connection_limit: int


@dataclass(frozen=True)
class DatabaseState:
    owner: str
    encoding: str
    collate: str
    ctype: str
    acl: frozenset[Grant]


@dataclass(frozen=True)
class ClusterState:
    roles: dict[str, RoleState]  # the managed roles that exist
    database: DatabaseState | None  # None: no such database


@dataclass(frozen=True)
class InsideState:
    """What the database holds: the extension, the schema public and its relations, default privileges."""
    extension: bool
    schema_owner: str | None  # None: no schema public
    schema_acl: frozenset[Grant]
    tables: dict[str, frozenset[Grant]]  # relation name -> its grants (the kinds in TABLE_KINDS)
    sequences: dict[str, frozenset[Grant]]
    default_acl: dict[str, frozenset[Grant]] = field(default_factory=dict)  # "tables"/"sequences" -> grants


def default_database_acl(owner: str) -> frozenset[Grant]:
    """acldefault('d', owner): what a new database grants."""
    return frozenset({(owner, "CREATE"), (owner, "TEMPORARY"), (owner, "CONNECT"),
                      (PUBLIC, "TEMPORARY"), (PUBLIC, "CONNECT")})


def new_database_inside() -> InsideState:
    """What a database made from template0 holds (PostgreSQL 15 and later)."""
    return InsideState(extension=False, schema_owner="pg_database_owner",
                       schema_acl=frozenset({("pg_database_owner", "USAGE"), ("pg_database_owner", "CREATE"),
                                             (PUBLIC, "USAGE")}),
                       tables={}, sequences={}, default_acl={})


def grants(entries) -> frozenset[Grant]:
    return frozenset((str(grantee), str(privilege)) for grantee, privilege in entries or [])


def cluster_state_from(raw: dict) -> ClusterState:
    """The cluster query's JSON -> ClusterState."""
    roles = {name: RoleState({key: bool(info[key]) for key in ROLE_ATTRIBUTES}, int(info["connection_limit"]))
             for name, info in (raw.get("roles") or {}).items()}
    db = raw.get("database")
    database = None if db is None else DatabaseState(db["owner"], db["encoding"], db["collate"], db["ctype"],
                                                     grants(db["acl"]))
    return ClusterState(roles, database)


def inside_state_from(raw: dict) -> InsideState:
    """The database query's JSON -> InsideState."""
    tables, sequences = {}, {}
    for relation in raw.get("relations") or []:
        kind = relation["kind"]
        if kind in TABLE_KINDS:
            tables[relation["name"]] = grants(relation["acl"])
        elif kind == SEQUENCE_KIND:
            sequences[relation["name"]] = grants(relation["acl"])
    by_kind = {code: kind for kind, code in DEFAULT_ACL_KINDS.items()}
    default_acl: dict[str, set[Grant]] = {}
    for code, grantee, privilege in raw.get("default_acl") or []:
        if code in by_kind:
            default_acl.setdefault(by_kind[code], set()).add((grantee, privilege))
    return InsideState(bool(raw.get("extension")), raw.get("schema_owner"), grants(raw.get("schema_acl")),
                       tables, sequences, {kind: frozenset(found) for kind, found in default_acl.items()})


GRANTEE = "CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END"
CLUSTER_QUERY = f"""
SELECT json_build_object(
  'roles', (SELECT coalesce(json_object_agg(rolname, json_build_object(
      'login', rolcanlogin, 'superuser', rolsuper, 'createdb', rolcreatedb, 'createrole', rolcreaterole,
      'replication', rolreplication, 'bypassrls', rolbypassrls, 'connection_limit', rolconnlimit)), '{{}}')
    FROM pg_roles WHERE rolname = ANY (string_to_array(:'roles', ','))),
  'database', (SELECT json_build_object(
      'owner', pg_get_userbyid(d.datdba), 'encoding', pg_encoding_to_char(d.encoding),
      'collate', d.datcollate, 'ctype', d.datctype,
      'acl', (SELECT coalesce(json_agg(json_build_array({GRANTEE}, a.privilege_type)), '[]')
              FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a))
    FROM pg_database d WHERE d.datname = :'database')
)::jsonb::text;
"""
INSIDE_QUERY = f"""
SELECT json_build_object(
  'extension', EXISTS (SELECT 1 FROM pg_extension WHERE extname = '{EXTENSION}'),
  'schema_owner', (SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = '{SCHEMA}'),
  'schema_acl', (SELECT coalesce(json_agg(json_build_array({GRANTEE}, a.privilege_type)), '[]')
    FROM pg_namespace n CROSS JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
    WHERE n.nspname = '{SCHEMA}'),
  'relations', (SELECT coalesce(json_agg(json_build_object('name', c.relname, 'kind', c.relkind::text,
      'acl', (SELECT coalesce(json_agg(json_build_array({GRANTEE}, a.privilege_type)), '[]')
              FROM aclexplode(coalesce(c.relacl, acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char",
                                                                   c.relowner))) a))), '[]')
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = '{SCHEMA}'
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')),
  'default_acl', (SELECT coalesce(json_agg(json_build_array(d.defaclobjtype::text, {GRANTEE}, a.privilege_type)),
                                  '[]')
    FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace AND n.nspname = '{SCHEMA}'
    CROSS JOIN LATERAL aclexplode(d.defaclacl) a
    WHERE d.defaclrole = (SELECT oid FROM pg_roles WHERE rolname = :'owner'))
)::jsonb::text;
"""


def query_json(sql: str, settings: Settings, database: str = "postgres") -> dict:
    try:
        rows = localdb.psql(sql, database=database, variables=settings.variables())
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        raise DatabaseError(f"reading the state of {database}: {exc}") from None
    try:
        return json.loads("".join("\t".join(row) for row in rows))
    except ValueError:
        raise DatabaseError(f"PostgreSQL answered the state query in {database} with something not JSON") from None


# ------------------------------------------------------------------ pure: the plan

@dataclass(frozen=True)
class Step:
    description: str
    sql: str  # one statement; names and numbers only as the settings' psql variables


def role_ref(settings: Settings, role: Role) -> tuple[str, str]:
    """(:"role<i>", :limit<i>): how statements name a role and its limit."""
    i = settings.roles.index(role)
    return f':"role{i}"', f":limit{i}"


def privileges_sql(privileges: tuple[str, ...]) -> str:
    return ", ".join(privileges)


def missing(held: frozenset[Grant], grantee: str, privileges: tuple[str, ...]) -> bool:
    return any((grantee, p) not in held for p in privileges)


def plan_cluster(settings: Settings, state: ClusterState) -> list[Step]:
    """Statements (run in the database postgres) for the roles, the database and its privileges."""
    steps = []
    for role in settings.roles:
        ref, limit = role_ref(settings, role)
        found = state.roles.get(role.name)
        if found is None:
            steps.append(Step(f"create role {role.name}",
                              f"CREATE ROLE {ref} {ROLE_FLAGS} CONNECTION LIMIT {limit};"))
        elif found.attributes != ROLE_ATTRIBUTES or found.connection_limit != role.connection_limit:
            steps.append(Step(f"set role {role.name}'s attributes and connection limit {role.connection_limit}",
                              f"ALTER ROLE {ref} {ROLE_FLAGS} CONNECTION LIMIT {limit};"))
    owner = settings.owner
    db = state.database
    if db is None:
        steps.append(Step(f"create database {settings.database} owned by {owner.name}",
                          f"CREATE DATABASE :\"database\" OWNER :\"owner\" TEMPLATE template0 ENCODING '{ENCODING}'"
                          f" LC_COLLATE '{LOCALE}' LC_CTYPE '{LOCALE}';"))
        acl = default_database_acl(owner.name)
    else:
        if (db.encoding, db.collate, db.ctype) != (ENCODING, LOCALE, LOCALE):
            raise DatabaseError(f"database {settings.database} exists with encoding {db.encoding}, collation "
                                f"{db.collate} and ctype {db.ctype}, not {ENCODING} and {LOCALE}; it cannot be "
                                f"changed in place (dump, drop and restore it)")
        if db.owner != owner.name:
            steps.append(Step(f"give database {settings.database} to {owner.name}",
                              'ALTER DATABASE :"database" OWNER TO :"owner";'))
        acl = db.acl
    if any(grantee == PUBLIC for grantee, _ in acl):
        steps.append(Step(f"revoke PUBLIC's privileges on database {settings.database}",
                          'REVOKE ALL ON DATABASE :"database" FROM PUBLIC;'))
    for role in settings.roles:
        if role.access != "owner" and missing(acl, role.name, ("CONNECT",)):
            steps.append(Step(f"grant CONNECT on database {settings.database} to {role.name}",
                              f'GRANT CONNECT ON DATABASE :"database" TO {role_ref(settings, role)[0]};'))
    return steps


def plan_inside(settings: Settings, state: InsideState) -> list[Step]:
    """Statements (run in the database itself) for the extension, the schema public and the privileges."""
    steps = []
    owner = settings.owner.name
    if not state.extension:
        steps.append(Step(f"create extension {EXTENSION}", f"CREATE EXTENSION IF NOT EXISTS {EXTENSION};"))
    schema_acl = state.schema_acl
    if state.schema_owner is None:
        steps.append(Step(f"create schema {SCHEMA} owned by {owner}",
                          f'CREATE SCHEMA {SCHEMA} AUTHORIZATION :"owner";'))
        schema_acl = frozenset({(owner, "USAGE"), (owner, "CREATE")})
    elif state.schema_owner != owner:
        steps.append(Step(f"give schema {SCHEMA} to {owner}", f'ALTER SCHEMA {SCHEMA} OWNER TO :"owner";'))
    if (PUBLIC, "CREATE") in schema_acl:
        steps.append(Step(f"revoke CREATE on schema {SCHEMA} from PUBLIC",
                          f"REVOKE CREATE ON SCHEMA {SCHEMA} FROM PUBLIC;"))
    users = [role for role in settings.roles if role.access != "owner"]
    for role in users:
        if missing(schema_acl, role.name, ("USAGE",)):
            steps.append(Step(f"grant USAGE on schema {SCHEMA} to {role.name}",
                              f"GRANT USAGE ON SCHEMA {SCHEMA} TO {role_ref(settings, role)[0]};"))
    for kind, relations, wanted in (("tables", state.tables, TABLE_PRIVILEGES),
                                    ("sequences", state.sequences, SEQUENCE_PRIVILEGES)):
        for role in users:
            privileges = wanted[role.access]
            if privileges and any(missing(held, role.name, privileges) for held in relations.values()):
                steps.append(Step(f"grant {privileges_sql(privileges)} on the {kind} in {SCHEMA} to {role.name}",
                                  f"GRANT {privileges_sql(privileges)} ON ALL {kind.upper()} IN SCHEMA {SCHEMA} "
                                  f"TO {role_ref(settings, role)[0]};"))
    for kind, wanted in (("tables", TABLE_PRIVILEGES), ("sequences", SEQUENCE_PRIVILEGES)):
        held = state.default_acl.get(kind, frozenset())
        for role in users:
            privileges = wanted[role.access]
            if privileges and missing(held, role.name, privileges):
                steps.append(Step(f"grant {privileges_sql(privileges)} on the {kind} {owner} creates in {SCHEMA} "
                                  f"to {role.name}",
                                  f'ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA {SCHEMA} GRANT '
                                  f"{privileges_sql(privileges)} ON {kind.upper()} TO {role_ref(settings, role)[0]};"))
    return steps


# ------------------------------------------------------------------ ensure

@dataclass
class Report:
    database: str
    dry_run: bool = False
    applied: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.applied)

    def as_dict(self) -> dict:
        return {"changed": self.changed, "dry_run": self.dry_run, "database": self.database,
                "applied": self.applied}


def run_steps(steps: list[Step], settings: Settings, database: str, report: Report) -> None:
    report.applied += [step.description for step in steps]
    if steps and not report.dry_run:
        try:
            localdb.psql("\n".join(step.sql for step in steps) + "\n", database=database,
                         variables=settings.variables())
        except RuntimeError as exc:
            raise DatabaseError(f"{exc} (while: {'; '.join(s.description for s in steps)})") from None


def ensure(settings: Settings, dry_run: bool = False) -> Report:
    """Bring the roles, the database, its extension and privileges in line with the settings.

    Raises localdb.DatabaseUnavailable when PostgreSQL is not running, DatabaseError otherwise."""
    report = Report(settings.database, dry_run=dry_run)
    cluster = cluster_state_from(query_json(CLUSTER_QUERY, settings))
    run_steps(plan_cluster(settings, cluster), settings, "postgres", report)
    if cluster.database is None and dry_run:
        inside = new_database_inside()
    else:
        inside = inside_state_from(query_json(INSIDE_QUERY, settings, settings.database))
    run_steps(plan_inside(settings, inside), settings, settings.database, report)
    return report


# ------------------------------------------------------------------ CLI

def add_parser(commands) -> None:
    p = commands.add_parser("database", help="create the database, its roles and privileges (idempotent)",
                            description="This Pi's database: its login roles, the timescaledb extension and "
                                        f"the roles' privileges, as {layout.DATABASE_CONFIG} describes them.")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ensure_p = sub.add_parser("ensure", help="create or correct what is missing or different; change nothing else")
    ensure_p.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    ensure_p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=command, needs_root=lambda args: True)


def command(args: argparse.Namespace) -> int:
    try:
        settings = load()
        with exclusive():
            report = ensure(settings, dry_run=args.dry_run)
    except localdb.DatabaseUnavailable as exc:
        print(f"datayoti database {args.action}: PostgreSQL is not running here ({str(exc).strip()})",
              file=sys.stderr)
        return 1
    except DatabaseError as exc:
        print(f"datayoti database {args.action}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_dict(), sort_keys=True) if args.json else render(report))
    return 0


def render(report: Report) -> str:
    if not report.applied:
        return f"database {report.database}, its roles and privileges are in place; nothing changed"
    title = "would" if report.dry_run else "done"
    return "\n".join(f"{title}: {line}" for line in report.applied)
