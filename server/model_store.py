"""Loads every model version of a repository and looks them up by name and version."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from server.errors import InvalidArgument, NotFound
from server.repository import RepositoryError, list_models, list_versions, version_dir
from server.runtime import ModelRuntime, RuntimeOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadFailure:
    """A version that could not be loaded, and why."""

    name: str
    version: int
    reason: str


class ModelStore:
    """All loaded model versions: `{name: {version: ModelRuntime}}`, swapped whole under a lock."""

    def __init__(self, repository: Path, options: RuntimeOptions | None = None) -> None:
        self.repository = repository
        self.options = options or RuntimeOptions()
        self._models: dict[str, dict[int, ModelRuntime]] = {}
        self._lock = threading.Lock()
        self.failures: list[LoadFailure] = []

    def load_all(self, warm_up: bool = True) -> None:
        """Load (and warm) every version; broken versions are logged and recorded, not fatal."""
        models: dict[str, dict[int, ModelRuntime]] = {}
        failures: list[LoadFailure] = []
        for name in list_models(self.repository):
            for version in list_versions(self.repository / name):
                try:
                    runtime = ModelRuntime(
                        version_dir(self.repository, name, version), self.options
                    )
                    seconds = runtime.warm_up() if warm_up else 0.0
                except (RepositoryError, OSError, ValueError) as exc:
                    log.error("skipping %s/%s: %s", name, version, exc)
                    failures.append(LoadFailure(name, version, str(exc)))
                    continue
                log.info(
                    "loaded %s/%s (%s, latent %d) on %s, warm-up %.3fs",
                    name,
                    version,
                    runtime.metadata.kind,
                    runtime.metadata.latent_dim,
                    runtime.provider,
                    seconds,
                )
                models.setdefault(name, {})[version] = runtime
        with self._lock:
            self._models = models
            self.failures = failures

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._models.get(name, {}))

    def all_latest(self) -> list[ModelRuntime]:
        with self._lock:
            return [versions[max(versions)] for _, versions in sorted(self._models.items())]

    def all(self) -> list[ModelRuntime]:
        with self._lock:
            return [rt for _, versions in sorted(self._models.items()) for rt in versions.values()]

    def get(self, name: str, version: int = 0) -> ModelRuntime:
        """The named model at `version`, or its highest version when version is 0.

        An empty name selects the only model when exactly one is loaded.
        """
        with self._lock:
            models = self._models
        if not name:
            if len(models) == 1:
                name = next(iter(models))
            else:
                raise InvalidArgument(
                    f"model name is required when {len(models)} models are loaded; "
                    f"choose one of {sorted(models)}"
                )
        versions = models.get(name)
        if versions is None:
            raise NotFound(f"unknown model {name!r}; loaded models are {sorted(models)}")
        if version < 0:
            raise InvalidArgument(f"version must be 0 (latest) or positive, got {version}")
        if version == 0:
            return versions[max(versions)]
        runtime = versions.get(version)
        if runtime is None:
            raise NotFound(
                f"model {name!r} has no version {version}; loaded versions are {sorted(versions)}"
            )
        return runtime
