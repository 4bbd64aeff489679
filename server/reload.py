"""Hot reload: a thread that rescans the model repository every interval or when asked (SIGHUP)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from server.model_store import ModelStore, ReloadResult

log = logging.getLogger(__name__)


class RepositoryWatcher:
    """Calls `store.reload()` every `interval_seconds` (0: only when triggered), then `on_reload`."""

    def __init__(
        self,
        store: ModelStore,
        interval_seconds: float,
        on_reload: Callable[[ReloadResult | None], None],
    ) -> None:
        self.store = store
        self.interval = interval_seconds
        self.on_reload = on_reload
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vae-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def trigger(self) -> None:
        """Rescan now (safe to call from a signal handler: it only sets an event)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:  # a server whose start failed never started it
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval if self.interval > 0 else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                result: ReloadResult | None = self.store.reload()
            except Exception:  # a repository that vanished or cannot be listed: keep serving
                log.exception("repository reload failed; still serving the loaded versions")
                result = None
            self.on_reload(result)
