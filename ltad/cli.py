"""The `ltad` command.

Each subcommand lives in `ltad/commands/<name>.py` with `add_arguments(parser)`, `register(subparsers)`
and `run(args) -> int`. The files in `jobs/` and `tune/` are thin shims over the same modules
(`job_main`): same flags, same defaults, same errors. A `UserError` becomes one line on stderr and
exit code 2; anything else keeps its traceback. Heavy layers (Ray, DeepSpeed, ltad.training) are
imported inside `run()`, so building the parser stays light.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from ltad.errors import UserError

COMMANDS = (
    "synth",
    "split",
    "prepare",
    "inspect",
    "encode",
    "train",
    "evaluate",
    "predict",
    "calibrate",
    "export",
    "serve",
    "sweep",
    "summary",
    "study",
    "config",
)


def version() -> str:
    """The installed package's version (importlib.metadata), or 'unknown' when run from a bare checkout."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("ltad")
    except PackageNotFoundError:
        return "unknown (not installed)"


def command(name: str) -> ModuleType:
    """The module of subcommand `name` (ltad/commands/<name>.py)."""
    return importlib.import_module(f"ltad.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ltad", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ltad {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = command(name)
        p = module.register(sub)
        p.set_defaults(_run=module.run, _prog=f"ltad {name}")
    return parser


def job_parser(name: str, prog: str) -> argparse.ArgumentParser:
    """The stand-alone parser of subcommand `name` for a job file: the same arguments as `ltad <name>`."""
    module = command(name)
    parser = argparse.ArgumentParser(prog=prog, description=(module.__doc__ or "").strip().splitlines()[0])
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run, _prog=prog)
    return parser


EXTRAS = {
    "ray": "train",
    "deepspeed": "train",
    "mlflow": "tracking",
    "tensorboard": "tracking",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "openvino": "openvino",
    "seaweedfs": "local",
    "grpc_reflection": "serve",
}
"""Top-level module -> the pyproject.toml extra that installs it (the core install lacks them)."""


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """One line naming the extra to install when `exc` is a module of an optional extra, else None."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return f"this command needs the '{extra}' extra ({top} is not installed): pip install 'ltad[{extra}]'"


def run_parsed(args: argparse.Namespace) -> int:
    """Run a parsed command: a UserError, or a module of an extra that is not installed, is one line
    '<prog>: error: ...' and exit 2."""
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"{args._prog}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        line = missing_extra(exc)
        if line is None:
            raise
        print(f"{args._prog}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{args._prog}: interrupted", file=sys.stderr)
        return 130


def job_main(name: str, argv: list[str] | None, prog: str) -> int:
    """`main` of a job file (jobs/*.py, tune/sweep.py): `ltad <name>` under another program name."""
    return run_parsed(job_parser(name, prog).parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
