"""Hot reload: a task on the event loop that rescans the model repository every interval or when asked
(SIGHUP); the scan itself, which loads and warms new versions, runs in a thread so the loop serves on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from server.inference.store import ModelStore, ReloadResult

log = logging.getLogger(__name__)


class RepositoryWatcher:
    """Calls `store.reload()` every `interval_seconds` (0: only when triggered), then `on_reload`
    with the result (None when the scan itself failed), on the loop."""

    def __init__(
        self,
        store: ModelStore,
        interval_seconds: float,
        on_reload: Callable[[ReloadResult | None], None],
    ) -> None:
        self.store = store
        self.interval = interval_seconds
        self.on_reload = on_reload
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching; call on the event loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._run(), name="vae-reload")

    def trigger(self) -> None:
        """Rescan now. Safe from any thread and from a signal handler (it only schedules a wake-up)."""
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        """Stop watching; a scan in progress finishes first (its thread cannot be interrupted)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), self.interval if self.interval > 0 else None
                )
            self._wake.clear()
            scan = loop.run_in_executor(None, self.store.reload)
            try:
                result: ReloadResult | None = await asyncio.shield(scan)
            except asyncio.CancelledError:
                await asyncio.wait([scan])  # let the scan finish before the server closes models
                raise
            except Exception:  # a repository that vanished or cannot be listed: keep serving
                log.exception("repository reload failed; still serving the loaded versions")
                result = None
            self.on_reload(result)
