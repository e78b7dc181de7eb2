"""The ``molvae`` command: a thin layer of argument parsing over the Python API.

Each command group lives in its own module here and registers its subcommands with
``register(subparsers, bench)``, where ``bench`` holds the ``molvae bench ...`` subcommands.
Every handler only parses arguments and calls public functions of the package.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import MolvaeError

# Command groups in the order of the data's journey; each module defines register().
COMMAND_MODULES = [
    "molvae.cli.data_cmd",
    "molvae.cli.train_cmd",
    "molvae.cli.generate_cmd",
    "molvae.cli.evaluate_cmd",
    "molvae.cli.optimize_cmd",
    "molvae.cli.run_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="molvae", description="SELFIES VAE molecule design")
    parser.add_argument("--quiet", "-q", action="store_true", help="only warnings and results")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench_parser = sub.add_parser("bench", help="benchmarks (throughput, optimizer quality)")
    bench = bench_parser.add_subparsers(dest="bench_command", metavar="WHAT")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command group not written yet
                continue
            raise
        module.register(sub, bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s")
    if args.quiet:
        import os
        os.environ["MOLVAE_QUIET"] = "1"  # progress bars read this (see molvae.progress)
    handler = getattr(args, "func", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        rc = handler(args)
    except MolvaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
