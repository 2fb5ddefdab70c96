"""Subcommands of the `ltad` CLI: each module has `register(subparsers)` and `run(args) -> int`."""
