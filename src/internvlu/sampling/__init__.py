"""Pure sampling functions: flow-matching schedule helpers, guidance, the denoising loop, named samplers."""

from .samplers import SAMPLERS, SamplerOptions, StepCache, build_scheduler

__all__ = ["SAMPLERS", "SamplerOptions", "StepCache", "build_scheduler"]
