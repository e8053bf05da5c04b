"""``internvlu synth``: argparse wiring only; the work is :func:`internvlu.synthesis.runner.run_synthesis`.

Mount under the main CLI with::

    sub = parser.add_subparsers(dest="command")
    add_synth_parser(sub)            # sets func=run_synth
    args = parser.parse_args(); return args.func(args)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from internvlu.synthesis.filters import FilterConfig
from internvlu.synthesis.runner import available_generators, get_generator, run_synthesis


def add_synth_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``synth`` subcommand to an argparse subparsers object; returns the new parser."""
    parser = subparsers.add_parser(
        "synth",
        help="generate synthetic training data as tar shards",
        description=(
            "Generate N samples with GENERATOR into DIR/shard-XXXXXX.tar, DIR/manifest.json and "
            "DIR/contact_sheet.png. Output is deterministic for a seed (any worker count); rerunning "
            "with the same settings resumes, keeping finished shards."
        ),
    )
    parser.add_argument(
        "generator",
        metavar="GENERATOR",
        help=f"one of: {', '.join(available_generators())}; or cot (chain-of-thought augmentation of --input)",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument(
        "--num", type=int, metavar="N", help="number of samples (required; cot: at most N input records)"
    )
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="SRC",
        help="cot only: instruction set to augment (shard folder, .tar or .jsonl; repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="base seed (default 0)")
    parser.add_argument("--workers", type=int, default=1, metavar="W", help="worker processes (default 1)")
    parser.add_argument(
        "--shard-size", type=int, default=1000, metavar="K", help="samples per shard (default 1000)"
    )
    parser.add_argument("--image-size", type=int, metavar="PX", help="generator config image_size")
    parser.add_argument(
        "--tasks", metavar="LIST", help="generator config tasks, comma-separated (e.g. t2i,edit)"
    )
    parser.add_argument("--config", type=Path, metavar="JSON", help="generator config file (JSON object)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one generator config field (JSON value, or comma list for list fields); repeatable",
    )
    parser.add_argument("--no-dedup", action="store_true", help="keep perceptual near-duplicates")
    parser.add_argument(
        "--phash-distance", type=int, metavar="BITS", help="dedup Hamming threshold (default 2)"
    )
    parser.add_argument(
        "--contact-sheet", type=int, default=32, metavar="M", help="samples on the sheet (0 = none)"
    )
    redo = parser.add_mutually_exclusive_group()
    redo.add_argument(
        "--overwrite", action="store_true", help="delete existing shards in DIR instead of resuming"
    )
    redo.add_argument(
        "--overwrite-changed",
        action="store_true",
        help="resume DIR if it was made with the same settings, else delete its shards and build afresh",
    )
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="build shards on a Ray cluster (auto, ray://HOST:PORT, or local); needs `pip install ray`",
    )
    parser.set_defaults(func=run_synth)
    return parser


def _coerce(field: dataclasses.Field[Any], raw: str) -> Any:
    default = field.default if field.default is not dataclasses.MISSING else None
    value = json_or_text(raw)
    if isinstance(default, tuple) and isinstance(value, str):
        value = [json_or_text(v.strip()) for v in value.split(",") if v.strip()]
    return value


def json_or_text(text: str) -> Any:
    """A --set value: JSON when it parses (numbers, lists, true/false), else the text itself."""
    try:
        return json.loads(text)  # numbers in a comma list ("1,2,1")
    except json.JSONDecodeError:
        return text


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object of a --config file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict):
        return data
    raise ValueError(f"--config {path} must hold a JSON object")  # a bad file, as the CLI reports it


def split_set_item(item: str) -> tuple[str, str]:
    """A --set KEY=VALUE item -> (KEY without surrounding spaces, VALUE as written)."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise ValueError(f"--set {item!r} must look like KEY=VALUE")
    return key.strip(), raw


def build_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The generator config dict from --config, --image-size, --tasks and --set (later wins)."""
    gen_cls = get_generator(args.generator)
    fields = {f.name: f for f in dataclasses.fields(gen_cls.config_class) if f.name != "extra"}
    config: dict[str, Any] = {}
    if args.config is not None:
        config.update(read_config_file(args.config))
    pairs: list[tuple[str, str]] = []
    if args.image_size is not None:
        pairs.append(("image_size", str(args.image_size)))
    if args.tasks is not None:
        pairs.append(("tasks", args.tasks))
    pairs += [split_set_item(item) for item in args.set]
    for key, raw in pairs:
        if key not in fields:
            raise ValueError(
                f"generator {args.generator!r} has no config field {key!r}; fields: {sorted(fields)}"
            )
        config[key] = _coerce(fields[key], raw)
    return config


def run_synth(args: argparse.Namespace) -> int:
    """Run ``internvlu synth`` from parsed arguments; returns the exit code (0 ok, 2 bad input)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.generator == "cot":
        from internvlu.synthesis.cot import run_cot_cli

        return run_cot_cli(args)
    if args.num is None:
        print("internvlu synth: error: --num is required", file=sys.stderr)
        return 2
    try:
        filters = FilterConfig(dedup=not args.no_dedup)
        if args.phash_distance is not None:
            filters = dataclasses.replace(filters, phash_max_distance=args.phash_distance)
        manifest = run_synthesis(
            args.generator,
            args.out,
            args.num,
            seed=args.seed,
            workers=args.workers,
            shard_size=args.shard_size,
            config=build_overrides(args),
            filters=filters,
            contact_sheet_samples=args.contact_sheet,
            overwrite="changed" if args.overwrite_changed else args.overwrite,
            ray_address=args.ray,
        )
    except (ValueError, TypeError, OSError) as exc:
        print(f"internvlu synth: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {manifest['num_samples']} samples in {manifest['num_shards']} shards to {args.out} "
        f"({manifest['generated_shards']} built, {manifest['skipped_shards']} kept); "
        f"tasks {manifest['counts_by_task']}; rejected {manifest['rejections']}"
    )
    return 0
