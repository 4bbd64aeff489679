"""MkDocs hooks (mkdocs.yml `hooks:`): the site publishes BENCHMARKS.md and reports/ from where they live.

The docs pages link to those files as GitHub resolves links, by relative paths out of docs/
(`../BENCHMARKS.md`, `../../reports/beta/samples.png`), so one Markdown source renders on GitHub and
on the site, and no figure or measurement is copied into docs/ to drift. MkDocs only builds files
under docs/, so this hook adds the repository files below to the site under `repo/` (as pages and
images, which the nav lists and the search indexes) and rewrites the links that point at them. Any
other link out of docs/ is left as written, and `mkdocs build --strict` refuses it as a missing page.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

MOUNTED = ("BENCHMARKS.md", "reports")  # repository paths (files or folders) the site publishes
PREFIX = "repo"  # ... under this folder of the site
LINK = re.compile(r"(\]\()([^)\s]+)")  # `](target` of a Markdown link or image


def _root(config: Any) -> Path:
    return Path(config.config_file_path).resolve().parent


def _mounted(root: Path) -> Iterator[str]:
    """Every file MOUNTED names, as a repository-relative POSIX path, in a stable order."""
    for entry in MOUNTED:
        path = root / entry
        if path.is_file():
            yield entry
        else:
            yield from sorted(
                p.relative_to(root).as_posix() for p in path.rglob("*") if p.is_file()
            )


def on_files(files: Files, config: Any) -> Files:
    root = _root(config)
    for relative in _mounted(root):
        files.append(
            File.generated(config, f"{PREFIX}/{relative}", abs_src_path=str(root / relative))
        )
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Links from docs pages to mounted repository files point at their copies under repo/."""
    if page.file.src_uri.startswith(PREFIX + "/"):  # a mounted page: its links stay inside repo/
        return markdown
    root, docs = _root(config), Path(config.docs_dir).resolve()
    page_dir = posixpath.dirname(page.file.src_uri)
    mounted = set(_mounted(root))

    def rewrite(match: re.Match[str]) -> str:
        target = match.group(2)
        path, hash_sign, anchor = target.partition("#")
        if not path.startswith("../"):
            return match.group(0)
        in_repository = os.path.relpath(os.path.normpath(docs / page_dir / path), root)
        relative = Path(in_repository).as_posix()
        if relative not in mounted:
            return match.group(0)
        new = posixpath.relpath(f"{PREFIX}/{relative}", page_dir or ".")
        return f"{match.group(1)}{new}{hash_sign}{anchor}"

    return LINK.sub(rewrite, markdown)
