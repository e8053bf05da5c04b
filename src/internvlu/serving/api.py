"""FastAPI app: OpenAI-compatible routes, limits, auth, metrics and the web UI. No model code here:
the work goes to `workers.PipelineWorker` through its queue.

Routes: POST /v1/chat/completions, POST /v1/images/generations, POST /v1/images/edits (multipart),
GET /v1/models, GET /v1/models/{id}, GET /health, GET /metrics, /ui (web UI; / redirects there).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..pipeline.pipeline import DEFAULT_STEPS
from . import codec
from .batching import Job, JobCancelled, QueueClosed, QueueFull
from .metrics import Metrics
from .schemas import (
    APIError,
    ChatCompletionRequest,
    ChatMessage,
    ImageEditForm,
    ImageGenerationRequest,
    ImageOptions,
    bad_request,
    error_body,
    parse_size,
)
from .settings import ServerSettings
from .thinking import ThinkSplitter, split_thought
from .workers import ChatOutput, ChatTask, ImageOutput, ImageTask, PipelineWorker

logger = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
ROUTES = ("/v1/chat/completions", "/v1/images/generations", "/v1/images/edits", "/v1/models", "/health", "/metrics")
IMAGE_PLACEHOLDER = "<image>"


def create_app(pipeline_or_path: Any, settings: ServerSettings | None = None, *, device: str = "cpu",
               dtype: Any = None) -> FastAPI:  # fmt: skip
    """Build the app around a loaded `InternVLUPipeline` or a checkpoint folder (loaded here).

    The worker thread starts with the app (lifespan) and, at shutdown, finishes every accepted job
    before the app exits (uvicorn first waits for open requests, which are waiting on those jobs).
    """
    settings = settings or ServerSettings()
    _resolve_lazy_imports()
    if isinstance(pipeline_or_path, (str, Path)):
        from ..pipeline import InternVLUPipeline

        pipeline = InternVLUPipeline.from_pretrained(pipeline_or_path, torch_dtype=dtype, device=device)
    else:
        pipeline = pipeline_or_path
    metrics = Metrics()
    worker = PipelineWorker(pipeline, settings, metrics)
    state = {"draining": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            state["draining"] = True
            stopped = await run_in_threadpool(worker.stop, settings.graceful_timeout_s)
            if not stopped:
                logger.warning("shutdown: the pipeline worker did not finish within %.0f s", settings.graceful_timeout_s)

    app = FastAPI(title="internvlu", version=_version(), lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.worker, app.state.metrics, app.state.settings = worker, metrics, settings
    app.add_middleware(_EdgeMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    _install_error_handlers(app, metrics)

    async def require_key(request: Request) -> None:
        if not settings.api_keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token, k) for k in settings.api_keys):
            metrics.inc("internvlu_rejected_total", reason="auth")
            raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                           "invalid_request_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    auth = [Depends(require_key)]

    # ------------------------------------------------------------------ helpers bound to this app
    def check_model(name: str | None) -> None:
        if not settings.accepts_model(name):
            raise APIError(404, f"The model {name!r} does not exist; this server serves {settings.model_name!r}.",
                           "invalid_request_error", "model", "model_not_found")  # fmt: skip

    def limit(name: str, value: int, bound: int) -> None:
        if value > bound:
            metrics.inc("internvlu_rejected_total", reason="limit")
            raise bad_request(f"{name}={value} is over this server's limit of {bound}", param=name,
                              code="limit_exceeded")  # fmt: skip

    def submit(kind: str, task: Any, stream: bool) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(kind=kind, task=task, key=task.key(), deadline=time.monotonic() + settings.request_timeout_s,
                  stream=stream, loop=loop, events=asyncio.Queue() if stream else None)  # fmt: skip
        try:
            worker.submit(job)
        except QueueFull as exc:
            metrics.inc("internvlu_rejected_total", reason="queue_full")
            raise APIError(429, f"The server is busy: {exc}. Retry shortly.", "rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from exc  # fmt: skip
        except QueueClosed as exc:
            metrics.inc("internvlu_rejected_total", reason="shutting_down")
            raise APIError(503, "The server is shutting down.", "server_error", code="shutting_down") from exc
        return job

    def timeout_error() -> APIError:
        return APIError(504, f"The request did not finish within {settings.request_timeout_s:g} s.",
                        "timeout_error", code="timeout")  # fmt: skip

    async def wait(job: Job) -> Any:
        try:
            return await asyncio.wait_for(asyncio.shield(_outcome(job)),
                                          timeout=max(job.deadline - time.monotonic(), 0.0))  # fmt: skip
        except (asyncio.TimeoutError, JobCancelled) as exc:
            job.cancel()
            raise timeout_error() from exc
        except asyncio.CancelledError:
            job.cancel()  # the client went away
            raise

    async def events(job: Job) -> AsyncIterator[tuple]:
        """Stream events of a job, then ("result", output) or ("error", APIError); cancels it if abandoned."""
        assert job.events is not None
        done = _outcome(job)
        try:
            while True:
                getter = asyncio.ensure_future(job.events.get())
                finished, _ = await asyncio.wait({getter, done}, timeout=max(job.deadline - time.monotonic(), 0.0),
                                                 return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                if getter in finished:
                    yield getter.result()
                    continue
                getter.cancel()
                if not finished:
                    job.cancel()
                    yield ("error", timeout_error())
                    return
                while not job.events.empty():  # events sent before the result (FIFO through the loop)
                    yield job.events.get_nowait()
                exc = done.exception()
                if isinstance(exc, JobCancelled):
                    yield ("error", timeout_error())
                elif isinstance(exc, APIError):
                    yield ("error", exc)
                elif exc is not None:
                    yield ("error", APIError(500, f"internal error: {exc}", "server_error"))
                else:
                    yield ("result", done.result())
                return
        finally:
            if not job.future.done():
                job.cancel()

    async def load_image_ref(url: str, param: str) -> Any:
        if url.startswith("data:"):
            data = codec.decode_data_url(url, param)
        elif url.startswith(("http://", "https://")):
            if not settings.allow_remote_images:
                raise bad_request("Remote image URLs are disabled on this server; send the image as a data URL "
                                  "(or start the server with --allow-remote-images).", param,
                                  "remote_images_disabled")  # fmt: skip
            data = await run_in_threadpool(codec.fetch_remote, url, settings.max_body_bytes,
                                           settings.remote_timeout_s, param)  # fmt: skip
        else:
            raise bad_request(f"image_url must be a data: URL or http(s) URL, got {url[:40]!r}", param)
        return await run_in_threadpool(codec.decode_image, data, settings.max_image_pixels, "image_url", param)

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health() -> JSONResponse:
        body = {"status": "draining" if state["draining"] else ("ok" if worker.alive else "starting"),
                "model": settings.model_name, "queue": len(worker.queue), "running": worker.running}  # fmt: skip
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/metrics", dependencies=auth)
    async def prometheus() -> PlainTextResponse:
        metrics.set("internvlu_queue_depth", len(worker.queue))
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=auth)
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(settings)]}

    @app.get("/v1/models/{model_id}", dependencies=auth)
    async def get_model(model_id: str) -> dict[str, Any]:
        check_model(model_id)
        return _model_card(settings)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(req: ChatCompletionRequest) -> Any:
        check_model(req.model)
        if req.n not in (None, 1):
            raise bad_request(f"n={req.n}: this server returns one choice per request (n=1)", "n", "unsupported")
        if req.stop:
            raise bad_request("stop sequences are not supported", "stop", "unsupported")
        max_tokens = req.max_completion_tokens or req.max_tokens or min(settings.default_max_tokens, settings.max_tokens)
        limit("max_tokens", max_tokens, settings.max_tokens)
        system, prompt, refs = _flatten_messages(req.messages)
        limit("images", len(refs), settings.max_images_per_request)
        limit("prompt_chars", len(prompt) + len(system or ""), settings.max_prompt_chars)
        images = [await load_image_ref(url, f"messages[{i}].content") for i, url in refs]
        task = ChatTask(prompt, images, system, max_tokens, req.temperature or None, req.top_p, req.seed, req.think)
        job = submit("chat", task, req.stream)
        rid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), settings.model_name
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(_chat_chunks(events(job), rid, created, model, req.think, include_usage))
        out: ChatOutput = await wait(job)
        thought, text = split_thought(out.text) if req.think else (None, out.text)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if req.think:
            message["reasoning_content"] = thought
        return {
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": out.finish_reason, "logprobs": None}],
            "usage": _usage(out),
        }  # fmt: skip

    async def run_images(params: ImageOptions, prompt: str, images: list[Any], kind: str) -> Any:
        check_model(params.model)
        limit("n", params.n, settings.max_n)
        if params.response_format == "url":
            raise bad_request("response_format 'url' is not supported; use 'b64_json'", "response_format",
                              "unsupported")  # fmt: skip
        if params.output_format not in (None, "png"):
            raise bad_request(f"output_format {params.output_format!r} is not supported; use 'png'",
                              "output_format", "unsupported")  # fmt: skip
        # A request without steps gets the model's default, capped by this server's limit (never a 400).
        steps = params.num_inference_steps or min(DEFAULT_STEPS, settings.max_steps)
        limit("num_inference_steps", steps, settings.max_steps)
        thought_tokens = params.max_thought_tokens or min(settings.default_thought_tokens, settings.max_tokens)
        limit("max_thought_tokens", thought_tokens, settings.max_tokens)
        limit("prompt_chars", len(prompt), settings.max_prompt_chars)
        size = parse_size(params.size, settings.max_image_pixels)
        if size is None:
            size = worker.edit_size(images[0]) if images else worker.default_size()
        worker.check_size(*size)
        seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
        if params.preserve_unedited and not images:
            raise bad_request("preserve_unedited=true applies to edits (an input image), not to generations",
                              "preserve_unedited")  # fmt: skip
        task = ImageTask(prompt, images, size[0], size[1], steps, params.n, seed, params.guidance_scale,
                         params.image_guidance_scale, params.think, thought_tokens, params.preserve_unedited)  # fmt: skip
        job = submit("image", task, params.stream)
        meta = {"prompt": prompt, "model": settings.model_name, "mode": kind}
        if params.stream:
            return _sse(_image_events(events(job), kind, meta))
        out: ImageOutput = await wait(job)
        data = await run_in_threadpool(_image_data, out, meta)
        return {"created": int(time.time()), "data": data, "output_format": "png", "background": "opaque",
                "quality": "auto", "size": f"{size[1]}x{size[0]}", "usage": None}  # fmt: skip

    @app.post("/v1/images/generations", dependencies=auth)
    async def images_generations(req: ImageGenerationRequest) -> Any:
        return await run_images(req, req.prompt, [], "image_generation")

    @app.post("/v1/images/edits", dependencies=auth)
    async def images_edits(request: Request) -> Any:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise bad_request("images/edits takes multipart/form-data (image file(s) + prompt)", None)
        form = await request.form(max_files=settings.max_images_per_request + 2, max_fields=64)
        if form.get("mask") is not None:
            raise bad_request("masks are not supported: describe the edit in the prompt", "mask", "unsupported")
        files = [f for key in ("image", "image[]") for f in form.getlist(key)]
        if not files:
            raise bad_request("images/edits needs at least one 'image' file", "image")
        limit("images", len(files), settings.max_images_per_request)
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str) and k not in ("image", "image[]")}
        try:
            params = ImageEditForm.model_validate(fields)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from exc
        images = []
        for f in files:
            if not isinstance(f, UploadFile):
                raise bad_request("'image' must be a file upload", "image")
            images.append(await run_in_threadpool(codec.decode_image, await f.read(), settings.max_image_pixels,
                                                  f"image {f.filename!r}", "image"))  # fmt: skip
        return await run_images(params, params.prompt, images, "image_edit")

    if settings.enable_ui:
        app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")

        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            return RedirectResponse("/ui/")

    return app


# ---------------------------------------------------------------------- response shaping
def _outcome(job: Job) -> asyncio.Future:
    """The job's outcome as an asyncio future whose exception counts as retrieved even if nobody awaits it
    any more (a timed-out or abandoned request), so asyncio logs no "exception was never retrieved"."""
    fut = asyncio.wrap_future(job.future)
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return fut


def _resolve_lazy_imports() -> None:
    """Import now every module anyio (>= 4.16) would import lazily on first use.

    Starlette touches `anyio.open_file` and friends inside requests; a first-use import there runs
    on a server thread. Under pytest (whose anyio plugin marks anyio for assertion rewriting) that
    import parses source concurrently with other threads, which CPython 3.11 can fail with
    "AST constructor recursion depth mismatch". Resolving the names once, here, keeps imports off
    the request path everywhere.
    """
    import anyio

    for name in dir(anyio):
        if not name.startswith("_"):
            getattr(anyio, name)


def _version() -> str:
    from .. import __version__

    return __version__


def _model_card(settings: ServerSettings) -> dict[str, Any]:
    return {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "internvlu"}


def _usage(out: ChatOutput) -> dict[str, int]:
    return {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
            "total_tokens": out.prompt_tokens + out.completion_tokens}  # fmt: skip


def _image_data(out: ImageOutput, meta: dict[str, Any]) -> list[dict[str, Any]]:
    data = []
    for image, seed in zip(out.images, out.seeds, strict=True):
        info = {**meta, **out.settings, "seed": seed}
        info.pop("seeds", None)
        if out.thought is not None:
            info["thought"] = out.thought
        item: dict[str, Any] = {"b64_json": codec.b64(codec.png_bytes(image, info)), "seed": seed}
        item["revised_prompt"] = out.thought  # OpenAI's field for a rewritten prompt; here the thought
        data.append(item)
    return data


def _flatten_messages(messages: list[ChatMessage]) -> tuple[str | None, str, list[tuple[int, str]]]:
    """OpenAI messages -> (system prompt, one user prompt with `<image>` placeholders, [(msg index, url)]).

    The model takes one user turn: earlier turns are written into it as a plain transcript.
    """
    systems: list[str] = []
    turns: list[tuple[str, str]] = []
    refs: list[tuple[int, str]] = []
    for i, message in enumerate(messages):
        pieces: list[str] = []
        content = message.content
        if isinstance(content, str):
            pieces.append(content.replace(IMAGE_PLACEHOLDER, ""))
        elif content is not None:
            for part in content:
                if part.type == "text":
                    pieces.append(part.text.replace(IMAGE_PLACEHOLDER, ""))
                else:
                    if message.role != "user":
                        raise bad_request(f"messages[{i}]: images are only accepted in user messages",
                                          f"messages[{i}].content")  # fmt: skip
                    pieces.append(IMAGE_PLACEHOLDER)
                    refs.append((i, part.image_url.url))
        text = "".join(_join(pieces))
        if message.role in ("system", "developer"):
            systems.append(text)
        else:
            turns.append((message.role, text))
    if not turns or turns[-1][0] != "user":
        raise bad_request("the last message must be a user message", "messages")
    if not turns[-1][1].replace(IMAGE_PLACEHOLDER, "").strip() and not refs:
        raise bad_request("the last user message is empty", "messages")
    if len(turns) == 1:
        prompt = turns[0][1]
    else:
        history = "\n".join(f"{'User' if role == 'user' else 'Assistant'}: {text}" for role, text in turns[:-1])
        prompt = f"{history}\nUser: {turns[-1][1]}"
    return ("\n\n".join(systems) or None), prompt, refs


def _join(pieces: list[str]) -> list[str]:
    """Text parts joined by newlines; image placeholders stand alone between them."""
    out: list[str] = []
    for piece in pieces:
        if out and piece != IMAGE_PLACEHOLDER and out[-1] != IMAGE_PLACEHOLDER:
            out.append("\n")
        out.append(piece)
    return out


def _sse(chunks: AsyncIterator[dict[str, Any] | str]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        async for chunk in chunks:
            yield "data: " + (chunk if isinstance(chunk, str) else json.dumps(chunk, ensure_ascii=False)) + "\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip


async def _chat_chunks(stream: AsyncIterator[tuple], rid: str, created: int, model: str, think: bool,
                       include_usage: bool) -> AsyncIterator[dict[str, Any] | str]:  # fmt: skip
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}  # fmt: skip

    splitter = ThinkSplitter() if think else None

    def split(piece: str, closing: bool = False) -> list[dict[str, Any]]:
        if splitter is None:
            return [chunk({"content": piece})] if piece else []
        thought, reply = splitter.close() if closing else splitter.feed(piece)
        out = [chunk({"reasoning_content": thought})] if thought else []
        return out + ([chunk({"content": reply})] if reply else [])

    yield chunk({"role": "assistant", "content": ""})
    async for event in stream:
        if event[0] == "delta":
            for c in split(event[1]):
                yield c
        elif event[0] == "error":
            yield event[1].body()
            break
        elif event[0] == "result":
            for c in split("", closing=True):
                yield c
            out: ChatOutput = event[1]
            yield chunk({}, out.finish_reason)
            if include_usage:
                yield {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [], "usage": _usage(out)}  # fmt: skip
    yield "[DONE]"


async def _image_events(stream: AsyncIterator[tuple], kind: str, meta: dict[str, Any]) -> AsyncIterator[Any]:
    """SSE for images: `internvlu.phase` / `internvlu.progress` events (extensions), then one
    `<kind>.completed` event per image (OpenAI's streaming image event, with b64_json)."""
    async for event in stream:
        if event[0] == "progress":
            yield {"type": "internvlu.progress", "step": event[1], "total": event[2]}
        elif event[0] == "phase":
            yield {"type": "internvlu.phase", "phase": event[1]}
        elif event[0] == "error":
            yield event[1].body()
            break
        elif event[0] == "result":
            out: ImageOutput = event[1]
            data = await run_in_threadpool(_image_data, out, meta)
            size = f"{out.images[0].width}x{out.images[0].height}"
            for index, item in enumerate(data):
                yield {"type": f"{kind}.completed", "index": index, "created_at": int(time.time()), "size": size,
                       "quality": "auto", "background": "opaque", "output_format": "png", "usage": None, **item}  # fmt: skip
    yield "[DONE]"


# ---------------------------------------------------------------------- errors, limits, metrics
def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                            for e in errors[:5])  # fmt: skip
        metrics.inc("internvlu_rejected_total", reason="invalid")
        return JSONResponse(error_body(message or "invalid request", param=".".join(loc) or None,
                                       code="invalid_value"), status_code=400)  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
        return JSONResponse(error_body(str(exc.detail), kind, code=code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))  # fmt: skip


class _EdgeMiddleware:
    """Pure-ASGI outer layer: body-size limit (413), X-Request-Id, request counts and latencies."""

    def __init__(self, app: Any, metrics: Metrics, max_body_bytes: int) -> None:
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        path = scope.get("path", "")
        route = path if path in ROUTES else ("/v1/models" if path.startswith("/v1/models/") else "other")
        status = {"code": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode("latin-1"))]}  # fmt: skip
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.metrics.inc("internvlu_requests_total", route=route, status=str(status["code"]))
                self.metrics.observe("internvlu_request_seconds", time.monotonic() - start, route=route)

        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            self.metrics.inc("internvlu_rejected_total", reason="body_too_large")
            await _drain(receive, 8 * self.max_body_bytes)  # read (and drop) it so the client sees the answer
            body = json.dumps(error_body(f"request body of {int(length)} bytes is over the limit of "
                                         f"{self.max_body_bytes} bytes", code="request_too_large")).encode()  # fmt: skip
            await send_wrapper({"type": "http.response.start", "status": 413,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode()),
                                            (b"connection", b"close")]})  # fmt: skip
            await send_wrapper({"type": "http.response.body", "body": body})
            return
        seen = {"bytes": 0}

        async def limited_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
                if seen["bytes"] > self.max_body_bytes:
                    self.metrics.inc("internvlu_rejected_total", reason="body_too_large")
                    raise StarletteHTTPException(413, f"request body is over the limit of {self.max_body_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send_wrapper)


async def _drain(receive: Any, cap: int) -> None:
    total = 0
    while total <= cap:
        message = await receive()
        if message["type"] != "http.request":
            return
        total += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
