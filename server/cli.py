"""`vae-serve`: serve a model repository over gRPC until SIGTERM, in one process or several."""

from __future__ import annotations

import logging
import sys

from server.logging_setup import configure_logging
from server.settings import build_parser, settings_from_args


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format)
    log = logging.getLogger("vae-serve")
    if settings.process_count() > 1:
        from server.supervisor import Supervisor, SupervisorError

        supervisor = Supervisor(settings, settings.log_level, settings.log_format)
        supervisor.install_signal_handlers()
        try:
            port = supervisor.start()
        except SupervisorError as exc:
            log.error("%s", exc)
            return 2
        print(f"vae-serve: listening on {settings.host}:{port}", flush=True)
        return supervisor.run()

    from server.app import StartupError, VaeServer

    server = VaeServer(settings)
    try:
        server.start()
    except StartupError as exc:
        log.error("%s", exc)
        return 2
    server.install_signal_handlers()
    print(f"vae-serve: listening on {settings.host}:{server.port}", flush=True)
    server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
