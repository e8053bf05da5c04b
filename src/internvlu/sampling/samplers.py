"""Named samplers: the release's DPM-Solver++ 2M and opt-in higher-order solvers for fewer steps.

All of them integrate the same flow-matching ODE on the same shifted flow sigmas (shift 3 by default);
they differ only in the update rule. The default ("dpm++2m") is exactly the checkpoint's scheduler, so
the parity outputs do not change; the others are opt-in, meant to be used with fewer steps:

- "dpm++3m": DPM-Solver++ with a third-order multistep update (the release uses order 2).
- "unipc": UniPC (predictor-corrector, `solver_order` 2 by default, 3 with `order=3`): its corrector
  reuses the model output of the *next* step, so it gains accuracy at no extra model call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SAMPLERS = ("default", "dpm++2m", "dpm++3m", "unipc")


@dataclass(frozen=True)
class StepCache:
    """Reuse the velocity of the previous step instead of running the MMDiT on some steps.

    The first `warmup` steps (where the image layout forms and the velocity changes fastest) and the
    last `cooldown` steps (fine detail) always run the model; in between the model runs every
    `interval`-th step and the other steps reuse the last guidance rows (the guidance itself is still
    combined at the current timestep). `interval=1` disables caching.
    """

    interval: int = 2
    warmup: int = 4
    cooldown: int = 2

    def __post_init__(self) -> None:
        for name in ("interval", "warmup", "cooldown"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"StepCache.{name} must be an int, got {value!r}")
        if self.interval < 1:
            raise ValueError(f"StepCache.interval must be >= 1, got {self.interval}")
        if self.warmup < 1:
            raise ValueError(
                f"StepCache.warmup must be >= 1 (the first step has nothing to reuse), got {self.warmup}"
            )
        if self.cooldown < 0:
            raise ValueError(f"StepCache.cooldown must be >= 0, got {self.cooldown}")

    def computes(self, step: int, total: int) -> bool:
        """True when step `step` (0-based) of `total` must run the model."""
        if step < self.warmup or step >= total - self.cooldown:
            return True
        return (step - self.warmup) % self.interval == 0

    def model_calls(self, total: int) -> int:
        return sum(self.computes(i, total) for i in range(total))


@dataclass(frozen=True)
class SamplerOptions:
    """How the denoising loop integrates: solver name, its order, and optional step caching."""

    name: str = "default"
    order: int | None = None
    step_cache: StepCache | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; choose one of {SAMPLERS}")
        if self.order is not None:
            if isinstance(self.order, bool) or not isinstance(self.order, int) or not 1 <= self.order <= 3:
                raise ValueError(f"sampler order must be 1, 2 or 3, got {self.order!r}")
            if self.name in ("default", "dpm++2m", "dpm++3m"):
                raise ValueError(
                    f"sampler {self.name!r} has a fixed order; pass order= only with 'unipc' "
                    "(use 'dpm++3m' for a third-order DPM-Solver++)"
                )
        if self.step_cache is not None and not isinstance(self.step_cache, StepCache):
            raise TypeError(f"step_cache must be a StepCache or None, got {type(self.step_cache).__name__}")

    @property
    def is_default(self) -> bool:
        return self.name == "default" and self.step_cache is None


def build_scheduler(base: Any, options: SamplerOptions, flow_shift: float) -> Any:
    """A fresh scheduler for one request: `base`'s config (flow sigmas, shift, spacing) with the solver of
    `options`. "default" keeps `base`'s class and settings untouched (the checkpoint's scheduler)."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    config = dict(base.config)
    if options.name == "default":
        return type(base).from_config(config, flow_shift=flow_shift)
    if options.name in ("dpm++2m", "dpm++3m"):
        order = 2 if options.name == "dpm++2m" else 3
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=order, flow_shift=flow_shift, **options.extra
        )
    # UniPC: bh2 is the variant recommended for guided sampling; the DPM-only keys of the config are ignored.
    config.pop("solver_type", None)
    config.pop("algorithm_type", None)
    return UniPCMultistepScheduler.from_config(
        config, solver_order=options.order or 2, solver_type="bh2", flow_shift=flow_shift, **options.extra
    )
