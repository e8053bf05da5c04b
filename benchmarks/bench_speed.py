"""Speed of every mode, with each optimisation switched off and on (random weights).

    python benchmarks/bench_speed.py --model mid --dtype fp32 bf16 --sizes 256 512 --steps 20
    python benchmarks/bench_speed.py --model released --dtype bf16 --device cuda --out bench.json
    python benchmarks/bench_speed.py --model tiny --sections t2i --variants optimized all_off --repeat 3

Sections (each prints a table; --out appends everything to a JSON file for comparing runs):
- understand: one 448 px image + a question: prefill ms (processor + ViT + LLM prefill, until the first
  token) and decode tokens/s (forced length, `min_new_tokens`; timed token by token with a streamer).
- t2i: text-to-image per size: seconds per denoising step and per image, for each variant of the
  speed switches (see below).
- edit: one input image, same variants.
- think: think mode end to end with a forced thought length, KV reuse on and off.
- compile (opt-in, --compile): the MMDiT blocks under torch.compile: first call and steady state.

Variants: "optimized" (the defaults), "cond_per_step" (VLM conditioning recomputed every step),
"no_batching" (one MMDiT call per guidance block), "no_dedupe" (identical guidance rows computed
twice), "all_off" (all three: the naive loop), "mmap_weights" (weights left memory-mapped at unaligned
offsets, as a plain safetensors load leaves them; CPU only). Variants run round-robin and each keeps its
fastest of --repeat rounds (the machine may be shared); "cpu_s" is the process CPU time of that run
(it includes OpenMP spin-waiting, so it also grows when the machine is oversubscribed).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf_common as pc

VARIANTS: dict[str, dict[str, bool]] = {
    "optimized": {},
    "cond_per_step": {"condition_once": False},
    "no_batching": {"batch_guidance": False},
    "no_dedupe": {"dedupe_guidance": False},
    "all_off": {"condition_once": False, "batch_guidance": False, "dedupe_guidance": False},
    "mmap_weights": {},
}
# What the time columns measure: wall time, or (--clock cpu) this process's CPU time, which on a shared,
# oversubscribed machine tracks the work done far better than wall time (use it with --threads 1, where
# no OpenMP thread spins while waiting for another).
CLOCK: Callable[[], float] = time.perf_counter
PROMPT = "A red cube to the left of two blue balls on a wooden table, soft light, photograph"
EDIT_PROMPT = "Make the cube green and add a yellow star above it"
THINK_PROMPT = "Draw the animal that is the national symbol of Australia, standing in a desert"
QUESTION = "Describe this image in detail: objects, colours, positions and the background."


# Columns shared by the text-to-image and editing tables.
IMAGE_COLUMNS = ["model", "dtype", "px", "variant", "s/step", "total s", "total s @report-steps", "VLM cond s",
                 "cpu s", "peak RSS GiB", "peak VRAM GiB"]  # fmt: skip


def test_image(size: int = 448, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@contextlib.contextmanager
def probe(pipe) -> Iterator[dict[str, list[float]]]:
    """Time the denoising loop, the conditioning and the thought generation inside pipeline calls."""
    import internvlu.pipeline.pipeline as module

    times: dict[str, list[float]] = {"denoise": [], "condition": [], "thought": []}
    device = pipe.device

    def wrap(fn: Callable, key: str) -> Callable:
        def inner(*args: Any, **kwargs: Any) -> Any:
            pc.sync(device)
            start = CLOCK()
            out = fn(*args, **kwargs)
            pc.sync(device)
            times[key].append(CLOCK() - start)
            return out

        return inner

    original_denoise = module.denoise
    module.denoise = wrap(original_denoise, "denoise")
    pipe._condition = wrap(pipe._condition, "condition")
    pipe._text_generate = wrap(pipe._text_generate, "thought")
    try:
        yield times
    finally:
        module.denoise = original_denoise
        del pipe._condition, pipe._text_generate


def best_of(repeat: int, device: str, fn: Callable[[], Any]) -> dict[str, Any]:
    """Run `fn` `repeat` times; the fastest run's time (on CLOCK), CPU time, probe times and peak memory."""
    best: dict[str, Any] | None = None
    for _ in range(repeat):
        with pc.PeakRSS() as rss, pc.peak_vram(device) as vram:
            cpu0 = time.process_time()
            pc.sync(device)
            start = CLOCK()
            extra = fn() or {}
            pc.sync(device)
            seconds = CLOCK() - start
            cpu = time.process_time() - cpu0
        run = {"s": seconds, "cpu_s": cpu, "rss_peak": rss.peak, "vram_peak": vram.get("peak"), **extra}
        if best is None or run["s"] < best["s"]:
            best = run
    assert best is not None
    return best


@contextlib.contextmanager
def mmap_weights(pipe, folder: Path) -> Iterator[None]:
    """Temporarily swap the VLM and MMDiT weights for memory-mapped views of the checkpoint files (what a
    plain `safetensors.safe_open` load on CPU gives when the stored dtype is the target dtype: tensors at
    arbitrary byte offsets of the file)."""
    from safetensors import safe_open

    from internvlu.checkpoint.io import weight_files

    saved: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        for name in ("vlm", "generation_decoder"):
            params = dict(getattr(pipe, name).named_parameters())
            for path in weight_files(folder / name):
                with safe_open(str(path), framework="pt", device="cpu") as fh:
                    for key in fh.keys():
                        tensor = fh.get_tensor(key)
                        if key in params and tensor.dtype == params[key].dtype:
                            saved.append((params[key], params[key].data))
                            params[key].data = tensor
        yield
    finally:
        for param, data in saved:
            param.data = data


class TokenClock:
    """A transformers streamer that records when each new token arrives."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.stamps: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        if value.numel():  # the first put is the (empty) prompt when generating from embeddings
            self.stamps.append(CLOCK())

    def end(self) -> None:
        pass


def _stored_dtype(folder: Path) -> torch.dtype:
    from internvlu.checkpoint.io import iter_tensors, weight_files

    _, tensor = next(iter(iter_tensors(weight_files(folder / "generation_decoder")[:1])))
    return tensor.dtype


def bench_understand(pipe, args, dtype: str, table: pc.Table) -> None:
    image = test_image()
    n = args.decode_tokens

    def answer() -> dict[str, float]:
        clock = TokenClock(args.device)
        start = CLOCK()
        pipe._answer(QUESTION, image, None, {"max_new_tokens": n, "min_new_tokens": n}, streamer=clock)
        first, last = clock.stamps[0], clock.stamps[-1]
        return {"prefill": first - start, "decode": (len(clock.stamps) - 1) / max(last - first, 1e-9)}

    answer()  # warm-up
    runs = [best_of(1, args.device, answer) for _ in range(args.repeat)]
    prefill = min(r["prefill"] for r in runs)
    decode = max(r["decode"] for r in runs)
    table.add(
        args.model,
        dtype,
        "448px image + question",
        round(prefill * 1000, 1),
        round(decode, 2),
        n,
        pc.gib(runs[0]["rss_peak"]),
        pc.gib(runs[0]["vram_peak"]),
    )


def _image_call(pipe, args, size: int, steps: int, image: Image.Image | None, think: bool = False):
    def call() -> dict[str, Any]:
        with probe(pipe) as times:
            if think:
                pipe(
                    THINK_PROMPT,
                    generation_mode="text_image",
                    max_new_tokens=args.think_tokens,
                    min_new_tokens=args.think_tokens,
                    height=size,
                    width=size,
                    num_inference_steps=steps,
                    generator=torch.Generator().manual_seed(0),
                )
            elif image is None:
                pipe.generate(PROMPT, height=size, width=size, num_inference_steps=steps, seed=0)
            else:
                pipe.edit(
                    EDIT_PROMPT, images=image, height=size, width=size, num_inference_steps=steps, seed=0
                )
        return {k: sum(v) for k, v in times.items()}

    return call


def bench_images(pipe, args, dtype: str, table: pc.Table, section: str, folder: Path) -> None:
    image = test_image() if section == "edit" else None
    variants = list(args.variants)
    if "mmap_weights" in variants and (
        args.device != "cpu" or section != "t2i" or pipe.dtype != _stored_dtype(folder)
    ):
        # Only where a plain load would map the file: CPU, and the checkpoint stored in this dtype.
        variants.remove("mmap_weights")
    for size in args.sizes:
        _image_call(pipe, args, size, 1, image)()  # warm-up (allocator, kernels)
        best: dict[str, dict[str, Any]] = {}
        # Round-robin over the variants: on a shared machine a slow spell then hits every variant once,
        # and the minimum over the rounds is kept.
        for _ in range(args.repeat):
            for variant in variants:
                pipe.set_performance(**{k: True for k in vars(pipe.performance)})
                pipe.set_performance(**VARIANTS[variant])
                swap = mmap_weights(pipe, folder) if variant == "mmap_weights" else contextlib.nullcontext()
                with swap:
                    run = best_of(1, args.device, _image_call(pipe, args, size, args.steps, image))
                if variant not in best or run["s"] < best[variant]["s"]:
                    best[variant] = run
        pipe.set_performance(**{k: True for k in vars(pipe.performance)})
        for variant in variants:
            run = best[variant]
            table.add(
                args.model,
                dtype,
                size,
                variant,
                *step_cells(run, args),
                round(run["condition"], 3),
                round(run["cpu_s"], 1),
                pc.gib(run["rss_peak"]),
                pc.gib(run["vram_peak"]),
            )


def step_cells(run: dict[str, Any], args: argparse.Namespace) -> tuple[float, float, float]:
    """The "s/step", "total s" and "total s @report-steps" cells of a timed image call."""
    return round(run["denoise"] / args.steps, 3), round(run["s"], 2), round(at_steps(run, args), 2)


def at_steps(run: dict[str, Any], args: argparse.Namespace) -> float:
    """The run's total time rescaled to --report-steps denoising steps (measured when they are equal)."""
    return run["s"] + (args.report_steps - args.steps) * run["denoise"] / args.steps


def bench_think(pipe, args, dtype: str, table: pc.Table) -> None:
    size = args.sizes[0]
    _image_call(pipe, args, size, 1, None, think=True)()  # warm-up
    best: dict[bool, dict[str, Any]] = {}
    for _ in range(args.repeat):  # round-robin, as in bench_images
        for reuse in (False, True):
            pipe.set_performance(think_kv_reuse=reuse)
            run = best_of(1, args.device, _image_call(pipe, args, size, args.steps, None, think=True))
            if reuse not in best or run["s"] < best[reuse]["s"]:
                best[reuse] = run
    for reuse in (False, True):
        run = best[reuse]
        table.add(
            args.model,
            dtype,
            size,
            args.think_tokens,
            "kv_reuse" if reuse else "re-run",
            round(run["thought"], 2),
            round(run["condition"], 3),
            round(run["denoise"], 2),
            round(run["s"], 2),
            round(at_steps(run, args), 2),
            pc.gib(run["rss_peak"]),
            pc.gib(run["vram_peak"]),
        )
    pipe.set_performance(think_kv_reuse=True)


def bench_compile(pipe, args, dtype: str, table: pc.Table) -> None:
    size = args.sizes[0]
    call = _image_call(pipe, args, size, args.steps, None)
    eager = best_of(args.repeat, args.device, call)
    pipe.enable_compile(("generation_decoder",))
    try:
        first = best_of(1, args.device, call)
        steady = best_of(args.repeat, args.device, call)
    finally:
        pipe.disable_compile()
    for name, run in (("eager", eager), ("compile: first call", first), ("compile: steady", steady)):
        table.add(
            args.model,
            dtype,
            size,
            name,
            *step_cells(run, args),
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny", help="tiny, mid, released, or a checkpoint folder")
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=sorted(pc.DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--report-steps",
        type=int,
        default=20,
        help="also report totals rescaled to this many steps (measured s/step; for short runs on slow machines)",
    )
    parser.add_argument("--think-tokens", type=int, default=64)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["understand", "t2i", "edit", "think"],
        choices=["understand", "t2i", "edit", "think", "compile"],
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--compile", action="store_true", help="add the torch.compile section")
    pc.add_timing_arguments(parser)
    parser.add_argument("--out", default=None, help="append the results to this JSON file")
    parser.add_argument("--label", default="", help="a name for this run in the JSON file")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = pc.apply_timing_arguments(args)
    if args.compile and "compile" not in args.sections:
        args.sections.append("compile")

    tables = {
        "understand": pc.Table(
            "Understanding",
            [
                "model",
                "dtype",
                "input",
                "prefill ms",
                "decode tok/s",
                "tokens",
                "peak RSS GiB",
                "peak VRAM GiB",
            ],
        ),
        "t2i": pc.Table(
            f"Text-to-image ({args.steps} steps)",
            list(IMAGE_COLUMNS),
        ),
        "edit": pc.Table(
            f"Editing ({args.steps} steps, one 448 px input)",
            list(IMAGE_COLUMNS),
        ),
        "think": pc.Table(
            f"Think mode end to end ({args.steps} steps)",
            [
                "model",
                "dtype",
                "px",
                "thought tokens",
                "conditioning",
                "thought s",
                "VLM cond s",
                "denoise s",
                "total s",
                "total s @report-steps",
                "peak RSS GiB",
                "peak VRAM GiB",
            ],
        ),
        "compile": pc.Table(
            f"torch.compile of the MMDiT blocks ({args.steps} steps)",
            ["model", "dtype", "px", "mode", "s/step", "total s", "total s @report-steps"],
        ),
        "load": pc.Table("Load", ["model", "dtype", "load s", "weights GiB", "peak RSS increase GiB"]),
    }
    for dtype in args.dtype:
        folder = pc.checkpoint(args.model)
        with pc.PeakRSS() as rss, pc.timed(args.device) as t:
            pipe = pc.load(args.model, dtype, args.device)
        tables["load"].add(
            args.model, dtype, round(t["s"], 2), pc.gib(pc.weight_bytes(pipe)), pc.gib(rss.peak_increase)
        )
        for section in args.sections:
            print(f"[bench] {args.model} {dtype} {section} ...", file=sys.stderr, flush=True)
            if section == "understand":
                bench_understand(pipe, args, dtype, tables["understand"])
            elif section in ("t2i", "edit"):
                bench_images(pipe, args, dtype, tables[section], section, folder)
            elif section == "think":
                bench_think(pipe, args, dtype, tables["think"])
            elif section == "compile":
                bench_compile(pipe, args, dtype, tables["compile"])
        del pipe
    used = [tables["load"]] + [tables[s] for s in args.sections]
    pc.report(used, args.out, {"script": "bench_speed", "label": args.label, "args": vars(args)})


if __name__ == "__main__":
    main()
