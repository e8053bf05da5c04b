"""Unified multi-scale 3-D RoPE of the MMDiT head (spec §5.5): position ids and rotary angles, as pure
functions.

Every token of a packed sample gets a float (frame, height, width) position:
- the generated latent grid at frame 0 and each reference latent grid at frames 1, 2, ... (one contiguous
  "image run" at the start of the sample), with centred h/w indices;
- context tokens walk on from `int(max position so far) + 1`: a text token gets (p, p, p); a run of
  `<IMG_CONTEXT>` tokens gets its ViT grid at frame p with h/w stretched by
  1/vlm_cond_position_scale_factor (16x16 -> [-32, 31]).

Nothing here is stored in a module: rotary angles are computed on the fly from positions, so models built on
the meta device need no buffer re-initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

ROPE_THETA = 10000  # fixed in the reference code, not a config field

Grid = tuple[int, int, int]  # (frames, height, width) in tokens


def _centred_indices(n: int, scale: float, device: torch.device | None) -> Tensor:
    """Centred indices [-(n - n//2), ..., -1, 0, ..., n//2 - 1] (n=32 -> -16..15), linearly stretched when
    scale != 1 onto [-int(n_neg/scale), int((n//2)/scale) - 1]. Float32, same op order as the reference."""
    n_neg, n_pos = n - n // 2, n // 2
    idx = torch.cat(
        [
            torch.arange(-n_neg, 0, dtype=torch.float32, device=device),
            torch.arange(0, n_pos, dtype=torch.float32, device=device),
        ]
    )
    if scale != 1.0:
        lo, hi = -n_neg, n_pos - 1
        target_lo, target_hi = -int(n_neg / scale), int(n_pos / scale) - 1
        if hi != lo:  # a single row/column stays where it is
            idx = target_lo + (idx - lo) * (target_hi - target_lo) / (hi - lo)
    return idx


def grid_positions(
    frames: int,
    height: int,
    width: int,
    *,
    frame_offset: int = 0,
    scale: float = 1.0,
    device: torch.device | None = None,
) -> Tensor:
    """Positions of an (f, h, w) token grid, row-major over (f, h, w): [f*h*w, 3] float32 (frame, h, w).
    Frames are frame_offset..frame_offset+f-1 and never scaled."""
    f_idx = torch.arange(frame_offset, frame_offset + frames, dtype=torch.float32, device=device)
    h_idx = _centred_indices(height, scale, device)
    w_idx = _centred_indices(width, scale, device)
    f_grid, h_grid, w_grid = torch.meshgrid(f_idx, h_idx, w_idx, indexing="ij")
    return torch.stack([f_grid.flatten(), h_grid.flatten(), w_grid.flatten()], dim=1)  # [f*h*w, 3]


def image_block_positions(grids: Sequence[Grid], scale: float, device: torch.device | None = None) -> Tensor:
    """Several grids stacked along the frame axis (frames 0.., cumulative): the generated grid followed by its
    reference grids, all with the same scale. [sum f*h*w, 3]."""
    blocks, frame = [], 0
    for f, h, w in grids:
        blocks.append(grid_positions(f, h, w, frame_offset=frame, scale=scale, device=device))
        frame += f
    return torch.cat(blocks, dim=0)


def _true_runs(mask: list[bool]) -> list[tuple[int, int]]:
    """Maximal [start, end) runs of True values."""
    runs: list[tuple[int, int]] = []
    start = None
    for i, value in enumerate(mask):
        if value and start is None:
            start = i
        elif not value and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(mask)))
    return runs


def assign_positions(blocks: Sequence[Tensor], is_image: Tensor) -> Tensor:
    """Walk a token sequence: maximal runs of `is_image` take the position blocks in order, every other
    token is text and takes (p, p, p) with p counting up.

    A block placed at the current counter p gets p added to its frame axis, then
    p = int(max over the block's three coordinates) + 1. A run whose length differs from its block's size
    falls back to text positions (reference behaviour, e.g. a ViT image whose token count is not f*h*w).

    Args:
        blocks: per image run, its [n_i, 3] positions with frames starting at 0.
        is_image: [L] bool.

    Returns:
        [L, 3] float32 positions.
    """
    mask = is_image.tolist()
    seq_len = len(mask)
    runs = _true_runs(mask)
    if len(runs) > len(blocks):
        raise ValueError(
            f"the sequence has {len(runs)} image-token runs but only {len(blocks)} position blocks were "
            "given; pass one (f, h, w) grid per image in the context (image_fhw_cond)"
        )
    device = is_image.device
    positions = torch.zeros(seq_len, 3, dtype=torch.float32, device=device)
    cur = 0
    prev_end = 0
    for (start, end), block in zip(runs, blocks):
        if start > prev_end:  # text before this run
            positions[prev_end:start] = torch.arange(
                cur, cur + start - prev_end, dtype=torch.float32, device=device
            )[:, None]
            cur += start - prev_end
        if block.shape[0] == end - start:
            placed = block.to(device=device, dtype=torch.float32).clone()
            placed[:, 0] += cur
            positions[start:end] = placed
            cur = int(placed.max().item()) + 1
        else:
            run = torch.arange(cur, cur + end - start, dtype=torch.float32, device=device)
            positions[start:end] = run[:, None]
            cur += end - start
        prev_end = end
    if prev_end < seq_len:
        positions[prev_end:] = torch.arange(
            cur, cur + seq_len - prev_end, dtype=torch.float32, device=device
        )[:, None]
    return positions


def build_position_ids_3d(
    gen_grid: Grid,
    ref_grids: Sequence[Grid],
    context_image_mask: Tensor,
    vit_grids: Sequence[Grid],
    *,
    video_scale: float,
    vlm_cond_scale: float,
) -> Tensor:
    """Positions of one packed sample [generated | references | context] (`create_position_ids_3d_v3`).

    Args:
        gen_grid: (1, H_g/p, W_g/p) token grid of the generated image.
        ref_grids: token grids of the reference latents (frames 1, 2, ... after the generated one).
        context_image_mask: [T] bool, True at `<IMG_CONTEXT>` tokens of the context.
        vit_grids: one (f, h, w) ViT grid per image run in the context, in order ((1, 16, 16) at full size).
        video_scale: `video_position_scale_factor` (generated and reference grids).
        vlm_cond_scale: `vlm_cond_position_scale_factor` (ViT grids).

    Returns:
        [N_img + T, 3] float32 positions.
    """
    device = context_image_mask.device
    block1 = image_block_positions([gen_grid, *ref_grids], video_scale, device)
    blocks = [block1] + [
        grid_positions(f, h, w, scale=vlm_cond_scale, device=device) for f, h, w in vit_grids
    ]
    # The image tokens form the first run, so they are walked exactly like a ViT run (and a context that
    # started with <IMG_CONTEXT> would merge into it, as in the reference).
    is_image = torch.cat(
        [torch.ones(block1.shape[0], dtype=torch.bool, device=device), context_image_mask.to(torch.bool)]
    )
    return assign_positions(blocks, is_image)


def inverse_frequencies(axes_dims: Sequence[int], device: torch.device | None = None) -> list[Tensor]:
    """Per axis a: 1 / theta^(arange(0, d_a, 2) / d_a), float32 (d_a/2 values)."""
    return [
        1.0 / torch.pow(ROPE_THETA, torch.arange(0, d, 2, device=device).to(torch.float32).div(d))
        for d in axes_dims
    ]


def rope_angles(position_ids: Tensor, axes_dims: Sequence[int]) -> Tensor:
    """Rotary angles [N, sum(axes_dims)/2] float32: [frame | height | width] blocks of position * inv_freq."""
    pos = position_ids.float()
    inv = inverse_frequencies(axes_dims, pos.device)
    return torch.cat([torch.outer(pos[:, a], inv[a]) for a in range(len(axes_dims))], dim=1)


def rope_cos_sin(position_ids: Tensor, axes_dims: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(cos, sin) of the rotary angles, each [N, head_dim/2] float32 (the real/imag parts of the reference's
    complex frequencies)."""
    angles = rope_angles(position_ids, axes_dims)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) as complex numbers by angle i (the reference's complex form).

    Args:
        x: [N, H, D] queries or keys.
        cos, sin: [N, D/2] float32.

    Returns:
        [N, H, D] in x's dtype (computed in float32).
    """
    pairs = x.float().unflatten(-1, (-1, 2))  # [N, H, D/2, 2]
    real, imag = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    rotated = torch.stack([real * c - imag * s, real * s + imag * c], dim=-1)  # [N, H, D/2, 2]
    return rotated.flatten(-2).to(x.dtype)
