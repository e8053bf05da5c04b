"""Switches for the pipeline's speed optimisations.

Every optimisation is on by default and gives the same images as with it off (up to float rounding);
each can be turned off to measure its gain (`benchmarks/bench_speed.py --before`) or to debug.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class PerformanceOptions:
    """What the image path does to avoid repeated work.

    Attributes:
        condition_once: compute the VLM conditioning once per request (off: recompute it at every
            denoising step, the naive loop; only useful as a "before" measurement).
        batch_guidance: run the MMDiT once per step on all guidance rows packed together (off: one
            call per guidance block).
        dedupe_guidance: compute identical guidance rows once: in text-to-image the text-dropped and
            all-dropped rows are the same prompt, so the VLM and the MMDiT see 2 row blocks, not 3.
        think_kv_reuse: in think mode, take the conditional rows' hidden states from the thought's own
            generation (prefill + decode steps) and run only the final `<img>` token through the LLM
            with the generation's KV cache (off: re-run the whole LLM over prompt + thought, as the
            reference does).
    """

    condition_once: bool = True
    batch_guidance: bool = True
    dedupe_guidance: bool = True
    think_kv_reuse: bool = True

    def replace(self, **changes: bool) -> PerformanceOptions:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown performance options {unknown}; known: {sorted(names)}")
        for name, value in changes.items():
            if not isinstance(value, bool):
                raise TypeError(f"performance option {name} must be a bool, got {value!r}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def all_off(cls) -> PerformanceOptions:
        """The unoptimised baseline (every switch off)."""
        return cls(**{f.name: False for f in dataclasses.fields(cls)})
