"""Image bytes in and out: data URLs, pixel-limited decoding, PNGs with provenance text chunks.

No FastAPI here: the CLI uses `png_bytes` / `save_png` too.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .errors import APIError, bad_request

METADATA_PREFIX = "internvlu:"


class ImageTooLarge(APIError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(413, message, "invalid_request_error", param, "image_too_large")


def png_info(metadata: dict[str, Any]) -> PngInfo:
    """Prompt, seed and settings as `internvlu:<key>` text chunks (strings as-is, the rest as JSON)."""
    info = PngInfo()
    for key, value in metadata.items():
        info.add_text(METADATA_PREFIX + key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    return info


def png_bytes(image: Image.Image, metadata: dict[str, Any] | None = None) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=png_info(metadata or {}))
    return buf.getvalue()


def read_png_metadata(image: Image.Image) -> dict[str, str]:
    """The `internvlu:` text chunks of a PNG, prefix removed (values still JSON text)."""
    text = getattr(image, "text", {}) or {}
    return {k[len(METADATA_PREFIX):]: v for k, v in text.items() if k.startswith(METADATA_PREFIX)}


def unique_path(folder: Path, stem: str, suffix: str = ".png") -> Path:
    """First `stem-NNNN.suffix` in `folder` that does not exist yet."""
    folder.mkdir(parents=True, exist_ok=True)
    i = 0
    while True:
        path = folder / f"{stem}-{i:04d}{suffix}"
        if not path.exists():
            return path
        i += 1


def save_png(image: Image.Image, folder: Path, stem: str, metadata: dict[str, Any]) -> Path:
    """Write a PNG with metadata under a new name; never overwrites (exclusive create, retried)."""
    data = png_bytes(image, metadata)
    while True:
        path = unique_path(folder, stem)
        try:
            # "xb" fails if another process took the name between the check and the open.
            with open(path, "xb") as fh:
                fh.write(data)
            return path
        except FileExistsError:
            continue


def decode_image(data: bytes, max_pixels: int, what: str = "image", param: str | None = None) -> Image.Image:
    """Bytes of a PNG/JPEG/WebP/... -> RGB PIL image; the size is checked before pixels are decoded."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise bad_request(f"{what} is not a readable image: {exc}", param=param, code="invalid_image") from exc
    if width * height > max_pixels:
        raise ImageTooLarge(f"{what} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
                            param=param)  # fmt: skip
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise bad_request(f"{what} cannot be decoded: {exc}", param=param, code="invalid_image") from exc
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_data_url(url: str, param: str | None = None) -> bytes:
    """`data:image/png;base64,....` -> bytes."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:"):
        raise bad_request("image_url must be a data URL (data:image/...;base64,...)", param=param)
    if not header.endswith(";base64"):
        raise bad_request("data URLs must be base64-encoded (data:<type>;base64,...)", param=param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"the data URL's base64 payload is invalid: {exc}", param=param) from exc


def fetch_remote(url: str, max_bytes: int, timeout_s: float, param: str | None = None) -> bytes:
    """GET an http(s) image with a size cap and a timeout (only when the server allows remote URLs)."""
    request = urllib.request.Request(url, headers={"User-Agent": "internvlu-server"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data = response.read(max_bytes + 1)
    except OSError as exc:
        raise bad_request(f"could not fetch {url!r}: {exc}", param=param, code="image_fetch_failed") from exc
    if len(data) > max_bytes:
        raise APIError(413, f"{url!r} is larger than {max_bytes} bytes", param=param, code="image_too_large")
    return data


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
