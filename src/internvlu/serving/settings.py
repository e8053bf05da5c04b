"""Server settings: one dataclass, defaults from the named limits in `schemas`."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import limits as S


@dataclass
class ServerSettings:
    """Everything `create_app` / `internvlu serve` can be told.

    Attributes:
        host, port: where uvicorn listens (loopback by default).
        api_keys: accepted bearer tokens; empty means no authentication.
        model_name: the id served by /v1/models and expected in requests' `model` field.
        allow_remote_images: fetch http(s) `image_url`s (off: only data URLs are accepted).
        remote_timeout_s: timeout of one remote image fetch.
        max_batch_size: most compatible jobs run in one pipeline call (the bound on concurrency).
        batch_wait_ms: how long the worker waits for compatible jobs before running a partial batch.
        max_queue: most jobs waiting; a request arriving when it is full gets 429.
        request_timeout_s: a request not finished by then gets 504 (and its work is abandoned).
        max_body_bytes: larger request bodies get 413.
        max_image_pixels: larger input images get 413, larger requested outputs 400.
        max_images_per_request: input images in one chat message list or edit.
        max_n, max_steps, max_tokens, max_prompt_chars: request limits (400 beyond them).
        default_max_tokens: chat answer length when the request names none.
        default_thought_tokens: length of the chain of thought in image think mode.
        graceful_timeout_s: how long shutdown waits for accepted work before giving up.
        enable_ui: serve the web UI at /ui.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    model_name: str = "internvlu"
    allow_remote_images: bool = False
    remote_timeout_s: float = 10.0
    max_batch_size: int = S.DEFAULT_MAX_BATCH_SIZE
    batch_wait_ms: float = S.DEFAULT_BATCH_WAIT_MS
    max_queue: int = S.DEFAULT_MAX_QUEUE
    request_timeout_s: float = S.DEFAULT_REQUEST_TIMEOUT_S
    max_body_bytes: int = S.DEFAULT_MAX_BODY_BYTES
    max_image_pixels: int = S.DEFAULT_MAX_IMAGE_PIXELS
    max_images_per_request: int = S.DEFAULT_MAX_IMAGES_PER_REQUEST
    max_n: int = S.DEFAULT_MAX_N
    max_steps: int = S.DEFAULT_MAX_STEPS
    max_tokens: int = S.DEFAULT_MAX_TOKENS
    max_prompt_chars: int = S.DEFAULT_MAX_PROMPT_CHARS
    default_max_tokens: int = S.DEFAULT_CHAT_TOKENS
    default_thought_tokens: int = S.DEFAULT_THOUGHT_TOKENS
    graceful_timeout_s: float = 120.0
    enable_ui: bool = True
    extra_model_aliases: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.api_keys = tuple(k for k in self.api_keys if k)
        for name in ("max_batch_size", "max_queue", "max_body_bytes", "max_image_pixels", "max_n", "max_steps",
                     "max_tokens", "max_prompt_chars", "default_max_tokens", "default_thought_tokens",
                     "max_images_per_request"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("batch_wait_ms", "request_timeout_s", "remote_timeout_s", "graceful_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 < self.port < 65536 and self.port != 0:
            raise ValueError(f"port must be in 1..65535 (or 0 for any free port), got {self.port}")

    def accepts_model(self, name: str | None) -> bool:
        return not name or name == self.model_name or name in self.extra_model_aliases
