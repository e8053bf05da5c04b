"""Request limits and queue bounds (defaults of `ServerSettings`), as named constants."""

from __future__ import annotations

DEFAULT_MAX_BATCH_SIZE = 4  # jobs per pipeline call: the bound on concurrent work
DEFAULT_BATCH_WAIT_MS = 10.0  # wait for compatible jobs before running a partial batch
DEFAULT_MAX_QUEUE = 64  # waiting jobs; beyond it 429
DEFAULT_REQUEST_TIMEOUT_S = 600.0
DEFAULT_MAX_BODY_BYTES = 25 * 1024 * 1024  # 413 beyond it (OpenAI's own image-upload limit)
DEFAULT_MAX_IMAGE_PIXELS = 2048 * 2048  # input images: 413 beyond; requested outputs: 400 beyond
DEFAULT_MAX_IMAGES_PER_REQUEST = 8
DEFAULT_MAX_N = 4  # images per request
DEFAULT_MAX_STEPS = 100  # denoising steps
DEFAULT_MAX_TOKENS = 4096  # answer or thought tokens
DEFAULT_MAX_PROMPT_CHARS = 32_000
DEFAULT_CHAT_TOKENS = 512
DEFAULT_THOUGHT_TOKENS = 200  # the reference's think budget
MAX_SEED = 2**63 - 1


