"""Fewer denoising steps: the quality cost of the opt-in samplers and step caching against the 20-step default.

    python benchmarks/bench_fewer_steps.py --model /path/to/shapes-model --num 32
    python benchmarks/bench_fewer_steps.py                   # the embedded model (or $INTERNVLU_MODEL)
    python benchmarks/bench_fewer_steps.py --model mid --no-shapes --proxy-prompts 4   # random weights: proxy only

Each configuration is `sampler:steps[:cacheN]` ("default" is the checkpoint's DPM-Solver++ 2M; "cacheN"
adds a StepCache with interval N, warmup 4, cooldown 2). For each one it reports:
- the shapes-world scores (`internvlu.evaluation.shapes.evaluate_shapes`: GenEval-style overall, editing,
  think) and their difference to the baseline (the first configuration, by default default:20); this is
  the number that matters and needs a trained model, e.g. the embedded one;
- a proxy that needs no trained model: the PSNR of each configuration's images against the baseline's,
  for the same prompts and noise (higher = closer to the 20-step result);
- MMDiT calls per image and the wall time per image.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf_common as pc

DEFAULT_CONFIGS = [
    "default:20",
    "default:10",
    "dpm++3m:10",
    "unipc:10",
    "unipc3:10",
    "unipc3:8",
    "default:20:cache2",
    "default:20:cache3",
]
PROXY_PROMPTS = [
    "a red circle above a blue square",
    "two green triangles on a white background",
    "a large yellow star to the left of a small purple diamond",
    "three orange squares in a row",
    "a black circle inside a big pink square",
    "the word OPEN in blue letters",
    "a brown triangle below two red circles",
    "a small gray diamond in the top right corner",
]


def parse_config(text: str) -> dict[str, Any]:
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"bad configuration {text!r}: use sampler:steps or sampler:steps:cacheN")
    name, steps = parts[0], int(parts[1])
    order = None
    if name == "unipc3":
        name, order = "unipc", 3
    cache = None
    if len(parts) == 3:
        if not parts[2].startswith("cache"):
            raise SystemExit(f"bad configuration {text!r}: the third field must be cacheN")
        cache = int(parts[2][len("cache") :])
    return {"label": text, "name": name, "order": order, "steps": steps, "cache": cache}


def apply(pipe, cfg: dict[str, Any]) -> int:
    """Set the sampler; returns the MMDiT calls per image."""
    from internvlu.sampling import StepCache

    cache = StepCache(interval=cfg["cache"], warmup=4, cooldown=2) if cfg["cache"] else None
    pipe.set_sampler(cfg["name"], order=cfg["order"], step_cache=cache)
    return cache.model_calls(cfg["steps"]) if cache else cfg["steps"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def proxy_images(pipe, cfg: dict[str, Any], prompts: list[str], size: int) -> tuple[list[np.ndarray], float]:
    images = []
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        res = pipe.generate(prompt, height=size, width=size, num_inference_steps=cfg["steps"], seed=1000 + i)
        images.append(np.asarray(res.image))
    return images, (time.perf_counter() - start) / max(len(prompts), 1)


def pair(scores: dict[str, float], baseline: dict[str, float] | None, key: str) -> list[Any]:
    """[score, score - baseline score] for one metric, or dashes without a shapes eval."""
    if not scores or baseline is None:
        return ["-", "-"]
    return [round(scores[key], 3), round(scores[key] - baseline[key], 3)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint folder (default: $INTERNVLU_MODEL, then the "
        "embedded model), or tiny / mid / released for random weights",
    )
    parser.add_argument("--dtype", default="fp32", choices=sorted(pc.DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--num", type=int, default=16, help="shapes tasks per category / kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-shapes", action="store_true", help="skip the shapes eval (proxy only)")
    parser.add_argument("--proxy-prompts", type=int, default=8)
    parser.add_argument(
        "--proxy-size", type=int, default=None, help="proxy image size (default: the model's)"
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)

    from internvlu import InternVLUPipeline

    world = None  # the shapes world to score in: the trained model's own (its card), else the generator's default
    if args.model in pc.SIZES:
        pipe = pc.load(args.model, args.dtype, args.device)
        model_name = args.model
    else:
        from internvlu.defaults import default_model_path

        path = Path(args.model) if args.model else default_model_path()
        pipe = InternVLUPipeline.from_pretrained(path, torch_dtype=pc.DTYPES[args.dtype], device=args.device)
        pipe.set_progress_bar_config(disable=True)
        model_name = str(path)
        from internvlu.embedded.card import card_world

        world = card_world(path)
    configs = [parse_config(c) for c in args.configs]
    size = args.proxy_size or int(pipe.generation_decoder.config.gen_image_height)
    prompts = (PROXY_PROMPTS * (1 + args.proxy_prompts // len(PROXY_PROMPTS)))[: args.proxy_prompts]

    evaluate = None
    if not args.no_shapes:
        try:
            from internvlu.evaluation.shapes import evaluate_shapes as evaluate
        except ImportError as exc:
            print(f"[bench] shapes eval unavailable ({exc}); proxy only", file=sys.stderr)

    table = pc.Table(
        f"Fewer steps vs {configs[0]['label']} ({model_name}, {args.dtype})",
        [
            "config",
            "MMDiT calls",
            "s/image",
            "proxy PSNR dB",
            "GenEval overall",
            "Δ GenEval",
            "edit",
            "Δ edit",
            "think",
            "Δ think",
        ],
    )
    baseline_images: list[np.ndarray] | None = None
    baseline_scores: dict[str, float] | None = None
    for cfg in configs:
        calls = apply(pipe, cfg)
        print(f"[bench] {cfg['label']} ...", file=sys.stderr, flush=True)
        images, per_image = proxy_images(pipe, cfg, prompts, size)
        if baseline_images is None:
            baseline_images = images
        quality = float(np.mean([min(psnr(a, b), 99.0) for a, b in zip(images, baseline_images)]))
        scores: dict[str, float] = {}
        if evaluate is not None:
            res = evaluate(
                pipe,
                num=args.num,
                seed=args.seed,
                batch_size=args.batch_size,
                num_inference_steps=cfg["steps"],
                think_off=False,
                config=world,
            )
            scores = {"geneval": res["geneval"]["overall"], "edit": res["edit"], "think": res["think"]}
            if baseline_scores is None:
                baseline_scores = scores

        table.add(
            cfg["label"],
            calls,
            round(per_image, 2),
            round(quality, 2),
            *pair(scores, baseline_scores, "geneval"),
            *pair(scores, baseline_scores, "edit"),
            *pair(scores, baseline_scores, "think"),
        )
    pipe.set_sampler()
    pc.report(
        [table],
        args.out,
        {"script": "bench_fewer_steps", "label": args.label, "model": model_name, "args": vars(args)},
    )


if __name__ == "__main__":
    main()
