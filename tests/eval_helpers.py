"""Helpers shared by the evaluation tests: the embedded model, and ``internvlu eval ...`` in-process."""

from __future__ import annotations

import argparse
from typing import Any

import internvlu.evaluation.cli as eval_cli
from internvlu.defaults import EMBEDDED_MODEL_DIR

# The benchmarks run end to end on the model that ships in the package (shapes-tiny).
CKPT = EMBEDDED_MODEL_DIR


def tiny_pipeline() -> Any:
    """The embedded model loaded the way ``internvlu eval`` loads a model (CPU, fp32)."""
    return eval_cli.load_pipeline(str(CKPT), "cpu", "float32")


def parse_eval(argv: list[str]) -> argparse.Namespace:
    """`argv` (starting with "eval") parsed by a parser with the ``eval`` subcommand mounted."""
    parser = argparse.ArgumentParser()
    eval_cli.add_eval_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def run_eval(argv: list[str]) -> int:
    """Run ``internvlu eval ...`` in-process; returns its exit code."""
    args = parse_eval(argv)
    return args.func(args)
