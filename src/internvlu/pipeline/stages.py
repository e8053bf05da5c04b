"""Stages of the image pipeline as plain functions over tensors (no model state, no I/O).

Row layout in image modes (reference-architecture §4.5): R = 3B rows,
[conditional x B | text-dropped x B | all-dropped x B].
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def conditioning_spans(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, im_start_id: int, img_start_id: int
) -> list[tuple[int, int]]:
    """Per row, the inclusive column range that conditions the generation head.

    It runs from the row's second `<|im_start|>` (the user turn: the system prompt is excluded)
    through the row's last `<img>` (the generation trigger), as in the reference (§7.2).
    """
    spans = []
    for r in range(input_ids.shape[0]):
        ids = input_ids[r]
        live = attention_mask[r].bool()
        starts = torch.nonzero((ids == im_start_id) & live).flatten()
        imgs = torch.nonzero((ids == img_start_id) & live).flatten()
        if starts.numel() < 2:
            raise ValueError(
                f"row {r} has {starts.numel()} '<|im_start|>' tokens; the conditioning needs a system and a user turn"
            )
        if imgs.numel() == 0:
            raise ValueError(f"row {r} has no '<img>' generation token")
        spans.append((int(starts[1]), int(imgs[-1])))
    return spans


def gather_conditioning(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    spans: list[tuple[int, int]],
    img_context_id: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Cut each row's conditioning tokens out of the VLM states.

    Args:
        hidden: [R, L, J] concatenated VLM hidden states (J = 2 * D_llm for layers [-1, -2]).
    Returns:
        states: R tensors [T_r, J]; image_masks: R bool tensors [T_r] (True at `<IMG_CONTEXT>`).
    """
    states, image_masks = [], []
    for r, (s, g) in enumerate(spans):
        keep = attention_mask[r, s : g + 1].bool()  # [T_span]
        states.append(hidden[r, s : g + 1][keep])  # [T_r, J]
        image_masks.append((input_ids[r, s : g + 1] == img_context_id)[keep])  # [T_r]
    return states, image_masks


def split_grids(
    image_grid_thw_gen: torch.Tensor, generation_flags: torch.Tensor, images_per_row: list[int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Split the processor's per-`<img>` grid rows into per-row (generation grid, reference grids).

    Returns:
        gen_grids: [R, 3] (1, H_g, W_g) per row; ref_grids: R tensors [n_r, 3].
    """
    gen_grids, ref_grids = [], []
    k = 0
    for r, n in enumerate(images_per_row):
        flags = generation_flags[k : k + n + 1].tolist()
        if flags != [0] * n + [1]:
            raise AssertionError(f"row {r}: unexpected generation flags {flags} for {n} input images")
        ref_grids.append(image_grid_thw_gen[k : k + n])
        gen_grids.append(image_grid_thw_gen[k + n])
        k += n + 1
    if k != image_grid_thw_gen.shape[0]:
        raise AssertionError(f"{image_grid_thw_gen.shape[0]} grid rows, {k} consumed")
    return torch.stack(gen_grids), ref_grids


def vae_stats(vae, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel latents mean/std of the Qwen-Image VAE as [1, C, 1, 1] tensors."""
    mean = torch.tensor(vae.config.latents_mean, device=device, dtype=dtype).view(1, -1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=device, dtype=dtype).view(1, -1, 1, 1)
    return mean, std


@torch.no_grad()
def encode_references(vae, pixels: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> normalized posterior-mode latents [N, C, H/8, W/8].

    The reference encodes the batch zero-padded to its largest image and uses the posterior mode
    (no sampling), then normalises per channel: (mu - mean) / std.
    """
    dtype = next(vae.parameters()).dtype
    x = pixels.to(dtype)[:, :, None]  # [N, 3, T=1, H, W]: the Qwen-Image VAE is a video VAE
    mu = vae.encode(x).latent_dist.mode()[:, :, 0]  # [N, C, h, w]
    mean, std = vae_stats(vae, mu.device, mu.dtype)
    return (mu - mean) / std


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Normalized latents [B, C, h, w] -> pixels [B, 3, 8h, 8w] in [-1, 1] (clamped by the VAE)."""
    dtype = next(vae.parameters()).dtype
    z = latents.to(dtype)
    mean, std = vae_stats(vae, z.device, dtype)
    # The reference divides by the reciprocal instead of multiplying by std; same in exact arithmetic,
    # kept for bit-compatibility in low precision.
    z = z / (1.0 / std) + mean
    return vae.decode(z[:, :, None]).sample[:, :, 0]


def pixels_to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] -> uint8 PIL images, with the reference's +128 round-half-up and truncation."""
    x = ((127.5 * pixels + 128) / 255).clamp(0, 1)  # in the VAE's dtype, as the reference does
    arr = (x.float().permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)  # [B, H, W, 3]
    return [Image.fromarray(a) for a in arr]


def splice_thoughts(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    generated: torch.Tensor,
    num_prompts: int,
    stop_ids: list[int],
    img_start_id: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Build the image-stage batch of think mode from the prompts and the generated thoughts.

    The conditional rows become prompt + every generated token before the first stop token +
    `<img>`; the text-dropped and all-dropped rows become prompt + `<img>` (they never see the
    thought). Padding stays unattended. (The reference drops the last thought token and attends
    the old left padding: a bug we do not copy.)

    Args:
        input_ids, attention_mask: [3B, L] the text_image-mode processor rows (no trailing `<img>`).
        generated: [B, T] new tokens of the conditional rows.
    Returns:
        (input_ids [3B, L'], attention_mask [3B, L'], thoughts: B lists of kept token ids)
    """
    rows: list[list[int]] = []
    thoughts: list[list[int]] = []
    for r in range(input_ids.shape[0]):
        prompt = input_ids[r][attention_mask[r].bool()].tolist()
        if r < num_prompts:
            kept = []
            for tok in generated[r].tolist():
                if tok in stop_ids:
                    break
                kept.append(tok)
            thoughts.append(kept)
            prompt = prompt + kept
        rows.append(prompt + [img_start_id])
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[r, width - len(row) :] = 1
    return ids.to(input_ids.device), mask.to(input_ids.device), thoughts
