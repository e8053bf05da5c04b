"""`internvlu train --recipe NAME [key=value ...]`: the command-line face of the training package.

Examples:
    internvlu train --list
    internvlu train --recipe tiny data.sources=my_data/train.jsonl output_dir=runs/mine
    internvlu train --recipe stage1 model.path=/ckpt/InternVL-U data.sources=shards/ --print-config
    torchrun --nproc_per_node 8 -m internvlu train --recipe stage3 model.path=... data.sources=[...]
    internvlu train --export runs/mine/checkpoints/step-00000030 --out runs/mine/export-30
    internvlu train --recipe stage2 model.path=... data.sources=[...] data.latent_cache=cache/ --precompute-latents
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Mount `train` on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune (recipes: stage1/2/3, their -tiny variants, LoRA)",
        description=(__doc__ or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--recipe", help="recipe name (see --list)")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. optim.lr=1e-4"
    )
    p.add_argument("--list", action="store_true", help="list the recipes and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument(
        "--precompute-latents",
        action="store_true",
        help="encode every target/reference image of data.sources into data.latent_cache and exit",
    )
    p.add_argument("--export", metavar="CHECKPOINT", help="export a training checkpoint folder and exit")
    p.add_argument("--out", help="output folder of --export (official inference layout)")
    p.add_argument("--export-dtype", default="float32", choices=("float32", "bfloat16"))
    p.set_defaults(func=run_train)
    return p


def resolve_config(recipe: str, overrides: list[str]):
    from internvlu.training.config import ModelArch, apply_overrides
    from internvlu.training.model_factory import arch_preset
    from internvlu.training.recipes import get_recipe

    def presets(tp: type, name: str) -> Any:
        if tp is ModelArch:
            return arch_preset(name)
        raise ValueError(f"no named presets for {tp.__name__}")

    config = apply_overrides(get_recipe(recipe), overrides, presets=presets)
    return config.validate()


def run_train(args: argparse.Namespace) -> int:
    """Entry point of `internvlu train`; returns the exit code."""
    if args.list:
        from internvlu.embedded.recipe import PIPELINE_RECIPES
        from internvlu.training.recipes import list_recipes

        docs = {
            **list_recipes(),
            **{n: (f.__doc__ or "").strip().splitlines()[0] for n, f in PIPELINE_RECIPES.items()},
        }
        for name, doc in sorted(docs.items()):
            print(f"{name:18s} {doc}")
        return 0
    if args.export:
        if not args.out:
            raise ValueError("--export needs --out FOLDER")
        from internvlu.training.trainer import export_checkpoint

        print(export_checkpoint(args.export, args.out, args.export_dtype))
        return 0
    if not args.recipe:
        raise ValueError("give --recipe NAME (see internvlu train --list)")
    from internvlu.embedded.recipe import PIPELINE_RECIPES

    if args.recipe in PIPELINE_RECIPES:
        return _run_pipeline_recipe(args)
    config = resolve_config(args.recipe, list(args.overrides))
    if args.print_config:
        print(config.to_json())
        return 0
    if args.precompute_latents:
        from internvlu.training.precompute import precompute_latents

        print(json.dumps(precompute_latents(config), indent=2))
        return 0
    from internvlu.training.parallelize import shutdown_distributed
    from internvlu.training.trainer import Trainer

    try:
        result = Trainer(config).train()
    finally:
        shutdown_distributed()
    last = result.history[-1] if result.history else {}
    summary = {
        "step": result.step,
        "loss": last.get("loss"),
        "loss_ntp": last.get("loss_ntp"),
        "loss_flow": last.get("loss_flow"),
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "export": str(result.export) if result.export else None,
    }
    if os.environ.get("RANK", "0") == "0":  # one summary line per run, from the first process
        print(json.dumps(summary))
    return 0


def _run_pipeline_recipe(args: argparse.Namespace) -> int:
    """Multi-step recipes (synthesis -> tokenizer -> VAE -> stages -> eval), e.g. the embedded `shapes-tiny`."""
    from internvlu.embedded.recipe import config_to_dict, resolve_shapes_config, run_shapes_recipe

    if args.precompute_latents:
        raise ValueError(f"--precompute-latents is part of recipe {args.recipe!r} itself")
    config = resolve_shapes_config(args.recipe, list(args.overrides))
    if args.print_config:
        print(json.dumps(config_to_dict(config), indent=2))
        return 0
    card = run_shapes_recipe(config, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    if "stopped_after" in card:
        print(json.dumps({"stopped_after": card["stopped_after"], "output_dir": config.output_dir}))
        return 0
    print(
        json.dumps(
            {
                "model": str(Path(config.output_dir) / "model"),
                "minutes": card["training_minutes"],
                "scores": card["scores"]["geneval"]
                | {k: card["scores"][k] for k in ("vqa", "edit", "think", "think_off")},
            }
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m internvlu.training.cli ...` (same as `internvlu train ...`)."""
    parser = argparse.ArgumentParser(prog="internvlu")
    sub = parser.add_subparsers(dest="command")
    add_train_parser(sub)
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"internvlu train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
