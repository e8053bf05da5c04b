"""Training throughput: samples/s, tokens/s and peak memory per optimizer step, for the tiny and a mid-size model.

Random (fresh) weights and the built-in toy data; the full stage-3 objective (next-token + flow matching, every
parameter trained, AdamW). One warm-up step is excluded from the averages.

    python benchmarks/bench_train.py                       # tiny and mid on the best device, fp32
    python benchmarks/bench_train.py --sizes mid --steps 5 --batch 8 --dtype bfloat16 --checkpointing
    torchrun --nproc_per_node 2 benchmarks/bench_train.py --sizes tiny   # FSDP2 (gloo on CPU)

Peak memory is the CUDA peak allocated per step on GPUs, and the process's peak resident set size (a running
maximum) on CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

# image side used per model size (the mid model's ViT takes 224 px; its head generates 256 px)
SIZES = {"tiny": 64, "mid": 256}


def bench(
    size: str, steps: int, batch: int, micro: int, dtype: str, checkpointing: bool, compile_: bool
) -> dict:
    from internvlu.training.cli import resolve_config
    from internvlu.training.trainer import Trainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    with tempfile.TemporaryDirectory() as out:
        cfg = resolve_config("stage3-tiny", [
            f"output_dir={out}", f"model.arch={size}", "data.sources=toy:8", "data.resolution.mode=fixed",
            f"data.resolution.size={SIZES[size]}", f"train.steps={steps + 1}", f"train.global_batch_size={batch}",
            f"train.micro_batch_size={micro}", f"train.dtype={dtype}", "checkpoint.every=0",
            "checkpoint.export_final=false", "logging.progress=false", "logging.plot=false",
            f"parallel.activation_checkpointing={str(checkpointing).lower()}", f"parallel.compile={str(compile_).lower()}",
        ])  # fmt: skip
        trainer = Trainer(cfg)
        records = []
        for i in range(steps + 1):
            if trainer.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(trainer.device)
            rec = trainer.train_step()
            if i > 0:  # step 0 is warm-up (allocations, lazy init, compilation)
                records.append(rec)
            if trainer.env.is_main:
                print(f"  {size} step {i}{' (warm-up)' if i == 0 else ''}: {rec['samples_per_s']:.2f} samples/s, "
                      f"{rec['tokens_per_s']:.0f} tokens/s, {rec['step_time_s']:.3f} s, peak {rec['peak_mem_mb']:.0f} MiB",
                      flush=True)  # fmt: skip
        summary = {
            "size": size,
            "params_m": round(trainer.num_params / 1e6, 2),
            "device": str(trainer.device),
            "processes": world,
            "dtype": dtype,
            "global_batch": batch,
            "image_px": SIZES[size],
            "samples_per_s": sum(r["samples_per_s"] for r in records) / len(records),
            "tokens_per_s": sum(r["tokens_per_s"] for r in records) / len(records),
            "step_time_s": sum(r["step_time_s"] for r in records) / len(records),
            "peak_mem_mb": max(r["peak_mem_mb"] for r in records),
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="tiny,mid", help="comma-separated: tiny, mid")
    parser.add_argument(
        "--steps", type=int, default=3, help="measured steps per size (after one warm-up step)"
    )
    parser.add_argument("--batch", type=int, default=4, help="global batch size")
    parser.add_argument(
        "--micro", type=int, default=None, help="micro-batch per process (default: batch / processes)"
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    parser.add_argument("--compile", action="store_true", help="torch.compile every block")
    parser.add_argument("--json", action="store_true", help="print one JSON line per size at the end")
    args = parser.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    micro = args.micro or max(1, args.batch // world)
    results = []
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        if size not in SIZES:
            raise SystemExit(f"unknown size {size!r}; choose from {sorted(SIZES)}")
        t0 = time.time()
        res = bench(size, args.steps, args.batch, micro, args.dtype, args.checkpointing, args.compile)
        res["wall_s"] = round(time.time() - t0, 1)
        results.append(res)
    if os.environ.get("RANK", "0") == "0":
        print(f"\n{'size':6s} {'params':>8s} {'device':>7s} {'dtype':>9s} {'batch':>5s} {'samples/s':>10s} "
              f"{'tokens/s':>10s} {'s/step':>8s} {'peak MiB':>9s}")  # fmt: skip
        for r in results:
            print(f"{r['size']:6s} {r['params_m']:7.2f}M {r['device']:>7s} {r['dtype']:>9s} {r['global_batch']:5d} "
                  f"{r['samples_per_s']:10.2f} {r['tokens_per_s']:10.0f} {r['step_time_s']:8.3f} {r['peak_mem_mb']:9.0f}")  # fmt: skip
        if args.json:
            for r in results:
                print(json.dumps(r))
    from internvlu.training.parallelize import shutdown_distributed

    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
