"""`internvlu` command line: one subcommand per task, no model logic here.

Exit codes: 0 success, 2 bad usage or bad input (argparse and our ValueErrors), 3 checkpoint
problems, 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CHECKPOINT = 0, 1, 2, 3
DTYPES = ("float32", "bfloat16", "float16")


def _default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder in the official layout (local path)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
    p.add_argument("--dtype", default=None, choices=DTYPES, help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _add_image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--think", action="store_true", help="write a chain of thought first, then draw from it")
    p.add_argument("--height", type=int, default=None, help="output height in pixels")
    p.add_argument("--width", type=int, default=None, help="output width in pixels")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt")
    p.add_argument("--cfg", type=float, default=None, help="all_cfg_scale (default 4.5, think 3.5)")
    p.add_argument("--part-cfg", type=float, default=None, help="part_cfg_scale (default 2.0, think 1.5)")
    p.add_argument("--out", default="outputs", help="folder for the PNGs (never overwritten)")
    p.add_argument("--no-progress", action="store_true", help="hide the denoising progress bar")


def load_pipeline(args: argparse.Namespace):
    """Build the pipeline from --model/--device/--dtype."""
    import torch

    from .pipeline import InternVLUPipeline

    device = args.device or _default_device()
    dtype_name = args.dtype or ("float32" if device == "cpu" else "bfloat16")
    return InternVLUPipeline.from_pretrained(args.model, torch_dtype=getattr(torch, dtype_name), device=device)


def _unique_path(folder: Path, stem: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    i = 0
    while True:
        path = folder / f"{stem}-{i:04d}.png"
        if not path.exists():
            return path
        i += 1


def save_png(image, folder: Path, stem: str, metadata: dict[str, Any]) -> Path:
    """Save with prompt/seed/settings as PNG text chunks; never overwrite an existing file."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in metadata.items():
        info.add_text(f"internvlu:{key}", value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    path = _unique_path(folder, stem)
    tmp = path.with_suffix(".png.tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)
    return path


def cmd_info(args: argparse.Namespace) -> int:
    """Print the components, sizes and parameter counts of a checkpoint."""
    pipe = load_pipeline(args)
    report = {"model": str(args.model), "device": str(pipe.device), "dtype": str(pipe.dtype).replace("torch.", "")}
    for name in ("vlm", "generation_decoder", "vae"):
        module = getattr(pipe, name)
        report[f"{name}_params"] = sum(p.numel() for p in module.parameters())
    report["template"] = pipe.processor.template_name
    report["default_size"] = [pipe.generation_decoder.config.gen_image_height, pipe.generation_decoder.config.gen_image_width]
    print(json.dumps(report, indent=2))
    return EXIT_OK


def cmd_chat(args: argparse.Namespace) -> int:
    """Answer a question about zero or more images (streams the answer)."""
    pipe = load_pipeline(args)
    images = args.image or None
    kwargs = {"max_new_tokens": args.max_new_tokens, "seed": args.seed}
    if args.temperature is not None:
        kwargs.update(do_sample=True, temperature=args.temperature)
    for piece in pipe.stream_chat(args.prompt, images, **kwargs):
        print(piece, end="", flush=True)
    print()
    return EXIT_OK


def _draw(args: argparse.Namespace, images: list[str] | None) -> int:
    pipe = load_pipeline(args)
    if args.no_progress:
        pipe.set_progress_bar_config(disable=True)
    kwargs = dict(
        think=args.think, height=args.height, width=args.width, num_inference_steps=args.steps,
        num_images_per_prompt=args.num_images, all_cfg_scale=args.cfg, part_cfg_scale=args.part_cfg, seed=args.seed,
    )  # fmt: skip
    if images:
        result = pipe.edit(args.prompt, images, **kwargs)
    else:
        result = pipe.generate(args.prompt, **kwargs)
    if result.thought:
        print(f"thought: {result.thought}")
    meta = {"prompt": args.prompt, "model": str(args.model), **result.settings}
    if images:
        meta["inputs"] = images
    if result.thought:
        meta["thought"] = result.thought
    for image in result.images:
        print(save_png(image, Path(args.out), "edit" if images else "generate", meta))
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    """Text-to-image: draw what the prompt describes."""
    return _draw(args, None)


def cmd_edit(args: argparse.Namespace) -> int:
    """Edit one or more input images by instruction."""
    return _draw(args, args.image)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="internvlu", description="InternVL-U: understand, generate and edit images")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0], description=fn.__doc__)
        p.set_defaults(func=fn)
        return p

    p = add("info", cmd_info)
    _add_model_args(p)

    p = add("chat", cmd_chat)
    _add_model_args(p)
    p.add_argument("prompt", help="the question or instruction")
    p.add_argument("--image", action="append", default=[], help="input image path (repeat for several)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=None, help="sample with this temperature (default greedy)")

    p = add("generate", cmd_generate)
    _add_model_args(p)
    p.add_argument("prompt", help="what to draw")
    _add_image_args(p)

    p = add("edit", cmd_edit)
    _add_model_args(p)
    p.add_argument("prompt", help="the edit instruction")
    p.add_argument("--image", action="append", required=True, help="input image path (repeat for several)")
    _add_image_args(p)

    _mount_optional(sub)
    return parser


def _mount_optional(sub: Any) -> None:
    """Subcommands owned by other modules (synthesis, training, evaluation, serving)."""
    try:
        from .synthesis.cli import add_synth_parser
    except ImportError:
        return
    add_synth_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return EXIT_OK
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from .checkpoint.io import CheckpointError

    try:
        return int(args.func(args) or 0)
    except CheckpointError as exc:
        print(f"internvlu: checkpoint error: {exc}", file=sys.stderr)
        return EXIT_CHECKPOINT
    except FileNotFoundError as exc:
        print(f"internvlu: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError) as exc:
        print(f"internvlu: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
