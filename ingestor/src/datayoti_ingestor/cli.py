"""datayoti-ingestor: run the service, or manage its schema."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import psycopg2

from . import config as config_module
from . import schema


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="datayoti-ingestor",
                                description="Lossless MQTT to TimescaleDB ingestor of DataYoti Edge.")
    p.add_argument("--config", type=Path, help=f"TOML file (default {config_module.DEFAULT_PATH})")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    verbs = p.add_subparsers(dest="verb", required=True)
    verbs.add_parser("run", help="consume MQTT and write to the database (the systemd service)")
    verbs.add_parser("migrate", help="apply the schema migrations and create the views (idempotent)")
    v = verbs.add_parser("views", help="manage the views, like the seeds' manage_views")
    v.add_argument("action", choices=["create", "recreate", "drop"])
    verbs.add_parser("retention", help="drop data past its retention limit (the systemd timer)")
    verbs.add_parser("check-config", help="load the configuration, print it without secrets")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # journald adds timestamps; keep lines short and greppable.
    logging.basicConfig(stream=sys.stderr, level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("datayoti")
    try:
        cfg = config_module.load(args.config)
    except config_module.ConfigError as exc:
        print(f"datayoti-ingestor: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.verb == "run":
            from .service import Ingestor

            return Ingestor(cfg).run()
        if args.verb == "migrate":
            applied = schema.migrate(cfg)
            print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
        elif args.verb == "views":
            schema.views(cfg, args.action)
            print(f"views {args.action}: done")
        elif args.verb == "retention":
            for table, (count, unit) in schema.retention(cfg).items():
                print(f"{table}: {count} {unit}")
        elif args.verb == "check-config":
            print(cfg)
    except psycopg2.Error as exc:
        log.error("database error: %s", str(exc).strip())
        return 1
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
