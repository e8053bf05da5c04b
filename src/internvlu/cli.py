"""`internvlu` command line: one subcommand per task; options come from the typed command functions
below (see `cli_args`), so `--help` is their signatures and docstrings. No model logic here.

Exit codes: 0 success; 1 unexpected error; 2 bad usage or bad input (argparse, ValueError/TypeError,
missing files); 3 checkpoint problem; 4 batch finished but some lines failed; 5 an optional
dependency is missing (e.g. `pip install internvlu[serve]`); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .cli_args import add_command
from .serving.codec import save_png

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CHECKPOINT, EXIT_PARTIAL, EXIT_MISSING_DEP = 0, 1, 2, 3, 4, 5
DTYPES = ("float32", "bfloat16", "float16")
DType = Literal["float32", "bfloat16", "float16"]
API_KEY_ENV = "INTERNVLU_API_KEY"

__all__ = [
    "EXIT_CHECKPOINT",
    "EXIT_ERROR",
    "EXIT_MISSING_DEP",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "build_parser",
    "load_pipeline",
    "main",
    "save_png",
]  # fmt: skip


# ---------------------------------------------------------------------- option groups
@dataclass
class ModelOptions:
    """model options

    Attributes:
        model: checkpoint folder in the official layout (default: $INTERNVLU_MODEL, then the model
            embedded in the package)
        device: cpu, cuda, cuda:1 or mps (default: the best available)
        dtype: weights dtype (default: bfloat16 on GPUs, float32 on CPU)
    """

    model: str | None = None
    device: str | None = None
    dtype: DType | None = None

    def path(self) -> Path:
        from .defaults import default_model_path

        return Path(self.model).expanduser() if self.model else default_model_path()


@dataclass
class DrawOptions:
    """image options

    Attributes:
        think: write a chain of thought first, then draw from it
        height: output height in pixels (default: the model's; edits: from the first input image)
        width: output width in pixels (give both or neither)
        steps: denoising steps
        num_images: images per prompt
        cfg: guidance on the full condition, all_cfg_scale (default 4.5; think 3.5)
        part_cfg: guidance on the image condition, part_cfg_scale (default 2.0; think 1.5)
        max_thought_tokens: longest chain of thought in think mode
        seed: random seed (same seed and settings, same images)
        preserve: edits: keep the pixels the instruction does not act on (an automatic change mask):
            auto = the model's default (on for the embedded model, off for the release), on, off
        out: folder for the PNGs (files are never overwritten)
        no_progress: hide the progress bars
    """

    think: bool = False
    height: int | None = None
    width: int | None = None
    steps: int = 20
    num_images: int = 1
    cfg: float | None = None
    part_cfg: float | None = None
    max_thought_tokens: int = 200
    seed: int = 0
    preserve: Literal["auto", "on", "off"] = "auto"
    out: str = "outputs"
    no_progress: bool = False


@dataclass
class BatchOptions:
    """batch mode

    Attributes:
        batch: JSONL file, one request per line (a JSON object with "prompt" and optional per-line
            settings, see the README); used instead of PROMPT
        results: JSONL file of results, one line per input line (default: BATCH with
            .results.jsonl); an existing one is resumed, never overwritten
        retry_failed: on resume, run again the lines whose earlier result was an error
    """

    batch: str | None = None
    results: str | None = None
    retry_failed: bool = False


# ---------------------------------------------------------------------- shared helpers
def default_device() -> str:
    """The best local device: CUDA, else Apple MPS, else CPU (also the `internvlu eval` default)."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _resolve_device_dtype(opts: ModelOptions) -> tuple[str, Any]:
    import torch

    device = opts.device or default_device()
    name = opts.dtype or ("float32" if device == "cpu" else "bfloat16")
    return device, getattr(torch, name)


def load_pipeline(opts: ModelOptions | argparse.Namespace):
    """Build the pipeline from the model options (--model/--device/--dtype)."""
    from .pipeline import InternVLUPipeline

    if isinstance(opts, argparse.Namespace):
        opts = ModelOptions(getattr(opts, "model", None), getattr(opts, "device", None), getattr(opts, "dtype", None))
    device, dtype = _resolve_device_dtype(opts)
    return InternVLUPipeline.from_pretrained(opts.path(), torch_dtype=dtype, device=device)


def _prompt_or_batch(prompt: str | None, batch: BatchOptions) -> None:
    if (prompt is None) == (batch.batch is None):
        raise ValueError("give either a PROMPT or --batch FILE (not both)")


def _batch_exit(summary: Any) -> int:
    print(json.dumps({"total": summary.total, "done_before": summary.done_before, "ok": summary.ok,
                      "failed": summary.failed, "failed_before": summary.failed_before}), file=sys.stderr)  # fmt: skip
    return EXIT_OK if summary.all_ok else EXIT_PARTIAL


# ---------------------------------------------------------------------- commands
def cmd_chat(
    prompt: str | None = None,
    *,
    model: ModelOptions,
    image: list[str],
    think: bool = False,
    max_new_tokens: int = 512,
    temperature: float | None = None,
    seed: int = 0,
    system_prompt: str | None = None,
    batch: BatchOptions,
    no_progress: bool = False,
) -> int:
    """Answer a question about zero or more images (streams the answer).

    With --think the model reasons first; the thought goes to stderr and the answer to stdout.

    Args:
        prompt: the question or instruction
        image: input image path (repeat for several)
        think: reason step by step first, then answer
        max_new_tokens: longest answer in tokens
        temperature: sample with this temperature (default: greedy)
        seed: random seed for sampling
        system_prompt: replace the model's system prompt
        no_progress: hide the batch progress bar
    """
    from .serving.thinking import ThinkSplitter, split_thought, think_system_prompt

    _prompt_or_batch(prompt, batch)
    pipe = load_pipeline(model)

    def kwargs_for(think_: bool, max_tokens: int, temp: float | None, seed_: int, system: str | None) -> dict:
        kw: dict[str, Any] = {"max_new_tokens": max_tokens, "seed": seed_}
        if temp is not None:
            kw.update(do_sample=True, temperature=temp)
        if think_ or system:
            kw["system_prompt"] = think_system_prompt(system) if think_ else system
        return kw

    if batch.batch is not None:
        from .cli_batch import check_keys, resolve_paths, run_batch

        base = Path(batch.batch).parent
        allowed = {"id", "prompt", "image", "images", "think", "max_new_tokens", "temperature", "seed", "system_prompt"}

        def handle(req: dict[str, Any], line: int) -> dict[str, Any]:
            check_keys(req, allowed, line)
            if not isinstance(req.get("prompt"), str):
                raise TypeError(f"line {line}: 'prompt' must be a string, got {req.get('prompt')!r}")
            paths = resolve_paths(req.get("images", req.get("image", [])), base, "images", line)
            t = bool(req.get("think", think))
            kw = kwargs_for(t, req.get("max_new_tokens", max_new_tokens), req.get("temperature", temperature),
                            req.get("seed", seed), req.get("system_prompt", system_prompt))  # fmt: skip
            text = pipe.chat(req["prompt"], paths or None, **kw).text
            thought, answer = split_thought(text) if t else (None, text)
            return {"text": answer, **({"thought": thought} if t else {})}

        return _batch_exit(run_batch(Path(batch.batch), batch.results and Path(batch.results), handle,
                                     retry_failed=batch.retry_failed, progress=not no_progress, desc="chat"))  # fmt: skip

    splitter = ThinkSplitter() if think else None
    shown_thought = False
    for piece in pipe.stream_chat(prompt, image or None, **kwargs_for(think, max_new_tokens, temperature, seed,
                                                                      system_prompt)):  # fmt: skip
        thought, reply = splitter.feed(piece) if splitter else ("", piece)
        if thought:
            if not shown_thought:
                print("thought: ", end="", file=sys.stderr)
                shown_thought = True
            print(thought, end="", file=sys.stderr, flush=True)
        print(reply, end="", flush=True)
    if splitter:
        thought, reply = splitter.close()
        print(thought, end="", file=sys.stderr)
        print(reply, end="")
        if shown_thought:
            print(file=sys.stderr)
    print()
    return EXIT_OK


def _draw_kwargs(opts: DrawOptions, overrides: dict[str, Any]) -> dict[str, Any]:
    get = lambda key: overrides.get(key, getattr(opts, key))
    return {
        "think": bool(get("think")), "height": get("height"), "width": get("width"),
        "num_inference_steps": get("steps"), "num_images_per_prompt": get("num_images"),
        "all_cfg_scale": get("cfg"), "part_cfg_scale": get("part_cfg"), "seed": get("seed"),
        "max_thought_tokens": get("max_thought_tokens"), "preserve_unedited": _preserve_flag(get("preserve")),
    }  # fmt: skip


def _preserve_flag(value: Any) -> bool | None:
    """--preserve / a batch line's "preserve": auto -> None (the model's default), on -> True, off -> False."""
    choices = {"auto": None, "on": True, "off": False}
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"preserve must be one of {sorted(choices)}, got {value!r}")
    return choices[value]


def _draw(prompt: str | None, images: list[str], opts: DrawOptions, model: ModelOptions, batch: BatchOptions,
          mode: str) -> int:  # fmt: skip
    _prompt_or_batch(prompt, batch)
    pipe = load_pipeline(model)
    if opts.no_progress:
        pipe.set_progress_bar_config(disable=True)
    model_name = str(model.path())

    def run(prompt_: str, images_: list[str], overrides: dict[str, Any]) -> tuple[list[Path], Any]:
        kwargs = _draw_kwargs(opts, overrides)
        result = pipe.edit(prompt_, images_, **kwargs) if images_ else pipe.generate(prompt_, **kwargs)
        meta = {"prompt": prompt_, "model": model_name, "mode": mode, **result.settings}
        if images_:
            meta["inputs"] = images_
        if result.thought:
            meta["thought"] = result.thought
        out = Path(overrides.get("out", opts.out))
        return [save_png(im, out, mode, meta) for im in result.images], result

    if batch.batch is not None:
        from .cli_batch import check_keys, resolve_paths, run_batch

        base = Path(batch.batch).parent
        allowed = {"id", "prompt", "think", "height", "width", "steps", "num_images", "cfg", "part_cfg", "seed",
                   "max_thought_tokens", "preserve", *(("image", "images") if mode == "edit" else ())}  # fmt: skip

        def handle(req: dict[str, Any], line: int) -> dict[str, Any]:
            check_keys(req, allowed, line)
            if not isinstance(req.get("prompt"), str):
                raise TypeError(f"line {line}: 'prompt' must be a string, got {req.get('prompt')!r}")
            paths = resolve_paths(req.get("images", req.get("image", [])), base, "images", line)
            if mode == "edit" and not paths:
                raise ValueError(f"line {line}: an edit needs 'image' or 'images'")
            overrides = {k: v for k, v in req.items() if k not in ("id", "prompt", "image", "images")}
            files, result = run(req["prompt"], paths, overrides)
            record: dict[str, Any] = {"paths": [str(p) for p in files], "seed": result.settings.get("seed")}
            if result.thought:
                record["thought"] = result.thought
            return record

        summary = run_batch(Path(batch.batch), batch.results and Path(batch.results), handle,
                            retry_failed=batch.retry_failed, progress=not opts.no_progress, desc=mode)  # fmt: skip
        return _batch_exit(summary)

    files, result = run(prompt, images, {})
    if result.thought:
        print(f"thought: {result.thought}")
    for path in files:
        print(path)
    return EXIT_OK


def cmd_generate(prompt: str | None = None, *, model: ModelOptions, draw: DrawOptions, batch: BatchOptions) -> int:
    """Text-to-image: draw what the prompt describes.

    PNGs carry the prompt, seed and settings as PNG text metadata (keys "internvlu:*").

    Args:
        prompt: what to draw
    """
    return _draw(prompt, [], draw, model, batch, "generate")


def cmd_edit(prompt: str | None = None, *, model: ModelOptions, image: list[str], draw: DrawOptions,
             batch: BatchOptions) -> int:  # fmt: skip
    """Edit one or more input images by instruction.

    Args:
        prompt: the edit instruction
        image: input image path (repeat for several; required unless --batch gives them per line)
    """
    if batch.batch is None and not image:
        raise ValueError("edit needs at least one --image")
    return _draw(prompt, image, draw, model, batch, "edit")


def cmd_serve(
    *,
    model: ModelOptions,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: list[str],
    model_name: str = "internvlu",
    allow_remote_images: bool = False,
    max_batch_size: int = 4,
    batch_wait_ms: float = 10.0,
    max_queue: int = 64,
    timeout: float = 600.0,
    max_body_mb: float = 25.0,
    max_image_pixels: int = 2048 * 2048,
    max_n: int = 4,
    max_steps: int = 100,
    max_tokens: int = 4096,
    no_ui: bool = False,
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info",
) -> int:
    """Serve the model over an OpenAI-compatible HTTP API, with a web UI at /ui/.

    Routes: POST /v1/chat/completions, /v1/images/generations, /v1/images/edits; GET /v1/models,
    /health, /metrics. Stops gracefully on Ctrl-C / SIGTERM (accepted requests finish first).

    Args:
        host: address to listen on (keep 127.0.0.1 unless the machine is yours alone)
        port: TCP port
        api_key: accepted API key (repeat for several; also $INTERNVLU_API_KEY, comma-separated); none = open
        model_name: model id reported by /v1/models and expected in requests
        allow_remote_images: let chat requests fetch http(s) image URLs (default: data URLs only)
        max_batch_size: compatible requests run together in one model call
        batch_wait_ms: wait this long for compatible requests before running a partial batch
        max_queue: waiting requests; more get HTTP 429
        timeout: seconds before a request gets HTTP 504
        max_body_mb: largest request body in MiB (HTTP 413 beyond)
        max_image_pixels: largest input image (413) and output size (400) in pixels
        max_n: most images per request
        max_steps: most denoising steps per request
        max_tokens: most answer or thought tokens per request
        no_ui: do not serve the web UI
        log_level: uvicorn log level
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"internvlu: serve needs the serve extra: pip install 'internvlu[serve]' ({exc})", file=sys.stderr)
        return EXIT_MISSING_DEP
    from .serving.server import serve
    from .serving.settings import ServerSettings

    keys = [*api_key, *[k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",")]]
    settings = ServerSettings(
        host=host, port=port, api_keys=tuple(k for k in keys if k), model_name=model_name,
        allow_remote_images=allow_remote_images, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
        max_queue=max_queue, request_timeout_s=timeout, max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_image_pixels=max_image_pixels, max_n=max_n, max_steps=max_steps, max_tokens=max_tokens,
        enable_ui=not no_ui,
    )  # fmt: skip
    pipe = load_pipeline(model)
    serve(pipe, settings, log_level=log_level)
    return EXIT_OK


def cmd_convert(
    src: str,
    *,
    out: str,
    dtype: DType | None = None,
    max_shard_size: str | None = None,
) -> int:
    """Convert a checkpoint folder: change its weights' dtype and/or its shard size.

    Loads SRC, writes the official layout to --out. Refuses an --out folder that is not empty.

    Args:
        src: checkpoint folder in the official layout
        out: new folder for the converted checkpoint (must not exist, or be empty)
        dtype: dtype of the written weights (default: that of SRC)
        max_shard_size: largest weight file, e.g. 2GB or 500MB (default: one file per component)
    """
    import torch

    from .pipeline import InternVLUPipeline

    target = Path(out).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"--out {str(target)!r} exists and is not an empty folder; convert never overwrites")
    source = Path(src).expanduser()
    name = dtype or _checkpoint_dtype(source)
    pipe = InternVLUPipeline.from_pretrained(source, torch_dtype=getattr(torch, name), device="cpu")
    pipe.save_pretrained(target, max_shard_size=max_shard_size)
    print(json.dumps({"out": str(target), "dtype": name, "max_shard_size": max_shard_size,
                      "files": sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())},
                     indent=2))  # fmt: skip
    return EXIT_OK


def _checkpoint_dtype(folder: Path) -> str:
    """dtype of the first floating weight of the VLM's safetensors (float32 if none is found)."""
    from safetensors import safe_open

    names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
    for file in sorted((folder / "vlm").glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                kind = fh.get_slice(key).get_dtype()
                if kind in names:
                    return names[kind]
    return "float32"


def cmd_info(*, model: ModelOptions) -> int:
    """Print the components, sizes and parameter counts of a checkpoint (JSON)."""
    pipe = load_pipeline(model)
    report: dict[str, Any] = {"model": str(model.path()), "device": str(pipe.device),
                              "dtype": str(pipe.dtype).replace("torch.", "")}  # fmt: skip
    for name in ("vlm", "generation_decoder", "vae"):
        report[f"{name}_params"] = sum(p.numel() for p in getattr(pipe, name).parameters())
    report["stored_dtype"] = _checkpoint_dtype(model.path())
    report["template"] = pipe.processor.template_name
    cfg = pipe.generation_decoder.config
    report["default_size"] = [cfg.gen_image_height, cfg.gen_image_width]
    print(json.dumps(report, indent=2))
    return EXIT_OK


# ---------------------------------------------------------------------- parser
BATCH_EPILOG = """batch mode: --batch requests.jsonl reads one JSON object per line, e.g.
  {"id": "a", "prompt": "a red cube", "seed": 1, "steps": 20, "think": false}
and appends one result line per input line to --results (resumable: rerun the same command)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="internvlu", description="InternVL-U: understand, generate and edit images",
                                     epilog=(__doc__ or "").split("\n\n", 1)[1].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _mount_optional(sub, "demo")
    add_command(sub, cmd_chat, "chat", epilog=BATCH_EPILOG)
    add_command(sub, cmd_generate, "generate", epilog=BATCH_EPILOG)
    add_command(sub, cmd_edit, "edit", epilog=BATCH_EPILOG)
    add_command(sub, cmd_serve, "serve")
    _mount_optional(sub, "train")
    _mount_optional(sub, "synth")
    _mount_optional(sub, "eval")
    add_command(sub, cmd_convert, "convert")
    add_command(sub, cmd_info, "info")
    return parser


# Subcommands owned by other modules: (module, function adding the parser, function running it).
OPTIONAL_COMMANDS = {
    "demo": ("internvlu.demo", "add_demo_parser", "run_demo"),
    "train": ("internvlu.training.cli", "add_train_parser", "run_train"),
    "synth": ("internvlu.synthesis.cli", "add_synth_parser", "run_synth"),
    "eval": ("internvlu.evaluation.cli", "add_eval_parser", "run_eval"),
}


def _mount_optional(sub: Any, name: str) -> None:
    """Mount a subcommand whose module may be absent from this install (guarded import)."""
    import importlib

    module_name, add_name, run_name = OPTIONAL_COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return
    add = getattr(module, add_name, None)
    if add is None:
        return
    parser = add(sub)
    if parser is not None and parser.get_default("func") is None and hasattr(module, run_name):
        parser.set_defaults(func=getattr(module, run_name))


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
