"""The settings record written next to every evaluation result.

A benchmark number is only comparable when the run that made it is known exactly, so every result
file (``settings.json``, each per-item record, ``summary.json``, PNG text chunks) carries:

* the model: its folder and a fingerprint (sha256 over every config/tokenizer file, the weight
  indexes, and the weights themselves when small, else each weight file's size and safetensors
  header, which holds every tensor's name, dtype, shape and offsets);
* sampling: seed, steps, both guidance scales, think on/off, thought budget, resolution, images per
  prompt, and whether prompts were rewritten (internvlu never rewrites; a user-supplied rewritten
  prompt file shows up as a different data hash and a ``prompt_rewriting`` label);
* the data files read (path + sha256), the judge (endpoint model name), device and dtype;
* library versions (python, torch, transformers, diffusers, ...) and the internvlu version.

Resuming a run checks the *pinned* fields against the stored record and refuses to mix results made
with different settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import struct
import sys
from pathlib import Path
from typing import Any

from internvlu.utils.config import ConfigBase

SETTINGS_FILE = "settings.json"
# Weight files up to this total size are hashed in full (the embedded and test models); larger
# checkpoints are fingerprinted by size + safetensors header so recording stays fast.
FULL_HASH_LIMIT = 256 * 1024 * 1024
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
LIBRARIES = (
    "internvlu",
    "torch",
    "transformers",
    "diffusers",
    "safetensors",
    "accelerate",
    "numpy",
    "pillow",
    "einops",
)
# Fields that must agree between a stored run and a resumed one.
PINNED_FIELDS = (
    "benchmark",
    "model_sha256",
    "seed",
    "num_images",
    "num_inference_steps",
    "all_cfg_scale",
    "part_cfg_scale",
    "think",
    "max_thought_tokens",
    "height",
    "width",
    "max_new_tokens",
    "prompt_rewriting",
    "data",
    "options",
)


@dataclasses.dataclass
class EvalSettings(ConfigBase):
    """Everything that determines a benchmark run's outputs, plus provenance.

    Attributes:
        benchmark: registry name (``geneval``, ``dpg``, ...).
        model: the checkpoint folder as given.
        model_sha256: fingerprint of the folder (see :func:`model_fingerprint`).
        model_fingerprint: how it was computed (``full`` or ``header`` weights) and the file count.
        seed: base seed; image k of every prompt uses ``seed + k`` (GenEditEvalKit's convention).
        num_images: images per prompt (GenEval / DPG: 4; WISE and the edit benchmarks: 1).
        num_inference_steps, all_cfg_scale, part_cfg_scale: sampler settings, resolved (never None).
        think: chain of thought before drawing; max_thought_tokens: its budget.
        height, width: generation size (edit benchmarks: None = the input image's size).
        max_new_tokens: answer budget for understanding suites.
        prompt_rewriting: ``none`` unless the user labels rewritten prompt files.
        data: data files read, path -> sha256.
        options: benchmark-specific choices (language split, subset, model name in the layout...).
        judge: judge endpoint model / base URL (scoring only; not pinned).
        scoring: scoring-only options (official scorer paths, judge prompt files; not pinned).
        device, dtype: where it ran (not pinned: results should not depend on them beyond noise).
        libraries: package versions (not pinned).
    """

    benchmark: str = ""
    model: str = ""
    model_sha256: str = ""
    model_fingerprint: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    num_images: int = 1
    num_inference_steps: int = 20
    all_cfg_scale: float | None = None
    part_cfg_scale: float | None = None
    think: bool = False
    max_thought_tokens: int = 200
    height: int | None = None
    width: int | None = None
    max_new_tokens: int = 1024
    prompt_rewriting: str = "none"
    data: dict[str, str] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    judge: dict[str, Any] = dataclasses.field(default_factory=dict)
    scoring: dict[str, Any] = dataclasses.field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"
    libraries: dict[str, str] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        for name in ("seed", "num_images", "num_inference_steps", "max_thought_tokens", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        for name in ("num_images", "num_inference_steps", "max_thought_tokens", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 16):
                raise ValueError(f"{name} must be an int >= 16 or None, got {value!r}")

    def pinned(self) -> dict[str, Any]:
        """The fields a resumed run must share with the stored one."""
        data = self.to_dict()
        return {name: data[name] for name in PINNED_FIELDS}

    def differences(self, other: EvalSettings) -> list[str]:
        """Human-readable list of pinned fields that differ (empty when compatible)."""
        mine, theirs = self.pinned(), other.pinned()
        return [f"{k}: stored {theirs[k]!r}, now {mine[k]!r}" for k in PINNED_FIELDS if mine[k] != theirs[k]]


# --------------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _safetensors_header(path: Path) -> bytes:
    """The 8-byte length plus the JSON header (tensor names, dtypes, shapes, offsets)."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            return raw
        (length,) = struct.unpack("<Q", raw)
        if length > 100 * 1024 * 1024:  # not a safetensors file: the size alone fingerprints it
            return raw
        return raw + fh.read(length)


def model_fingerprint(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """sha256 of a checkpoint folder's configs, tokenizer files, weight indexes and weights.

    Returns ``{"sha256": hex, "weights": "full" | "header", "files": n}``. Weights are hashed in full
    when they total at most :data:`FULL_HASH_LIMIT` bytes; otherwise each weight file contributes its
    size and safetensors header, which changes with any change of tensor set, dtype or shape.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"model folder {str(root)!r} does not exist")
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts[-1:])
    )
    weights = [p for p in files if p.suffix in WEIGHT_SUFFIXES]
    full = sum(p.stat().st_size for p in weights) <= FULL_HASH_LIMIT
    digest = hashlib.sha256()
    for path in files:
        rel = path.relative_to(root).as_posix()
        if path.suffix in WEIGHT_SUFFIXES and not full:
            part = hashlib.sha256(_safetensors_header(path)).hexdigest() + f":{path.stat().st_size}"
        else:
            part = sha256_file(path)
        digest.update(f"{rel}\t{part}\n".encode())
    return {"sha256": digest.hexdigest(), "weights": "full" if full else "header", "files": len(files)}


def library_versions() -> dict[str, str]:
    """Versions of python, the platform and every library that affects outputs."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        import torch

        versions["torch_cuda"] = str(torch.version.cuda)
    except ImportError:  # torch is a core dependency; kept defensive for record-only tools
        pass
    return versions


def data_hashes(paths: list[Path]) -> dict[str, str]:
    """path -> sha256 for every data file a benchmark read (folders: their files' listing hash)."""
    out: dict[str, str] = {}
    for path in paths:
        key = str(path.resolve())
        if path.is_file():
            out[key] = sha256_file(path)
        elif path.is_dir():
            listing = sorted(
                p.relative_to(path).as_posix() + f"\t{p.stat().st_size}"
                for p in path.rglob("*")
                if p.is_file()
            )
            out[key] = hashlib.sha256("\n".join(listing).encode()).hexdigest()
    return out


# --------------------------------------------------------------------------------------------------
# Resolving
# --------------------------------------------------------------------------------------------------


def checkpoint_size(model: str | os.PathLike[str]) -> tuple[int, int]:
    """The checkpoint's default generation size (generation_decoder/config.json)."""
    config = json.loads((Path(model) / "generation_decoder" / "config.json").read_text(encoding="utf-8"))
    return int(config.get("gen_image_height", 512)), int(config.get("gen_image_width", 512))


def checkpoint_guidance(model: str | os.PathLike[str], think: bool) -> tuple[float, float]:
    """The guidance the pipeline uses for this checkpoint when a call names none, read from its
    generation_decoder/config.json (`internvlu.pipeline.pipeline.guidance_from_config`)."""
    from internvlu.pipeline.pipeline import guidance_from_config

    path = Path(model) / "generation_decoder" / "config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return guidance_from_config(config, think)


def make_settings(
    bench: Any,
    model: str | os.PathLike[str],
    *,
    seed: int = 0,
    num_images: int | None = None,
    num_inference_steps: int = 20,
    all_cfg_scale: float | None = None,
    part_cfg_scale: float | None = None,
    think: bool = False,
    max_thought_tokens: int = 200,
    height: int | None = None,
    width: int | None = None,
    max_new_tokens: int = 1024,
    prompt_rewriting: str = "none",
    device: str = "cpu",
    dtype: str | None = None,
) -> EvalSettings:
    """Resolved settings for running `bench` with the checkpoint folder `model`.

    Guidance defaults are the pipeline's for this checkpoint (the release's: 4.5 / 2.0; think 3.5 / 1.5), T2I sizes default to the
    checkpoint's ``gen_image_height/width``, images per prompt to the benchmark's protocol, and the
    provenance (fingerprint, data hashes, library versions) is filled in.
    """
    fingerprint = model_fingerprint(model)
    if (height is None) != (width is None):
        raise ValueError(f"give both height and width or neither, got {height} x {width}")
    if bench.kind == "t2i" and height is None:
        height, width = checkpoint_size(model)
    guidance = checkpoint_guidance(model, think)
    options = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in bench.options.items()
        if k not in bench.SCORING_OPTIONS
    }
    if bench.limit is not None:
        options["limit"] = bench.limit
    return EvalSettings(
        benchmark=bench.name,
        model=str(model),
        model_sha256=fingerprint["sha256"],
        model_fingerprint=fingerprint,
        seed=seed,
        num_images=num_images or bench.default_num_images,
        num_inference_steps=num_inference_steps,
        all_cfg_scale=guidance[0] if all_cfg_scale is None else float(all_cfg_scale),
        part_cfg_scale=guidance[1] if part_cfg_scale is None else float(part_cfg_scale),
        think=bool(think),
        max_thought_tokens=max_thought_tokens,
        height=height,
        width=width,
        max_new_tokens=max_new_tokens,
        prompt_rewriting=prompt_rewriting,
        data=data_hashes(bench.data_files()),
        options=options,
        device=device,
        dtype=dtype or ("float32" if device == "cpu" else "bfloat16"),
        libraries=library_versions(),
    )


# --------------------------------------------------------------------------------------------------
# Reading / writing
# --------------------------------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def store_settings(out: Path, settings: EvalSettings) -> EvalSettings:
    """Write ``out/settings.json``, or check a stored one for compatibility (resume).

    Raises ValueError naming every pinned field that differs, so results made with different
    settings are never mixed in one folder. Returns the settings in force.
    """
    path = out / SETTINGS_FILE
    if path.is_file():
        stored = EvalSettings.from_dict(json.loads(path.read_text(encoding="utf-8")))
        problems = settings.differences(stored)
        if problems:
            raise ValueError(
                f"{path} holds results made with different settings ({'; '.join(problems)}); "
                "use a new --out folder"
            )
        return stored
    write_json_atomic(path, settings.to_dict())
    return settings


def load_settings(out: Path) -> EvalSettings:
    path = out / SETTINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the benchmark's generation first")
    return EvalSettings.from_dict(json.loads(path.read_text(encoding="utf-8")))
