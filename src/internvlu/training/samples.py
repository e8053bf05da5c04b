"""Periodic samples during training: images for a fixed prompt list and answers to fixed questions.

They run through the inference pipeline itself (assembled around the live modules), so what is logged is what an
export would produce. Noise comes from a seeded CPU generator per prompt and answers are greedy, so the global RNG
streams of training are untouched and samples of different steps are comparable.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from internvlu.training.config import SampleConfig

logger = logging.getLogger(__name__)


@torch.no_grad()
def write_samples(
    pipe: Any, cfg: SampleConfig, out_dir: Path, step: int, write: bool = True
) -> dict[str, Any]:
    """Generate every prompt / answer every question; files go to OUT/samples/step-XXXXXXXX/ when `write`.

    All processes of a sharded run call this (the forward passes are collective); only `write` ones save.
    """
    folder = out_dir / "samples" / f"step-{step:08d}"
    if write:
        folder.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"step": step, "images": [], "answers": []}
    for i, prompt in enumerate(cfg.prompts):
        result = pipe.generate(
            prompt, height=cfg.height, width=cfg.width, num_inference_steps=cfg.num_inference_steps,
            all_cfg_scale=cfg.all_cfg_scale, part_cfg_scale=cfg.part_cfg_scale, seed=cfg.seed + i, progress=False,
        )  # fmt: skip
        name = f"{i:02d}.png"
        if write:
            result.images[0].save(folder / name)
        record["images"].append({"prompt": prompt, "file": name})
    for question in cfg.questions:
        answer = pipe.chat(question, max_new_tokens=cfg.max_new_tokens).texts[0]
        record["answers"].append({"question": question, "answer": answer})
    if write:
        (folder / "samples.json").write_text(
            json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        logger.info("samples of step %d in %s", step, folder)
    return record
