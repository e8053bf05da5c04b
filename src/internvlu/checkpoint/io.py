"""Safetensors weight I/O for the `vlm` and `generation_decoder` components.

Loading builds the module on the meta device (no memory, no random init), reads each tensor once
(plain reads into a fresh, aligned allocation: no memory map) and converts it to its target
device/dtype, and assigns it (`load_state_dict(assign=True)`), so the weights are never held
twice. Missing, unexpected or wrongly shaped tensors are one error that lists all of them. Saving writes the official layout: `model.safetensors`, or shards plus
`model.safetensors.index.json` (the transformers convention) above a size limit.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# diffusers names its single file differently; we accept both when reading.
DIFFUSERS_SINGLE_FILE = "diffusion_pytorch_model.safetensors"
DIFFUSERS_INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint folder or its weights do not match the model."""


M = TypeVar("M", bound=torch.nn.Module)


def weight_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files of a component folder (single file or the shards of an index)."""
    folder = Path(folder)
    for index_name, single_name in ((INDEX_FILE, SINGLE_FILE), (DIFFUSERS_INDEX_FILE, DIFFUSERS_SINGLE_FILE)):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{index} is not a valid safetensors index: {exc}") from exc
            files = sorted({folder / name for name in weight_map.values()})
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index} names shard files that do not exist: {missing}")
            return files
        if (folder / single_name).is_file():
            return [folder / single_name]
    raise CheckpointError(
        f"no weights in {folder}: expected {SINGLE_FILE} or {INDEX_FILE} (found: "
        f"{sorted(p.name for p in folder.iterdir()) if folder.is_dir() else 'folder missing'})"
    )


# safetensors dtype names -> torch dtypes (the format is little-endian).
_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip
_HEADER_LIMIT = 100 * 2**20


def _read_header(fh: BinaryIO, path: Path) -> tuple[int, dict[str, dict]]:
    raw = fh.read(8)
    if len(raw) != 8:
        raise CheckpointError(f"{path} is not a safetensors file (shorter than 8 bytes)")
    (size,) = struct.unpack("<Q", raw)
    if size > _HEADER_LIMIT:
        raise CheckpointError(f"{path} is not a safetensors file (header of {size} bytes)")
    try:
        header = json.loads(fh.read(size))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} has a corrupt safetensors header: {exc}") from exc
    header.pop("__metadata__", None)
    return 8 + size, header


def _read_file(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Read each tensor of one safetensors file into its own fresh CPU allocation with plain reads.

    Not memory-mapped on purpose: mapped tensors keep the file's pages resident next to any converted
    copy (two copies of a component while it loads) and start at arbitrary byte offsets, which
    makes CPU bf16 matmuls take slow unaligned paths; a fresh allocation is aligned.
    """
    with open(path, "rb", buffering=0) as fh:
        base, header = _read_header(fh, path)
        for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            dtype = _ST_DTYPES.get(info.get("dtype"))
            if dtype is None:
                raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {info.get('dtype')!r}")
            start, end = info["data_offsets"]
            tensor = torch.empty(info["shape"], dtype=dtype)
            nbytes = tensor.numel() * tensor.element_size()
            if nbytes != end - start:
                raise CheckpointError(f"{path}: tensor {key!r} spans {end - start} bytes, expected {nbytes}")
            if nbytes:
                fh.seek(base + start)
                view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())  # [nbytes] over the tensor
                done = 0
                while done < nbytes:
                    got = fh.readinto(view[done:])
                    if not got:
                        raise CheckpointError(f"{path} is truncated inside tensor {key!r}")
                    done += got
            yield key, tensor


def iter_tensors(
    files: Iterable[Path], device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) one at a time, read to CPU memory, cast to `dtype` and moved to `device`.

    Casting and moving per tensor keeps the peak at one extra tensor, not one extra model.
    """
    device = torch.device(device)
    for path in files:
        if sys.byteorder != "little":  # pragma: no cover - safetensors data is little-endian
            yield from _iter_safe_open(path, device, dtype)
            continue
        for key, tensor in _read_file(Path(path)):
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            yield key, tensor.to(device)


def _iter_safe_open(
    path: Path, device: torch.device, dtype: torch.dtype | None
) -> Iterator[tuple[str, torch.Tensor]]:  # pragma: no cover - big-endian hosts only
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        for key in fh.keys():
            tensor = fh.get_tensor(key).clone()
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            yield key, tensor.to(device)


def materialize_unaligned(module: torch.nn.Module) -> int:
    """Copy every parameter/buffer that does not start on a 64-byte boundary (memory-mapped weights from
    a library loader) into a fresh aligned allocation, one tensor at a time; returns how many moved."""
    moved = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % 64:
            tensor.data = tensor.data.clone()
            moved += 1
    return moved


def check_state_dict(
    model: torch.nn.Module, shapes: dict[str, torch.Size], where: str, optional: Iterable[str] = ()
) -> None:
    """Raise one CheckpointError listing every missing, unexpected and wrongly shaped key."""
    expected = {k: v.shape for k, v in model.state_dict(keep_vars=True).items()}
    optional = set(optional)
    missing = sorted(k for k in expected if k not in shapes and k not in optional)
    unexpected = sorted(k for k in shapes if k not in expected)
    wrong = sorted(
        f"{k}: checkpoint {tuple(shapes[k])} vs model {tuple(expected[k])}"
        for k in shapes
        if k in expected and tuple(shapes[k]) != tuple(expected[k])
    )
    if missing or unexpected or wrong:
        parts = [f"weights in {where} do not match {type(model).__name__}:"]
        if missing:
            parts.append(f"  missing ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"  unexpected ({len(unexpected)}): {unexpected}")
        if wrong:
            parts.append(f"  wrong shape ({len(wrong)}): {wrong}")
        raise CheckpointError("\n".join(parts))


def load_weights_into(
    model: M,
    folder: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    tied: dict[str, str] | None = None,
) -> M:
    """Load a component folder's safetensors into a (meta-built) model by assignment.

    Args:
        model: built under `torch.device("meta")` (or anywhere: assignment replaces storage).
        folder: the component folder (holding model.safetensors or an index + shards).
        device, dtype: where the weights go; dtype None keeps the stored dtype.
        tied: {target_key: source_key} for weights that share storage (e.g. a tied lm_head) and
            may be absent from the file.
    """
    files = weight_files(folder)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in iter_tensors(files, device=device, dtype=dtype):
        state[key] = tensor
    tied = tied or {}
    check_state_dict(model, {k: v.shape for k, v in state.items()}, str(folder), optional=tied.keys())
    for target, source in tied.items():
        state.setdefault(target, state[source])
    model.load_state_dict(state, strict=True, assign=True)
    del state
    init = getattr(model, "init_non_persistent_buffers", None)
    if callable(init):
        # Buffers that are not in the state dict were created on meta: rebuild them for real.
        init()
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"after loading {folder}, tensors are still on the meta device: {leftover}")
    return model


def save_weights(
    model: torch.nn.Module,
    folder: str | os.PathLike[str],
    max_shard_bytes: int | None = None,
    skip: Iterable[str] = (),
) -> list[Path]:
    """Write the model's state dict as safetensors (sharded with an index above `max_shard_bytes`).

    Tensors that share storage (tied weights) are written once, under the first key unless it is
    listed in `skip`. Files are written under a temporary name and renamed, so an interrupted save
    never leaves a truncated file behind under the final name.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    skip = set(skip)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in skip}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    for stale in (SINGLE_FILE, INDEX_FILE):
        (folder / stale).unlink(missing_ok=True)
    for old in folder.glob("model-*-of-*.safetensors"):
        old.unlink()
    written: list[Path] = []
    if len(shards) == 1:
        names = [SINGLE_FILE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        tmp = folder / (name + ".tmp")
        save_file(shard, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, folder / name)
        written.append(folder / name)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {k: name for name, shard in zip(names, shards) for k in shard},
        }
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return written
