"""Chain-of-thought augmentation (paper §3.7 / §4.7): turn any instruction set into ``think`` samples.

Input: any sources :class:`internvlu.data.SampleReader` reads (shard folders, ``.tar``, ``.jsonl``).
Every ``t2i`` and ``edit`` record becomes a ``think`` record with the same prompt, input images and
target, plus a ``thought`` written either

* from templates (``mode="template"``): the instruction is parsed for quoted text, colours, counts,
  spatial words and the edit verb, and laid out as refined goal / elements / constraints / plan; or
* by any OpenAI-compatible chat endpoint (``mode="endpoint"``: ``POST {endpoint_url}/chat/completions``
  with ``model``, the key read from the environment variable named by ``api_key_env``), with bounded
  concurrency, retries with exponential backoff (429, 5xx, timeouts, connection errors), and an on-disk
  cache keyed by the request, so a rerun sends nothing.

Output: tar shards + ``manifest.json`` in the runner's layout (the training loader reads the folder).
Shard ``i`` holds the outputs of eligible input records ``[i * K, (i + 1) * K)``, in input order, so the
output is deterministic for a seed (template mode) or for a filled cache (endpoint mode); records that
fail are counted by reason in the manifest (``unsupported_task``, ``already_think``, ``endpoint_error``,
``empty_thought``). ``meta["cot"]`` records the source id and task and how the thought was made.

CLI: ``internvlu synth cot --input SRC [--input SRC ...] --out DIR [--num N] --set mode=endpoint
--set endpoint_url=http://localhost:8000/v1 --set model=NAME``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from internvlu.data.records import RecordError, Sample
from internvlu.data.storage import SampleReader, ShardWriter, sha256_file
from internvlu.synthesis.cli import json_or_text, read_config_file, split_set_item
from internvlu.synthesis.gen_common import check_min_int, pick
from internvlu.synthesis.runner import (
    CONTACT_SHEET,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    shard_name,
    write_contact_sheet,
)
from internvlu.utils.config import ConfigBase

logger = logging.getLogger("internvlu.synthesis")

MODES: tuple[str, ...] = ("template", "endpoint")
SOURCE_TASKS: tuple[str, ...] = ("t2i", "edit")
DEFAULT_SYSTEM_PROMPT = (
    "You write the reasoning that a unified image model performs before it draws or edits an image. "
    "Given the user's instruction, refine it into a concrete goal: the objects and their attributes "
    "(colour, count, size, material), the layout and spatial relations, the background and style, and any "
    "text to render exactly. For an edit, also say where the change happens, what changes, and what must "
    "stay unchanged. Resolve implicit knowledge (e.g. 'a banana after a week' -> brown spots). "
    "Answer with the reasoning only, in plain prose, without tags, in at most 120 words."
)


@dataclasses.dataclass
class CotConfig(ConfigBase):
    """Settings of CoT augmentation (recorded in the manifest; the API key itself never is).

    Attributes:
        mode: "template" or "endpoint".
        tasks: input tasks to convert (t2i and/or edit).
        endpoint_url: base URL of an OpenAI-compatible API (".../v1"); "/chat/completions" is appended
            unless already present.
        model: model name sent with each request.
        api_key_env: environment variable holding the API key (empty = send no Authorization header).
        system_prompt: instructions for the endpoint model.
        temperature, max_tokens: sampling settings sent with each request.
        send_images: attach input images (edit) as data URLs, for vision models.
        concurrency: requests in flight at once; max_retries: retries per request after the first try;
        backoff_s: first retry delay (doubles each retry; a Retry-After header is honoured up to 60 s);
        timeout_s: per-request timeout.
        cache_dir: response cache folder ("" = OUT/cot_cache).
        min_thought_chars: shorter thoughts are rejected as "empty_thought".
    """

    mode: str = "template"
    tasks: tuple[str, ...] = SOURCE_TASKS
    endpoint_url: str = ""
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    temperature: float = 0.0
    max_tokens: int = 400
    send_images: bool = False
    concurrency: int = 4
    max_retries: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 60.0
    cache_dir: str = ""
    min_thought_chars: int = 20

    def __post_init__(self) -> None:
        if isinstance(self.tasks, list):
            self.tasks = tuple(self.tasks)
        super().__post_init__()

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        bad = [t for t in self.tasks if t not in SOURCE_TASKS]
        if bad or not self.tasks:
            raise ValueError(f"tasks={self.tasks!r} must be a non-empty subset of {SOURCE_TASKS}")
        if self.mode == "endpoint":
            if not self.endpoint_url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint mode needs endpoint_url=http(s)://..., got {self.endpoint_url!r}")
            if not self.model:
                raise ValueError("endpoint mode needs a model name (model=...)")
        if not 1 <= self.concurrency <= 256:
            raise ValueError(f"concurrency must be in [1, 256], got {self.concurrency}")
        if not 0 <= self.max_retries <= 20:
            raise ValueError(f"max_retries must be in [0, 20], got {self.max_retries}")
        if self.backoff_s < 0 or self.timeout_s <= 0:
            raise ValueError(f"need backoff_s >= 0 and timeout_s > 0, got {self.backoff_s}, {self.timeout_s}")
        if self.max_tokens < 1 or not 0.0 <= self.temperature <= 2.0:
            raise ValueError(
                f"need max_tokens >= 1 and temperature in [0, 2], got {self.max_tokens}, {self.temperature}"
            )


# --------------------------------------------------------------------------------------------------
# Template thoughts
# --------------------------------------------------------------------------------------------------

_COLORS = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
    "gray",
    "grey",
    "gold",
    "silver",
    "navy",
    "teal",
    "beige",
    "cyan",
    "magenta",
)
_SPATIAL = (
    "left",
    "right",
    "above",
    "below",
    "top",
    "bottom",
    "center",
    "centre",
    "middle",
    "behind",
    "in front",
    "next to",
    "beside",
    "between",
    "under",
    "over",
    "inside",
    "corner",
)
_NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_EDIT_VERBS = {
    "add": "add",
    "insert": "add",
    "put": "add",
    "place": "add",
    "remove": "remove",
    "erase": "remove",
    "delete": "remove",
    "replace": "replace",
    "change": "change",
    "make": "change",
    "turn": "change",
    "recolor": "change",
    "recolour": "change",
    "move": "move",
    "rotate": "transform",
    "resize": "transform",
    "highlight": "highlight",
    "draw": "draw",
    "number": "annotate",
    "mark": "annotate",
    "trace": "annotate",
    "insert into": "add",
    "extract": "transform",
    "revolve": "transform",
    "translate": "transform",
}


def _found(words: Sequence[str], text: str) -> list[str]:
    return [w for w in words if re.search(rf"\b{re.escape(w)}\b", text)]


def template_thought(sample: Sample, rng: np.random.Generator) -> str:
    """A structured thought from the instruction alone (works for any t2i or edit record)."""
    prompt = " ".join((sample.prompt or "").replace("<image>", " ").split())
    low = prompt.casefold()
    quoted = re.findall(r"[\"“']([^\"”']{1,80})[\"”']", prompt)
    colors = _found(_COLORS, low)
    spatial = _found(_SPATIAL, low)
    counts = _found(_NUMBERS, low) + re.findall(r"\b\d+\b", low)
    lines: list[str] = []
    if sample.task == "edit":
        verb = next((v for k, v in _EDIT_VERBS.items() if re.search(rf"\b{k}\b", low)), "change")
        n = len(sample.images)
        lines.append(
            pick(
                rng,
                (
                    f"The instruction asks me to {verb} something in the input image{'s' if n > 1 else ''}: {prompt}",
                    f"Goal: {prompt} This is a '{verb}' edit on {n} input image{'s' if n > 1 else ''}.",
                ),
            )
        )
        lines.append(
            "First I locate the region the instruction refers to; everything outside it stays pixel-identical."
        )
    else:
        lines.append(pick(rng, (f"The request is to create an image of: {prompt}", f"Goal: {prompt}")))
        lines.append("I list the elements the image must contain and the constraints they must satisfy.")
    if quoted:
        lines.append("Text to render exactly, letter by letter: " + ", ".join(f'"{q}"' for q in quoted) + ".")
    if colors:
        lines.append(f"Colours to respect: {', '.join(colors)}.")
    if counts:
        lines.append(f"Quantities mentioned: {', '.join(counts)}; the count must match exactly.")
    if spatial:
        lines.append(f"Spatial constraints: {', '.join(spatial)}; the layout must follow them.")
    if sample.task == "edit":
        lines.append("Then I apply only that change, matching the original lighting, style and perspective.")
    else:
        lines.append(
            pick(
                rng,
                (
                    "Plan: compose the main subject first, then the background, keeping the style consistent.",
                    "Plan: place each element where the prompt says, then check colours, counts and text.",
                ),
            )
        )
    return " ".join(lines)


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible endpoint with cache and retries
# --------------------------------------------------------------------------------------------------


class EndpointError(RuntimeError):
    """A request that failed for good (after retries, or a non-retryable status)."""


@dataclasses.dataclass
class RequestStats:
    cached: int = 0
    sent: int = 0
    retries: int = 0
    failed: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        with self.lock:
            for key, value in deltas.items():
                setattr(self, key, getattr(self, key) + value)

    def to_dict(self) -> dict[str, int]:
        return {"cached": self.cached, "sent": self.sent, "retries": self.retries, "failed": self.failed}


class ChatClient:
    """Minimal OpenAI-compatible chat client (stdlib urllib): cache, retries, thread-safe."""

    _RETRY_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)

    def __init__(self, config: CotConfig, cache_dir: Path, api_key: str | None = None) -> None:
        self.cfg = config
        url = config.endpoint_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.api_key = (
            api_key
            if api_key is not None
            else os.environ.get(config.api_key_env, "")
            if config.api_key_env
            else ""
        )
        self.cache_dir = cache_dir
        self.stats = RequestStats()

    def request_body(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }

    @staticmethod
    def cache_key(body: dict[str, Any]) -> str:
        return hashlib.sha256(
            json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")
        ).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def complete(self, messages: list[dict[str, Any]]) -> str:
        """The assistant's reply text (from the cache when this exact request was answered before)."""
        body = self.request_body(messages)
        key = self.cache_key(body)
        path = self._cache_path(key)
        if path.is_file():
            try:
                content = json.loads(path.read_text(encoding="utf-8"))["content"]
                self.stats.add(cached=1)
                return content
            except (OSError, ValueError, KeyError):
                logger.warning("ignoring unreadable cache entry %s", path)
        content = self._post(body)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
        tmp.write_text(
            json.dumps({"model": self.cfg.model, "content": content}, ensure_ascii=False), encoding="utf-8"
        )
        os.replace(tmp, path)
        return content

    def _post(self, body: dict[str, Any]) -> str:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.stats.add(retries=1)
            delay = self.cfg.backoff_s * (2**attempt)
            try:
                self.stats.add(sent=1)
                request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                    reply = json.loads(response.read().decode("utf-8"))
                content = reply["choices"][0]["message"]["content"]
                if not isinstance(content, str):
                    raise EndpointError(f"reply content is {type(content).__name__}, not text")
                return content
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if exc.code not in self._RETRY_STATUS:
                    self.stats.add(failed=1)
                    raise EndpointError(f"{self.url}: {last}: {exc.read()[:300]!r}") from exc
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.strip().isdigit():
                    delay = min(60.0, float(retry_after))
            except (
                urllib.error.URLError,
                TimeoutError,
                ConnectionError,
                ValueError,
                KeyError,
                IndexError,
            ) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self.cfg.max_retries:
                time.sleep(delay)
        self.stats.add(failed=1)
        raise EndpointError(f"{self.url}: gave up after {self.cfg.max_retries + 1} tries ({last})")


def endpoint_messages(sample: Sample, config: CotConfig) -> list[dict[str, Any]]:
    """The chat request for one record: the system prompt, then the instruction (and images if enabled)."""
    kind = "image edit" if sample.task == "edit" else "text-to-image"
    text = f"Instruction ({kind}): {sample.prompt}"
    content: Any = text
    if config.send_images and sample.images:
        content = [{"type": "text", "text": text}]
        for ref in sample.images:
            url = "data:image/png;base64," + base64.b64encode(ref.png_bytes()).decode("ascii")
            content.append({"type": "image_url", "image_url": {"url": url}})
    return [{"role": "system", "content": config.system_prompt}, {"role": "user", "content": content}]


def clean_thought(text: str) -> str:
    """Drop <think> tags a reasoning model may add (the chat template adds its own) and trim."""
    return re.sub(r"</?think>", "", text).strip()


# --------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------


def _to_think(source: Sample, thought: str, sample_id: str, how: dict[str, Any]) -> Sample:
    meta = dict(source.meta)
    meta["cot"] = {"source_id": source.id, "source_task": source.task, **how}
    return Sample(
        id=sample_id,
        task="think",
        prompt=source.prompt,
        thought=thought,
        images=list(source.images),
        target=source.target,
        meta=meta,
        extra=dict(source.extra),
    )


def _eligible(
    samples: Iterable[Sample], config: CotConfig, rejections: Counter[str], limit: int | None
) -> Iterator[Sample]:
    taken = 0
    for sample in samples:
        if limit is not None and taken >= limit:
            return
        if sample.task == "think":
            rejections["already_think"] += 1
        elif sample.task not in config.tasks:
            rejections["unsupported_task"] += 1
        else:
            taken += 1
            yield sample


def _chunks(items: Iterator[Sample], size: int) -> Iterator[list[Sample]]:
    chunk: list[Sample] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_cot(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    config: CotConfig | dict[str, Any] | None = None,
    num: int | None = None,
    seed: int = 0,
    shard_size: int = 1000,
    api_key: str | None = None,
    contact_sheet_samples: int = 16,
) -> dict[str, Any]:
    """Augment `inputs` with chains of thought into think-sample shards under `out`; returns the manifest.

    Args:
        inputs: sources SampleReader accepts (shard folders, .tar, .jsonl, globs).
        out: output folder (created; existing shards of this job are rewritten).
        config: a CotConfig or dict; defaults (template mode) when None.
        num: convert at most this many eligible records (None = all).
        seed: template choices use SeedSequence(seed, spawn_key=(record index,)).
        shard_size: output records per shard (before rejections).
        api_key: overrides the key read from `config.api_key_env` (never written anywhere).
        contact_sheet_samples: samples on contact_sheet.png (0 = none).
    """
    cfg = config if isinstance(config, CotConfig) else CotConfig.from_dict(config or {})
    if cfg.extra:
        raise ValueError(f"unknown cot config keys {sorted(cfg.extra)}; known: {sorted(cfg.field_names())}")
    for label, value, low in (("shard_size", shard_size, 1), ("seed", seed, 0)):
        check_min_int(label, value, low)
    if num is not None and (not isinstance(num, int) or num < 1):
        raise ValueError(f"num must be a positive integer or None, got {num!r}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not sources:
        raise ValueError("cot needs at least one input source")
    reader = SampleReader(sources, decode=False)
    if not reader.files:
        raise ValueError(f"no .tar or .jsonl input found in {[str(s) for s in sources]}")
    client = None
    if cfg.mode == "endpoint":
        client = ChatClient(cfg, Path(cfg.cache_dir) if cfg.cache_dir else out_dir / "cot_cache", api_key)

    start = time.perf_counter()
    input_rejections: Counter[str] = Counter()
    shards: list[dict[str, Any]] = []
    record_index = 0
    for index, chunk in enumerate(_chunks(_eligible(reader, cfg, input_rejections, num), shard_size)):
        shard_start = time.perf_counter()
        thoughts = _thoughts(chunk, cfg, client, seed, record_index)
        record_index += len(chunk)
        rejections: Counter[str] = Counter()
        path = out_dir / shard_name(index)
        written = 0
        with ShardWriter(path) as writer:
            for source, (thought, how) in zip(chunk, thoughts):
                if thought is None:
                    rejections[how["error"]] += 1
                    continue
                if len(thought) < cfg.min_thought_chars:
                    rejections["empty_thought"] += 1
                    continue
                sample_id = f"cot-{index:06d}-{written:06d}"
                try:
                    writer.write(_to_think(source, thought, sample_id, how), key=sample_id)
                except RecordError as err:
                    logger.warning("cot: record %s cannot become a think sample: %s", source.id, err)
                    rejections["invalid_record"] += 1
                    continue
                written += 1
        shards.append(
            {
                "name": path.name,
                "index": index,
                "num_samples": written,
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "counts_by_task": {"think": written} if written else {},
                "rejections": dict(sorted(rejections.items())),
                "seconds": round(time.perf_counter() - shard_start, 3),
            }
        )
        logger.info("cot shard %s: %d think samples", path.name, written)
    for stale in sorted(out_dir.glob("shard-*.tar")):  # left from an earlier, larger run
        if int(stale.stem.split("-")[1]) >= len(shards):
            stale.unlink()
    total_rejections = sum((Counter(s["rejections"]) for s in shards), Counter()) + input_rejections
    total = sum(s["num_samples"] for s in shards)
    seconds = time.perf_counter() - start
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "generator": "cot",
        "config": {k: v for k, v in cfg.to_dict().items()},
        "inputs": [str(s) for s in sources],
        "seed": seed,
        "shard_size": shard_size,
        "num_samples": total,
        "num_shards": len(shards),
        "complete": True,
        "counts_by_task": {"think": total} if total else {},
        "rejections": dict(sorted(total_rejections.items())),
        "requests": client.stats.to_dict() if client is not None else None,
        "seconds": round(seconds, 3),
        "samples_per_second": round(total / seconds, 2) if seconds > 0 and total else None,
        "shards": shards,
    }
    if contact_sheet_samples > 0 and total:
        write_contact_sheet(
            [out_dir / s["name"] for s in shards], out_dir / CONTACT_SHEET, contact_sheet_samples
        )
        manifest["contact_sheet"] = CONTACT_SHEET
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / MANIFEST)
    return manifest


def _thoughts(
    chunk: list[Sample], cfg: CotConfig, client: ChatClient | None, seed: int, first_index: int
) -> list[tuple[str | None, dict[str, Any]]]:
    """(thought or None, provenance or {"error": reason}) per record, in order."""
    if client is None:
        out = []
        for k, sample in enumerate(chunk):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(first_index + k,)))
            out.append((template_thought(sample, rng), {"mode": "template"}))
        return out

    def one(sample: Sample) -> tuple[str | None, dict[str, Any]]:
        try:
            text = clean_thought(client.complete(endpoint_messages(sample, cfg)))
        except EndpointError as exc:
            logger.warning("cot: %s: %s", sample.id, exc)
            return None, {"error": "endpoint_error"}
        return text, {"mode": "endpoint", "model": cfg.model}

    # Bounded concurrency: at most `concurrency` requests in flight; results keep input order.
    with concurrent.futures.ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        return list(pool.map(one, chunk))


# --------------------------------------------------------------------------------------------------
# CLI glue (``internvlu synth cot``)
# --------------------------------------------------------------------------------------------------


def config_from_args(config_file: Path | None, pairs: Sequence[str]) -> CotConfig:
    """CotConfig from an optional JSON file and KEY=VALUE overrides (JSON values, comma lists for tasks)."""
    data: dict[str, Any] = {}
    if config_file is not None:
        data.update(read_config_file(config_file))
    fields = CotConfig.field_names()
    for item in pairs:
        key, raw = split_set_item(item)
        if key not in fields:
            raise ValueError(f"cot has no config field {key!r}; fields: {sorted(fields)}")
        value = json_or_text(raw)
        if key == "tasks" and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        data[key] = value
    return CotConfig.from_dict(data)


def run_cot_cli(args: Any) -> int:
    """``internvlu synth cot``: returns the exit code (0 ok, 2 bad input)."""
    import sys

    try:
        if not args.input:
            raise ValueError("cot needs --input SHARDS_OR_JSONL (repeatable)")
        config = config_from_args(args.config, args.set)
        manifest = run_cot(
            args.input,
            args.out,
            config=config,
            num=args.num,
            seed=args.seed,
            shard_size=args.shard_size,
            contact_sheet_samples=args.contact_sheet,
        )
    except (ValueError, TypeError, OSError) as exc:
        print(f"internvlu synth cot: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {manifest['num_samples']} think samples in {manifest['num_shards']} shards to {args.out}; "
        f"rejected {manifest['rejections']}; requests {manifest['requests']}"
    )
    return 0
