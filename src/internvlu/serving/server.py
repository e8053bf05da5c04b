"""`internvlu serve`: load the model, build the app, run uvicorn until SIGINT/SIGTERM.

Shutdown is graceful: uvicorn stops accepting connections and waits for open requests; the app's
lifespan then lets the worker finish every accepted job (bounded by `graceful_timeout_s`).
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from typing import Any

from .settings import ServerSettings


def serve(pipeline_or_path: Any, settings: ServerSettings, *, device: str = "cpu", dtype: Any = None,
          log_level: str = "info", sock: socket.socket | None = None) -> None:  # fmt: skip
    """Run the server in this thread until it is told to stop."""
    import uvicorn

    from .api import create_app

    app = create_app(pipeline_or_path, settings, device=device, dtype=dtype)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        # The queue does the admission control (429); uvicorn only bounds open connections.
        limit_concurrency=max(4 * settings.max_queue, 64),
        timeout_keep_alive=5,
    )
    server = uvicorn.Server(config)
    where = f"http://{settings.host}:{settings.port}"
    logging.getLogger("internvlu").info("serving %s on %s (UI: %s/ui/)", settings.model_name, where, where)
    print(f"internvlu: serving {settings.model_name!r} on {where} (web UI: {where}/ui/)", file=sys.stderr, flush=True)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the signal that stopped it once shutdown is done; a SIGTERM that led to a
        # clean, graceful shutdown should end the process with status 0, not be re-delivered as a kill.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock] if sock is not None else None)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
