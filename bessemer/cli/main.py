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
VERBS = ("demo", "prepare", "convert", "train", "generate", "chat", "serve", "eval", "bench", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bessemer",
        description="Prepare data, convert weights, train, generate, chat, serve, evaluate and benchmark open LLMs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERBS:
        module = importlib.import_module(f"bessemer.cli.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The verb's arguments; exits with a usage line on a bad one (as `main` does)."""
    parser = build_parser()
    # verbs that take a config accept dotted overrides such as --optim.lr=3e-4 after their own options
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if a.startswith("--") and "." in a.split("=", 1)[0]]
    unknown = [a for a in extra if a not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    verbose = args.verbose or os.environ.get("BESSEMER_DEBUG") == "1"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", force=True)
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
