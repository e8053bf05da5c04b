"""Training losses in the inference convention: next-token cross-entropy and rectified-flow velocity MSE.

Flow convention (identical to the inference scheduler, DPMSolverMultistepScheduler with flow sigmas):
    x_sigma = (1 - sigma) * z + sigma * eps,    target velocity v = eps - z,    head timestep = sigma * 1000,
so that x0_hat = x - sigma * v, the data prediction the solver uses. sigma ~ shift(sigmoid(N(mean, std))) with the
same shift map the scheduler applies to its sigmas (3 sigma / (1 + 2 sigma) for shift 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma: float | Tensor, shift: float) -> float | Tensor:
    """The flow-sigma shift of the scheduler: shift * s / (1 + (shift - 1) * s)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_sigma(rng: np.random.Generator, mean: float, std: float, shift: float) -> float:
    """One training sigma: logit-normal t = sigmoid(N(mean, std)), then shifted (continuous, in (0, 1))."""
    t = 1.0 / (1.0 + np.exp(-rng.normal(mean, std)))
    return float(shift_sigma(t, shift))


def noisy_latents(z: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """x_sigma = (1 - sigma) z + sigma eps; sigma broadcast per sample ([K] -> [K, 1, 1, 1])."""
    s = sigma.view(-1, *([1] * (z.ndim - 1))).to(z.dtype)
    return (1 - s) * z + s * noise


def velocity_target(z: Tensor, noise: Tensor) -> Tensor:
    """v = eps - z (the scheduler's `flow_prediction`)."""
    return noise - z


def model_timesteps(sigma: Tensor, discrete: bool = True) -> Tensor:
    """Head timestep input on the 0..1000 scale.

    `discrete`: the integer timestep int(sigma * 1000), exactly what the inference scheduler feeds for a latent at
    noise level sigma. This matters: the head's sinusoid is taken of t * 1000 (arguments up to 1e6 rad), so its
    high-frequency channels are a different pseudo-random code for every real t; trained on continuous t the head
    never sees the codes of the integer inference timesteps. (The reference trains in bf16, whose rounding of t
    gives a discrete grid as well.)
    """
    t = sigma * NUM_TRAIN_TIMESTEPS
    return torch.floor(t) if discrete else t


def flow_loss_per_sample(
    pred: Tensor, target: Tensor, grids: Sequence[tuple[int, int]], weights: Sequence[Tensor | None] | None = None
) -> Tensor:
    """Mean squared error over each sample's own latent grid (batch latents are padded to the largest grid).

    Args:
        pred, target: [K, C, H, W]; grids: K (h, w) valid latent sizes.
        weights: optional K per-pixel weight maps [h, w] of mean 1 (None entries: uniform).
    Returns:
        [K] per-sample (weighted) MSE in fp32.
    """
    losses = []
    for k, (h, w) in enumerate(grids):
        sq = (pred[k, :, :h, :w].float() - target[k, :, :h, :w].float()).pow(2)  # [C, h, w]
        wk = None if weights is None else weights[k]
        losses.append(sq.mean() if wk is None else (sq * wk.to(sq.device)).mean())
    return torch.stack(losses)


def edit_region_weights(target: Tensor, reference: Tensor, weight: float, threshold: float) -> Tensor:
    """Per-pixel flow-loss weights [h, w] (mean 1) that favour where an edit changes the latent.

    target, reference: [C, h, w] latents of the edited and the source image (same size).
    """
    changed = (target.float() - reference.float()).abs().amax(dim=0) > threshold  # [h, w]
    grown = F.max_pool2d(changed[None, None].float(), 3, stride=1, padding=1)[0, 0]  # one pixel around
    w = 1.0 + weight * grown
    return w / w.mean()


def supervised_turns(labels: Tensor) -> tuple[Tensor, int]:
    """Turn index of every supervised target (row-major order of `labels[:, 1:] != IGNORE_INDEX`) and the count.

    A turn is a maximal run of supervised positions in a row: one assistant answer with its end token, or a think
    completion (thought, </think>, <img>).
    """
    keep = labels[:, 1:] != IGNORE_INDEX  # [R, L-1]
    starts = keep & ~F.pad(keep[:, :-1], (1, 0), value=False)  # a run starts where the previous position is not kept
    ids = torch.cumsum(starts.flatten().long(), 0)[keep.flatten()] - 1  # [n]
    return ids, int(starts.sum())


def ntp_units(labels: Tensor, reduction: str) -> int:
    """What the next-token loss is averaged over: supervised tokens ("token") or turns ("turn")."""
    if reduction == "token":
        return int((labels[:, 1:] != IGNORE_INDEX).sum())
    return supervised_turns(labels)[1]


def ntp_loss_sum(
    hidden: Tensor, labels: Tensor, lm_head: torch.nn.Module, reduction: str = "token"
) -> tuple[Tensor, int]:
    """Summed next-token cross-entropy over supervised positions; logits only where a label exists.

    Args:
        hidden: [R, L, D] final (normed) hidden states; labels: [R, L] with IGNORE_INDEX where unsupervised
            (position t's logits predict labels[t + 1]).
        reduction: "token" sums token losses; "turn" sums each turn's mean token loss, so a one-word answer
            weighs as much as a 40-token thought.
    Returns:
        (summed loss (fp32 scalar), number of units it sums: supervised tokens or turns)
    """
    targets = labels[:, 1:]  # [R, L-1]
    keep = targets != IGNORE_INDEX
    n = int(keep.sum())
    if n == 0:
        return hidden.new_zeros((), dtype=torch.float32), 0
    logits = lm_head(hidden[:, :-1][keep])  # [n, V]
    if reduction == "token":
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), n
    losses = F.cross_entropy(logits.float(), targets[keep], reduction="none")  # [n]
    ids, turns = supervised_turns(labels)
    sums = losses.new_zeros(turns).index_add(0, ids.to(losses.device), losses)
    counts = torch.bincount(ids, minlength=turns).to(losses)
    return (sums / counts).sum(), turns
