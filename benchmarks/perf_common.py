"""Shared helpers of the performance benchmarks: random-weight checkpoints of each size, timers, memory
probes, result tables and JSON.

Sizes: "tiny" is the parity checkpoint shipped with the tests; "mid" (~0.6B + VAE) and "released"
(the 4B shape) are written once, with random bf16 weights, to an official-layout folder under the
cache dir (default /tmp/internvlu-bench, or $INTERNVLU_BENCH_DIR), so that loading goes through the
real `from_pretrained` path. Random weights are drawn per tensor and written shard by shard, so
writing a checkpoint needs memory for one shard, not for the model. The processor reuses the tiny
checkpoint's tokenizer (same special tokens; prompts tokenize a little differently from Qwen's) with
the release's image settings (448 px ViT tiles, 256 tokens per image, 256..1024 px generation).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "parity" / "tiny-ckpt"
SIZES = ("tiny", "mid", "released")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("INTERNVLU_BENCH_DIR", "/tmp/internvlu-bench"))


# ---------------------------------------------------------------------------------------- checkpoints
def _random_like(key: str, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Plausible random weights: unit norm scales, zero biases, N(0, 0.02) elsewhere."""
    if key.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    if key.endswith(".weight") and len(shape) == 1:
        return torch.ones(shape, dtype=dtype)
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * 0.02).to(dtype)


def write_random_weights(
    model: torch.nn.Module, folder: Path, dtype: torch.dtype, seed: int, shard_bytes: int, skip: set[str]
) -> int:
    """Write random weights for every state-dict key of a (meta-built) model; returns bytes written."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    entries = [(k, tuple(v.shape)) for k, v in model.state_dict(keep_vars=True).items() if k not in skip]
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for key, shape in entries:
        nbytes = itemsize * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((key, shape))
        size += nbytes
    gen = torch.Generator().manual_seed(seed)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    total = 0
    weight_map = {}
    for name, shard in zip(names, shards):
        tensors = {key: _random_like(key, shape, dtype, gen) for key, shape in shard}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in tensors})
        del tensors
        gc.collect()
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total


def _processor_config(size: str) -> dict[str, Any]:
    config = json.loads((TINY / "processor" / "processor_config.json").read_text())
    config["image_processor_kwargs"]["size"] = {"height": 448, "width": 448}
    config["image_seq_length"] = 256
    # Generation between 256x256 and 1024x1024 pixels (patches of 8x8 VAE pixels).
    config["image_gen_processor_kwargs"].update(
        min_dynamic_patch=(256 // 8) ** 2, max_dynamic_patch=(1024 // 8) ** 2
    )
    return config


def checkpoint(size: str, dtype: str = "bf16", seed: int = 0) -> Path:
    """The folder of a random-weight checkpoint of `size` (written on first use)."""
    if size == "tiny":
        return TINY
    if size not in SIZES:
        path = Path(size)
        if not (path / "model_index.json").is_file():
            raise SystemExit(f"--model {size!r} is neither one of {SIZES} nor a checkpoint folder")
        return path
    folder = cache_dir() / f"{size}-{dtype}-seed{seed}"
    if (folder / "DONE").is_file():
        return folder
    from diffusers import AutoencoderKLQwenImage, DPMSolverMultistepScheduler

    from internvlu.presets import PRESETS, RELEASED_SCHEDULER_CONFIG, build_components

    print(
        f"[bench] writing a random {size} checkpoint ({dtype}) to {folder} ...", file=sys.stderr, flush=True
    )
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    preset = PRESETS[size]()
    vlm, decoder, _ = build_components(preset, "meta")
    torch_dtype = DTYPES[dtype]
    for name, model, config in (
        ("vlm", vlm, preset.vlm),
        ("generation_decoder", decoder, preset.generation_decoder),
    ):
        (folder / name).mkdir()
        config.to_json_file(folder / name / "config.json")
        tied = set(model.tied_weights()) if hasattr(model, "tied_weights") else set()
        write_random_weights(model, folder / name, torch_dtype, seed, 2 * 10**9, tied)
    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage(**preset.vae).to(torch_dtype)
    vae.save_pretrained(str(folder / "vae"))
    del vae
    DPMSolverMultistepScheduler(**RELEASED_SCHEDULER_CONFIG).save_pretrained(str(folder / "scheduler"))
    shutil.copytree(TINY / "processor", folder / "processor")
    (folder / "processor" / "processor_config.json").write_text(json.dumps(_processor_config(size), indent=2))
    shutil.copy(TINY / "model_index.json", folder / "model_index.json")
    (folder / "DONE").write_text("ok\n")
    return folder


def load(size: str, dtype: str, device: str = "cpu", **kwargs: Any):
    from internvlu import InternVLUPipeline

    pipe = InternVLUPipeline.from_pretrained(
        checkpoint(size, **kwargs), torch_dtype=DTYPES[dtype], device=device
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def weight_bytes(pipe) -> int:
    from internvlu.pipeline.quantization import module_nbytes

    return sum(module_nbytes(m) for m in (pipe.vlm, pipe.generation_decoder, pipe.vae))


# ---------------------------------------------------------------------------------------- measuring
def sync(device: str | torch.device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """--threads and --clock, shared by the speed and memory benchmarks (apply with `apply_timing_arguments`)."""
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="times in wall seconds, or in this process's CPU seconds (shared machines; with --threads 1)",
    )


def apply_timing_arguments(args: argparse.Namespace) -> Callable[[], float]:
    """Set torch's CPU threads from --threads; returns the --clock function."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return clock_fn(args.clock)


def clock_fn(clock: str) -> Callable[[], float]:
    """The clock of --clock: wall (time.perf_counter) or this process's CPU time (time.process_time)."""
    return time.process_time if clock == "cpu" else time.perf_counter


@contextlib.contextmanager
def timed(device: str | torch.device = "cpu", clock: str = "wall") -> Iterator[dict[str, float]]:
    """with timed(device) as t: ...; t["s"] is the wall time (clock="cpu": this process's CPU time), the
    device synchronised at both ends."""
    now = clock_fn(clock)
    out: dict[str, float] = {}
    sync(device)
    start = now()
    try:
        yield out
    finally:
        sync(device)
        out["s"] = now() - start


def _status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return psutil.Process().memory_info().rss


class PeakRSS:
    """Peak resident memory of this process inside a `with` block.

    On Linux the kernel's high-water mark (VmHWM) is reset on entry (/proc/self/clear_refs), so the
    peak is exact; elsewhere a thread samples the RSS every 5 ms.
    """

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.start = rss_bytes()
        self.exact = False
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.exact = _status_kb("VmHWM") is not None
        except OSError:
            pass
        self._peak = self.start
        self._stop = threading.Event()
        if not self.exact:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.exact:
            self._peak = max(self._peak, (_status_kb("VmHWM") or 0) * 1024)
        else:
            self._thread.join()
        self.end = rss_bytes()

    @property
    def peak(self) -> int:
        return self._peak

    @property
    def peak_increase(self) -> int:
        return self._peak - self.start


@contextlib.contextmanager
def peak_vram(device: str | torch.device) -> Iterator[dict[str, int]]:
    device = torch.device(device)
    out: dict[str, int] = {}
    if device.type != "cuda":
        yield out
        return
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    try:
        yield out
    finally:
        torch.cuda.synchronize(device)
        out["peak"] = torch.cuda.max_memory_allocated(device)
        out["peak_increase"] = out["peak"] - base


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        info["load_avg"] = os.getloadavg()
    except OSError:
        pass
    return info


# ---------------------------------------------------------------------------------------- reporting
@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def add(self, *row: Any) -> None:
        self.rows.append(list(row))
        # Echoed at once, so a long run that is interrupted still leaves its measurements behind.
        print(f"[bench] {self.title}: " + " | ".join(map(str, row)), file=sys.stderr, flush=True)

    def markdown(self) -> str:
        def cell(v: Any) -> str:
            if isinstance(v, float):
                return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
            return str(v)

        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---" for _ in self.columns) + "|",
        ]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]


def report(tables: list[Table], out: str | None, meta: dict[str, Any]) -> None:
    """Print every table as markdown and, with `out`, merge the results into that JSON file (one entry per
    run, keyed by the run's label, so runs on other machines or commits can be compared)."""
    for table in tables:
        print(table.markdown(), flush=True)
    if not out:
        return
    path = Path(out)
    data = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    data["runs"].append(
        {"meta": {**meta, "env": environment()}, "tables": {t.title: t.records() for t in tables}}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"[bench] results appended to {path}", file=sys.stderr)
