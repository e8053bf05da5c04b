"""A live uvicorn server on 127.0.0.1 (random free port) in a background thread, for the serving tests."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

CKPT = Path(__file__).parent / "data" / "parity" / "tiny-ckpt"
IMG = Path(__file__).parent / "data" / "parity" / "golden" / "inputs" / "img_a.png"


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class LiveServer:
    """`with LiveServer(app) as srv: srv.url` - uvicorn in a thread; leaving the block shuts it down
    gracefully (like SIGTERM) and waits for it."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = free_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=60, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:  # noqa: PYI034
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def shutdown(self, wait: bool = True) -> None:
        self.server.should_exit = True
        if wait:
            self.thread.join(60)

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.sock.close()


def png_data_url(size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def png_file(path: Path, size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (30, 30, 200)) -> Path:
    Image.new("RGB", size, color).save(path, format="PNG")
    return path
