"""Loads every model version of a repository, reloads it on demand, and looks versions up by name."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from server.batching import BatchingConfig
from server.errors import InvalidArgument, NotFound
from server.executor import ModelExecutor
from server.metrics import Metrics
from server.repository import RepositoryError, list_models, list_versions, version_dir
from server.runtime import ModelRuntime, RuntimeOptions

log = logging.getLogger(__name__)

# Wraps a loaded runtime in what serves it (its batchers); the default serves it unbatched.
ExecutorFactory = Callable[[ModelRuntime], ModelExecutor]
# Retires an unloaded version's executor; reload runs in a thread, so a server passes one that hands
# the close to its event loop.
ExecutorCloser = Callable[[ModelExecutor], None]


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


class ModelStore:
    """All served versions, `{name: {version: ModelExecutor}}`, replaced whole under a lock."""

    def __init__(
        self,
        repository: Path,
        options: RuntimeOptions | None = None,
        executor_factory: ExecutorFactory | None = None,
        close_executor: ExecutorCloser | None = None,
    ) -> None:
        self.repository = repository
        self.options = options or RuntimeOptions()
        self._factory = executor_factory
        self._close = close_executor or ModelExecutor.close
        self._models: dict[str, dict[int, ModelExecutor]] = {}
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()  # one scan at a time (poll thread and SIGHUP)
        self._rejected: dict[tuple[str, int], float] = {}  # version -> fingerprint when it failed
        self.failures: list[LoadFailure] = []

    def _load(self, name: str, version: int, warm_up: bool) -> ModelExecutor:
        runtime = ModelRuntime(version_dir(self.repository, name, version), self.options)
        seconds = runtime.warm_up() if warm_up else 0.0
        log.info(
            "loaded %s/%s (%s, latent %d) on %s, warm-up %.3fs",
            name,
            version,
            runtime.metadata.kind,
            runtime.metadata.latent_dim,
            runtime.provider,
            seconds,
        )
        if self._factory is None:
            return ModelExecutor(runtime, BatchingConfig(enabled=False), Metrics())
        return self._factory(runtime)

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
                        executor = self._load(name, version, warm_up)
                    except (RepositoryError, OSError, ValueError) as exc:
                        log.error(
                            "skipping %s/%s (the others keep serving): %s", name, version, exc
                        )
                        self._rejected[(name, version)] = stamp
                        result.failed.append(LoadFailure(name, version, str(exc)))
                        continue
                    self._rejected.pop((name, version), None)
                    current.setdefault(name, {})[version] = executor
                    result.added.append((name, version))
            gone: list[ModelExecutor] = []
            for name in list(current):
                for version in list(current[name]):
                    if (name, version) not in on_disk:
                        gone.append(current[name].pop(version))
                        result.removed.append((name, version))
                if not current[name]:
                    del current[name]
            with self._lock:
                self._models = current
                self.failures = [*self.failures, *result.failed]
            for executor in gone:
                meta = executor.metadata
                log.info("unloading %s/%s: removed from the repository", meta.name, meta.version)
                self._close(executor)
            return result

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._models.get(name, {}))

    def all_latest(self) -> list[ModelExecutor]:
        with self._lock:
            return [versions[max(versions)] for _, versions in sorted(self._models.items())]

    def all(self) -> list[ModelExecutor]:
        with self._lock:
            return [ex for _, versions in sorted(self._models.items()) for ex in versions.values()]

    def get(self, name: str, version: int = 0) -> ModelExecutor:
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
        executor = versions.get(version)
        if executor is None:
            raise NotFound(
                f"model {name!r} has no version {version}; loaded versions are {sorted(versions)}"
            )
        return executor
