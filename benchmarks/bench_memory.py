"""Memory: loading, weight-only quantization, CPU offload and tiled VAE decode (random weights).

    python benchmarks/bench_memory.py --model mid --dtype bf16 fp32
    python benchmarks/bench_memory.py --model released --dtype bf16 --device cuda --sections offload quant
    python benchmarks/bench_memory.py --model mid --sections tiling --vae-sizes 512 1024

Sections (tables printed; --out appends them to a JSON file):
- load: load time and peak RSS of `from_pretrained` (ours: meta-device build + per-tensor reads into
  aligned memory) against a naive loader (build with random init, then `load_state_dict` from
  `safetensors.torch.load_file`, i.e. two copies) and a memory-mapped one (`safe_open` views: little
  resident memory at load time, the pages come in on first use, unaligned). Each loader runs in a fresh
  subprocess; "peak after use" touches every weight once, as a first forward would.
- quant: int8 / fp8 weight-only quantization of the LLM and MMDiT linears (torchao): weight bytes, RSS,
  the output difference against the unquantized model (MMDiT velocity and LLM last hidden state on fixed
  inputs, relative L2 error; t2i image mean abs difference), the time of one MMDiT forward (one guidance
  row at --sizes[0]) and the LLM decode speed.
- offload: peak VRAM and time of t2i with no offload, model offload and sequential offload (GPU only).
- tiling: peak memory and time of one VAE decode at each size, tiled and untiled.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf_common as pc

PROMPT = "A red cube to the left of two blue balls on a wooden table, soft light, photograph"


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc) so RSS reflects live tensors."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------- loading
def naive_load(folder: Path, dtype: torch.dtype):
    """Reference-style loading: a randomly initialised model in memory, then a second full copy from the
    file, copied in with load_state_dict."""
    from safetensors.torch import load_file

    from internvlu.checkpoint.io import weight_files
    from internvlu.pipeline.loading import COMPONENTS, read_model_index, resolve_class

    index = read_model_index(folder)
    models = {}
    for name in ("vlm", "generation_decoder"):
        cls = resolve_class(name, index[name])
        config = cls.config_class.from_json_file(folder / name / "config.json")
        model = cls(config).to(dtype)
        state: dict[str, torch.Tensor] = {}
        for path in weight_files(folder / name):
            state.update(load_file(str(path)))
        model.load_state_dict(state, strict=False)
        del state
        models[name] = model
    vae_cls = resolve_class("vae", index["vae"])
    models["vae"] = vae_cls.from_pretrained(str(folder / "vae"), torch_dtype=dtype, low_cpu_mem_usage=False)
    assert set(COMPONENTS) >= set(models)
    return models


def mmap_load(folder: Path, dtype: torch.dtype):
    """Meta-device build with `safe_open` tensors assigned as they are (memory-mapped when the dtype matches)."""
    from safetensors import safe_open

    from internvlu.checkpoint.io import weight_files
    from internvlu.pipeline.loading import read_model_index, resolve_class

    index = read_model_index(folder)
    models = {}
    for name in ("vlm", "generation_decoder"):
        cls = resolve_class(name, index[name])
        config = cls.config_class.from_json_file(folder / name / "config.json")
        with torch.device("meta"):
            model = cls(config)
        state = {}
        for path in weight_files(folder / name):
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                for key in fh.keys():
                    state[key] = fh.get_tensor(key).to(dtype)
        for target, source in getattr(model, "tied_weights", dict)().items():
            state.setdefault(target, state[source])
        model.load_state_dict(state, strict=True, assign=True)
        model.init_non_persistent_buffers()
        models[name] = model
    vae_cls = resolve_class("vae", index["vae"])
    models["vae"] = vae_cls.from_pretrained(str(folder / "vae"), torch_dtype=dtype)
    return models


def child_load(args: argparse.Namespace) -> None:
    """Runs in a subprocess: one loader, its time and peak RSS, printed as JSON."""
    from internvlu import InternVLUPipeline

    folder = pc.checkpoint(args.model)
    # Import everything loading needs (model classes, tokenizer, diffusers) outside the measured region.
    InternVLUPipeline.from_pretrained(pc.TINY)
    dtype = pc.DTYPES[args.dtype[0]]
    trim_heap()
    with pc.PeakRSS() as rss:
        start = time.perf_counter()
        if args.loader == "ours":
            pipe = InternVLUPipeline.from_pretrained(folder, torch_dtype=dtype)
            models = {"vlm": pipe.vlm, "generation_decoder": pipe.generation_decoder, "vae": pipe.vae}
        elif args.loader == "naive":
            models = naive_load(folder, dtype)
        else:
            models = mmap_load(folder, dtype)
        seconds = time.perf_counter() - start
    from internvlu.pipeline.quantization import module_nbytes

    weights = sum(module_nbytes(m) for m in models.values())
    with pc.PeakRSS() as touched:
        for model in models.values():
            for p in model.parameters():
                p.detach().sum()  # reads every page (in the weights' own dtype: no copy), as a forward would
    print(
        json.dumps(
            {
                "load_s": seconds,
                "weights": weights,
                "base": rss.start,
                "peak": rss.peak,
                "peak_after_use": max(rss.peak, touched.peak),
            }
        )
    )


def bench_load(args: argparse.Namespace, dtype: str, table: pc.Table) -> None:
    pc.checkpoint(args.model)  # written once, outside the measurement
    for loader in args.loaders:
        cmd = [
            sys.executable,
            __file__,
            "--_child",
            "load",
            "--loader",
            loader,
            "--model",
            args.model,
            "--dtype",
            dtype,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            table.add(
                args.model, dtype, loader, "failed", proc.stderr.strip().splitlines()[-1:], "", "", "", ""
            )
            continue
        r = json.loads(lines[-1])
        peak = r["peak"] - r["base"]
        after = r["peak_after_use"] - r["base"]
        table.add(
            args.model,
            dtype,
            loader,
            round(r["load_s"], 2),
            pc.gib(r["weights"]),
            pc.gib(peak),
            round(peak / r["weights"], 2),
            pc.gib(after),
            round(after / r["weights"], 2),
        )


# ---------------------------------------------------------------------------------------- quantization
def _fixed_inputs(pipe, size: int = 256) -> dict[str, Any]:
    """One MMDiT input and one LLM input, built from real pipeline stages with fixed noise."""
    proc = pipe.processor(PROMPT, generation_mode="image", height=size, width=size)
    states, masks = pipe._condition(
        proc.input_ids, proc.attention_mask, proc.pixel_values, proc.images_per_row
    )
    grid = proc.image_grid_thw_gen[-1:]  # the conditional row's generation grid
    g = torch.Generator().manual_seed(0)
    latents = torch.randn((1, 16, int(grid[0, 1]), int(grid[0, 2])), generator=g)
    return {"proc": proc, "state": states[0], "mask": masks[0], "grid": grid, "latents": latents}


@torch.no_grad()
def _outputs(pipe, inputs: dict[str, Any], llm: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    device = pipe.device
    fhw = torch.zeros((0, 3), dtype=torch.long, device=device)  # no ViT images in a text-to-image context
    velocity = (
        pipe.generation_decoder(
            inputs["latents"].to(device, pipe.generation_decoder_dtype),
            torch.tensor([500.0], device=device),
            [inputs["state"]],
            [inputs["mask"]],
            inputs["grid"].to(device),
            [fhw],
            None,
        )
        .float()
        .cpu()
    )
    if not llm:
        return velocity, None
    proc = inputs["proc"]
    ids, mask = proc.input_ids[:1].to(device), proc.attention_mask[:1].to(device)
    hidden = pipe.vlm.forward_hidden_states(ids, mask, None)[-1].float().cpu()
    return velocity, hidden


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def bench_quant(args: argparse.Namespace, dtype: str, table: pc.Table) -> None:
    try:
        import torchao  # noqa: F401
    except ImportError:
        table.add(args.model, dtype, "torchao not installed (pip install internvlu[quant])", *[""] * 7)
        return
    size = args.sizes[0]
    base = pc.load(args.model, dtype, args.device)
    inputs = _fixed_inputs(base, size)
    ref_v, ref_h = _outputs(base, inputs)

    def image(pipe) -> np.ndarray:
        res = pipe.generate(PROMPT, height=size, width=size, num_inference_steps=args.steps, seed=0)
        return np.asarray(res.image).astype(float)

    def speed(pipe) -> tuple[float, float]:
        """(one MMDiT forward on one guidance row, s; LLM decode, tokens/s), best of --repeat."""
        forward, decode = [], []
        n = args.decode_tokens
        for _ in range(args.repeat):
            with pc.timed(args.device, args.clock) as t:
                _outputs(pipe, inputs, llm=False)
            forward.append(t["s"])
            timings = []
            for tokens in (1, n):
                with pc.timed(args.device, args.clock) as t:
                    pipe(PROMPT, generation_mode="text", max_new_tokens=tokens, min_new_tokens=tokens)
                timings.append(t["s"])
            decode.append((n - 1) / max(timings[1] - timings[0], 1e-9))
        return min(forward), max(decode)

    from internvlu.pipeline.quantization import module_nbytes

    def qbytes(pipe) -> int:
        return sum(module_nbytes(m) for m in (pipe.vlm, pipe.generation_decoder))

    ref_img = image(base)
    ref_forward, ref_decode = speed(base)
    trim_heap()
    table.add(
        args.model,
        dtype,
        "none",
        pc.gib(qbytes(base)),
        pc.gib(pc.rss_bytes()),
        0.0,
        0.0,
        0.0,
        round(ref_forward, 3),
        round(ref_decode, 2),
    )
    del base
    for mode in args.quant_modes:
        trim_heap()
        pipe = pc.load(args.model, dtype, args.device)
        try:
            pipe.quantize(mode)
        except RuntimeError as exc:
            table.add(args.model, dtype, mode, f"unsupported: {exc}"[:80], "", "", "", "", "", "")
            continue
        trim_heap()
        rss = pc.rss_bytes()
        v, h = _outputs(pipe, inputs)
        img = image(pipe)
        forward, decode = speed(pipe)
        table.add(
            args.model,
            dtype,
            mode,
            pc.gib(qbytes(pipe)),
            pc.gib(rss),
            round(_rel(v, ref_v), 4),
            round(_rel(h, ref_h), 4),
            round(float(np.abs(img - ref_img).mean()), 2),
            round(forward, 3),
            round(decode, 2),
        )
        del pipe


# ---------------------------------------------------------------------------------------- offload
def bench_offload(args: argparse.Namespace, dtype: str, table: pc.Table) -> None:
    if not args.device.startswith("cuda"):
        table.add(args.model, dtype, "skipped: offload needs a CUDA device", "", "", "")
        return
    size = args.sizes[0]
    for mode in ("none", "model", "sequential"):
        pipe = pc.load(args.model, dtype, "cpu" if mode != "none" else args.device)
        if mode == "model":
            pipe.enable_model_cpu_offload(device=args.device)
        elif mode == "sequential":
            pipe.enable_sequential_cpu_offload(device=args.device)
        torch.cuda.empty_cache()
        with pc.peak_vram(args.device) as vram, pc.timed(args.device, args.clock) as t:
            pipe.generate(PROMPT, height=size, width=size, num_inference_steps=args.steps, seed=0)
        table.add(
            args.model, dtype, mode, pc.gib(vram.get("peak")), round(t["s"], 2), round(t["s"] / args.steps, 3)
        )
        del pipe
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------- tiling
def bench_tiling(args: argparse.Namespace, dtype: str, table: pc.Table) -> None:
    from internvlu.pipeline import stages

    pipe = pc.load(args.model, dtype, args.device)
    for size in args.vae_sizes:
        z = torch.randn((1, 16, size // 8, size // 8), generator=torch.Generator().manual_seed(0))
        results = {}
        for tiled in (False, True):
            if tiled:
                pipe.enable_vae_tiling()
            else:
                pipe.disable_vae_tiling()
            trim_heap()
            with (
                pc.PeakRSS() as rss,
                pc.peak_vram(args.device) as vram,
                pc.timed(args.device, args.clock) as t,
            ):
                pixels = stages.decode_latents(pipe.vae, z.to(args.device))  # no_grad inside
            results[tiled] = pixels.float().cpu()
            table.add(
                args.model,
                dtype,
                size,
                "tiled 256/192" if tiled else "full",
                round(t["s"], 2),
                pc.gib(rss.peak_increase),
                pc.gib(vram.get("peak_increase")),
                round(float((results[tiled] - results[False]).abs().mean()) * 127.5, 3),
            )
        pipe.disable_vae_tiling()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny", help="tiny, mid, released, or a checkpoint folder")
    parser.add_argument("--dtype", nargs="+", default=["bf16"], choices=sorted(pc.DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["load", "quant", "offload", "tiling"],
        choices=["load", "quant", "offload", "tiling"],
    )
    parser.add_argument(
        "--loaders", nargs="+", default=["ours", "naive", "mmap"], choices=["ours", "naive", "mmap"]
    )
    parser.add_argument("--quant-modes", nargs="+", default=["int8_weight_only", "fp8_weight_only"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--vae-sizes", nargs="+", type=int, default=[512, 1024])
    pc.add_timing_arguments(parser)
    parser.add_argument("--out", default=None)
    parser.add_argument("--label", default="")
    parser.add_argument("--loader", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    pc.apply_timing_arguments(args)
    if args._child == "load":
        child_load(args)
        return
    tables = {
        "load": pc.Table(
            "Loading (fresh process each)",
            [
                "model",
                "dtype",
                "loader",
                "load s",
                "weights GiB",
                "peak RSS GiB",
                "x weights",
                "peak after use GiB",
                "x weights (after use)",
            ],
        ),
        "quant": pc.Table(
            f"Weight-only quantization of the LLM + MMDiT linears ({args.steps}-step t2i at "
            f"{args.sizes[0]} px)",
            [
                "model",
                "dtype",
                "mode",
                "LLM+MMDiT weights GiB",
                "RSS GiB",
                "velocity rel err",
                "LLM hidden rel err",
                "image mean abs diff",
                "MMDiT fwd s",
                "LLM decode tok/s",
            ],
        ),
        "offload": pc.Table(
            f"CPU offload ({args.steps}-step t2i at {args.sizes[0]} px)",
            ["model", "dtype", "offload", "peak VRAM GiB", "total s", "s/step"],
        ),
        "tiling": pc.Table(
            "VAE decode, tiled vs full",
            [
                "model",
                "dtype",
                "px",
                "decode",
                "s",
                "peak RSS increase GiB",
                "peak VRAM increase GiB",
                "mean abs diff (levels)",
            ],
        ),
    }
    for dtype in args.dtype:
        for section in args.sections:
            print(f"[bench] {args.model} {dtype} {section} ...", file=sys.stderr, flush=True)
            {"load": bench_load, "quant": bench_quant, "offload": bench_offload, "tiling": bench_tiling}[
                section
            ](args, dtype, tables[section])
    pc.report(
        [tables[s] for s in args.sections],
        args.out,
        {"script": "bench_memory", "label": args.label, "args": vars(args)},
    )


if __name__ == "__main__":
    main()
