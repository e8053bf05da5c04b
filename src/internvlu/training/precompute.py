"""Pre-compute the VAE latents of a run's data into `data.latent_cache` (then training reads them back).

Targets are encoded at the size training uses (`data.resolution`: fixed square or aspect bucket, cover-crop), and
reference images (when `data.use_reference_latents`) as the generation processor resizes them, so every latent a
run needs is a cache hit. Under torchrun each process encodes its share of the records.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from internvlu.processing.images import round_to_bf16
from internvlu.training.batching import generation_pixels, resize_cover, target_size
from internvlu.training.config import TrainConfig
from internvlu.training.dataset import load_index, load_uncached
from internvlu.training.latents import LatentEncoder
from internvlu.training.parallelize import init_distributed

logger = logging.getLogger(__name__)


def precompute_latents(config: TrainConfig, batch_size: int = 16) -> dict[str, Any]:
    """Encode every target (and reference) image of `config.data.sources`; returns counts."""
    if not config.data.latent_cache:
        raise ValueError("--precompute-latents needs data.latent_cache=<folder>")
    from internvlu.training.model_factory import build_pipeline

    env = init_distributed()
    start = time.time()
    pipe = build_pipeline(config.model, seed=config.seed)
    dtype = torch.bfloat16 if config.train.dtype == "bfloat16" else torch.float32
    pipe.vae.to(env.device, dtype)
    encoder = LatentEncoder(pipe.vae, env.device, dtype, cache_dir=config.data.latent_cache)
    samples, tracker = load_index(
        config.data.sources,
        max_bad_fraction=config.data.max_bad_fraction,
        check_images=config.data.check_images,
    )
    gen_proc = pipe.processor.generation_processor
    pending: list[torch.Tensor] = []
    images = 0
    for i, sample in enumerate(samples):
        if i % env.world_size != env.rank or sample.target is None:
            continue
        target = load_uncached(sample.target)
        h, w = target_size(target.height, target.width, config.data.resolution)
        pending.append(generation_pixels(resize_cover(target, h, w), gen_proc))
        if config.data.use_reference_latents:
            pending += [round_to_bf16(gen_proc.preprocess(load_uncached(r))) for r in sample.images]
        if len(pending) >= batch_size:
            encoder.posteriors(pending)
            images += len(pending)
            pending = []
    if pending:
        encoder.posteriors(pending)
        images += len(pending)
    env.barrier()
    return {
        "rank": env.rank,
        "images": images,
        "encoded": encoder.misses,
        "already_cached": encoder.hits,
        "cache": str(encoder.cache),
        "bad_records": tracker.summary(),
        "seconds": round(time.time() - start, 2),
    }
