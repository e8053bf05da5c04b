"""Synthetic training data: a sharded deterministic runner, quality filters, and generators.

Python API (the same as ``internvlu synth``)::

    from internvlu.synthesis import run_synthesis, ShapesConfig
    manifest = run_synthesis("shapes", "data/shapes", num=10_000, seed=0, workers=2, shard_size=1000,
                             config=ShapesConfig(image_size=64, tasks=("t2i", "edit")))

The shards load with :class:`internvlu.data.SampleReader`. Adding a generator: see runner.py.
"""

from __future__ import annotations

from internvlu.synthesis.filters import FilterConfig, SampleFilter, phash
from internvlu.synthesis.runner import (
    GENERATORS,
    Generator,
    RejectSample,
    available_generators,
    get_generator,
    register_generator,
    run_synthesis,
)
from internvlu.synthesis.shapes import ShapesConfig, ShapesGenerator

__all__ = [
    "GENERATORS",
    "FilterConfig",
    "Generator",
    "RejectSample",
    "SampleFilter",
    "ShapesConfig",
    "ShapesGenerator",
    "available_generators",
    "get_generator",
    "phash",
    "register_generator",
    "run_synthesis",
]
