"""Helpers shared by the synthesis tests."""

from __future__ import annotations

from collections import Counter

import numpy as np

from internvlu.data import Sample
from internvlu.synthesis import RejectSample
from internvlu.synthesis.runner import Generator


def draw_samples(
    generator: Generator, n: int, seed: int = 0, prefix: str = "s", rejected: Counter[str] | None = None
) -> list[Sample]:
    """The first `n` samples `generator` accepts from ``default_rng(seed)``, with ids prefix0, prefix1, ...
    (numbered by accepted position); each rejection's reason is counted in `rejected` when given."""
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    while len(out) < n:
        try:
            out.append(generator.sample(rng, f"{prefix}{len(out)}"))
        except RejectSample as rej:
            if rejected is not None:
                rejected[rej.reason] += 1
    return out
