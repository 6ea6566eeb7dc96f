"""`datayoti`: the on-device program of DataYoti Edge.

Each subcommand lives in its own module, which adds its parser with `add_parser(commands)` and
sets `run` (args -> exit code) and `needs_root` (args -> bool) as defaults:

  status    health at a glance (health.py)
  device    sensors' accounts and the device registry (devices.py)
  secrets   this Pi's secrets, made and applied here (hostsecrets.py)
  simulate  simulated sensors publishing like the firmware (simulate.py)
  backup    one checksummed file of the database, accounts and secrets; restore (backup.py)
  database  the database, its login roles, extension and privileges (database.py)
  firstboot a flashed card's first boot: database, secrets, schema, sensors (firstboot.py)

Exit codes: 0 ok, 1 unhealthy or not found, 2 usage error (a non-root call included).
Every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import backup, database, devices, firstboot, health, hostsecrets, simulate

PROG = "datayoti"
# The subcommands, in the order --help lists them; a new one is added here.
COMMANDS = (health, devices, hostsecrets, database, simulate, backup, firstboot)


class Parser(argparse.ArgumentParser):
    """argparse without abbreviated options, whose usage errors are one line."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # subcommands' parsers too
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str) -> str:
    """Control characters and line breaks escaped, so that an error stays on one line."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def build_parser() -> Parser:
    parser = Parser(prog=PROG,
                    description="The DataYoti Edge appliance on this Pi. Exit codes: 0 ok, 1 unhealthy or not "
                                "found, 2 usage error. Run as root (sudo), except `simulate --credentials DIR`.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None, *, euid: int | None = None, run=None) -> int:
    """Parse, check root, run. `euid` and `run` replace os.geteuid() and the command in tests."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error, already printed (2)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    euid = os.geteuid() if euid is None else euid
    if euid != 0 and args.needs_root(args):
        print(f"{PROG}: error: `{PROG} {args.command}` must run as root (sudo {PROG} {args.command} ...)",
              file=sys.stderr)
        return 2
    try:
        return (run or args.run)(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line for the operator, never a traceback
        print(f"{PROG}: {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
