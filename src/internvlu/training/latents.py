"""VAE latents of target and reference images: encoded on the fly, or pre-computed to disk and read back.

The VAE is frozen (no gradients, no optimizer state). Latents use the inference normalisation
`(mu - latents_mean) / latents_std` (pipeline.stages.encode_references); with `sampling="sample"` a posterior
sample replaces the mean, drawn from a generator seeded per image so runs stay reproducible.

The cache stores the posterior mean and std of each preprocessed image under
`CACHE/<vae fingerprint>/<key[:2]>/<key>.safetensors`, key = sha256 of the exact pixel tensor the VAE sees, so a
changed image, size or preprocessing never hits a stale entry, and a different VAE uses a different folder.
Files are written under a temporary name and renamed (safe with several writers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

logger = logging.getLogger(__name__)


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """sha256 over the VAE's config and weights (first 16 hex digits)."""
    digest = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def pixel_key(pixels: Tensor) -> str:
    data = pixels.detach().float().cpu().contiguous()
    digest = hashlib.sha256(str(tuple(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()


class LatentEncoder:
    """Encode [3, H, W] images in [-1, 1] to normalised latents [C, H/8, W/8].

    Args:
        vae: diffusers AutoencoderKLQwenImage (frozen).
        device, dtype: where/how the VAE runs.
        cache_dir: read/write pre-computed posteriors here (None: always encode).
        sampling: "mode" (posterior mean, as inference encodes references) or "sample".
        read_only: use the cache but never write to it.
    """

    def __init__(
        self,
        vae: torch.nn.Module,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        cache_dir: str | os.PathLike[str] | None = None,
        sampling: str = "mode",
        read_only: bool = False,
    ) -> None:
        self.vae = vae.requires_grad_(False).eval()
        self.device = device
        self.dtype = dtype
        self.sampling = sampling
        self.read_only = read_only
        mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(-1, 1, 1)
        self.latents_mean, self.latents_std = mean, std
        self.cache = Path(cache_dir) / vae_fingerprint(vae) if cache_dir else None
        self.hits = 0
        self.misses = 0

    @torch.no_grad()
    def _posterior(self, pixels: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """(mu, std) per image (unnormalised, CPU fp32); images of one size are encoded together."""
        out: list[tuple[Tensor, Tensor] | None] = [None] * len(pixels)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, p in enumerate(pixels):
            groups[(p.shape[-2], p.shape[-1])].append(i)
        for idx in groups.values():
            x = torch.stack([pixels[i] for i in idx]).to(self.device, self.dtype)[
                :, :, None
            ]  # [n, 3, T=1, H, W]
            dist = self.vae.encode(x).latent_dist
            mu, std = dist.mean[:, :, 0].float().cpu(), dist.std[:, :, 0].float().cpu()  # [n, C, h, w]
            for j, i in enumerate(idx):
                out[i] = (mu[j], std[j])
        return out  # type: ignore[return-value]

    def _path(self, key: str) -> Path:
        assert self.cache is not None
        return self.cache / key[:2] / f"{key}.safetensors"

    def posteriors(self, pixels: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        if self.cache is None:
            self.misses += len(pixels)
            return self._posterior(pixels)
        keys = [pixel_key(p) for p in pixels]
        out: list[tuple[Tensor, Tensor] | None] = [None] * len(pixels)
        todo = []
        for i, key in enumerate(keys):
            path = self._path(key)
            if path.is_file():
                data = load_file(str(path))
                out[i] = (data["mean"], data["std"])
                self.hits += 1
            else:
                todo.append(i)
        if todo:
            self.misses += len(todo)
            fresh = self._posterior([pixels[i] for i in todo])
            for i, (mu, std) in zip(todo, fresh):
                out[i] = (mu, std)
                if not self.read_only:
                    self._store(keys[i], mu, std)
        return out  # type: ignore[return-value]

    def _store(self, key: str, mu: Tensor, std: Tensor) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        save_file({"mean": mu.contiguous(), "std": std.contiguous()}, str(tmp))
        os.replace(tmp, path)

    def encode(self, pixels: Sequence[Tensor], seeds: Sequence[int] | None = None) -> list[Tensor]:
        """Normalised latents [C, h, w] (CPU fp32), one per image."""
        out = []
        for i, (mu, std) in enumerate(self.posteriors(pixels)):
            z = mu
            if self.sampling == "sample":
                gen = torch.Generator().manual_seed(int(seeds[i]) if seeds is not None else i)
                z = mu + std * torch.randn(mu.shape, generator=gen)
            out.append((z - self.latents_mean) / self.latents_std)
        return out
