"""The loading memory bound: peak RSS while loading a model in bf16 is at most 1.2x its weight bytes.

    python benchmarks/bench_load_bound.py                      # the full-size 4B shape (8.6 GB of bf16)
    python benchmarks/bench_load_bound.py --model mid --bound 1.2

Writes a random-weight checkpoint of the size once (bf16, official layout, 2 GB shards; ~8.6 GB of disk
for the 4B shape, under $INTERNVLU_BENCH_DIR or /tmp/internvlu-bench), then loads it with
`InternVLUPipeline.from_pretrained(..., torch_dtype=torch.bfloat16)` in a fresh process and reads the
kernel's peak-RSS counter (VmHWM, reset before loading). "after use" additionally reads every weight
once, as a first forward does. Needs about 1.2x the weight bytes of free memory (checked first).
Exit status 1 when the bound does not hold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf_common as pc


def available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="released", choices=["tiny", "mid", "released"])
    parser.add_argument("--bound", type=float, default=1.2)
    parser.add_argument(
        "--min-free-gb",
        type=float,
        default=None,
        help="refuse to run below this much available memory (default: 1.5x the weights)",
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoint for later runs")
    args = parser.parse_args(argv)

    from internvlu.presets import PRESETS, build_components

    if args.model != "tiny":
        vlm, dec, vae = build_components(PRESETS[args.model](), "meta")
        need = 2 * sum(p.numel() for m in (vlm, dec, vae) for p in m.parameters())
        floor = args.min_free_gb * 2**30 if args.min_free_gb else 1.5 * need
        free = available_bytes()
        if free is not None and free < floor:
            print(
                f"only {free / 2**30:.1f} GiB available, need {floor / 2**30:.1f} GiB: not running",
                file=sys.stderr,
            )
            return 2
    folder = pc.checkpoint(args.model, "bf16")
    cmd = [
        sys.executable,
        str(Path(__file__).with_name("bench_memory.py")),
        "--_child",
        "load",
        "--loader",
        "ours",
        "--model",
        args.model,
        "--dtype",
        "bf16",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    r = json.loads(lines[-1])
    peak = (r["peak"] - r["base"]) / r["weights"]
    after = (r["peak_after_use"] - r["base"]) / r["weights"]
    table = pc.Table(
        f"Loading memory bound ({args.model}, bf16)",
        [
            "weights GiB",
            "load s",
            "peak RSS increase GiB",
            "x weights",
            "after use GiB",
            "x weights (after use)",
            "bound",
            "holds",
        ],
    )
    holds = max(peak, after) <= args.bound
    table.add(
        pc.gib(r["weights"]),
        round(r["load_s"], 1),
        pc.gib(r["peak"] - r["base"]),
        round(peak, 3),
        pc.gib(r["peak_after_use"] - r["base"]),
        round(after, 3),
        args.bound,
        "yes" if holds else "NO",
    )
    pc.report([table], args.out, {"script": "bench_load_bound", "model": args.model, "raw": r})
    if args.model != "tiny" and not args.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
