"""The denoising loop as one short function: model and scheduler are arguments, no I/O.

Latents stay fp32 between steps (as in the reference); the velocity model is called once per step
on all guidance rows at once and returns the three row blocks. With a `StepCache` some steps reuse
the previous step's rows instead of calling the model (opt-in; see `samplers.StepCache`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .guidance import NORM_TRUNC_TIMESTEP, combine_guidance
from .preserve import SourceBlend
from .samplers import StepCache

# velocity_fn(latents [N, C, H, W] fp32, timestep int) -> (v_cond, v_text_dropped, v_uncond), each [N, C, H, W]
VelocityFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def denoise(
    velocity_fn: VelocityFn,
    scheduler,
    latents: torch.Tensor,
    all_cfg_scale: float,
    part_cfg_scale: float,
    norm_trunc_timestep: int = NORM_TRUNC_TIMESTEP,
    on_step: Callable[[int, int], None] | None = None,
    step_cache: StepCache | None = None,
    blend: SourceBlend | None = None,
) -> torch.Tensor:
    """Run the scheduler's timesteps and return the final latents.

    Args:
        velocity_fn: returns the three guidance rows' velocities for the current latents.
        scheduler: a diffusers scheduler on which `set_timesteps` was already called.
        latents: initial noise [N, C, H, W] (fp32).
        on_step: called as on_step(step_index, total_steps) after every step (progress bars).
        step_cache: when given, steps it does not select reuse the last computed rows.
        blend: when given, after every step the pixels outside its mask are put back on the source's path
            at the step's new noise level (`scheduler.sigmas[i + 1]`; see `preserve.py`).
    """
    timesteps = scheduler.timesteps
    total = len(timesteps)
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    for i, t in enumerate(timesteps):
        if rows is None or step_cache is None or step_cache.computes(i, total):
            v_c, v_p, v_u = velocity_fn(latents, t)
            rows = (v_c.float(), v_p.float(), v_u.float())
        v = combine_guidance(*rows, int(t), all_cfg_scale, part_cfg_scale, norm_trunc_timestep)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
        if blend is not None:
            latents = blend.apply(latents, float(scheduler.sigmas[i + 1]))
        if on_step is not None:
            on_step(i + 1, total)
    return latents
