"""Wire format of the server: OpenAI-compatible request models, limits (see `limits`), error bodies.

Unknown OpenAI fields are accepted and ignored (clients send many we have no use for); fields we
cannot honour with a different meaning (`n` > 1 for chat, `stop`, `response_format="url"`, masks)
are refused with 400 rather than silently ignored. Extension fields are ours: `think`,
`seed` (images), `num_inference_steps`, `guidance_scale`, `image_guidance_scale`, `max_thought_tokens`,
`preserve_unedited` (edits).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# Errors and limits live in pydantic-free modules (the CLI imports them); re-exported here as the wire contract.
from .errors import APIError, bad_request, error_body
from .limits import *
from .limits import MAX_SEED

__all__ = [
    "APIError",
    "ChatCompletionRequest",
    "ImageEditForm",
    "ImageGenerationRequest",
    "ImageOptions",
    "bad_request",
    "error_body",
    "parse_size",
]  # fmt: skip


# ---------------------------------------------------------------------- chat
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ImageURL(_Open):
    url: str
    detail: str | None = None


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    reasoning_content: str | None = None  # an earlier think-mode turn echoed back; ignored


class StreamOptions(_Open):
    include_usage: bool = False


class ChatCompletionRequest(_Open):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    n: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    think: bool = False  # extension: think first; the thought comes back as `reasoning_content`


# ---------------------------------------------------------------------- images
class ImageOptions(_Open):
    """Fields shared by generations (JSON) and edits (multipart form)."""

    model: str | None = None
    n: int = Field(default=1, ge=1)
    size: str | None = None  # "WIDTHxHEIGHT" or "auto"
    response_format: Literal["b64_json", "url"] | None = None
    output_format: str | None = None
    quality: str | None = None
    style: str | None = None
    background: str | None = None
    user: str | None = None
    stream: bool = False
    # extensions
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0)
    image_guidance_scale: float | None = Field(default=None, ge=0)
    think: bool = False
    max_thought_tokens: int | None = Field(default=None, ge=1)
    # edits: keep what the instruction does not touch (None: the model's default; see the pipeline's preserve_unedited)
    preserve_unedited: bool | None = None


class ImageGenerationRequest(ImageOptions):
    prompt: str = Field(min_length=1)


class ImageEditForm(ImageOptions):
    prompt: str = Field(min_length=1)


def parse_size(size: str | None, max_pixels: int) -> tuple[int, int] | None:
    """OpenAI's "WIDTHxHEIGHT" -> (height, width); None or "auto" -> None (the model's default)."""
    if size is None or size == "auto":
        return None
    parts = size.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise bad_request(f"size must be 'WIDTHxHEIGHT' or 'auto', got {size!r}", param="size")
    width, height = int(parts[0]), int(parts[1])
    if width < 16 or height < 16:
        raise bad_request(f"size {size!r}: both sides must be at least 16 pixels", param="size")
    if width * height > max_pixels:
        raise bad_request(f"size {size!r} is {width * height} pixels, over this server's limit of {max_pixels}",
                          param="size", code="image_too_large")  # fmt: skip
    return height, width
