"""README.md says what is true: every command line it shows parses with the real parsers, the
commands it names are where it says after `make demo`, and what it says of hot reload holds."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from client.cli import build_parser as client_parser
from export.cli import build_parser as export_parser
from server.process.settings import Settings
from training.cli import build_parser as train_parser
from training.experiments.runner import parser as experiment_parser
from training.subcommands import SUBCOMMANDS
from training.subcommands import build_parser as subcommand_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
COMMANDS = ("vae-client", "vae-train", "vae-export")


def shown_command_lines() -> list[str]:
    """Every line of a fenced code block that starts with one of COMMANDS (comments dropped)."""
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", README, re.S)
    return [
        line.strip()
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip().startswith(tuple(c + " " for c in COMMANDS))
        and "..." not in line
        and "->" not in line  # the pipeline diagram
    ]


def parse(line: str) -> None:
    command, *argv = shlex.split(line, comments=True)
    if command == "vae-client":
        client_parser().parse_args(argv)
    elif command == "vae-export":
        export_parser().parse_args(argv)
    elif argv[:1] == ["experiment"]:
        experiment_parser("vae-train experiment").parse_args(argv[1:])
    elif argv[:1] and argv[0] in SUBCOMMANDS:
        subcommand_parser().parse_args(argv)
    else:
        train_parser().parse_args(argv)


LINES = shown_command_lines()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in [n for n in os.environ if n.startswith("VAE_")]:
        monkeypatch.delenv(name)


def test_the_readme_shows_command_lines_of_every_command():
    assert {line.split()[0] for line in LINES} == set(COMMANDS)
    assert any("--label" in line and " encode " in line for line in LINES)  # the cvae example


@pytest.mark.parametrize("line", LINES)
def test_every_command_line_in_the_readme_parses(line, capsys):
    try:
        parse(line)
    except SystemExit as exc:
        pytest.fail(f"{line!r}: {capsys.readouterr().err.strip()} (exit {exc.code})")


def test_the_readme_says_how_to_run_the_commands_after_make_demo():
    assert "source .venv/bin/activate" in README and "./scripts/uv.sh run vae-client" in README
    result = subprocess.run(
        [str(ROOT / "scripts" / "uv.sh"), "run", "--frozen", "--no-sync", "vae-client", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )  # fmt: skip
    assert result.returncode == 0 and "usage: vae-client" in result.stdout, result.stderr
    assert all((ROOT / ".venv" / "bin" / c).is_file() for c in (*COMMANDS, "vae-serve"))


def test_the_readme_says_servers_pick_up_new_versions_without_a_restart():
    assert "load the repository at start" not in README and "rollout restart" not in README
    seconds = Settings().reload_interval_seconds
    assert f"`--reload-interval-seconds` ({seconds:g})" in README
    serve_env = (ROOT / "k8s" / "base" / "serve.env").read_text()  # the pods' settings
    overrides = re.findall(r"^VAE_RELOAD_INTERVAL_SECONDS=(.*)$", serve_env, re.M)
    assert all(float(value) == seconds for value in overrides), overrides
