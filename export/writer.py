"""Writes model versions into a repository atomically: build in a hidden temporary directory, then
rename it to the next free version number, so a server never sees half a model."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from server.repository import (
    METADATA_FILE,
    ModelMetadata,
    RepositoryError,
    list_versions,
    read_metadata,
    validate_model_name,
)


def existing_sha256(repository: Path, name: str, precision: str = "fp32") -> dict[str, int]:
    """checkpoint sha256 -> version, for the readable versions of a model already in the repository
    exported at `precision` (the same checkpoint at another precision is a different export)."""
    found: dict[str, int] = {}
    for version in list_versions(repository / name):
        try:
            meta = read_metadata(repository / name / str(version))
        except RepositoryError:
            continue
        if meta.checkpoint_sha256 and meta.precision == precision:
            found[meta.checkpoint_sha256] = version
    return found


def write_version(
    repository: Path, name: str, build: Callable[[Path], ModelMetadata]
) -> tuple[int, Path]:
    """Run `build(tmp_dir)` (which writes the graphs and returns metadata), then publish it.

    The version is the highest existing plus one; if another writer takes it first, the next is tried.
    On any failure the temporary directory is removed and nothing becomes visible.
    """
    validate_model_name(name)
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=model_dir))
    # mkdtemp makes it owner-only (0700), and rename keeps that: a server running as another user
    # (sharing the volume by group) could not read the published version.
    temporary.chmod(0o755)
    try:
        metadata = build(temporary)
        for _ in range(100):
            version = max(list_versions(model_dir), default=0) + 1
            final = dataclasses.replace(metadata, name=name, version=version)
            final.validate()
            (temporary / METADATA_FILE).write_text(final.to_json(), encoding="utf-8")
            _fsync_dir(temporary)
            target = model_dir / str(version)
            try:
                os.rename(temporary, target)  # atomic on one filesystem; fails if target exists
            except OSError:
                if target.exists():
                    continue  # lost a race for this number; take the next
                raise
            _fsync_dir(model_dir)
            return version, target
        raise RepositoryError(f"could not find a free version number for {name}")
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    """Flush a directory's files and entries so a crash after rename cannot expose empty files."""
    for child in path.iterdir() if path.is_dir() else []:
        if child.is_file():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
