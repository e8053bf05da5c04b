"""Generation runner shared by every benchmark: resumable, sharded, with per-item records.

A benchmark (a :class:`Benchmark` subclass, one file per family) says how to read its prompt/data
files, which files an item writes in the benchmark's official output layout, and how to check and
score that layout. This module does the rest:

* **Sharding**: ``shard=(i, n)`` takes the items whose index ``k`` has ``k % n == i``, so n processes
  (one per GPU: ``CUDA_VISIBLE_DEVICES=i internvlu eval ... --shard i/n``) split the work without
  talking to each other and produce the same files one process would.
* **Resume**: an item is finished when its record line exists (``records/*.jsonl``, one file per
  shard, appended after the item's files are in place) and its output files exist. Finished items
  are skipped; outputs are written to temporary names and renamed, so a killed run leaves no
  half-written image behind.
* **Determinism**: image k of an item uses its own generator seeded ``seed + k`` (GenEditEvalKit's
  convention), so results do not depend on sharding or batch composition.
* **Settings**: ``settings.json`` is written on the first run and checked on every resume
  (:func:`internvlu.evaluation.settings.store_settings`); each record line carries the full settings.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from PIL import Image

from internvlu.evaluation.settings import EvalSettings, store_settings, write_json_atomic

logger = logging.getLogger("internvlu.evaluation")

Kind = Literal["t2i", "edit", "understanding"]
RECORDS_DIR = "records"
SUMMARY_FILE = "summary.json"
SUMMARY_MD = "summary.md"


@dataclasses.dataclass
class EvalItem:
    """One prompt of a benchmark.

    Attributes:
        key: unique id inside the benchmark (names the output files).
        index: position in the benchmark's item order (drives sharding).
        prompt: what the model is asked (instruction, question or description).
        images: input images (edit / understanding): paths or PIL images.
        meta: benchmark fields the layout or the scorer needs (category, raw JSON line, answers...).
    """

    key: str
    index: int
    prompt: str
    images: list[Any] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Generated:
    """What the model produced for one item."""

    images: list[Image.Image] = dataclasses.field(default_factory=list)
    thought: str | None = None
    text: str | None = None


@dataclasses.dataclass
class RunReport:
    benchmark: str
    total: int  # items in the benchmark (after --limit)
    assigned: int  # items of this shard
    generated: int  # made by this call
    skipped: int  # already finished (resume)
    complete: bool  # every item of every shard finished


class Benchmark(abc.ABC):
    """A benchmark family: data reading, official layout, layout check and scoring.

    Args:
        data: the user's local copy of the benchmark data (file or folder), or None where the
            benchmark ships its data (GenEval).
        options: benchmark-specific options (see each subclass's ``OPTIONS``).
        limit: keep only the first `limit` items (smoke runs; recorded in the settings).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[Kind] = "t2i"
    title: ClassVar[str] = ""
    default_num_images: ClassVar[int] = 1
    needs_data: ClassVar[bool] = True
    # option name -> (default, help); the CLI exposes them as --option NAME=VALUE.
    OPTIONS: ClassVar[dict[str, tuple[Any, str]]] = {}
    # Options that only affect scoring (scorer paths, judge prompts): recorded, but not pinned on resume.
    SCORING_OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        data: str | os.PathLike[str] | None = None,
        options: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive int or None, got {limit!r}")
        self.limit = limit
        if data is None and self.needs_data:
            raise ValueError(
                f"benchmark {self.name!r} needs --data: the path of your local copy of its files"
            )
        self.data = None if data is None else Path(data)
        if self.data is not None and not self.data.exists():
            raise FileNotFoundError(f"--data {str(self.data)!r} does not exist")
        unknown = sorted(set(options or {}) - set(self.OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for {self.name}; known: {sorted(self.OPTIONS)}")
        self.options = {k: default for k, (default, _) in self.OPTIONS.items()}
        self.options.update(options or {})
        self._items: list[EvalItem] | None = None

    # ---- data ---------------------------------------------------------------------------------
    def items(self) -> list[EvalItem]:
        if self._items is None:
            self._items = self.load_items()[: self.limit]
            keys = [it.key for it in self._items]
            if len(set(keys)) != len(keys):
                raise ValueError(f"{self.name}: duplicate item keys in {self.data}")
        return self._items

    @abc.abstractmethod
    def load_items(self) -> list[EvalItem]:
        """Read the benchmark's prompt/data files (never downloads)."""

    def data_files(self) -> list[Path]:
        """Files whose sha256 goes into the settings record."""
        return [] if self.data is None else [self.data]

    # ---- layout -------------------------------------------------------------------------------
    def layout_dir(self, out: Path) -> Path:
        """Root of the official output layout inside the run folder (what the official scorer reads)."""
        return out / self.name

    @abc.abstractmethod
    def outputs(self, item: EvalItem, out: Path, settings: EvalSettings) -> list[Path]:
        """Files that exist once `item` is finished."""

    @abc.abstractmethod
    def write_item(self, item: EvalItem, result: Generated, out: Path, settings: EvalSettings) -> None:
        """Write `result` in the official layout (use :func:`save_image` / :func:`write_text_atomic`)."""

    def prepare(self, out: Path, settings: EvalSettings, items: Sequence[EvalItem]) -> None:
        """Benchmark-level files written before generation (default: none)."""

    def finalize(self, out: Path, settings: EvalSettings, records: dict[str, dict[str, Any]]) -> None:
        """Assemble layout files that need every item (default: none)."""

    @abc.abstractmethod
    def check_layout(self, out: Path, settings: EvalSettings) -> list[str]:
        """Problems with the official layout, checked as the benchmark's documentation describes it."""

    # ---- scoring ------------------------------------------------------------------------------
    def score(
        self, out: Path, settings: EvalSettings, records: dict[str, dict[str, Any]], **kw: Any
    ) -> dict[str, Any] | None:
        """Scores in the paper's breakdown, or None when no scorer is available offline."""
        return None

    def table(self, scores: dict[str, Any]) -> str:
        """A markdown table in the paper's format (report.py)."""
        from internvlu.evaluation.report import paper_table

        return paper_table(self.name, scores)

    # ---- generation request -------------------------------------------------------------------
    def input_images(self, item: EvalItem) -> list[Image.Image]:
        return [load_rgb(im) for im in item.images]

    def generation_size(self, item: EvalItem, settings: EvalSettings) -> tuple[int | None, int | None]:
        return settings.height, settings.width


class KeyPngBenchmark(Benchmark):
    """A benchmark whose official layout is one image per item, ``<layout>/<key>.png`` (WISE, ImgEdit,
    DPG-Bench), written with the item's prompt (and thought) as PNG text."""

    # How a layout problem names the expected file and the item keys (the benchmark's own words).
    KEY_FILE: ClassVar[str] = "<key>.png"
    KEY_NAMES: ClassVar[str] = "keys"

    def outputs(self, item: EvalItem, out: Path, settings: EvalSettings) -> list[Path]:
        return [self.layout_dir(out) / f"{item.key}.png"]

    def write_item(self, item: EvalItem, result: Generated, out: Path, settings: EvalSettings) -> None:
        save_image(
            result.images[0], self.outputs(item, out, settings)[0], settings, generated_text(item, result)
        )

    def check_layout(self, out: Path, settings: EvalSettings) -> list[str]:
        root = self.layout_dir(out)
        missing = [it.key for it in self.items() if not self.outputs(it, out, settings)[0].is_file()]
        return [f"{root}: missing {self.KEY_FILE} for {self.KEY_NAMES} {missing[:8]}"] if missing else []


# --------------------------------------------------------------------------------------------------
# File helpers
# --------------------------------------------------------------------------------------------------


def generated_text(item: EvalItem, result: Generated) -> dict[str, Any]:
    """PNG text of a generated image (:func:`save_image` `extra`): the prompt, and the thought in think mode (even
    an empty one)."""
    return {"prompt": item.prompt, **({"thought": result.thought} if result.thought is not None else {})}


def load_rgb(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as im:
        return im.convert("RGB")


def save_image(
    image: Image.Image, path: Path, settings: EvalSettings | None = None, extra: dict[str, Any] | None = None
) -> None:
    """Save atomically; PNGs carry the full settings (and `extra`) as text chunks. The format follows
    the file's extension (the TextEdit layout keeps the source image's .jpg/.webp names)."""
    from PIL.PngImagePlugin import PngInfo

    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    buf = io.BytesIO()
    if suffix == ".png":
        info = PngInfo()
        if settings is not None:
            info.add_text("internvlu:settings", json.dumps(settings.to_dict(), sort_keys=True))
        for key, value in (extra or {}).items():
            info.add_text(f"internvlu:{key}", value if isinstance(value, str) else json.dumps(value))
        image.save(buf, format="PNG", pnginfo=info)
    elif suffix in (".jpg", ".jpeg"):
        image.convert("RGB").save(buf, format="JPEG", quality=100, subsampling=0)
    elif suffix == ".webp":
        image.save(buf, format="WEBP", lossless=True)
    else:
        image.save(buf, format=Image.registered_extensions().get(suffix, "PNG"))
    write_bytes_atomic(path, buf.getvalue())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def image_grid(images: Sequence[Image.Image], columns: int) -> Image.Image:
    """Tile equally sized images row-major into a grid (GenEval's grid.png, DPG's 2x2 PNG)."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    w, h = images[0].size
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (columns * w, rows * h))
    for k, image in enumerate(images):
        if image.size != (w, h):
            raise ValueError(f"grid tiles must share one size, got {image.size} and {(w, h)}")
        canvas.paste(image, ((k % columns) * w, (k // columns) * h))
    return canvas


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def records_path(out: Path, shard: tuple[int, int]) -> Path:
    return out / RECORDS_DIR / f"shard-{shard[0]:03d}-of-{shard[1]:03d}.jsonl"


def read_records(out: Path) -> dict[str, dict[str, Any]]:
    """key -> record, over every shard's file; a truncated last line (killed run) is ignored."""
    records: dict[str, dict[str, Any]] = {}
    folder = out / RECORDS_DIR
    if not folder.is_dir():
        return records
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[str(record["key"])] = record
    return records


def _append_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def is_finished(
    bench: Benchmark, item: EvalItem, out: Path, settings: EvalSettings, records: dict[str, Any]
) -> bool:
    return item.key in records and all(p.is_file() for p in bench.outputs(item, out, settings))


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


def _generators(seed: int, n: int) -> list[Any]:
    import torch

    return [torch.Generator("cpu").manual_seed(seed + k) for k in range(n)]


def generate_batch(
    pipe: Any, bench: Benchmark, batch: Sequence[EvalItem], settings: EvalSettings
) -> list[Generated]:
    """Run the model on a batch of items of one benchmark (batched only where sizes agree)."""
    common = {
        "think": settings.think,
        "num_images_per_prompt": settings.num_images,
        "num_inference_steps": settings.num_inference_steps,
        "all_cfg_scale": settings.all_cfg_scale,
        "part_cfg_scale": settings.part_cfg_scale,
        "max_thought_tokens": settings.max_thought_tokens,
        "progress": False,
    }
    n = settings.num_images
    if bench.kind == "understanding":
        prompts = [it.prompt for it in batch]
        images = [bench.input_images(it) or None for it in batch]
        answer = pipe.chat(prompts, images=images, max_new_tokens=settings.max_new_tokens)
        return [Generated(text=t) for t in answer.texts]
    results: list[Generated] = []
    for item in batch:  # per item: edit inputs differ in size; T2I keeps per-image seeds either way
        height, width = bench.generation_size(item, settings)
        generator = _generators(settings.seed, n)
        if bench.kind == "edit":
            out = pipe.edit(
                item.prompt,
                images=bench.input_images(item),
                height=height,
                width=width,
                generator=generator,
                **common,
            )
        else:
            out = pipe.generate(item.prompt, height=height, width=width, generator=generator, **common)
        results.append(Generated(images=list(out.images), thought=out.thought))
    return results


def run_benchmark(
    bench: Benchmark,
    pipe: Any | Callable[[], Any],
    out: str | os.PathLike[str],
    settings: EvalSettings,
    *,
    shard: tuple[int, int] = (0, 1),
    batch_size: int = 1,
    on_item: Callable[[EvalItem], None] | None = None,
) -> RunReport:
    """Generate every unfinished item of this shard into `out` in the benchmark's official layout.

    Args:
        pipe: an ``InternVLUPipeline`` (or anything with its typed ``chat``/``generate``/``edit``), or a
            zero-argument callable returning one: it is only called when there is work left.
        settings: resolved settings (:func:`internvlu.evaluation.settings.make_settings`).
        shard: (i, n): this process takes items with ``index % n == i``.
        batch_size: understanding prompts per model call.
    """
    out = Path(out)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = bench.items()
    i, n = shard
    mine = [it for it in items if it.index % n == i]
    store_settings(out, settings)
    bench.prepare(out, settings, items)
    records = read_records(out)
    todo = [it for it in mine if not is_finished(bench, it, out, settings, records)]
    model = None
    record_file = records_path(out, shard)
    settings_dict = settings.to_dict()
    for start in range(0, len(todo), batch_size):
        if model is None:
            model = pipe() if callable(pipe) and not hasattr(pipe, "generate") else pipe
        batch = todo[start : start + batch_size]
        for item, result in zip(batch, generate_batch(model, bench, batch, settings)):
            bench.write_item(item, result, out, settings)
            record = {
                "key": item.key,
                "index": item.index,
                "prompt": item.prompt,
                "outputs": [p.relative_to(out).as_posix() for p in bench.outputs(item, out, settings)],
                "thought": result.thought,
                "text": result.text,
                "meta": _jsonable(item.meta),
                "settings": settings_dict,
            }
            _append_record(record_file, record)
            records[item.key] = record
            if on_item is not None:
                on_item(item)
    complete = all(is_finished(bench, it, out, settings, records) for it in items)
    if complete:
        bench.finalize(out, settings, {k: records[k] for k in (it.key for it in items)})
    return RunReport(bench.name, len(items), len(mine), len(todo), len(mine) - len(todo), complete)


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    """Item metadata without in-memory objects (images), for the record line."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[key] = value
    return out


def score_benchmark(
    bench: Benchmark, out: str | os.PathLike[str], settings: EvalSettings, **kw: Any
) -> dict[str, Any]:
    """Check the layout, score what can be scored, and write ``summary.json`` + ``summary.md``.

    The summary holds the full settings, the layout problems (empty when the official scorer will
    accept the folder), the scores (None when no scorer ran) and the paper-format table.
    """
    out = Path(out)
    records = read_records(out)
    problems = bench.check_layout(out, settings)
    scores = None if problems else bench.score(out, settings, records, **kw)
    summary = {
        "benchmark": bench.name,
        "title": bench.title,
        "layout_dir": str(bench.layout_dir(out)),
        "layout_problems": problems,
        "scores": scores,
        "table": bench.table(scores) if scores else None,
        "settings": settings.to_dict(),
    }
    write_json_atomic(out / SUMMARY_FILE, summary)
    lines = [f"# {bench.title or bench.name}", ""]
    if problems:
        lines += ["Layout problems:", *[f"- {p}" for p in problems]]
    elif scores is None:
        lines += ["Generated in the official layout; no offline scorer ran (see docs/evaluation.md)."]
    else:
        lines += [summary["table"] or json.dumps(scores, indent=2)]
    write_text_atomic(out / SUMMARY_MD, "\n".join(lines) + "\n")
    return summary
