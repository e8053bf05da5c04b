"""``internvlu eval``: argparse wiring only; the work is in runner.py, shapes.py and the benchmark files.

Mount under the main CLI with ``add_eval_parser(sub)`` (sets ``func=run_eval``)::

    internvlu eval geneval   --model M --out runs/geneval [--shard 0/4] [--think] ...
    internvlu eval dpg       --model M --data ELLA/dpg_bench --out runs/dpg
    internvlu eval imgedit   --model M --data ImgEdit/basic_edit.json --option image_root=... --out runs/imgedit \
                             --judge-model gpt-4.1 --option judge_prompts=...
    internvlu eval mme       --model M --data LMUData/MME.tsv --out runs/mme
    internvlu eval shapes    [--model M] [--num N] [--seed S] [--json]
    internvlu eval vlmevalkit --run-script VLMEvalKit/run.py -- --data MMMU_DEV_VAL --model InternVL-U
    internvlu eval summary   runs/*/summary.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from internvlu.cli import default_device
from internvlu.evaluation.registry import BENCHMARKS, EDITING, GENERATION, UNDERSTANDING

EXIT_OK, EXIT_ERROR = 0, 1
DTYPES = ("float32", "bfloat16", "float16")


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` (with one sub-command per benchmark, plus shapes / vlmevalkit / summary)."""
    parser = subparsers.add_parser(
        "eval",
        help="run a benchmark in its official output layout and score it",
        description=(
            "Generate a benchmark's outputs in its official layout (resumable, shardable, every file "
            "records the settings), check the layout, and score it offline where possible."
        ),
    )
    parser.set_defaults(func=run_eval)
    sub = parser.add_subparsers(dest="eval_command", metavar="BENCH")
    groups = (
        {name: "generation" for name in GENERATION}
        | {name: "editing" for name in EDITING}
        | {name: "understanding" for name in UNDERSTANDING}
    )
    for name, cls in BENCHMARKS.items():
        p = sub.add_parser(
            name,
            help=f"{cls.title} ({groups[name]})",
            description=(cls.__doc__ or cls.title).strip().splitlines()[0],
        )
        _add_benchmark_args(p, cls)
    _add_shapes_parser(sub)
    p = sub.add_parser("vlmevalkit", help="run VLMEvalKit's run.py with InternVL-U registered as a model")
    p.add_argument("--run-script", required=True, help="path of VLMEvalKit's run.py")
    p.add_argument(
        "--model", default=None, help="checkpoint folder (default: INTERNVLU_MODEL, then the embedded model)"
    )
    p.add_argument(
        "--name", default="InternVL-U", help="model name to register (use it as run.py --model NAME)"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=DTYPES)
    p.add_argument("--max-new-tokens", type=int, default=1024, help="answer budget per question")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for run.py (after --)")
    p = sub.add_parser("summary", help="print the paper-format tables of finished runs")
    p.add_argument("summaries", nargs="+", type=Path, help="summary.json files or run folders")
    return parser


def _add_common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=None, help="checkpoint folder (default: INTERNVLU_MODEL, then the embedded model)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--dtype", default=None, choices=DTYPES, help="default: float32 on CPU, bfloat16 on GPU")


def _add_benchmark_args(p: argparse.ArgumentParser, cls: Any) -> None:
    _add_common_model_args(p)
    p.add_argument("--out", required=True, type=Path, help="run folder (resumed when it exists)")
    data_help = "your local copy of the benchmark data" + (
        " (default: the shipped prompts)" if not cls.needs_data else " (required)"
    )
    p.add_argument("--data", default=None, type=Path, help=data_help)
    options = "; ".join(f"{k}: {h}" for k, (_, h) in cls.OPTIONS.items()) or "none"
    p.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help=f"benchmark options ({options})"
    )
    p.add_argument("--seed", type=int, default=0, help="image k of every prompt uses seed+k (default 0)")
    p.add_argument(
        "--num-images", type=int, default=None, help=f"images per prompt (default {cls.default_num_images})"
    )
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--cfg", type=float, default=None, help="all_cfg_scale (default 4.5, think 3.5)")
    p.add_argument("--part-cfg", type=float, default=None, help="part_cfg_scale (default 2.0, think 1.5)")
    p.add_argument(
        "--think", action="store_true", help="chain of thought before drawing (the paper's 'w/ CoT')"
    )
    p.add_argument("--max-thought-tokens", type=int, default=200)
    p.add_argument(
        "--height",
        type=int,
        default=None,
        help="generation height (default: the checkpoint's; edits: the input's)",
    )
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=1024, help="answer budget (understanding)")
    p.add_argument(
        "--prompt-rewriting", default="none", help="label recorded when --data holds rewritten prompts"
    )
    p.add_argument("--shard", default="0/1", help="i/n: this process takes items with index %% n == i")
    p.add_argument("--limit", type=int, default=None, help="only the first N items (smoke runs)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts per model call (understanding)")
    p.add_argument("--skip-score", action="store_true", help="generate only")
    p.add_argument("--score-only", action="store_true", help="score an existing run folder (no model needed)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    j = p.add_argument_group("judge (WISE, ImgEdit, GEdit, TextEdit MLLM metrics)")
    j.add_argument(
        "--judge-model", default=None, help="model name at the endpoint (or INTERNVLU_JUDGE_MODEL)"
    )
    j.add_argument(
        "--judge-base-url", default=None, help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1"
    )
    j.add_argument("--judge-concurrency", type=int, default=8)
    j.add_argument("--judge-retries", type=int, default=5)
    j.add_argument("--judge-timeout", type=float, default=120.0)
    j.add_argument("--judge-backoff", type=float, default=2.0, help="first retry wait in seconds (doubles)")
    j.add_argument(
        "--judge-cache", type=Path, default=None, help="reply cache folder (default OUT/judge_cache)"
    )


def _add_shapes_parser(sub: Any) -> None:
    p = sub.add_parser(
        "shapes",
        help="pixel-level scores on fresh shapes-world tasks (generation, understanding, editing, think)",
        description="Score a model on fresh shapes-world tasks with the classical detector: GenEval's six categories "
        "(geneval.overall), understanding (vqa), editing (edit), think mode (think, and think_off).",
    )
    _add_common_model_args(p)
    p.add_argument("--num", type=int, default=32, help="tasks per GenEval category and per kind (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/eval-shapes"),
        help="folder for the PNG grid and HTML report",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="shapes-world image size (default: the world in the model's card.json, else 64)",
    )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--part-cfg", type=float, default=None)
    p.add_argument("--max-thought-tokens", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer budget for the vqa questions")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--no-think-off", action="store_true", help="skip drawing the think prompts with think off"
    )
    p.add_argument(
        "--oracle",
        action="store_true",
        help="score the generator's own answers (checks the scorer; no model)",
    )


# --------------------------------------------------------------------------------------------------
# Resolution helpers
# --------------------------------------------------------------------------------------------------


def resolve_model(model: str | None) -> str:
    from internvlu.defaults import default_model_path

    path = Path(model) if model else default_model_path()
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"--model {str(path)!r} is not a checkpoint folder (no model_index.json)")
    return str(path)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--option needs KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        options[key.strip()] = value
    return options


def build_settings(args: argparse.Namespace, bench: Any) -> Any:
    """Resolve the CLI's settings (see :func:`internvlu.evaluation.settings.make_settings`)."""
    from internvlu.evaluation.settings import make_settings

    return make_settings(
        bench,
        resolve_model(args.model),
        seed=args.seed,
        num_images=args.num_images,
        num_inference_steps=args.steps,
        all_cfg_scale=args.cfg,
        part_cfg_scale=args.part_cfg,
        think=bool(args.think),
        max_thought_tokens=args.max_thought_tokens,
        height=args.height,
        width=args.width,
        max_new_tokens=args.max_new_tokens,
        prompt_rewriting=args.prompt_rewriting,
        device=args.device or default_device(),
        dtype=args.dtype,
    )


def load_pipeline(model: str, device: str, dtype: str) -> Any:
    import torch

    from internvlu.pipeline import InternVLUPipeline

    pipe = InternVLUPipeline.from_pretrained(model, torch_dtype=getattr(torch, dtype), device=device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_judge(args: argparse.Namespace, out: Path) -> Any:
    """A judge when a judge model is named (flag or INTERNVLU_JUDGE_MODEL), else None."""
    import os

    from internvlu.evaluation.judge import Judge, JudgeConfig

    model = args.judge_model or os.environ.get("INTERNVLU_JUDGE_MODEL")
    if not model:
        return None
    config = JudgeConfig.from_env(
        model=model,
        base_url=args.judge_base_url,
        concurrency=args.judge_concurrency,
        retries=args.judge_retries,
        timeout=args.judge_timeout,
        backoff=args.judge_backoff,
        cache_dir=args.judge_cache or out / "judge_cache",
    )
    return Judge(config)


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


def run_eval(args: argparse.Namespace) -> int:
    """Dispatch ``internvlu eval ...``; returns the process exit code."""
    from internvlu.evaluation.judge import JudgeError
    from internvlu.evaluation.scorers import ScorerError

    command = getattr(args, "eval_command", None)
    if command is None:
        print("usage: internvlu eval BENCH ... (internvlu eval --help lists them)", file=sys.stderr)
        return 2
    try:
        if command == "shapes":
            return _run_shapes(args)
        if command == "vlmevalkit":
            return _run_vlmevalkit(args)
        if command == "summary":
            return _run_summary(args)
        return _run_benchmark(args)
    except (JudgeError, ScorerError) as exc:
        print(f"internvlu eval: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _run_benchmark(args: argparse.Namespace) -> int:
    from internvlu.evaluation.registry import get_benchmark
    from internvlu.evaluation.runner import parse_shard, run_benchmark, score_benchmark
    from internvlu.evaluation.settings import load_settings, store_settings

    cls = get_benchmark(args.eval_command)
    bench = cls(args.data, parse_options(args.option), limit=args.limit)
    out: Path = args.out
    if args.score_only:
        settings = load_settings(out)
    else:
        settings = build_settings(args, bench)
        shard = parse_shard(args.shard)
        report = run_benchmark(
            bench,
            lambda: load_pipeline(settings.model, settings.device, settings.dtype),
            out,
            settings,
            shard=shard,
            batch_size=args.batch_size,
        )
        print(
            f"{bench.name}: shard {shard[0]}/{shard[1]}: {report.generated} generated, {report.skipped} already done "
            f"({report.assigned} of {report.total} items in this shard) -> {bench.layout_dir(out)}",
            file=sys.stderr,
        )
        if not report.complete:
            print(
                f"{bench.name}: items of other shards are still missing; score with --score-only once all shards finish",
                file=sys.stderr,
            )
            return EXIT_OK
        settings = store_settings(out, settings)
    if args.skip_score:
        return EXIT_OK
    judge = make_judge(args, out)
    if judge is not None:
        settings.judge = judge.config.record()
    settings.scoring = {
        k: str(bench.options[k]) for k in bench.SCORING_OPTIONS if bench.options.get(k) is not None
    }
    summary = score_benchmark(bench, out, settings, judge=judge)
    if args.json:
        print(
            json.dumps(
                {
                    "benchmark": bench.name,
                    "scores": summary["scores"],
                    "layout_problems": summary["layout_problems"],
                }
            )
        )
    else:
        if summary["layout_problems"]:
            print("layout problems:\n  " + "\n  ".join(summary["layout_problems"]))
        elif summary["scores"] is None:
            print(
                f"{bench.title}: outputs in the official layout at {bench.layout_dir(out)}; no offline scorer ran (docs/evaluation.md)"
            )
        else:
            print(summary["table"])
    return EXIT_ERROR if summary["layout_problems"] else EXIT_OK


def _run_shapes(args: argparse.Namespace) -> int:
    import dataclasses

    from internvlu.embedded.card import card_world
    from internvlu.evaluation.report import paper_table
    from internvlu.evaluation.shapes import OraclePipeline, build_shapes_tasks, evaluate_shapes
    from internvlu.synthesis.shapes import ShapesConfig

    model = "oracle" if args.oracle and args.model is None else resolve_model(args.model)
    # The world the model was trained on (its card), so the fresh tasks come from the training distribution.
    config = (None if model == "oracle" else card_world(model)) or ShapesConfig()
    if args.image_size is not None:
        config = dataclasses.replace(config, image_size=args.image_size)  # validates
    if args.oracle:
        pipe: Any = OraclePipeline(build_shapes_tasks(args.num, args.seed, config))
        model = "oracle"
    else:
        device = args.device or default_device()
        pipe = load_pipeline(model, device, args.dtype or ("float32" if device == "cpu" else "bfloat16"))
    say = None if args.json else (lambda msg: print(f"shapes: {msg}", file=sys.stderr))
    results = evaluate_shapes(
        pipe, args.num, args.seed, config=dataclasses.replace(config), batch_size=args.batch_size,
        num_inference_steps=args.steps, all_cfg_scale=args.cfg, part_cfg_scale=args.part_cfg,
        max_thought_tokens=args.max_thought_tokens, max_new_tokens=args.max_new_tokens, think_off=not args.no_think_off, report_dir=args.out, progress=say,
    )  # fmt: skip
    results["model"] = model
    results["world"] = {k: getattr(config, k) for k in ("image_size", "word_prob", "t2i_layout")}
    if args.json:
        print(json.dumps(results))
    else:
        print(paper_table("shapes", results, model=Path(model).name or model))
        print(f"report: {results['report']['html']}  grid: {results['report']['grid']}")
    return EXIT_OK


def _run_vlmevalkit(args: argparse.Namespace) -> int:
    from internvlu.evaluation.understanding import run_vlmevalkit

    rest = list(args.args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    return run_vlmevalkit(
        args.run_script, rest, name=args.name, model_path=resolve_model(args.model), device=args.device,
        dtype=args.dtype, max_new_tokens=args.max_new_tokens,
    )  # fmt: skip


def _run_summary(args: argparse.Namespace) -> int:
    from internvlu.evaluation.report import summary_report
    from internvlu.evaluation.runner import SUMMARY_FILE

    files = [p / SUMMARY_FILE if p.is_dir() else p for p in args.summaries]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no summary.json at {', '.join(missing)} (score the runs first)")
    print(summary_report(files))
    return EXIT_OK
