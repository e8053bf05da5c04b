"""`internvlu demo`: every mode once on the default (embedded) model, results in a folder with a small HTML page.

    internvlu demo                      # the embedded shapes-tiny model, CPU, well under a minute
    internvlu demo --model /ckpt/InternVL-U --out demo-out --device cuda

It answers a question about a shapes-world image, draws an image from text, edits that image, and reasons before
drawing (think mode), then writes `question.png`, `generated.png`, `edited.png`, `think.png`, `results.json` and
`index.html` into the output folder and prints the folder's path. The prompts are worded like the shapes world's
training data, so the embedded model sees familiar requests; any other model answers them too.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GENERATE_PROMPT = "a photo of a red circle"
EDIT_PROMPT = "Make the red circle blue."


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="try every mode once (question, image, edit, think) and write the results to a folder",
        description=(__doc__ or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", default=None, help="checkpoint folder (default: $INTERNVLU_MODEL, then the embedded model)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: the best available)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    p.add_argument("--seed", type=int, default=0, help="picks the question image and the sampling noise")
    p.add_argument("--steps", type=int, default=20, help="denoising steps per image")
    p.set_defaults(func=run_demo)
    return p


def _question(seed: int):
    """A fresh shapes-world question (image, wording, expected answer), the eval scorer's own task."""
    from internvlu.evaluation.shapes import build_shapes_tasks

    tasks = build_shapes_tasks(1, seed)
    return tasks.vqa[0], tasks.think[0]


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from internvlu.cli import ModelOptions, load_pipeline

    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    opts = ModelOptions(args.model, args.device, args.dtype)
    model_path = opts.path()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="internvlu-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pipe = load_pipeline(opts)
    size = pipe.generation_decoder.config.gen_image_height
    vqa, think = _question(args.seed)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        with torch.inference_mode():
            result = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        return result

    draw = {"num_inference_steps": args.steps, "seed": args.seed, "height": size, "width": size}
    answer = timed("chat", lambda: pipe.chat(vqa.prompt, images=list(vqa.images), max_new_tokens=64).text)
    generated = timed("generate", lambda: pipe.generate(GENERATE_PROMPT, **draw).images[0])
    edited = timed("edit", lambda: pipe.edit(EDIT_PROMPT, images=[generated], **draw).images[0])
    think_images = list(think.images)
    if think_images:
        thought_result = timed(
            "think", lambda: pipe.edit(think.prompt, images=think_images, think=True, **draw)
        )
    else:
        thought_result = timed("think", lambda: pipe.generate(think.prompt, think=True, **draw))
    vqa.images[0].save(out / "question.png")
    generated.save(out / "generated.png")
    edited.save(out / "edited.png")
    thought_result.images[0].save(out / "think.png")
    if think_images:
        think_images[0].save(out / "think_input.png")
    results = {
        "model": str(model_path),
        "question": {"prompt": vqa.prompt, "answer": answer, "expected": vqa.answer, "image": "question.png"},
        "generate": {"prompt": GENERATE_PROMPT, "image": "generated.png"},
        "edit": {"prompt": EDIT_PROMPT, "input": "generated.png", "image": "edited.png"},
        "think": {
            "prompt": think.prompt,
            "thought": (thought_result.thoughts or [""])[0],
            "image": "think.png",
            "input": "think_input.png" if think_images else None,
        },
        "seconds": {**timings, "total": round(time.perf_counter() - start, 2)},
        "settings": {"steps": args.steps, "seed": args.seed, "size": size},
    }
    (out / "results.json").write_text(
        json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "index.html").write_text(_page(results), encoding="utf-8")
    print(out.resolve())
    print(f"demo: {results['seconds']['total']} s; open {(out / 'index.html').resolve()}", file=sys.stderr)
    return 0


def _page(r: dict[str, Any]) -> str:
    e = html.escape

    def img(name: str | None) -> str:
        return f'<img src="{e(name)}" width="192" style="image-rendering:pixelated">' if name else ""

    q, g, ed, t = r["question"], r["generate"], r["edit"], r["think"]
    rows = [
        ("Understanding", img(q["image"]), (f"<b>Q:</b> {e(q['prompt'])}<br><b>A:</b> {e(q['answer'])}<br>"
         f"<small>expected: {e(q['expected'])}</small>")),
        ("Generation", img(g["image"]), f"<b>Prompt:</b> {e(g['prompt'])}"),
        ("Editing", img(ed["input"]) + " &rarr; " + img(ed["image"]), f"<b>Instruction:</b> {e(ed['prompt'])}"),
        ("Think", (img(t["input"]) + " &rarr; " if t["input"] else "") + img(t["image"]),
         f"<b>Prompt:</b> {e(t['prompt'])}<br><b>Thought:</b> {e(t['thought'])}"),
    ]  # fmt: skip
    body = "\n".join(f"<tr><th>{name}</th><td>{pics}</td><td>{text}</td></tr>" for name, pics, text in rows)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>internvlu demo</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:8px;vertical-align:top;text-align:left}}
tr{{border-bottom:1px solid #ddd}} table{{border-collapse:collapse}}</style></head>
<body><h1>internvlu demo</h1><p>model: <code>{e(r["model"])}</code> &middot; {r["seconds"]["total"]} s
({e(json.dumps(r["seconds"]))})</p>
<table>{body}</table></body></html>
"""
