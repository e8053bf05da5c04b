"""Synthetic training data: a sharded deterministic runner, quality filters, and generators.

Python API (the same as ``internvlu synth``)::

    from internvlu.synthesis import run_synthesis, ShapesConfig
    manifest = run_synthesis("shapes", "data/shapes", num=10_000, seed=0, workers=2, shard_size=1000,
                             config=ShapesConfig(image_size=64, tasks=("t2i", "edit")))

The shards load with :class:`internvlu.data.SampleReader`. Adding a generator: see runner.py.
"""

from __future__ import annotations

from internvlu.synthesis.cot import CotConfig, run_cot
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
from internvlu.synthesis.science_chem import ChemConfig, ChemGenerator
from internvlu.synthesis.science_cs import CsConfig, CsGenerator
from internvlu.synthesis.shapes import ShapesConfig, ShapesGenerator
from internvlu.synthesis.spatial import SpatialConfig, SpatialGenerator
from internvlu.synthesis.text_render import TextConfig, TextGenerator

__all__ = [
    "GENERATORS",
    "ChemConfig",
    "ChemGenerator",
    "CotConfig",
    "CsConfig",
    "CsGenerator",
    "FilterConfig",
    "Generator",
    "RejectSample",
    "SampleFilter",
    "ShapesConfig",
    "ShapesGenerator",
    "SpatialConfig",
    "SpatialGenerator",
    "TextConfig",
    "TextGenerator",
    "available_generators",
    "get_generator",
    "phash",
    "register_generator",
    "run_cot",
    "run_synthesis",
]
