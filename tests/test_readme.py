"""README.md and the documentation site say what is true: every command line they show parses with
the real parsers, the commands they name are where they say after `make demo`, what they say of hot
reload holds, and the README stays a newcomer's short page whose links all lead somewhere."""

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
# Every hand-written page (the flag reference is generated from the parsers themselves).
PAGES = {
    path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8")
    for path in sorted((ROOT / "docs").rglob("*.md"))
    if path != ROOT / "docs" / "reference" / "flags.md"
}
TEXTS = {"README.md": README, **PAGES}
COMMANDS = ("vae-client", "vae-train", "vae-export")


def shown_command_lines(text: str) -> list[str]:
    """Every line of a fenced code block that starts with one of COMMANDS (comments dropped)."""
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
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


LINES = sorted({line for text in TEXTS.values() for line in shown_command_lines(text)})


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in [n for n in os.environ if n.startswith("VAE_")]:
        monkeypatch.delenv(name)


def test_the_docs_show_command_lines_of_every_command():
    assert {line.split()[0] for line in LINES} == set(COMMANDS)
    assert any("--label" in line and " encode " in line for line in LINES)  # the cvae example
    client_page = shown_command_lines(PAGES["docs/guide/vae-client.md"])
    assert any("--label" in line and " sample " in line for line in client_page)


@pytest.mark.parametrize("line", LINES)
def test_every_command_line_in_the_readme_and_the_docs_parses(line, capsys):
    try:
        parse(line)
    except SystemExit as exc:
        pytest.fail(f"{line!r}: {capsys.readouterr().err.strip()} (exit {exc.code})")


@pytest.mark.parametrize("name", ["README.md", "docs/getting-started.md"])
def test_the_readme_and_getting_started_say_how_to_run_the_commands_after_make_demo(name):
    text = TEXTS[name]
    assert "source .venv/bin/activate" in text and "./scripts/uv.sh run vae-client" in text


def test_the_commands_are_where_the_readme_says_after_make_demo():
    result = subprocess.run(
        [str(ROOT / "scripts" / "uv.sh"), "run", "--frozen", "--no-sync", "vae-client", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )  # fmt: skip
    assert result.returncode == 0 and "usage: vae-client" in result.stdout, result.stderr
    assert all((ROOT / ".venv" / "bin" / c).is_file() for c in (*COMMANDS, "vae-serve"))


def test_the_docs_say_servers_pick_up_new_versions_without_a_restart():
    for name, text in TEXTS.items():
        assert "load the repository at start" not in text and "rollout restart" not in text, name
    seconds = Settings().reload_interval_seconds
    assert f"`--reload-interval-seconds` ({seconds:g})" in PAGES["docs/guide/vae-serve.md"]
    assert f"({seconds:g} s by default)" in PAGES["docs/deployment/kubernetes.md"]
    serve_env = (ROOT / "k8s" / "base" / "serve.env").read_text()  # the pods' settings
    overrides = re.findall(r"^VAE_RELOAD_INTERVAL_SECONDS=(.*)$", serve_env, re.M)
    assert all(float(value) == seconds for value in overrides), overrides


# --------------------------------------------------------------------- the README, a newcomer's page


def test_the_readme_fits_on_two_screens():
    assert len(README.splitlines()) <= 200


def test_the_readme_has_the_two_commands_the_five_commands_and_a_picture():
    assert "make demo" in README and "make test" in README
    for command in ("vae-train", "vae-export", "vae-serve", "vae-client", "vae-bench"):
        assert f"`{command}`" in README, command
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert pictures and all((ROOT / p).is_file() for p in pictures), pictures


def test_every_relative_link_in_the_readme_leads_to_a_file_and_the_docs_are_linked():
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", README) if "://" not in t]
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, missing
    linked = {t.split("#")[0] for t in targets if t.startswith("docs/")}
    for page in ("docs/getting-started.md", "docs/reference/flags.md", "docs/api/grpc.md"):
        assert page in linked, page
