"""This Pi's PostgreSQL, reached by root as its superuser `postgres` over the local socket (peer authentication).

Values go in as psql variables (:'name' quotes them), or on stdin, never into SQL by string formatting.
"""

from __future__ import annotations

import subprocess

PSQL_TIMEOUT_S = 120
# What psql or runuser say when there is no server to talk to.
UNAVAILABLE_SIGNS = ("connection to server", "could not connect", "No such file or directory",
                     "user postgres does not exist")


class DatabaseUnavailable(Exception):
    """PostgreSQL is not installed or not running here."""


def psql(sql: str, *, database: str = "postgres", variables: dict[str, str] | None = None,
         timeout: float = PSQL_TIMEOUT_S) -> list[list[str]]:
    """Run SQL (on stdin) as `postgres`; return the rows of its last result, fields split on tabs."""
    argv = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-F", "\t",
            "-v", "ON_ERROR_STOP=1", "-d", database]
    for name, value in (variables or {}).items():
        argv += ["-v", f"{name}={value}"]
    try:
        done = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise DatabaseUnavailable(f"{exc.filename} is missing") from None
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()
        text = message[-1] if message else f"psql exited {done.returncode}"
        if any(sign in done.stderr for sign in UNAVAILABLE_SIGNS):
            raise DatabaseUnavailable(text)
        raise RuntimeError(f"PostgreSQL: {text}")
    return [line.split("\t") for line in done.stdout.splitlines() if line]


def available() -> bool:
    try:
        psql("SELECT 1")
    except (DatabaseUnavailable, RuntimeError):
        return False
    return True
