"""`vae-serve`: serve a model repository over gRPC until SIGTERM, in one process or several."""

from __future__ import annotations

import logging
import sys


def missing_onnxruntime_message(prog: str) -> str:
    """One line instead of a traceback when the plain install (no extra) lacks onnxruntime."""
    return (
        f"{prog}: onnxruntime is not installed; install the server with one of its runtimes: "
        "pip install 'vae-service[cpu]' (CPU) or pip install 'vae-service[gpu]' (CUDA), "
        "or from a checkout: uv sync --extra cpu"
    )


def onnxruntime_missing() -> bool:
    """True when `import onnxruntime` finds no module (a broken install still raises)."""
    try:
        import onnxruntime  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "onnxruntime":
            raise
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    if (
        onnxruntime_missing()
    ):  # before server.process.settings, which imports it through server.inference.sessions
        print(missing_onnxruntime_message("vae-serve"), file=sys.stderr)
        return 2
    from server.logging_setup import configure_logging
    from server.process.settings import parse_settings

    settings = parse_settings(argv)  # exits 2 with one line on a mistake
    configure_logging(settings.log_level, settings.log_format)
    log = logging.getLogger("vae-serve")
    if settings.process_count() > 1:
        from server.process.supervisor import Supervisor, SupervisorError

        supervisor = Supervisor(settings, settings.log_level, settings.log_format)
        supervisor.install_signal_handlers()
        try:
            port = supervisor.start()
        except SupervisorError as exc:
            log.error("%s", exc)
            return 2
        print(_listening(settings.host, port, supervisor.http_port), flush=True)
        return supervisor.run()

    from server.process.app import StartupError, VaeServer

    server = VaeServer(settings)
    try:
        server.start()
    except StartupError as exc:
        log.error("%s", exc)
        return 2
    server.install_signal_handlers()
    print(_listening(settings.host, server.port, server.http_port), flush=True)
    server.wait()
    return 0


def _listening(host: str, port: int, http_port: int) -> str:
    """Where to connect: gRPC's line first, as scripts read it, then HTTP's."""
    http = f"vae-serve: HTTP on {host}:{http_port}" if http_port else "vae-serve: HTTP off"
    return f"vae-serve: listening on {host}:{port}\n{http}"


if __name__ == "__main__":
    sys.exit(main())
