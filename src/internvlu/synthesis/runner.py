"""Sharded, deterministic, resumable synthesis jobs, and the generator registry.

Adding a generator (e.g. text, science or spatial data):

1. Write a config dataclass subclassing :class:`internvlu.utils.config.ConfigBase` (typed fields with
   defaults, ``validate()`` raising ValueError that names the bad value).
2. Subclass :class:`Generator`, set ``config_class``, and implement ``sample(rng, sample_id) -> Sample``.
   Draw every random choice from ``rng`` (nothing global, no time, no hash of str), so a sample is a
   pure function of the rng state; raise :class:`RejectSample` ("reason") to drop a candidate (counted
   in the manifest as ``generator:reason``).
3. Decorate the class with ``@register_generator("name")`` and, for a built-in, add the module to
   ``_BUILTIN_MODULES`` so ``internvlu synth name`` imports it on demand. A plugin only has to be
   imported before :func:`run_synthesis` is called (worker processes import it through pickling).

Determinism: shard ``i`` holds samples ``[i * K, min((i + 1) * K, N))`` and is built from its own rng,
``SeedSequence(seed, spawn_key=(i,))``, with its own filter state. Its bytes therefore depend only on
(seed, i, generator config, filter config) and are identical for any worker count or order.

Resume: shards are written to ``NAME.tmp`` and renamed when complete; after each shard the runner
rewrites ``manifest.partial.json``. A rerun with the same settings keeps every shard whose file
matches the recorded sha256 and sample count, and builds the rest. Raising ``--num`` extends a
dataset; changing anything else is refused unless ``overwrite=True``.
"""

from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import importlib
import json
import logging
import multiprocessing
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from internvlu.data.records import RecordError, Sample
from internvlu.data.storage import SampleReader, ShardWriter, sha256_file
from internvlu.synthesis.filters import FilterConfig, SampleFilter
from internvlu.synthesis.gen_common import check_min_int
from internvlu.utils.config import ConfigBase

logger = logging.getLogger("internvlu.synthesis")

MANIFEST = "manifest.json"
PARTIAL_MANIFEST = "manifest.partial.json"
CONTACT_SHEET = "contact_sheet.png"
FORMAT_NAME = "internvlu-shards"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


class RejectSample(Exception):
    """Raised by a generator to drop a candidate; `reason` is counted in the manifest."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Generator(abc.ABC):
    """A sample generator: a typed config plus ``sample(rng, sample_id)``."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[ConfigBase]]

    def __init__(self, config: ConfigBase) -> None:
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator, sample_id: str) -> Sample:
        """One sample with id `sample_id`, using only `rng` for randomness."""


GENERATORS: dict[str, type[Generator]] = {}
_BUILTIN_MODULES: dict[str, str] = {
    "shapes": "internvlu.synthesis.shapes",
    "text": "internvlu.synthesis.text_render",
    "chem": "internvlu.synthesis.science_chem",
    "cs": "internvlu.synthesis.science_cs",
    "spatial": "internvlu.synthesis.spatial",
}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")


def register_generator(name: str) -> Callable[[type[Generator]], type[Generator]]:
    """Class decorator: make a :class:`Generator` available as ``internvlu synth NAME``."""
    if not _NAME_RE.match(name):
        raise ValueError(f"generator name {name!r} must match {_NAME_RE.pattern}")

    def wrap(cls: type[Generator]) -> type[Generator]:
        if not (isinstance(cls, type) and issubclass(cls, Generator)):
            raise TypeError(f"@register_generator({name!r}) needs a Generator subclass, got {cls!r}")
        if name in GENERATORS and GENERATORS[name] is not cls:
            raise ValueError(f"generator {name!r} is already registered by {GENERATORS[name].__qualname__}")
        cls.name = name
        GENERATORS[name] = cls
        return cls

    return wrap


def available_generators() -> list[str]:
    return sorted(set(GENERATORS) | set(_BUILTIN_MODULES))


def get_generator(name: str) -> type[Generator]:
    if name not in GENERATORS and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; available: {available_generators()}")
    return GENERATORS[name]


# --------------------------------------------------------------------------------------------------
# One shard (runs in a worker process)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShardJob:
    generator: type[Generator]  # pickled by reference: the worker imports its module
    config: dict[str, Any]
    filters: dict[str, Any]
    seed: int
    index: int
    count: int
    path: str
    max_attempts: int


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def build_shard(job: ShardJob) -> dict[str, Any]:
    """Generate, filter and write one shard; returns its manifest entry."""
    start = time.perf_counter()
    generator = job.generator(job.generator.config_class.from_dict(job.config))
    rng = np.random.default_rng(np.random.SeedSequence(job.seed, spawn_key=(job.index,)))
    sample_filter = SampleFilter(FilterConfig.from_dict(job.filters))
    rejections: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    attempts = 0
    with ShardWriter(job.path) as writer:
        while writer.count < job.count:
            if attempts >= job.max_attempts:
                raise RuntimeError(
                    f"shard {job.index}: {attempts} attempts gave only {writer.count} of {job.count} samples "
                    f"(rejections: {dict(rejections)}); the generator config cannot produce enough "
                    "distinct samples"
                )
            attempts += 1
            # Ids follow the accepted position, so they are dense and independent of rejections.
            sample_id = f"{job.generator.name}-{job.index:06d}-{writer.count:06d}"
            try:
                sample = generator.sample(rng, sample_id)
                sample.validate()
            except RejectSample as rej:
                rejections[f"generator:{rej.reason}"] += 1
                continue
            except RecordError as err:
                logger.warning("generator %s produced an invalid record: %s", job.generator.name, err)
                rejections["invalid_record"] += 1
                continue
            reason = sample_filter.check(sample)
            if reason is not None:
                rejections[reason] += 1
                continue
            writer.write(sample, key=sample_id)
            counts[sample.task] += 1
    path = Path(job.path)
    return {
        "name": path.name,
        "index": job.index,
        "num_samples": job.count,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "counts_by_task": dict(sorted(counts.items())),
        "rejections": dict(sorted(rejections.items())),
        "attempts": attempts,
        "seconds": round(time.perf_counter() - start, 3),
    }


# --------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------


def _resolve_config(generator: type[Generator], config: ConfigBase | dict[str, Any] | None) -> ConfigBase:
    if config is None:
        resolved = generator.config_class()
    elif isinstance(config, dict):
        resolved = generator.config_class.from_dict(config)
    elif isinstance(config, generator.config_class):
        resolved = config
    else:
        raise TypeError(f"config for {generator.name!r} must be a {generator.config_class.__name__} or dict")
    if resolved.extra:
        raise ValueError(
            f"unknown {generator.name!r} config keys {sorted(resolved.extra)}; "
            f"known: {sorted(resolved.field_names())}"
        )
    return resolved


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What must match for an existing folder to be resumed."""
    return {k: manifest.get(k) for k in ("format", "generator", "config", "filters", "seed", "shard_size")}


def _reusable(out: Path, entry: dict[str, Any], expected: dict[int, int]) -> bool:
    path = out / entry.get("name", "")
    index = entry.get("index")
    return (
        index in expected
        and entry.get("num_samples") == expected[index]
        and entry.get("name") == shard_name(index)
        and path.is_file()
        and path.stat().st_size == entry.get("bytes")
        and sha256_file(path) == entry.get("sha256")
    )


def run_synthesis(
    generator: str | type[Generator],
    out: str | os.PathLike[str],
    num: int,
    *,
    seed: int = 0,
    workers: int = 1,
    shard_size: int = 1000,
    config: ConfigBase | dict[str, Any] | None = None,
    filters: FilterConfig | dict[str, Any] | None = None,
    contact_sheet_samples: int = 32,
    overwrite: bool | Literal["changed"] = False,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Generate `num` samples into tar shards under `out`; returns the manifest (also written to disk).

    Args:
        generator: registered name or Generator class.
        out: output folder (created).
        num: total number of samples.
        seed: base seed (>= 0); shard i uses ``SeedSequence(seed, spawn_key=(i,))``.
        workers: worker processes (1 = in this process).
        shard_size: samples per shard.
        config: generator config (dataclass or dict); defaults when None.
        filters: filter config; defaults when None.
        contact_sheet_samples: samples shown in contact_sheet.png (0 = none).
        overwrite: True: delete this runner's files in `out` first instead of resuming. "changed": resume when `out`
            was made with the same settings (generator, config, filters, seed, shard size), start it afresh when
            not (a pipeline that re-runs one step with new settings); False: refuse a folder made otherwise.
        ray_address: build shards as Ray tasks on this cluster ("auto", "ray://host:port", or "local"
            to start a local one) instead of local worker processes; shards are byte-identical.
    """
    gen_cls = get_generator(generator) if isinstance(generator, str) else generator
    if not gen_cls.name:
        raise ValueError(f"{gen_cls.__qualname__} is not registered (use @register_generator)")
    for label, value, low in (
        ("num", num, 1),
        ("shard_size", shard_size, 1),
        ("workers", workers, 1),
        ("seed", seed, 0),
    ):
        check_min_int(label, value, low)
    if overwrite not in (True, False, "changed"):
        raise ValueError(f"overwrite must be True, False or 'changed', got {overwrite!r}")
    gen_config = _resolve_config(gen_cls, config)
    filter_config = filters if isinstance(filters, FilterConfig) else FilterConfig.from_dict(filters or {})
    if filter_config.extra:
        raise ValueError(f"unknown filter keys {sorted(filter_config.extra)}")
    gen_cls(gen_config)  # fail here, in the parent, on a config the generator rejects

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_shards = -(-num // shard_size)
    expected = {i: min(shard_size, num - i * shard_size) for i in range(num_shards)}
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "generator": gen_cls.name,
        "config": gen_config.to_dict(),
        "filters": filter_config.to_dict(),
        "seed": seed,
        "shard_size": shard_size,
        "num_samples": num,
        "num_shards": num_shards,
        "workers": workers,
    }

    for stale in out_dir.glob("shard-*.tar.tmp"):
        stale.unlink()  # left by an interrupted run; never a complete shard
    done = _load_prior(out_dir, manifest, expected, overwrite)
    jobs = [
        ShardJob(
            gen_cls,
            manifest["config"],
            manifest["filters"],
            seed,
            i,
            expected[i],
            str(out_dir / shard_name(i)),
            max_attempts=20 * expected[i] + 100,
        )
        for i in range(num_shards)
        if i not in done
    ]
    logger.info(
        "synth %s: %d shards to build, %d kept from a previous run", gen_cls.name, len(jobs), len(done)
    )

    start = time.perf_counter()
    entries = dict(done)

    def finished(entry: dict[str, Any]) -> None:
        entries[entry["index"]] = entry
        _write_json(
            out_dir / PARTIAL_MANIFEST,
            {**manifest, "complete": False, "shards": [entries[i] for i in sorted(entries)]},
        )
        logger.info("shard %s: %d samples in %.2fs", entry["name"], entry["num_samples"], entry["seconds"])

    if ray_address is not None and jobs:
        from internvlu.synthesis.raydist import run_jobs_ray  # optional dependency: Ray

        for entry in run_jobs_ray(jobs, ray_address, workers):
            finished(entry)
    elif workers == 1 or len(jobs) <= 1:
        for job in jobs:
            finished(build_shard(job))
    else:
        # spawn, not fork: the caller may hold threads (torch, a dataloader) that fork would copy broken.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=min(workers, len(jobs)), mp_context=context
        ) as pool:
            futures = [pool.submit(build_shard, job) for job in jobs]
            try:
                for future in concurrent.futures.as_completed(futures):
                    finished(future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    seconds = time.perf_counter() - start

    shards = [entries[i] for i in range(num_shards)]
    generated = sum(entries[job.index]["num_samples"] for job in jobs)
    manifest.update(
        complete=True,
        counts_by_task=dict(sorted(sum((Counter(s["counts_by_task"]) for s in shards), Counter()).items())),
        rejections=dict(sorted(sum((Counter(s["rejections"]) for s in shards), Counter()).items())),
        attempts=sum(s["attempts"] for s in shards),
        generated_shards=len(jobs),
        skipped_shards=len(done),
        seconds=round(seconds, 3),
        samples_per_second=round(generated / seconds, 2) if seconds > 0 and generated else None,
        shards=shards,
    )
    if contact_sheet_samples > 0:
        write_contact_sheet(
            [out_dir / s["name"] for s in shards], out_dir / CONTACT_SHEET, contact_sheet_samples
        )
        manifest["contact_sheet"] = CONTACT_SHEET
    _write_json(out_dir / MANIFEST, manifest)
    (out_dir / PARTIAL_MANIFEST).unlink(missing_ok=True)
    return manifest


def _clear(out_dir: Path) -> None:
    """Delete this runner's files in `out_dir` (nothing else a user keeps there)."""
    for path in [
        *out_dir.glob("shard-*.tar"),
        out_dir / MANIFEST,
        out_dir / PARTIAL_MANIFEST,
        out_dir / CONTACT_SHEET,
    ]:
        path.unlink(missing_ok=True)


def _load_prior(
    out_dir: Path, manifest: dict[str, Any], expected: dict[int, int], overwrite: bool | str
) -> dict[int, dict[str, Any]]:
    """Shards of an earlier run that can be kept, by index; deletes what cannot."""
    if overwrite is True:
        _clear(out_dir)
        return {}
    # The partial manifest is newer when both exist (a resumed run that was extending a dataset).
    prior_path = next((p for p in (out_dir / PARTIAL_MANIFEST, out_dir / MANIFEST) if p.is_file()), None)
    if prior_path is None:
        if any(out_dir.glob("shard-*.tar")):
            logger.warning("%s has shards but no manifest; they will be rebuilt", out_dir)
        return {}
    try:
        prior = json.loads(prior_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{prior_path} is not valid JSON ({exc}); delete it or pass overwrite") from exc
    if _identity(prior) != _identity(manifest):
        diff = sorted(k for k, v in _identity(manifest).items() if _identity(prior).get(k) != v)
        if overwrite == "changed":
            logger.info("%s was made with other settings (%s differ): building it afresh", out_dir, ", ".join(diff))
            _clear(out_dir)
            return {}
        raise ValueError(
            f"{out_dir} holds shards made with different settings ({', '.join(diff)} differ); "
            "use another output folder or overwrite"
        )
    done: dict[int, dict[str, Any]] = {}
    for entry in prior.get("shards", []):
        if _reusable(out_dir, entry, expected):
            done[entry["index"]] = entry
        elif entry.get("index") not in expected:
            # The dataset shrank: a shard beyond the new end would still be picked up by a folder glob.
            (out_dir / shard_name(int(entry["index"]))).unlink(missing_ok=True)
    return done


# --------------------------------------------------------------------------------------------------
# Contact sheet
# --------------------------------------------------------------------------------------------------


def write_contact_sheet(
    shards: list[Path], path: Path, num_samples: int, columns: int = 4, thumb: int = 96
) -> None:
    """A grid of the first samples (inputs then target, with a task/text caption) for a quick look."""
    cells: list[Image.Image] = []
    font = ImageFont.load_default(size=10)
    for sample in SampleReader(shards):  # lazy: stops after the first shard(s)
        images = [ref.load() for ref in sample.all_images()][:3]
        text = sample.prompt or (sample.messages[0].content if sample.messages else "")
        caption = f"{sample.task}: {' '.join(text.replace('<image>', '').split())}"
        cell = Image.new("RGB", (3 * (thumb + 4), thumb + 32), (255, 255, 255))
        draw = ImageDraw.Draw(cell)
        for k, image in enumerate(images):
            scale = thumb / max(image.size)
            tile = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                Image.Resampling.NEAREST,
            )  # nearest: show the real pixels, no smoothing
            cell.paste(tile, (k * (thumb + 4) + 1, 1))
            draw.rectangle(
                (k * (thumb + 4), 0, k * (thumb + 4) + tile.width + 1, tile.height + 1),
                outline=(150, 150, 150),
            )
        draw.text((2, thumb + 4), caption[:48], fill=(0, 0, 0), font=font)
        draw.text((2, thumb + 17), caption[48:96], fill=(0, 0, 0), font=font)
        cells.append(cell)
        if len(cells) >= num_samples:
            break
    if not cells:
        return
    cw, ch = cells[0].size
    rows = -(-len(cells) // columns)
    sheet = Image.new("RGB", (columns * (cw + 6), rows * (ch + 6)), (220, 220, 220))
    for i, cell in enumerate(cells):
        sheet.paste(cell, ((i % columns) * (cw + 6) + 3, (i // columns) * (ch + 6) + 3))
    sheet.save(path, format="PNG")
