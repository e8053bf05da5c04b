"""Resolve the official `model_index.json` to our classes and load/save each component folder."""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..checkpoint.io import CheckpointError, load_weights_into, materialize_unaligned, save_weights

COMPONENTS = ("vlm", "generation_decoder", "vae", "scheduler", "processor")

# The official model_index.json names these (module, class) pairs; they resolve to our classes, and
# our save writes the same pairs, so one folder works with both implementations.
OFFICIAL_CLASSES: dict[str, tuple[str, str]] = {
    "vlm": ("internvlu.vlm", "InternVLUChatModel"),
    "generation_decoder": ("internvlu.diffusion", "InternVLUGenerationDecoder"),
    "vae": ("diffusers", "AutoencoderKLQwenImage"),
    "scheduler": ("diffusers", "DPMSolverMultistepScheduler"),
    "processor": ("internvlu.processing_internvlu", "InternVLUProcessor"),
}
ALLOWED_LIBRARIES = ("internvlu", "diffusers")


def read_model_index(folder: Path) -> dict[str, Any]:
    """Read and validate `model_index.json`; every component must be named and present on disk."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"checkpoint folder {str(folder)!r} does not exist (internvlu loads local folders only and never downloads)"
        )
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise CheckpointError(f"{folder} has no model_index.json; is it an InternVL-U checkpoint folder?")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{index_path} is not valid JSON: {exc}") from exc
    missing_entries = [c for c in COMPONENTS if c not in index]
    missing_dirs = [c for c in COMPONENTS if c in index and not (folder / c).is_dir()]
    if missing_entries or missing_dirs:
        raise CheckpointError(
            f"checkpoint {folder} is incomplete: components missing from model_index.json: {missing_entries}; "
            f"component folders missing on disk: {missing_dirs}"
        )
    return index


def resolve_class(component: str, entry: Any) -> type:
    """Map a model_index entry [library, class_name] to a class (ours for `internvlu.*`)."""
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
        raise CheckpointError(
            f"model_index.json entry for {component!r} must be [library, class], got {entry!r}"
        )
    library, class_name = entry
    if library.split(".")[0] not in ALLOWED_LIBRARIES:
        raise CheckpointError(
            f"model_index.json asks for {library}.{class_name} for {component!r}; "
            f"only internvlu.* and diffusers components are loaded (no remote code)"
        )
    try:
        module = importlib.import_module(library)
        return getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(
            f"cannot resolve {library}.{class_name} for component {component!r}: {exc}"
        ) from exc


def load_torch_component(
    cls: type, folder: Path, device: torch.device, dtype: torch.dtype, **build_kwargs: Any
) -> torch.nn.Module:
    """Build one of our nn.Module components on the meta device and assign its weights."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no config.json")
    config = cls.config_class.from_json_file(config_path)
    with torch.device("meta"):
        model = cls(config, **build_kwargs)
    tied = getattr(model, "tied_weights", dict)()
    load_weights_into(model, folder, device=device, dtype=dtype, tied=tied)
    return model.eval()


def load_diffusers_component(cls: type, folder: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A diffusers model (the VAE) built on the meta device from its config and loaded with our reader.

    diffusers' own `from_pretrained` leaves same-dtype weights memory-mapped at unaligned offsets
    (slow CPU kernels, file pages resident next to any copy); when its weights do not match the
    config's module tree exactly (e.g. a legacy key layout diffusers converts), that loader is used
    instead and its unaligned tensors are copied one by one.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = cls.load_config(str(folder))
        with torch.device("meta"):
            model = cls.from_config(config)
    try:
        load_weights_into(model, folder, device=device, dtype=dtype)
    except CheckpointError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls.from_pretrained(str(folder), torch_dtype=dtype)
        materialize_unaligned(model)
        model = model.to(device)
    return model.eval()


def save_torch_component(model: torch.nn.Module, folder: Path, max_shard_bytes: int | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json")
    tied = getattr(model, "tied_weights", dict)()
    save_weights(model, folder, max_shard_bytes=max_shard_bytes, skip=tied.keys())


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(size: int | str | None) -> int | None:
    """'5GB' / '500MiB' / 12345 -> bytes; None -> None (one file)."""
    if size is None or isinstance(size, int):
        if isinstance(size, int) and size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    match = _SIZE_RE.match(size)
    if not match:
        raise ValueError(f"max_shard_size {size!r} is not a size such as 5GB, 500MB or 1048576")
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _UNITS[unit])


def write_model_index(folder: Path, original: dict[str, Any] | None) -> None:
    """Write model_index.json naming the official component classes (keeps other keys of the original)."""
    import diffusers

    index: dict[str, Any] = dict(original or {})
    index["_class_name"] = "InternVLUPipeline"
    index["_diffusers_version"] = index.get("_diffusers_version", diffusers.__version__)
    for name, pair in OFFICIAL_CLASSES.items():
        index[name] = list(index.get(name, pair))
    tmp = folder / "model_index.json.tmp"
    tmp.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / "model_index.json")
