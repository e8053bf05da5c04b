"""OpenAI-compatible HTTP serving of an `InternVLUPipeline` (FastAPI + uvicorn) and its web UI.

    from internvlu.serving import ServerSettings, create_app
    app = create_app("/path/to/InternVL-U", ServerSettings(api_keys=("secret",)))

Layout: `schemas` (request/response models and limits), `batching` (bounded queue that
micro-batches compatible jobs), `workers` (the one thread that owns the pipeline), `metrics`
(Prometheus text), `api` (routes only, no model code), `server` (uvicorn runner for `internvlu serve`),
`static/` (the web UI, a plain client of the public API). FastAPI is imported only by `api` and `server`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerSettings", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    # FastAPI is an optional dependency (`pip install internvlu[serve]`): import it on first use only.
    if name == "ServerSettings":
        from .settings import ServerSettings

        return ServerSettings
    if name == "create_app":
        from .api import create_app

        return create_app
    if name == "serve":
        from .server import serve

        return serve
    raise AttributeError(f"module 'internvlu.serving' has no attribute {name!r}")
