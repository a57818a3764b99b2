"""``python -m service``: serve the agedchip API with uvicorn (settings from ``AGEDCHIP_*``).

python -m service                 # http://127.0.0.1:8000, state in ./state, docs at /docs
AGEDCHIP_PORT=9000 python -m service
python -m service --help          # the settings table
"""

from __future__ import annotations

import logging
import sys
from typing import Any


def make_server(app: Any, settings: Any) -> Any:
    """The uvicorn server of ``app``; its signal handler marks the app stopping first, so that
    requests arriving during the graceful shutdown get a JSON 503 and long evaluations end early."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.stopping.set()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    return Server(config)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        from service.settings import settings_table

        print(__doc__)
        print("Settings (environment variables):\n")
        print(settings_table())
        return
    if argv:
        print(f"unknown arguments {argv}; configure with AGEDCHIP_* environment variables (--help)", file=sys.stderr)
        raise SystemExit(2)

    from pydantic import ValidationError

    from service.settings import Settings

    try:
        settings = Settings()
    except ValidationError as err:
        for e in err.errors():
            name = "AGEDCHIP_" + "_".join(str(p) for p in e["loc"]).upper()
            print(f"invalid setting {name}: {e['msg']}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper() if settings.log_level != "trace" else "DEBUG",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from chipsim.store import ChipStoreError, StoreLockedError
    from service.app import create_app

    try:
        app = create_app(settings)
    except ChipStoreError as err:  # another writer, or a folder that cannot be used: say so, no traceback
        hint = (
            " To serve beside that writer, start this process with AGEDCHIP_READ_ONLY=true."
            if isinstance(err, StoreLockedError)
            else ""
        )
        print(f"agedchip: cannot open the state folder (AGEDCHIP_STATE_DIR): {err}{hint}", file=sys.stderr)
        raise SystemExit(3) from None
    server = make_server(app, settings)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:  # the startup failed (port taken, lifespan error): as uvicorn.run does
        raise SystemExit(3)


if __name__ == "__main__":
    main()
