"""Dense pre-training of the tiny InternViT on shapes scenes (the recipe's `vision` step).

Why: trained only through the language loss, the tiny ViT learns colours and counts but barely sees shape (session 6:
"What shape is the red one?" right 0.09 of the time, below chance; a wider, deeper ViT did no better). The 4B model's
InternViT arrives pre-trained; ours gets a short supervised pre-training instead: every ViT patch token (the tokens
that `extract_feature` pixel-shuffles into image tokens) predicts, through a throw-away linear probe,

* the shape of the object covering most of the patch (or "none", or "word" for text ink),
* that object's colour,
* the image's background colour.

So each token has to carry what its object is, not only which colour it has. Scenes come from the world's
understanding distribution (`ShapesGenerator.random_scene`) with their own seed; the probe is dropped afterwards and
only the ViT weights change.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from internvlu.synthesis.shapes_scene import BACKGROUNDS, COLORS, Scene, glyph_mask, render_scene, shape_mask

IGNORE = -100


@dataclasses.dataclass
class VisionPretrainConfig:
    """`vision` step settings (`steps=0` skips the step)."""

    steps: int = 3000
    max_minutes: float | None = 8.0
    lr: float = 2e-3
    batch_size: int = 64
    weight_decay: float = 0.01
    warmup_steps: int = 50
    # A patch is labelled with the object covering the largest share of its pixels when that share is at least
    # this much; otherwise "none".
    min_cover: float = 0.25
    pool_size: int = 20_000  # scenes rendered once, then sampled with replacement
    num_val: int = 512
    eval_every: int = 250
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 0:
            raise ValueError(f"vision.steps must be >= 0, got {self.steps}")
        if self.steps and (self.batch_size < 1 or self.pool_size < self.batch_size):
            raise ValueError(
                f"vision needs batch_size >= 1 and pool_size >= batch_size, got {self.batch_size}, {self.pool_size}"
            )
        if not 0.0 < self.min_cover <= 1.0:
            raise ValueError(f"vision.min_cover must be in (0, 1], got {self.min_cover}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"vision.max_minutes must be > 0 or null, got {self.max_minutes}")


def patch_labels(
    scene: Scene, patch: int, shapes: tuple[str, ...], min_cover: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch (shape, colour) classes of a rendered scene: [g, g] int64 each (g = size // patch).

    shape: 0 none, 1 + shapes.index(s) for an object, len(shapes) + 1 for word ink. colour: 0 none,
    1 + colour index for an object, IGNORE on word patches (ink colour follows the background).
    """
    size = scene.size
    g = size // patch
    cover = []  # [g, g] fraction of each patch covered by each item
    items: list[tuple[int, int]] = []
    names = list(COLORS)
    for obj in scene.objects:
        mask = shape_mask(obj.shape, obj.cx, obj.cy, obj.r, size)
        cover.append(mask.reshape(g, patch, g, patch).mean(axis=(1, 3)))
        items.append((1 + shapes.index(obj.shape), 1 + names.index(obj.color)))
    for word in scene.words:
        glyph = glyph_mask(word.text, word.font_size)
        mask = np.zeros((size, size), dtype=bool)
        mask[word.y : word.y + glyph.shape[0], word.x : word.x + glyph.shape[1]] = glyph
        # Ink is thin: a patch with a few ink pixels is a word patch (a quarter of min_cover).
        cover.append(mask.reshape(g, patch, g, patch).mean(axis=(1, 3)) * 4)
        items.append((len(shapes) + 1, IGNORE))
    shape_cls = np.zeros((g, g), dtype=np.int64)
    color_cls = np.zeros((g, g), dtype=np.int64)
    if cover:
        stack = np.stack(cover)  # [items, g, g]
        best = stack.argmax(axis=0)
        hit = stack.max(axis=0) >= min_cover
        table = np.array(items, dtype=np.int64)  # [items, 2]
        shape_cls[hit] = table[best[hit], 0]
        color_cls[hit] = table[best[hit], 1]
    return shape_cls, color_cls


class _Pool:
    """Rendered scenes as normalised pixels + labels, drawn once."""

    def __init__(self, generator: Any, preprocess: Callable, n: int, patch: int, min_cover: float, seed: int):
        rng = np.random.default_rng(seed)
        shapes = tuple(generator.cfg.shapes)
        backgrounds = list(BACKGROUNDS)
        pixels, shape_cls, color_cls, bg = [], [], [], []
        for _ in range(n):
            scene = generator.random_scene(rng)
            image = render_scene(scene)
            pixels.append(preprocess(image))
            s, c = patch_labels(scene, patch, shapes, min_cover)
            shape_cls.append(torch.from_numpy(s))
            color_cls.append(torch.from_numpy(c))
            bg.append(backgrounds.index(scene.background))
        self.pixels = torch.stack(pixels)  # [n, 3, H, W]
        self.shape = torch.stack(shape_cls)  # [n, g, g]
        self.color = torch.stack(color_cls)  # [n, g, g]
        self.bg = torch.tensor(bg)  # [n]


class DenseProbe(nn.Module):
    """Linear read-out of (shape, colour, background) classes from each ViT patch token."""

    def __init__(self, dim: int, num_shapes: int) -> None:
        super().__init__()
        self.splits = (num_shapes + 2, len(COLORS) + 1, len(BACKGROUNDS))
        self.proj = nn.Linear(dim, sum(self.splits))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.proj(tokens).split(self.splits, dim=-1)  # each [N, g*g, classes]


def vit_patch_tokens(vlm: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The ViT tokens that `extract_feature` pixel-shuffles: [N, g*g, D_v] (CLS dropped)."""
    out = vlm.vision_model(pixel_values, output_hidden_states=vlm.select_layer != -1)
    vit = out.last_hidden_state if vlm.select_layer == -1 else out.hidden_states[vlm.select_layer]
    return vit[:, 1:]


def _losses(
    probe: DenseProbe, tokens: torch.Tensor, pool: _Pool, idx: torch.Tensor
) -> tuple[torch.Tensor, dict]:
    shape_logits, color_logits, bg_logits = probe(tokens)
    n, t = tokens.shape[:2]
    shape_t = pool.shape[idx].reshape(n, t)
    color_t = pool.color[idx].reshape(n, t)
    bg_t = pool.bg[idx][:, None].expand(n, t)
    ls = F.cross_entropy(shape_logits.flatten(0, 1), shape_t.flatten(), ignore_index=IGNORE)
    lc = F.cross_entropy(color_logits.flatten(0, 1), color_t.flatten(), ignore_index=IGNORE)
    lb = F.cross_entropy(bg_logits.flatten(0, 1), bg_t.flatten())
    on_object = (shape_t > 0) & (shape_t <= probe.splits[0] - 2)
    stats = {
        "shape_acc_objects": (shape_logits.argmax(-1) == shape_t)[on_object].float().mean().item(),
        "color_acc_objects": (color_logits.argmax(-1) == color_t)[on_object].float().mean().item(),
        "bg_acc": (bg_logits.argmax(-1) == bg_t).float().mean().item(),
    }
    return ls + lc + lb, stats


def pretrain_vision(
    pipe: Any, generator: Any, cfg: VisionPretrainConfig, log: Callable[[dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """Train `pipe.vlm.vision_model` in place on dense scene labels; returns the validation history."""
    cfg.validate()
    vlm = pipe.vlm
    patch = vlm.patch_size
    preprocess = pipe.processor.understanding_processor.preprocess
    size = generator.cfg.image_size
    vit_size = tuple(pipe.processor.understanding_processor.size)
    if vit_size != (size, size):
        raise ValueError(
            f"the ViT reads {vit_size} images but the world draws {size}px ones; per-patch labels need them equal"
        )
    torch.manual_seed(cfg.seed)
    train = _Pool(generator, preprocess, cfg.pool_size, patch, cfg.min_cover, cfg.seed)
    val = _Pool(generator, preprocess, cfg.num_val, patch, cfg.min_cover, cfg.seed + 1)
    probe = DenseProbe(vlm.vision_model.config.hidden_size, len(generator.cfg.shapes))
    vit = vlm.vision_model
    vit.train()
    params = list(vit.parameters()) + list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()

    def evaluate(step: int, loss: float) -> None:
        vit.eval()
        with torch.no_grad():
            stats = [
                _losses(probe, vit_patch_tokens(vlm, val.pixels[i : i + 128]), val, torch.arange(i, min(i + 128, len(val.bg))))
                for i in range(0, len(val.bg), 128)
            ]  # fmt: skip
        vit.train()
        row = {
            "step": step,
            "train_loss": round(loss, 4),
            "minutes": round((time.perf_counter() - t0) / 60, 2),
        }
        row.update({k: round(float(np.mean([s[1][k] for s in stats])), 4) for k in stats[0][1]})
        row["val_loss"] = round(float(np.mean([s[0].item() for s in stats])), 4)
        history.append(row)
        if log:
            log(row)

    step, loss_value = 0, float("nan")
    while step < cfg.steps:
        if cfg.max_minutes is not None and time.perf_counter() - t0 > cfg.max_minutes * 60:
            break
        progress = step / max(1, cfg.steps)
        if cfg.max_minutes is not None:  # a time cap ends the cosine schedule at the cap, not at `steps`
            progress = max(progress, (time.perf_counter() - t0) / (cfg.max_minutes * 60))
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(train.bg), (cfg.batch_size,), generator=gen)
        loss, _ = _losses(probe, vit_patch_tokens(vlm, train.pixels[idx]), train, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        loss_value = loss.item()
        if step % cfg.eval_every == 0:
            evaluate(step, loss_value)
    if not history or history[-1]["step"] != step:
        evaluate(step, loss_value)
    vit.eval()
    return history
