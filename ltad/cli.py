"""The `ltad` command.

Each subcommand lives in `ltad/commands/<name>.py` with `register(subparsers)` and `run(args) -> int`
and calls the same library functions as the jobs in `jobs/`. A `UserError` becomes one line on
stderr and exit code 2; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ltad.errors import UserError

COMMANDS = ("synth", "split", "prepare", "inspect", "encode", "train", "evaluate", "predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ltad", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ltad.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ltad.commands.{name}":
                continue
            raise
        p = module.register(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"ltad {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ltad {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
