"""Evaluation: the paper's benchmarks in their official layouts, scoring, and the shapes-world scorer.

    internvlu eval geneval --model M --out runs/geneval            # generation, official layout, resumable
    internvlu eval shapes --model M --num 32 --json                # pixel-level scores on fresh shapes tasks

Python API::

    from internvlu.evaluation import evaluate_shapes, get_benchmark, run_benchmark, score_benchmark
    scores = evaluate_shapes(pipe, num=32, seed=0)                 # {"geneval": {...}, "vqa", "edit", "think", ...}

See docs/evaluation.md for every benchmark's data layout, output layout and scoring.
"""

from __future__ import annotations

from internvlu.evaluation.judge import Judge, JudgeConfig, JudgeRequest
from internvlu.evaluation.registry import BENCHMARKS, available_benchmarks, get_benchmark
from internvlu.evaluation.runner import (
    Benchmark,
    EvalItem,
    Generated,
    RunReport,
    run_benchmark,
    score_benchmark,
)
from internvlu.evaluation.settings import EvalSettings, make_settings, model_fingerprint
from internvlu.evaluation.shapes import OraclePipeline, build_shapes_tasks, evaluate_shapes

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "EvalItem",
    "EvalSettings",
    "Generated",
    "Judge",
    "JudgeConfig",
    "JudgeRequest",
    "OraclePipeline",
    "RunReport",
    "available_benchmarks",
    "build_shapes_tasks",
    "evaluate_shapes",
    "get_benchmark",
    "make_settings",
    "model_fingerprint",
    "run_benchmark",
    "score_benchmark",
]
