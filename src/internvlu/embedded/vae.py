"""Train the embedded model's small Qwen-Image VAE (`AutoencoderKLQwenImage`) on shapes-world images.

The VAE keeps the release's class and code path (5-D `[B, C, T=1, H, W]` tensors, causal 3-D convolutions), only
smaller: e.g. base_dim 8, z_dim 8 and dim_mult [1, 2, 2] give a x4 spatial autoencoder. Two things make it
trainable on two CPU cores:

* `single_frame_convs`: for one frame and no feature cache, a causal 3-D convolution sees two zero-padded past
  frames, so its output equals a 2-D convolution with the last temporal tap of its kernel. Swapping the forward
  for that 2-D convolution is exact (same weights, same outputs) and cuts the encoder/decoder cost about 3x.
* flat-colour images: L1 + MSE with a tiny KL weight reaches > 30 dB within minutes at a high learning rate.

After training, `latents_mean` / `latents_std` are set to the per-channel statistics of the posterior means on
the training images, so the diffusion head sees unit-variance latents (as the release's values do for its VAE).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class VAEArch:
    """Structure of the small Qwen-Image VAE; the spatial factor is 2 ** (len(dim_mult) - 1)."""

    base_dim: int = 8
    z_dim: int = 8
    dim_mult: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    temperal_downsample: list[bool] = dataclasses.field(default_factory=lambda: [False, True])

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    def validate(self) -> None:
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample {self.temperal_downsample} needs len(dim_mult) - 1 = {len(self.dim_mult) - 1} "
                "entries"
            )
        if self.base_dim < 1 or self.z_dim < 1 or self.num_res_blocks < 1:
            raise ValueError(f"VAE sizes must be >= 1, got {self}")


@dataclasses.dataclass
class VAETrainConfig:
    lr: float = 3e-3
    batch_size: int = 16
    steps: int = 2000
    max_minutes: float | None = None
    kl_weight: float = 1e-6
    warmup_steps: int = 20
    seed: int = 0
    eval_every: int = 100
    num_val: int = 64
    # Train on random crops of this side (None: whole images); the VAE is fully convolutional apart from its
    # mid-block attention, and 32 px crops of 64 px images cost a quarter of the compute per sample.
    crop_size: int | None = 32
    # Initial posterior log-variance. diffusers' init gives logvar ~ 0 (latent noise std 1), and Adam needs
    # thousands of steps to walk the bias down before the decoder sees a usable signal; starting at -8
    # (std 0.02) makes the autoencoder learn from the first step while keeping it a VAE.
    init_logvar: float = -8.0


@dataclasses.dataclass
class DecoderNoiseConfig:
    """Decoder-only fine-tune on noisy latents (`harden_decoder`).

    A VAE trained with a tiny KL weight has a fragile decoder: measured on the session-3 VAE, Gaussian noise of std
    0.1 on the normalised latents (the size of a diffusion head's residual error) already decodes to scattered
    coloured specks, and a zero latent decodes to pink. Training the decoder to reconstruct the clean image from
    z + sigma * std * n, sigma ~ U(0, max_sigma), makes it map the neighbourhood of each latent to the clean scene;
    the encoder, and so every latent the head trains on, stays unchanged.
    """

    steps: int = 2000
    lr: float = 1e-3
    batch_size: int = 32
    max_sigma: float = 0.5  # in units of the per-channel latents_std
    crop_size: int | None = 32  # pixel side of the training crops (None: whole images)
    warmup_steps: int = 20
    seed: int = 0
    eval_every: int = 500
    num_val: int = 64

    def validate(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"decoder noise fine-tune needs steps >= 0, batch_size >= 1, lr > 0; got {self}")
        if not 0.0 <= self.max_sigma <= 2.0:
            raise ValueError(f"max_sigma must be in [0, 2], got {self.max_sigma}")


def build_vae(
    arch: VAEArch, latents_mean: Sequence[float] | None = None, latents_std: Sequence[float] | None = None
):
    from diffusers import AutoencoderKLQwenImage

    arch.validate()
    return AutoencoderKLQwenImage(
        base_dim=arch.base_dim, z_dim=arch.z_dim, dim_mult=list(arch.dim_mult), num_res_blocks=arch.num_res_blocks,
        attn_scales=[], temperal_downsample=list(arch.temperal_downsample), dropout=0.0,
        latents_mean=list(latents_mean) if latents_mean is not None else [0.0] * arch.z_dim,
        latents_std=list(latents_std) if latents_std is not None else [1.0] * arch.z_dim,
    )  # fmt: skip


def _single_frame_forward(conv: nn.Conv3d) -> Callable[..., torch.Tensor]:
    original = conv.forward
    pad_w, _, pad_h, _, pad_t, _ = conv._padding  # (w, w, h, h, 2*p_t, 0)
    k_t = conv.kernel_size[0]

    def forward(x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        # Exact only for one frame, no cache, unit temporal stride and a causal pad of k_t - 1 zero frames.
        if x.shape[2] != 1 or cache_x is not None or conv.stride[0] != 1 or pad_t != k_t - 1:
            return original(x, cache_x)
        weight = conv.weight[:, :, -1]  # [out, in, kh, kw]: the tap that meets the real frame
        y = F.conv2d(x[:, :, 0], weight, conv.bias, stride=conv.stride[1:], padding=(pad_h, pad_w))
        return y[:, :, None]  # [B, C, 1, H, W]

    return forward


@contextlib.contextmanager
def single_frame_convs(vae: nn.Module) -> Iterator[nn.Module]:
    """Run `vae`'s causal 3-D convolutions as the equivalent 2-D convolutions for one-frame inputs (exact)."""
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

    # Nested use (e.g. psnr() inside train_vae) leaves the outer patch in place.
    convs = [m for m in vae.modules() if isinstance(m, QwenImageCausalConv3d) and "forward" not in m.__dict__]
    for conv in convs:
        conv.forward = _single_frame_forward(conv)
    try:
        yield vae
    finally:
        for conv in convs:
            del conv.forward  # back to the class method


@contextlib.contextmanager
def single_frame_convs_everywhere() -> Iterator[None]:
    """`single_frame_convs` for every Qwen-Image VAE in the process (class-level patch; exact for one-frame inputs,
    the original forward otherwise), for code that builds its own VAE (latent pre-computation, evaluation)."""
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

    original = QwenImageCausalConv3d.forward
    if getattr(original, "_single_frame", False):
        yield  # already patched by an outer context
        return

    def forward(self: nn.Conv3d, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        pad_w, _, pad_h, _, pad_t, _ = self._padding
        if x.shape[2] != 1 or cache_x is not None or self.stride[0] != 1 or pad_t != self.kernel_size[0] - 1:
            return original(self, x, cache_x)
        y = F.conv2d(
            x[:, :, 0], self.weight[:, :, -1], self.bias, stride=self.stride[1:], padding=(pad_h, pad_w)
        )
        return y[:, :, None]  # [B, C, 1, H, W]

    forward._single_frame = True  # type: ignore[attr-defined]
    QwenImageCausalConv3d.forward = forward
    try:
        yield
    finally:
        QwenImageCausalConv3d.forward = original


def images_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 [H, W, 3] arrays -> float [N, 3, H, W] in [-1, 1] (the pipeline's VAE input range)."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def psnr(vae: nn.Module, images: torch.Tensor, batch_size: int = 64, noise_sigma: float = 0.0, seed: int = 0) -> float:
    """Reconstruction PSNR (dB, images in [0, 1]) through the posterior mean, as the pipeline encodes.

    `noise_sigma` > 0 adds Gaussian noise of that many latents_std per channel to the mean before decoding (how
    well the decoder tolerates a diffusion head's residual error); `seed` fixes that noise."""
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1) if noise_sigma else None
    gen = torch.Generator().manual_seed(seed)
    mse, n = 0.0, 0
    with torch.no_grad(), single_frame_convs(vae):
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size, :, None]  # [B, 3, 1, H, W]
            z = vae.encode(x).latent_dist.mode()
            if std is not None:
                z = z + noise_sigma * std * torch.randn(z.shape, generator=gen)
            y = vae.decode(z).sample.clamp(-1, 1)
            mse += ((y - x) / 2).pow(2).mean(dim=(1, 2, 3, 4)).sum().item()
            n += len(x)
    return 10 * math.log10(1.0 / max(mse / n, 1e-12))


@torch.no_grad()
def latent_statistics(
    vae: nn.Module, images: torch.Tensor, batch_size: int = 64
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means over `images`."""
    mus = []
    with single_frame_convs(vae):
        for i in range(0, len(images), batch_size):
            mus.append(vae.encode(images[i : i + batch_size, :, None]).latent_dist.mode()[:, :, 0])
    mu = torch.cat(mus)  # [N, z, h, w]
    mean = mu.mean(dim=(0, 2, 3))
    std = mu.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 5) for v in mean], [round(float(v), 5) for v in std]


def encode_moments(vae: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and log-variance of one-frame inputs [B, 3, 1, H, W] (as `vae.encode`, no feature cache:
    for T=1 the cached path computes the same values)."""
    moments = vae.quant_conv(vae.encoder(x))  # [B, 2z, 1, h, w]
    mu, logvar = moments.chunk(2, dim=1)
    return mu, logvar.clamp(-30.0, 20.0)


def decode_unclamped(vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """`vae.decode(z).sample` without its final clamp to [-1, 1]: the clamp gives overshooting pixels no gradient,
    and the shapes world is full of saturated colours (white / black backgrounds), so training would stall."""
    return vae.decoder(vae.post_quant_conv(z))


def _random_crops(x: torch.Tensor, size: int | None, gen: torch.Generator) -> torch.Tensor:
    if size is None or size >= x.shape[-1]:
        return x
    h, w = x.shape[-2:]
    ys = torch.randint(0, h - size + 1, (len(x),), generator=gen).tolist()
    xs = torch.randint(0, w - size + 1, (len(x),), generator=gen).tolist()
    return torch.stack([img[:, y : y + size, c : c + size] for img, y, c in zip(x, ys, xs)])


def train_vae(
    arch: VAEArch,
    images: torch.Tensor,
    config: VAETrainConfig,
    log: Callable[[dict], None] | None = None,
    init: nn.Module | None = None,
):
    """Train a fresh VAE of `arch` on `images` ([N, 3, H, W] in [-1, 1]); returns (vae, history).

    The last `config.num_val` images are held out for the PSNR curve; the returned VAE has its latents_mean /
    latents_std set from the training images. `init`: continue training this VAE instead of a fresh one.
    """
    if len(images) <= config.num_val:
        raise ValueError(f"need more than num_val={config.num_val} images, got {len(images)}")
    torch.manual_seed(config.seed)
    vae = (init if init is not None else build_vae(arch)).float().train()
    if init is None:
        with torch.no_grad():
            vae.quant_conv.weight[arch.z_dim :].mul_(0.1)  # [2z, 2z, 1, 1, 1]: the logvar half
            vae.quant_conv.bias[arch.z_dim :].fill_(config.init_logvar)
    train, val = images[: -config.num_val], images[-config.num_val :]
    opt = torch.optim.AdamW(vae.parameters(), lr=config.lr, betas=(0.9, 0.99), weight_decay=0.0)
    gen = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    step = 0
    with single_frame_convs(vae):
        while step < config.steps:
            if config.max_minutes is not None and time.perf_counter() - start > 60 * config.max_minutes:
                break
            # Cosine decay after a short warm-up (the last steps sharpen edges), over steps or minutes, whichever
            # runs out first, so a time-capped run still ends at the low learning rate.
            progress = step / config.steps
            if config.max_minutes is not None:
                progress = max(progress, (time.perf_counter() - start) / (60 * config.max_minutes))
            warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
            lr = config.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, len(train), (config.batch_size,), generator=gen)
            x = _random_crops(train[idx], config.crop_size, gen)[:, :, None]  # [B, 3, 1, H, W]
            mu, logvar = encode_moments(vae, x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
            y = decode_unclamped(vae, z)
            rec = (y - x).abs().mean() + (y - x).pow(2).mean()
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1).mean() / x[0].numel()
            loss = rec + config.kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            step += 1
            if step % config.eval_every == 0 or step == config.steps:
                vae.eval()
                entry = {
                    "step": step, "minutes": round((time.perf_counter() - start) / 60, 3),
                    "cpu_minutes": round((time.process_time() - cpu_start) / 60, 3),
                    "loss": round(loss.item(), 5), "psnr": round(psnr(vae, val), 3),
                }  # fmt: skip
                vae.train()
                history.append(entry)
                if log:
                    log(entry)
    vae.eval()
    if not history or history[-1]["step"] != step:
        history.append(
            {
                "step": step,
                "minutes": round((time.perf_counter() - start) / 60, 3),
                "psnr": round(psnr(vae, val), 3),
            }
        )
        if log:
            log(history[-1])
    mean, std = latent_statistics(vae, train[:512])
    vae.register_to_config(latents_mean=mean, latents_std=std)
    return vae, history


def harden_decoder(
    vae: nn.Module,
    images: torch.Tensor,
    config: DecoderNoiseConfig,
    log: Callable[[dict], None] | None = None,
):
    """Fine-tune only the decoder (and post_quant_conv) of a trained VAE to decode noisy latents to clean images.

    `images` [N, 3, H, W] in [-1, 1]; the last `config.num_val` are held out. The latent statistics in the config
    stay as they are (the encoder is frozen). Returns (vae, history) with the clean and noisy (sigma 0.3) PSNR.
    """
    config.validate()
    if len(images) <= config.num_val:
        raise ValueError(f"need more than num_val={config.num_val} images, got {len(images)}")
    factor = 2 ** (len(vae.config.dim_mult) - 1)  # spatial downsampling, as VAEArch.downsample_factor
    if config.crop_size is not None and config.crop_size % factor:
        raise ValueError(f"crop_size={config.crop_size} must be a multiple of the VAE's x{factor} downsampling")
    torch.manual_seed(config.seed)
    train, val = images[: -config.num_val], images[-config.num_val :]
    vae = vae.float()
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for q in vae.parameters():
        q.requires_grad_(False)
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.99), weight_decay=0.0)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    gen = torch.Generator().manual_seed(config.seed)

    def measure(step: int, loss: float | None) -> dict:
        vae.eval()
        entry = {
            "step": step, "minutes": round((time.perf_counter() - start) / 60, 3),
            "loss": None if loss is None else round(loss, 5),
            "psnr": round(psnr(vae, val), 3), "psnr_noise_0.3": round(psnr(vae, val, noise_sigma=0.3), 3),
        }  # fmt: skip
        vae.train()
        if log:
            log(entry)
        return entry

    start = time.perf_counter()
    history = [measure(0, None)]
    vae.train()
    with single_frame_convs(vae):
        for step in range(1, config.steps + 1):
            warm = min(1.0, step / max(1, config.warmup_steps))
            lr = config.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - 1) / config.steps)))
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, len(train), (config.batch_size,), generator=gen)
            x = train[idx][:, :, None]  # [B, 3, 1, H, W]
            with torch.no_grad():
                mu = vae.encode(x).latent_dist.mode()  # [B, z, 1, h, w]
            if config.crop_size is not None and config.crop_size < x.shape[-1]:
                c = config.crop_size // factor  # the same window in latent and pixel space
                oy, ox = torch.randint(0, mu.shape[-1] - c + 1, (2,), generator=gen).tolist()
                mu = mu[..., oy : oy + c, ox : ox + c]
                x = x[..., oy * factor : (oy + c) * factor, ox * factor : (ox + c) * factor]
            sigma = torch.rand(len(x), 1, 1, 1, 1, generator=gen) * config.max_sigma
            y = decode_unclamped(vae, mu + sigma * std * torch.randn(mu.shape, generator=gen))
            loss = (y - x).abs().mean() + (y - x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % config.eval_every == 0 or step == config.steps:
                history.append(measure(step, loss.item()))
    vae.eval()
    for q in vae.parameters():
        q.requires_grad_(True)
    return vae, history
