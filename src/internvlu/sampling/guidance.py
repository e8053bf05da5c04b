"""Three-row classifier-free guidance of InternVL-U (reference-architecture §6.4).

Rows: c = conditional, p = text dropped (reference images kept), u = everything dropped.
    v = v_u + part * (v_p - v_u) + all * (v_c - v_p)
While t > `norm_trunc_timestep` (the first, noisiest steps), each difference is divided by
max(1, ||diff||^k) with the L2 norm over channels per latent pixel, which damps large early
guidance updates (k = 0.4 in the release).
"""

from __future__ import annotations

import torch

NORM_TRUNC_TIMESTEP = 930
NORM_EXPONENT = 0.4


def damp_by_norm(diff: torch.Tensor, exponent: float = NORM_EXPONENT) -> torch.Tensor:
    """diff / max(1, ||diff||_channel ** exponent); diff [B, C, H, W], norm over C per pixel."""
    norm = diff.norm(p=2, dim=1, keepdim=True)  # [B, 1, H, W]
    scale = torch.where(norm > 1, norm.pow(exponent), torch.ones_like(norm))
    return diff / scale


def combine_guidance(
    v_cond: torch.Tensor,
    v_text_dropped: torch.Tensor,
    v_uncond: torch.Tensor,
    timestep: float,
    all_cfg_scale: float,
    part_cfg_scale: float,
    norm_trunc_timestep: int = NORM_TRUNC_TIMESTEP,
) -> torch.Tensor:
    """Combine the three velocity rows (each [B, C, H, W], fp32) into one guided velocity."""
    part = v_text_dropped - v_uncond
    full = v_cond - v_text_dropped
    if timestep > norm_trunc_timestep:
        part = damp_by_norm(part)
        full = damp_by_norm(full)
    return v_uncond + part_cfg_scale * part + all_cfg_scale * full
