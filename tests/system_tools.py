"""The system tools tests run (scripts/system-tools.txt): found, or the test stops saying what to install.

`make test` installs them first (scripts/system-tools.sh), so a missing one means pytest was run
some other way. Under CI (`CI=true`) that fails the test, never skips it: a green CI run has run
every test. Elsewhere the test is skipped with the same line, which `pytest -rs` shows.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

TABLE = Path(__file__).resolve().parent.parent / "scripts" / "system-tools.txt"


def tool_table() -> dict[str, tuple[tuple[str, ...], str]]:
    """command -> (Debian packages, empty when none is usable; the note)."""
    table = {}
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        command, package, note = [*line.split(None, 2), "", ""][:3]
        table[command] = (() if package == "-" else tuple(package.split(",")), note)
    return table


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes", "on")


def require_tool(command: str, *alternatives: str) -> str:
    """The path of `command` (or of the first alternative found); else fail under CI, skip elsewhere,
    with one line saying how to get it."""
    for name in (command, *alternatives):
        found = shutil.which(name)
        if found:
            return found
    table = tool_table()
    if command not in table:
        pytest.fail(f"{command} is not listed in {TABLE.name}: add a line for it", pytrace=False)
    packages, note = table[command]
    how = f"Debian package {' '.join(packages)}" if packages else note
    line = f"{command} is not installed ({how}); `make test` installs what apt can"
    if in_ci():
        pytest.fail(f"CI=true and a test needs a missing tool: {line}", pytrace=False)
    pytest.skip(line)
