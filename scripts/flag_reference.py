"""Writes docs/reference/flags.md, every flag of the five commands, from their own parsers.

The page is generated, never edited by hand: each command's parser is built exactly as the command
builds it, and every option's flags, VAE_* variable, default and help come from the parser itself
(server/options.py StrictParser.documentation), so the page cannot say what the code does not.
tests/test_docs.py regenerates it and fails when the committed page differs.

    .venv/bin/python scripts/flag_reference.py           # rewrite docs/reference/flags.md
    .venv/bin/python scripts/flag_reference.py --check   # exit 1 when it is stale
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the packages live at the repository root
    sys.path.insert(0, str(ROOT))

from server.options import StrictParser  # noqa: E402  (after the path above)

PAGE = ROOT / "docs" / "reference" / "flags.md"
REGENERATE = ".venv/bin/python scripts/flag_reference.py"
REQUIRED = object()  # a positional argument's default: it has none, it must be given


def _commands() -> list[tuple[str, Callable[[], argparse.ArgumentParser]]]:
    """(heading, parser factory) for each command, in the order data flows through them."""
    from client.bench import build_parser as bench
    from client.cli import build_parser as client
    from export.cli import build_parser as export
    from server.process.settings import build_parser as serve
    from training.cli import build_parser as train
    from training.experiments.runner import parser as experiment
    from training.subcommands import build_parser as train_subcommands

    return [
        ("vae-train", train),
        ("vae-train experiment", lambda: experiment("vae-train experiment")),
        ("vae-train", train_subcommands),  # classifier, prior, quality: sections of their own
        ("vae-export", export),
        ("vae-serve", serve),
        ("vae-client", client),
        ("vae-bench", bench),
    ]


@dataclass
class Row:
    """One line of a table: an option (with its aliases and --no- form) or a positional argument."""

    names: list[str]
    value: str  # the metavar a flag takes ("PORT"), "" for a switch
    env: str
    default: str | object  # REQUIRED for positional arguments
    help: str


@dataclass
class Section:
    title: str
    about: str
    rows: list[Row] = field(default_factory=list)


def _value_form(action: argparse.Action) -> str:
    """How the flag's value is written: PORT, [BOOL], HIDDEN_DIMS [...], or "" for a switch."""
    if action.nargs == 0:
        return ""
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    if action.nargs == "?":
        return f"[{metavar}]"
    if action.nargs in ("+", "*"):
        return f"{metavar} [...]"
    return metavar


def _plain_default(action: argparse.Action) -> str:
    if action.default is None or action.default == argparse.SUPPRESS:
        return "none"
    return str(action.default)


def _sections(title: str, parser: argparse.ArgumentParser, about: str) -> Iterator[Section]:
    """This parser's options as one section, then one section per subcommand, depth first."""
    section = Section(title, about)
    by_dest: dict[str, Row] = {}
    subcommands: list[tuple[str, argparse.ArgumentParser, str]] = []
    for action in parser._actions:  # argparse keeps declaration order here
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            subcommands += [
                (name, sub, helps.get(name, "")) for name, sub in action.choices.items()
            ]
            continue
        if not action.option_strings:  # a positional argument
            section.rows.append(
                Row([_value_form(action) or action.dest], "", "", REQUIRED, action.help or "")
            )
            continue
        if action.dest in by_dest:  # --no-x beside --x: the same option
            by_dest[action.dest].names += action.option_strings
            continue
        doc = parser.documentation(action.dest) if isinstance(parser, StrictParser) else None
        row = Row(
            list(action.option_strings),
            _value_form(action),
            (doc.env or "") if doc else "",
            doc.default if doc else _plain_default(action),
            doc.help if doc else (action.help or ""),
        )
        by_dest[action.dest] = row
        section.rows.append(row)
    if section.rows:
        yield section
    for name, sub, sub_help in subcommands:
        yield from _sections(f"{title} {name}", sub, sub_help)


def _cell(text: str) -> str:
    """Table-cell text: code spans kept, '<' and '>' outside them escaped, '|' escaped."""
    parts = re.split(r"(`[^`]*`)", " ".join(text.split()))
    escaped = [
        part if part.startswith("`") else part.replace("<", "&lt;").replace(">", "&gt;")
        for part in parts
    ]
    return "".join(escaped).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def render() -> str:
    """The whole page, as the parsers describe the commands now."""
    lines = [
        "# Flag reference",
        "",
        "<!-- Generated by scripts/flag_reference.py from the commands' parsers: do not edit.",
        f"     Regenerate with: {REGENERATE} -->",
        "",
        "Every option of the five commands, read from the parsers they run, so this page cannot",
        "drift from the code (`tests/test_docs.py` regenerates it and compares). Every option with",
        "a variable also reads it when the command starts; a flag wins over its variable, and a",
        "variable that is set but empty counts as unset ([how options work](../guide/options.md)).",
        "Booleans take `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off`.",
        "",
    ]
    for heading, factory in _commands():
        parser = factory()
        about = " ".join((parser.description or "").split())
        for section in _sections(heading, parser, about):
            lines += [f"## {section.title}", ""]
            if section.about:
                lines += [_cell(section.about), ""]
            lines += ["| flag | variable | default | meaning |", "| --- | --- | --- | --- |"]
            for row in section.rows:
                flags = ", ".join(_code(name) for name in row.names)
                if row.value:
                    flags += f" {_code(row.value)}"
                default = "required" if row.default == REQUIRED else _code(row.default)
                lines.append(f"| {flags} | {_code(row.env)} | {default} | {_cell(row.help)} |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        if not PAGE.is_file() or PAGE.read_text(encoding="utf-8") != page:
            print(f"{PAGE.relative_to(ROOT)} is stale: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(page, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
