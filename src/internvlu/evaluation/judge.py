"""A vision judge over any OpenAI-compatible ``/chat/completions`` endpoint, plus judge-prompt loading.

Judge-based benchmarks (WISE, ImgEdit, GEdit-Bench, TextEdit's MLLM metrics) are scored by a
multimodal LLM. This client talks to whatever serves the OpenAI chat API (OpenAI, Azure-compatible
gateways, vLLM / SGLang / LMDeploy serving Qwen2.5-VL locally) with the standard library only:

* **Caching**: each reply is stored under ``cache_dir/<aa>/<sha256>.json``, keyed by the model name,
  the full messages (images included, as the PNG bytes sent), temperature and max_tokens. Re-scoring
  the same outputs costs nothing and gives the same numbers.
* **Retries**: HTTP 429 / 5xx, connection errors, timeouts and empty or malformed replies are retried
  with exponential backoff (``retries`` times); other 4xx errors fail at once (a bad key or model).
* **Bounded concurrency**: :meth:`Judge.map` runs at most ``concurrency`` requests at a time.

Judge prompts are the benchmark's own, read from the user's checkout of its repository
(:func:`python_string_constants`, :func:`function_message_texts`) or from a JSON file: internvlu does
not ship or re-word them.

Environment: ``INTERNVLU_JUDGE_BASE_URL`` (else ``OPENAI_BASE_URL``, else ``https://api.openai.com/v1``),
``INTERNVLU_JUDGE_API_KEY`` (else ``OPENAI_API_KEY``), ``INTERNVLU_JUDGE_MODEL``.
"""

from __future__ import annotations

import ast
import base64
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

logger = logging.getLogger("internvlu.evaluation")

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class JudgeError(RuntimeError):
    """The judge endpoint failed for good (after retries, or a non-retryable error)."""


@dataclasses.dataclass
class JudgeConfig:
    """Where and how to ask the judge.

    Attributes:
        model: the endpoint's model name (the benchmarks' own: gpt-4o-2024-05-13 for WISE, gpt-4.1 for
            ImgEdit / GEdit, gemini-3-pro-preview for TextEdit; any vision model works).
        base_url: API root ending in ``/v1`` (``/chat/completions`` is appended).
        api_key: sent as a Bearer token when set.
        temperature, max_tokens: sampling of the judge (0.0 = the benchmarks' deterministic setting).
        timeout: seconds per HTTP request.
        retries: extra attempts after a retryable failure; backoff: first wait in seconds (doubles).
        concurrency: parallel requests in :meth:`Judge.map`.
        cache_dir: reply cache folder (None = no cache).
    """

    model: str
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None
    temperature: float = 0.0
    max_tokens: int = 2048
    timeout: float = 120.0
    retries: int = 5
    backoff: float = 2.0
    concurrency: int = 8
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("the judge needs a model name (--judge-model or INTERNVLU_JUDGE_MODEL)")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge base_url must be an http(s) URL, got {self.base_url!r}")
        if self.retries < 0 or self.concurrency < 1 or self.timeout <= 0:
            raise ValueError(
                f"judge retries >= 0, concurrency >= 1, timeout > 0 needed; got {self.retries}, {self.concurrency}, {self.timeout}"
            )

    @classmethod
    def from_env(
        cls, model: str | None = None, base_url: str | None = None, api_key: str | None = None, **kw: Any
    ) -> JudgeConfig:
        return cls(
            model=model or os.environ.get("INTERNVLU_JUDGE_MODEL", ""),
            base_url=base_url
            or os.environ.get("INTERNVLU_JUDGE_BASE_URL")
            or os.environ.get("OPENAI_BASE_URL")
            or DEFAULT_BASE_URL,
            api_key=api_key or os.environ.get("INTERNVLU_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY"),
            **kw,
        )

    def record(self) -> dict[str, Any]:
        """What goes into the settings record (never the key)."""
        return {
            "model": self.model,
            "base_url": self.base_url,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }


@dataclasses.dataclass
class JudgeRequest:
    """One judge question: text first, then the images (the order every benchmark script uses)."""

    text: str
    images: Sequence[Image.Image | str | os.PathLike[str]] = ()
    system: str | None = None


def image_data_url(image: Image.Image | str | os.PathLike[str]) -> str:
    """PNG data URL of an image (re-encoded, so equal pixels give equal requests and cache keys)."""
    if not isinstance(image, Image.Image):
        with Image.open(image) as im:
            image = im.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Judge:
    """OpenAI-compatible vision judge with disk cache, retries and bounded concurrency."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self.requests_sent = 0
        self.cache_hits = 0

    def messages(self, request: JudgeRequest) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "text", "text": request.text}]
        content += [{"type": "image_url", "image_url": {"url": image_data_url(im)}} for im in request.images]
        messages: list[dict[str, Any]] = []
        if request.system is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": request.system}]})
        messages.append({"role": "user", "content": content})
        return messages

    def ask(self, request: JudgeRequest) -> str:
        """The judge's reply text for one request (cached)."""
        payload = {
            "model": self.config.model,
            "messages": self.messages(request),
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        cached = self._cache_get(key)
        if cached is not None:
            with self._lock:
                self.cache_hits += 1
            return cached
        reply = self._post_with_retries(payload)
        self._cache_put(key, payload["model"], reply)
        return reply

    def map(self, requests: Sequence[JudgeRequest]) -> list[str]:
        """Replies in request order, at most ``concurrency`` in flight."""
        if not requests:
            return []
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=min(self.config.concurrency, len(requests))
        ) as pool:
            return list(pool.map(self.ask, requests))

    # ---- HTTP ---------------------------------------------------------------------------------
    def _post_with_retries(self, payload: dict[str, Any]) -> str:
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        wait = self.config.backoff
        last_error = ""
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(wait)
                wait *= 2
            with self._lock:
                self.requests_sent += 1
            try:
                request = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                    data = json.loads(response.read().decode("utf-8"))
                text = data["choices"][0]["message"]["content"]
                if isinstance(text, list):  # some servers return content parts
                    text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
                if not isinstance(text, str) or not text.strip():
                    raise ValueError("empty reply")
                return text
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:500]
                if exc.code != 429 and exc.code < 500:
                    raise JudgeError(
                        f"judge endpoint {url} refused the request: HTTP {exc.code}: {detail}"
                    ) from exc
                last_error = f"HTTP {exc.code}: {detail}"
            except (
                urllib.error.URLError,
                TimeoutError,
                OSError,
                ValueError,
                KeyError,
                IndexError,
                TypeError,
            ) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            logger.warning(
                "judge request failed (attempt %d/%d): %s", attempt + 1, self.config.retries + 1, last_error
            )
        raise JudgeError(
            f"judge endpoint {url} failed after {self.config.retries + 1} attempts: {last_error}"
        )

    # ---- cache --------------------------------------------------------------------------------
    def _cache_file(self, key: str) -> Path | None:
        return (
            None if self.config.cache_dir is None else Path(self.config.cache_dir) / key[:2] / f"{key}.json"
        )

    def _cache_get(self, key: str) -> str | None:
        path = self._cache_file(key)
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["reply"]
        except (json.JSONDecodeError, KeyError):
            return None

    def _cache_put(self, key: str, model: str, reply: str) -> None:
        path = self._cache_file(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"model": model, "reply": reply}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Reading judge prompts from the benchmarks' own files
# --------------------------------------------------------------------------------------------------


def python_string_constants(path: str | os.PathLike[str]) -> dict[str, str]:
    """Module-level ``NAME = "..."`` string constants of a Python file, read with ``ast`` (never run)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, str):
                out[node.targets[0].id] = value
    return out


def _fstring_template(node: ast.JoinedStr) -> str:
    """An f-string as a ``str.format_map`` template: ``{prompt_data['Prompt']}`` -> ``{Prompt}``."""
    parts: list[str] = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(str(value.value).replace("{", "{{").replace("}", "}}"))
        elif isinstance(value, ast.FormattedValue):
            expr = value.value
            if isinstance(expr, ast.Subscript) and isinstance(expr.slice, ast.Constant):
                parts.append("{" + str(expr.slice.value) + "}")
            elif isinstance(expr, ast.Name):
                parts.append("{" + expr.id + "}")
            elif isinstance(expr, ast.Attribute):
                parts.append("{" + expr.attr + "}")
            else:
                raise TypeError(f"unsupported f-string field {ast.unparse(expr)!r} in a judge prompt")
    return "".join(parts)


def function_message_texts(path: str | os.PathLike[str], function: str) -> list[str]:
    """The ``"text"`` entries of the message dicts built in `function` of a Python file, in source
    order, as ``str.format_map`` templates (plain strings have their braces escaped)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            texts: list[tuple[int, int, str]] = []
            for sub in ast.walk(node):
                if not isinstance(sub, ast.Dict):
                    continue
                for key, value in zip(sub.keys, sub.values):
                    if isinstance(key, ast.Constant) and key.value == "text":
                        if isinstance(value, ast.JoinedStr):
                            texts.append((value.lineno, value.col_offset, _fstring_template(value)))
                        elif isinstance(value, ast.Constant) and isinstance(value.value, str):
                            texts.append(
                                (
                                    value.lineno,
                                    value.col_offset,
                                    value.value.replace("{", "{{").replace("}", "}}"),
                                )
                            )
            return [t for _, _, t in sorted(texts)]
    raise ValueError(f"{path} has no function {function!r}")


def load_json_prompts(path: str | os.PathLike[str]) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise TypeError(f"judge prompt file {path} must hold a JSON object")
    return data


def write_judgements(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """The per-item judge replies and scores of a benchmark, one JSON object per line."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# Reply parsing
# --------------------------------------------------------------------------------------------------


def parse_json_reply(text: str) -> Any:
    """The first JSON object in a judge reply (code fences and surrounding prose allowed), or None."""
    cleaned = re.sub(r"```(?:json)?", "", text)
    start = cleaned.find("{")
    while start != -1:
        depth, in_string, escape = 0, False, False
        for pos in range(start, len(cleaned)):
            ch = cleaned[pos]
            if in_string:
                if escape:
                    escape = False
                elif ch == "\\":
                    escape = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    candidate = cleaned[start : pos + 1]
                    for attempt in (candidate, re.sub(r",\s*([}\]])", r"\1", candidate)):
                        try:
                            return json.loads(attempt)
                        except json.JSONDecodeError:
                            continue
                    break
        start = cleaned.find("{", start + 1)
    return None
