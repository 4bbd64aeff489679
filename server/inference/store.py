"""Loads every model version of a repository, reloads it on demand, and looks versions up by name."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from server.errors import InvalidArgument, NotFound
from server.inference.batching import BatchingConfig
from server.inference.served_model import ServedModel
from server.inference.sessions import ModelSessions, RuntimeOptions
from server.metrics import Metrics
from server.repository import RepositoryError, list_models, list_versions, version_dir

log = logging.getLogger(__name__)

# Wraps a loaded sessions in what serves it (its batchers); the default serves it unbatched.
ServedModelFactory = Callable[[ModelSessions], ServedModel]
# Retires an unloaded version's served model; reload runs in a thread, so a server passes one that hands
# the close to its event loop.
ServedModelCloser = Callable[[ServedModel], None]


@dataclass(frozen=True)
class LoadFailure:
    """A version that could not be loaded, and why."""

    name: str
    version: int
    reason: str


@dataclass
class ReloadResult:
    """What one scan of the repository changed."""

    added: list[tuple[str, int]] = field(default_factory=list)
    removed: list[tuple[str, int]] = field(default_factory=list)
    failed: list[LoadFailure] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def _fingerprint(path: Path) -> float:
    """When a version directory last changed; a rejected version is retried only once it changes."""
    try:
        return max(p.stat().st_mtime for p in (path, *path.iterdir()))
    except OSError:
        return 0.0


def _lookup_table(models: dict[str, dict[int, ServedModel]]) -> dict[tuple[str, int], ServedModel]:
    table: dict[tuple[str, int], ServedModel] = {}
    for name, versions in models.items():
        for version, served in versions.items():
            table[(name, version)] = served
        table[(name, 0)] = versions[max(versions)]
    if len(models) == 1:
        (name,) = models
        table[("", 0)] = table[(name, 0)]
    return table


class ModelStore:
    """All served versions, `{name: {version: ServedModel}}`, replaced whole under a lock."""

    def __init__(
        self,
        repository: Path,
        options: RuntimeOptions | None = None,
        served_model_factory: ServedModelFactory | None = None,
        close_served_model: ServedModelCloser | None = None,
    ) -> None:
        self.repository = repository
        self.options = options or RuntimeOptions()
        self._factory = served_model_factory
        self._close = close_served_model or ServedModel.close
        self._models: dict[str, dict[int, ServedModel]] = {}
        # (name, version) -> served model for every name and version a request may give that
        # resolves: version 0 is the latest, and name "" the only model when one is loaded. Replaced
        # whole on reload, so the hot path reads it without a lock; misses go through get().
        self.table: dict[tuple[str, int], ServedModel] = {}
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()  # one scan at a time (poll thread and SIGHUP)
        self._rejected: dict[tuple[str, int], float] = {}  # version -> fingerprint when it failed
        self.failures: list[LoadFailure] = []

    def _load(self, name: str, version: int, warm_up: bool) -> ServedModel:
        sessions = ModelSessions(version_dir(self.repository, name, version), self.options)
        seconds = sessions.warm_up() if warm_up else 0.0
        log.info(
            "loaded %s/%s (%s, latent %d) on %s, warm-up %.3fs",
            name,
            version,
            sessions.metadata.kind,
            sessions.metadata.latent_dim,
            sessions.provider,
            seconds,
        )
        if self._factory is None:
            return ServedModel(sessions, BatchingConfig(enabled=False), Metrics())
        return self._factory(sessions)

    def load_all(self, warm_up: bool = True) -> None:
        """Load (and warm) every version; broken versions are logged and recorded, not fatal."""
        self.reload(warm_up=warm_up)

    def reload(self, warm_up: bool = True) -> ReloadResult:
        """Scan the repository: load and warm new versions, then swap them in and drop removed ones.

        Requests keep the version they resolved, so a swap never fails a call in flight; a removed
        version's batchers finish their queue and its sessions go when the last call lets go of them.
        """
        with self._reload_lock:
            with self._lock:
                current = {name: dict(versions) for name, versions in self._models.items()}
            result = ReloadResult()
            on_disk: set[tuple[str, int]] = set()
            for name in list_models(self.repository):
                for version in list_versions(self.repository / name):
                    on_disk.add((name, version))
                    if version in current.get(name, {}):
                        continue
                    path = version_dir(self.repository, name, version)
                    stamp = _fingerprint(path)
                    if self._rejected.get((name, version)) == stamp:
                        continue  # already rejected and unchanged since
                    try:
                        served = self._load(name, version, warm_up)
                    except (RepositoryError, OSError, ValueError) as exc:
                        log.error(
                            "skipping %s/%s (the others keep serving): %s", name, version, exc
                        )
                        self._rejected[(name, version)] = stamp
                        result.failed.append(LoadFailure(name, version, str(exc)))
                        continue
                    self._rejected.pop((name, version), None)
                    current.setdefault(name, {})[version] = served
                    result.added.append((name, version))
            gone: list[ServedModel] = []
            for name in list(current):
                for version in list(current[name]):
                    if (name, version) not in on_disk:
                        gone.append(current[name].pop(version))
                        result.removed.append((name, version))
                if not current[name]:
                    del current[name]
            with self._lock:
                self._models = current
                self.table = _lookup_table(current)
                self.failures = [*self.failures, *result.failed]
            for served in gone:
                meta = served.metadata
                log.info("unloading %s/%s: removed from the repository", meta.name, meta.version)
                self._close(served)
            return result

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._models.get(name, {}))

    def all_latest(self) -> list[ServedModel]:
        with self._lock:
            return [versions[max(versions)] for _, versions in sorted(self._models.items())]

    def all(self) -> list[ServedModel]:
        with self._lock:
            return [ex for _, versions in sorted(self._models.items()) for ex in versions.values()]

    def get(self, name: str, version: int = 0) -> ServedModel:
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
        served = versions.get(version)
        if served is None:
            raise NotFound(
                f"model {name!r} has no version {version}; loaded versions are {sorted(versions)}"
            )
        return served
