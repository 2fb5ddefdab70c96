"""`ltad config show`: print the resolved run config (file, then --set, then --data/--output) as YAML.

Every default the run would use is printed, with locations made absolute as the run sees them; a bad
key or value fails here exactly as it would in `ltad train`.
"""

from __future__ import annotations

import argparse

from ltad.commands.common import add_run_arguments, load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print the resolved run config as YAML", description=__doc__)
    add_run_arguments(show)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "config", help="show the resolved run config", description=__doc__.splitlines()[0]
    )
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    print(load_config(args).to_yaml(), end="")
    return 0
