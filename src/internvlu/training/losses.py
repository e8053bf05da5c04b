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


def flow_loss_per_sample(pred: Tensor, target: Tensor, grids: Sequence[tuple[int, int]]) -> Tensor:
    """Mean squared error over each sample's own latent grid (batch latents are padded to the largest grid).

    Args:
        pred, target: [K, C, H, W]; grids: K (h, w) valid latent sizes.
    Returns:
        [K] per-sample MSE in fp32.
    """
    losses = []
    for k, (h, w) in enumerate(grids):
        diff = pred[k, :, :h, :w].float() - target[k, :, :h, :w].float()
        losses.append(diff.pow(2).mean())
    return torch.stack(losses)


def ntp_loss_sum(hidden: Tensor, labels: Tensor, lm_head: torch.nn.Module) -> tuple[Tensor, int]:
    """Summed next-token cross-entropy over supervised positions; logits only where a label exists.

    Args:
        hidden: [R, L, D] final (normed) hidden states; labels: [R, L] with IGNORE_INDEX where unsupervised
            (position t's logits predict labels[t + 1]).
    Returns:
        (sum of token losses (fp32 scalar), number of supervised tokens)
    """
    targets = labels[:, 1:]  # [R, L-1]
    keep = targets != IGNORE_INDEX
    n = int(keep.sum())
    if n == 0:
        return hidden.new_zeros((), dtype=torch.float32), 0
    logits = lm_head(hidden[:, :-1][keep])  # [n, V]
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), n
