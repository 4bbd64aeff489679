"""`vae-serve --processes N`: N serving processes on one gRPC port (and one HTTP port), one /metrics,
one lifecycle.

One Python process serves at most about one core (its interpreter runs one thread at a time), so a
host with more cores runs several. The supervisor reserves the port with SO_REUSEPORT (the pattern of
grpc's multiprocessing example: the supervisor holds no gRPC object, each child makes its own server
and binds the same port; the kernel spreads connections between them), then starts the children.

- Children are started with the `spawn` method, a fresh interpreter each: the supervisor has threads
  (the metrics endpoint) by the time it restarts a child, and forking a threaded process can leave
  the child holding a lock nobody will release.
- Every child loads the repository itself and writes its metrics into PROMETHEUS_MULTIPROC_DIR (emptied
  at start); the supervisor's `/metrics` aggregates them.
- Health: each child's slot in a shared byte array says STARTING, UP or DRAINING; every child answers
  SERVING only while all slots are UP (server/fronts/readiness.py).
- SIGTERM/SIGINT: forwarded to every child, each drains (server/process/app.py), the supervisor exits 0 when
  all have. SIGHUP: forwarded, every child rescans the repository.
- A child that dies is logged and restarted (at once the first time, then with a growing pause if it
  keeps dying young); its live gauges are dropped from the aggregate.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import wait as wait_for_sentinels
from types import FrameType
from typing import Any

from server.metrics import MULTIPROC_ENV
from server.process.settings import Settings

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_SECONDS = 300.0  # loading and warming big models on a slow disk
RESTART_PAUSE_MAX_SECONDS = 30.0
YOUNG_SECONDS = 10.0  # a child that dies sooner than this after its start counts as crash-looping


class SupervisorError(RuntimeError):
    """The processes could not be started; the message says why."""


@dataclass
class Child:
    index: int
    process: Any  # multiprocessing.Process (spawn context)
    started: float
    failures: int = 0  # consecutive deaths young


def _worker(
    settings: Settings, index: int, states: Any, parent: int, log_level: str, log_format: str
) -> None:
    """A serving child's entry point (runs in a fresh interpreter)."""
    from server.fronts.readiness import ProcessStates
    from server.logging_setup import configure_logging
    from server.process.app import StartupError, VaeServer

    configure_logging(log_level, log_format)
    server = VaeServer(settings, ProcessStates(states, index))
    try:
        server.start()
    except StartupError as exc:
        logging.getLogger("vae-serve").error("process %d: %s", index, exc)
        sys.exit(2)
    server.install_signal_handlers()

    def orphaned() -> None:  # the supervisor was killed outright: drain and go
        while not server._stopped.wait(1.0):
            if os.getppid() != parent:
                log.warning("process %d: supervisor %d is gone; draining", index, parent)
                server.stop()
                return

    threading.Thread(target=orphaned, name="vae-orphan-watch", daemon=True).start()
    server.wait()
    sys.exit(0)


def reserve_port(host: str, port: int, what: str = "gRPC") -> socket.socket:
    """Bind (not listen) a SO_REUSEPORT socket on the port, so the children can bind it too and a
    port 0 becomes one known number. A port something already holds is refused, another vae-serve
    included: SO_REUSEPORT would let a second server join the first one's port (the same user may
    share it), and the two would split the calls between two repositories."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = (host.strip("[]"), port)
    if port:
        # An exclusive bind first: it fails while any socket, a SO_REUSEPORT one too, holds the
        # port (SO_REUSEADDR only lets it past connections in TIME_WAIT).
        probe = socket.socket(family, socket.SOCK_STREAM)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise SupervisorError(
                f"cannot serve gRPC on {host}:{port}: {exc.strerror} (another vae-serve or another "
                "program holds it); stop that server or choose another --port"
            ) from exc
        finally:
            probe.close()
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SupervisorError(f"cannot bind {what} to {host}:{port}: {exc.strerror}") from exc
    return sock


class Supervisor:
    """Runs `settings.process_count()` serving processes and the aggregated metrics endpoint."""

    def __init__(self, settings: Settings, log_level: str = "INFO", log_format: str = "text"):
        self.settings = settings
        self.count = settings.process_count()
        self.log_level, self.log_format = log_level, log_format
        self.context = multiprocessing.get_context("spawn")
        self.states = self.context.Array("b", self.count, lock=False)
        self.children: list[Child] = []
        self.port = 0
        self.http_port = 0
        self.metrics_port = 0
        self._reservation: socket.socket | None = None
        self._http_reservation: socket.socket | None = None
        self._metrics_dir = ""
        self._own_metrics_dir = False
        self._metrics_http: Any = None
        self._stopping = threading.Event()
        self._reload = threading.Event()
        self._pending_restarts: dict[int, float] = {}  # slot -> when to restart it

    # --- start ----------------------------------------------------------------------------------

    def _prepare_metrics_dir(self) -> None:
        given = os.environ.get(MULTIPROC_ENV, "")
        if given:
            os.makedirs(given, exist_ok=True)
            for entry in os.listdir(given):  # values of an earlier run would be added to ours
                if entry.endswith(".db"):
                    os.remove(os.path.join(given, entry))
            self._metrics_dir = given
        else:
            self._metrics_dir = tempfile.mkdtemp(prefix="vae-serve-metrics-")
            self._own_metrics_dir = True
            os.environ[MULTIPROC_ENV] = self._metrics_dir  # inherited by every child

    def _start_child(self, index: int, failures: int = 0) -> None:
        self.states[index] = 0
        child_settings = replace(
            self.settings, port=self.port, http_port=self.http_port, processes=self.count
        )
        process = self.context.Process(
            target=_worker,
            args=(child_settings, index, self.states, os.getpid(), self.log_level, self.log_format),
            name=f"vae-serve-{index}",
        )
        process.start()
        child = Child(index, process, time.monotonic(), failures)
        if index < len(self.children):
            self.children[index] = child
        else:
            self.children.append(child)
        log.info("process %d started (pid %d)", index, process.pid)

    def start(self) -> int:
        """Reserve the port, start every child, wait until all serve; returns the gRPC port."""
        self._prepare_metrics_dir()
        self._reservation = reserve_port(self.settings.host, self.settings.port)
        self.port = self._reservation.getsockname()[1]
        if self.settings.http_port:
            try:
                self._http_reservation = reserve_port(
                    self.settings.host, self.settings.http_port, "HTTP"
                )
            except SupervisorError:
                self._reservation.close()
                self._reservation = None
                raise
            self.http_port = self._http_reservation.getsockname()[1]
        for index in range(self.count):
            self._start_child(index)
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not all(state == 1 for state in self.states[:]):
            for child in self.children:
                if not child.process.is_alive():
                    self.stop(grace=0)
                    raise SupervisorError(
                        f"process {child.index} exited with code {child.process.exitcode} while "
                        "starting; its log line above says why"
                    )
            if time.monotonic() > deadline:
                self.stop(grace=0)
                raise SupervisorError(
                    f"not every process was serving after {STARTUP_TIMEOUT_SECONDS:.0f}s"
                )
            time.sleep(0.05)
        if self.settings.metrics_port:
            self._start_metrics()
        log.info(
            "serving on %s:%d, HTTP on %s, with %d processes, metrics on %s",
            self.settings.host,
            self.port,
            self.http_port or "off",
            self.count,
            self.metrics_port or "off",
        )
        return self.port

    def _start_metrics(self) -> None:
        from prometheus_client import start_http_server

        from server.metrics import multiprocess_registry

        registry = multiprocess_registry(self._metrics_dir)
        try:
            httpd, _ = start_http_server(
                self.settings.metrics_port, addr=self.settings.metrics_host, registry=registry
            )
        except OSError as exc:
            self.stop(grace=0)
            raise SupervisorError(
                f"cannot serve metrics on {self.settings.metrics_host}:"
                f"{self.settings.metrics_port}: {exc}"
            ) from exc
        self._metrics_http = httpd
        self.metrics_port = httpd.server_port

    # --- run ------------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            log.info("received %s: draining every process", signal.Signals(signum).name)
            self._stopping.set()

        def reload(signum: int, frame: FrameType | None) -> None:
            log.info("received SIGHUP: every process rescans %s", self.settings.repository)
            self._reload.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _restart_pause(self, child: Child) -> tuple[float, int]:
        lived = time.monotonic() - child.started
        failures = child.failures + 1 if lived < YOUNG_SECONDS else 0
        pause = 0.0 if failures <= 1 else min(RESTART_PAUSE_MAX_SECONDS, 2.0 ** (failures - 1))
        return pause, failures

    def _reap(self, child: Child) -> None:
        """A child ended while the server was running: log it, drop its gauges, plan a restart."""
        from prometheus_client import multiprocess

        process = child.process
        code = process.exitcode
        how = (
            f"was killed by {signal.Signals(-code).name}" if code and code < 0 else f"exited {code}"
        )
        pause, failures = self._restart_pause(child)
        log.error(
            "process %d (pid %d) %s; restarting it%s",
            child.index,
            process.pid,
            how,
            f" in {pause:.0f}s" if pause else "",
        )
        self.states[child.index] = 0
        multiprocess.mark_process_dead(process.pid, self._metrics_dir)
        child.failures = failures
        self._pending_restarts[child.index] = time.monotonic() + pause

    def run(self) -> int:
        """Watch the children until SIGTERM; returns the exit code."""
        while not self._stopping.is_set():
            if self._reload.is_set():
                self._reload.clear()
                self._signal_all(signal.SIGHUP)
            alive = [
                c.process.sentinel for c in self.children if c.index not in self._pending_restarts
            ]
            wait_for_sentinels(alive, timeout=0.2)
            for child in self.children:
                if child.index in self._pending_restarts or child.process.is_alive():
                    continue
                if self._stopping.is_set():
                    break
                self._reap(child)
            now = time.monotonic()
            for index, when in list(self._pending_restarts.items()):
                if when <= now and not self._stopping.is_set():
                    del self._pending_restarts[index]
                    self._start_child(index, self.children[index].failures)
        return self.stop()

    def _signal_all(self, signum: int) -> None:
        for child in self.children:
            if child.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.process.pid, signum)

    def stop(self, grace: float | None = None) -> int:
        """Drain every child (SIGTERM), wait for them, clean up; 0 when all exited cleanly."""
        self._stopping.set()
        if grace is None:
            grace = self.settings.grace_seconds
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_delay_seconds + grace + 10.0
        code = 0
        for child in self.children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                log.error("process %d did not stop in time; killing it", child.index)
                child.process.kill()
                child.process.join()
                code = 1
            elif (
                child.process.exitcode not in (0, None)
                and child.index not in self._pending_restarts
            ):
                code = code or 1
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None
        for reservation in (self._reservation, self._http_reservation):
            if reservation is not None:
                reservation.close()
        self._reservation = self._http_reservation = None
        if self._own_metrics_dir:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        log.info("stopped")
        return code
