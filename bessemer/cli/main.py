"""Entry point: dispatch to one module per verb; the only place that turns BessemerError into one line."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from bessemer.errors import BessemerError

# Each verb module defines `add_arguments(parser)` and `run(args) -> int`, plus a one-line `HELP`.
# A verb appears here only once it works end to end.
VERBS = ("demo", "prepare", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bessemer", description="Prepare, convert, train, generate, serve and evaluate open LLMs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERBS:
        module = importlib.import_module(f"bessemer.cli.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = args.verbose or os.environ.get("BESSEMER_DEBUG") == "1"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    try:
        return int(args._run(args) or 0)
    except BessemerError as exc:
        if verbose:
            raise
        print(f"bessemer {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bessemer {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
