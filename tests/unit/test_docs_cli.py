"""README.md and docs/*.md name only flags that exist: every `ltad <cmd> --flag`, `jobs/<job>.py --flag`
and `tune/sweep.py --flag` in their code is checked against that command's parser."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from ltad import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(
    # `ltad <cmd>`, a bare `ltad --flag`, a job file; not the word ltad in prose ("ltad Ray cluster")
    r"(?<![\w/.-])(?:ltad (?P<cmd>[a-z]+)|ltad(?= --)|jobs/(?P<job>\w+)\.py|tune/(?P<tune>sweep)\.py)(?![\w/.-])"
)
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _code(text: str) -> list[str]:
    """Inline code spans and fenced code-block lines (backslash continuations joined)."""
    out, block, buffer = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            block = not block
            continue
        if block:
            buffer += line.rstrip("\\") + " "
            if not line.rstrip().endswith("\\"):
                out.append(buffer)
                buffer = ""
        else:
            out += re.findall(r"`([^`]+)`", line)
    return out


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of `parser` and of its nested subcommands (`ltad config show ...`)."""
    flags = set()
    for action in parser._actions:
        flags |= set(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _flags(sub)
    return flags


def _parsers() -> dict[str, set[str]]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {name: _flags(p) for name, p in sub.choices.items()}
    out[""] = {s for a in parser._actions for s in a.option_strings}
    return out


def _uses() -> list[tuple[str, str, str, str]]:
    """(doc, command, flag, snippet) for every flag written after a command in the docs' code."""
    uses = []
    for doc in DOCS:
        for snippet in _code(doc.read_text()):
            matches = list(COMMAND.finditer(snippet))
            for i, m in enumerate(matches):
                end = matches[i + 1].start() if i + 1 < len(matches) else len(snippet)
                name = m.group("cmd") or m.group("job") or m.group("tune") or ""  # "": `ltad --version`
                for flag in FLAG.findall(snippet[m.end() : end].split(" -- ")[0]):
                    uses.append((doc.name, name, flag, snippet.strip()))
    return uses


def test_the_docs_name_commands_with_flags():
    names = {(doc, cmd) for doc, cmd, _, _ in _uses()}
    assert ("README.md", "prepare") in names and ("README.md", "predict") in names


@pytest.mark.parametrize(("doc", "cmd", "flag", "snippet"), _uses())
def test_every_documented_flag_exists(doc, cmd, flag, snippet):
    parsers = _parsers()
    assert cmd in parsers, f"{doc}: `{snippet}` names a command that does not exist: {cmd!r}"
    assert flag in parsers[cmd], f"{doc}: `{snippet}`: `ltad {cmd}` has no {flag}"


def _deprecated(parser: argparse.ArgumentParser) -> set[str]:
    """Old spellings kept as warning aliases (commands/common.add_alias), in any subcommand."""
    out = set()
    for action in parser._actions:
        if type(action).__name__ == "_Deprecated":
            out |= set(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _deprecated(sub)
    return out


@pytest.mark.parametrize(("doc", "cmd", "flag", "snippet"), _uses())
def test_the_docs_use_one_vocabulary(doc, cmd, flag, snippet):
    """Outputs are --out, configs --config, overrides --set everywhere; old spellings only warn."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    own = sub.choices.get(cmd, parser)
    assert flag not in _deprecated(own), f"{doc}: `{snippet}` uses the old spelling {flag}"


def test_an_old_spelling_works_and_warns(capsys):
    args = cli.build_parser().parse_args(["train", "--config", "c.yaml", "--output", "o"])
    assert args.output == "o"
    err = capsys.readouterr().err
    assert "--output is deprecated" in err and "use --out" in err
    args = cli.build_parser().parse_args(["study", "--spec", "s.yaml", "--out", "o"])
    assert args.spec == "s.yaml"
    args = cli.build_parser().parse_args(["sweep", "--space", "t.yaml", "--root", "r"])
    assert (args.space, args.root) == ("t.yaml", "r")


def test_the_cli_reference_is_generated_from_the_parsers():
    """docs/CLI.md is what `python -m tools.cli_reference` renders now (run it after changing a flag)."""
    from tools import cli_reference

    assert cli_reference.DOC.read_text() == cli_reference.render(), "run `python -m tools.cli_reference`"
