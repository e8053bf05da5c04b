"""The `shapes-tiny` recipe: the whole embedded-model run in one command, from nothing to a shippable folder.

Steps (each writes into `output_dir`, and each is skipped when its output already exists, so a killed run resumes):

1. `data/`: shapes-world synthesis (`run_synthesis("shapes", ...)`, tar shards, fixed seed).
2. `tokenizer/`: byte-level BPE trained with `tokenizers` on the text of fresh shapes samples plus every chat-template
   string and special token (internvlu.embedded.tokenizer).
3. `vae/`: the small Qwen-Image VAE trained on shapes images (internvlu.embedded.vae); its PSNR goes to the card.
   `vae_decoder/` (only with `vae.decoder.steps > 0`): the same VAE with its decoder fine-tuned to decode noisy
   latents to clean images (the encoder, hence every latent, is unchanged); the model then uses this one.
4. `init/`: a fresh InternVL-U of `arch` (InternViT, Qwen3, MMDiT head) with the trained VAE, official layout.
   `vision/` (only with `vision.steps > 0`): `init/` with its InternViT pre-trained on dense per-patch labels of
   fresh scenes (shape, colour, background; internvlu.embedded.vision), the tiny stand-in for a pre-trained InternViT.
5. `latents/`: VAE latents of every target / reference image, computed once.
6. The paper's stages, scaled down (each a `Trainer` run continuing from the previous export):
   `understanding` (no pretrained MLLM exists here: NTP on VQA + think text, MLLM trained, head idle),
   `generation` (MLLM frozen, flow loss on T2I / edit / think images), `continued` (the same, edit-heavy: paper
   stage 2) and `unified` (everything, NTP:flow).
   Each stage is scored with `evaluate_shapes` on a few prompts (the score-vs-minutes curve).
7. `model/`: the final export (bf16), its full `evaluate_shapes` scores and the model card (README.md + card.json).

`internvlu train --recipe shapes-tiny [key=value ...]` runs it; `shapes-tiny-smoke` is the same code path at toy
sizes (under a minute) for CI.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from internvlu.embedded.vae import DecoderNoiseConfig, VAEArch, VAETrainConfig, single_frame_convs_everywhere
from internvlu.embedded.vision import VisionPretrainConfig
from internvlu.training.config import ModelArch

logger = logging.getLogger("internvlu.embedded")

ALL_TASKS = ("understanding", "t2i", "edit", "think")


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class WorldSettings:
    """The shapes world (internvlu.synthesis.shapes.ShapesConfig fields that the recipe sets)."""

    image_size: int = 64
    shapes: list[str] = dataclasses.field(
        default_factory=lambda: ["circle", "square", "triangle", "diamond", "star"]
    )
    # Object half-extents (fraction of the side); larger objects cover more of the 8x8 token grid.
    size_fracs: list[float] = dataclasses.field(default_factory=lambda: [0.12, 0.15, 0.18])
    # Words are the hardest thing to redraw exactly (an edit must keep them letter for letter): rarer words
    # keep the edit task learnable while the read_word questions and replace_word edits still occur.
    word_prob: float = 0.1
    # "canonical": t2i and think targets fix what their prompt leaves open (white background, large objects on
    # fixed slots, a default colour per shape), so each prompt has one right image. Measured (head-only pilot, same
    # 2.6 min): shape-only prompts drawn right 0.73 vs 0.07 with "random" layouts, named colour+shape 0.25 vs 0.0.
    t2i_layout: str = "canonical"
    # Edit source scenes (the target keeps the source's background): at most `edit_max_objects` objects on one of
    # `edit_backgrounds`. Measured (session 8, the session-6 VAE): after its per-channel normalisation a black
    # background's latents have rms 2.10 (max 6.7) against 0.83 white, 0.57 light gray, 0.51 gray, and 4 of 7
    # black-background edits came back as noise (session 7); every edit also had to keep up to 3 other objects
    # in place while the head copied its source (kept: add 0.88 ... move 0.15). Session 8 draws edit sources on
    # white with one or two objects (on these scenes: session-6 model 0.055, session-8 model 0.20 of 200 edits);
    # `world.edit_max_objects=4` with
    # `'world.edit_backgrounds=["white","light gray","gray","black"]'` restores the session-6 world.
    edit_max_objects: int = 2
    edit_backgrounds: list[str] = dataclasses.field(default_factory=lambda: ["white"])
    # "grid" (session 9): edit source objects sit on 3x3 cell centres (the points "move" edits target) and "add"
    # fills the first free cell, so every edit target is one of few drawings; "random" places them anywhere (and
    # "add" anywhere free: no single right answer). Why: the session-8 head drew crisp shapes at the canonical t2i
    # slots but blobs for edits that redraw an object elsewhere (move 0.07, resize 0.04, reshape 0.03, add 0.0).
    edit_layout: str = "grid"

    def shapes_config(self, tasks: tuple[str, ...] = ALL_TASKS, weights: tuple[float, ...] = ()):
        from internvlu.synthesis.shapes import ShapesConfig

        return ShapesConfig(
            image_size=self.image_size, tasks=tasks, task_weights=weights, shapes=tuple(self.shapes),
            size_fracs=tuple(self.size_fracs), word_prob=self.word_prob, t2i_layout=self.t2i_layout,
            edit_max_objects=self.edit_max_objects, edit_backgrounds=tuple(self.edit_backgrounds),
            edit_layout=self.edit_layout,
        )  # fmt: skip


@dataclasses.dataclass
class SynthSettings:
    # 80k (session 8; 40k before): the 5,000-step understanding stage would otherwise see each VQA sample ~10 times
    # (synthesis costs ~0.4 min per 40k).
    num_samples: int = 80_000
    # understanding, t2i, edit, think
    task_weights: list[float] = dataclasses.field(default_factory=lambda: [2.0, 3.0, 2.0, 1.0])
    shard_size: int = 2000
    workers: int = 2


@dataclasses.dataclass
class TokenizerSettings:
    vocab_size: int = 1024
    corpus_samples: int = 4000
    template_repeats: int = 200


@dataclasses.dataclass
class VAESettings:
    arch: VAEArch = dataclasses.field(default_factory=VAEArch)
    # Measured on 2 idle cores: ~0.17 s per step at batch 32 of 32 px crops (PSNR rises ~1 dB per 100 steps
    # early on), so 6000 steps take ~17 minutes; the cosine schedule follows the time cap when it comes first.
    train: VAETrainConfig = dataclasses.field(
        default_factory=lambda: VAETrainConfig(steps=6000, batch_size=32, max_minutes=25.0, eval_every=100)
    )
    num_images: int = 4000
    pretrained: str | None = None  # a VAE folder to reuse (save_pretrained layout) instead of training one
    # The `decoder` step: decoder-only fine-tune on noisy latents (steps=0, the default, skips it). Measured
    # (session 5): 2000 steps (~2.5 min) raise the PSNR of decoding latents + 0.3 std noise from 20.8 to 27.7 dB
    # for 2.4 dB of clean PSNR (32.5 -> 30.1), but a full run with it (and dit_init="adaln_zero") scored lower
    # than the shipped model (docs/embedded.md, session 5), so the shipped recipe leaves it off:
    # `vae.decoder.steps=2000` turns it on.
    decoder: DecoderNoiseConfig = dataclasses.field(default_factory=lambda: DecoderNoiseConfig(steps=0))


@dataclasses.dataclass
class StageSettings:
    """One scaled-down paper stage (a Trainer run)."""

    steps: int = 1000
    max_minutes: float | None = None
    lr: float = 1e-3
    batch_size: int = 16
    weight_decay: float = 0.0
    warmup_steps: int = 50
    task_weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"t2i": 1.0})
    ntp_weight: float = 0.0
    flow_weight: float = 1.0
    edit_region_weight: float = 0.0  # LossConfig.edit_region_weight: extra flow-loss weight where an edit changes
    ntp_reduction: str = "token"  # LossConfig.ntp_reduction: average the next-token loss per token or per turn
    # LossConfig.logit_mean: training noise levels sigma = sigmoid(N(logit_mean, 1)); > 0 draws noisier samples.
    logit_mean: float = 0.0
    trainable: list[str] = dataclasses.field(default_factory=lambda: ["generation_decoder"])
    frozen: list[str] = dataclasses.field(default_factory=list)  # prefixes inside `trainable` kept fixed
    eval_num: int = 16  # evaluate_shapes prompts per category after the stage (0 = skip)
    # Samples synthesized for this stage only, into `data-<stage>/` (the shared `data/` stays as the earlier stages
    # saw it): `extra_samples` t2i samples of `extra_t2i_categories`, which join the stage's t2i pool. They are drawn
    # without de-duplication: a small category ("placed" has 1,080 distinct prompts) repeats, and the count sets
    # its share of the stage's t2i draws.
    extra_samples: int = 0
    extra_t2i_categories: list[str] = dataclasses.field(default_factory=list)
    # Minutes held back for the steps after this stage: it also stops once the recipe has used
    # `ShapesTinyConfig.budget_minutes - reserve_minutes` (None: only `max_minutes` caps it).
    reserve_minutes: float | None = None
    # DataConfig.group_by_length: plan this many batches at once and batch rows of similar length together.
    group_by_length: int = 1
    # Split each step's batch into this many micro-batches of length-sorted rows (DataConfig.sort_micro_batches):
    # the same samples and gradient per step, less padding in the LLM.
    micro_batches: int = 1


def _understanding_stage() -> StageSettings:
    # Session 8: 5,000 steps (1,500 before). With 64 image tokens a step takes ~0.7-1.0 s on 2 threads; vqa rose
    # 0.595 -> 0.695 from 1,153 to 2,653 steps in the session-7 pilot and reached 0.72 after these 5,000 steps (61 min
    # on an idle machine, same 200 questions). max_minutes keeps the recipe within budget
    # on a slower machine (the cosine schedule then follows the cap).
    return StageSettings(
        steps=5000, max_minutes=75.0, lr=2e-3, batch_size=32, weight_decay=0.01,
        task_weights={"understanding": 4.0, "think": 1.0}, ntp_weight=1.0, flow_weight=0.0, trainable=["vlm"],
        frozen=["vlm.vision_model"], eval_num=0,
    )  # fmt: skip


def _generation_stage() -> StageSettings:
    return StageSettings(
        steps=6500, max_minutes=50.0, lr=2e-3, batch_size=16,
        task_weights={"t2i": 4.0, "edit": 3.0, "think": 1.0}, trainable=["generation_decoder"],
    )  # fmt: skip


def _continued_stage() -> StageSettings:
    # Paper stage 2 (continued pre-training, MLLM frozen, T2I:edit 3:4 there): edit-heavy here. Measured (session 10,
    # 200 fresh edits, from the session-9 model): 2,000 edit-only steps at lr 1e-3 raised edit 0.23 -> 0.495 (add
    # 0.08 -> 0.63, reshape 0.18 -> 0.54, resize 0.33 -> 0.70; move 0.0 -> 0.03) in 15 min, but GenEval fell
    # 0.89 -> 0.65 and think 0.50 -> 0.23 (40 per category): the edit task was undertrained, not unlearnable.
    # T2I and think samples stay in the mix to keep what the generation stage learned.
    # Session 11: the changed latent pixels of an edit weigh 1 + 3 in the flow loss (most of an edit target is the
    # copied white background) and 500 more steps (the budget's spare minutes): edit 0.47 -> 0.50 on the recipe's
    # 200 edits (seed 0), GenEval 0.895 -> 0.914; with evaluation seed 1 edit 0.44 -> 0.475: a small gain, below
    # the ~0.05 spread between draws (docs/embedded.md, session 11).
    # Session 12: the stage ends early enough that what follows it (eval, `unified`, evals: 11.2 min in session 11,
    # 13.2 min on the slower machine of session 12) still fits in the recipe's 150 minutes (reserve_minutes). The
    # same settings took 22.6 min at 0.38 s per step in session 11 and hit the 24-minute cap at 0.43 s per step
    # (3,309 steps) in session 12.
    # Session 16: noisier training samples (logit_mean 0.7: median sigma 0.67 instead of 0.5, 7% of draws above
    # sigma 0.9 instead of 1.4%). Failed edits hedged between two places (two smudged copies), the mark of an
    # undertrained high-noise regime, where an edit's layout is decided. 1,500-step pilots from the session-11
    # `generation` export, 400 edits: 0.297 -> 0.400 (lr 2e-3: 0.287; edit:T2I:think 10:1:1: 0.318). The full run
    # (session 16, with `unified` at the same logit_mean) scores edit 0.585 (seed 0) against 0.50. Reserve 15 min:
    # the session-16 machine needed 10.7-13.2 min after the stage (evaluations, `unified`).
    return StageSettings(
        steps=3500, max_minutes=24.0, lr=1e-3, batch_size=16,
        task_weights={"edit": 4.0, "t2i": 1.0, "think": 1.0}, trainable=["generation_decoder"],
        edit_region_weight=3.0, reserve_minutes=15.0, logit_mean=0.7,
    )  # fmt: skip


def _unified_stage() -> StageSettings:
    # Session 16: the same noise levels as `continued` (logit_mean 0.7). Switching back to 0.0 here broke the head's
    # fine detail: single objects 1.0 after `continued` -> 0.765 (stars drawn as circles or diamonds: 0.34).
    return StageSettings(
        steps=800, max_minutes=18.0, lr=3e-4, batch_size=16, weight_decay=0.01,
        task_weights={"t2i": 2.0, "edit": 2.0, "understanding": 2.0, "think": 1.0}, ntp_weight=1.0,
        flow_weight=20.0, trainable=["vlm", "generation_decoder"], logit_mean=0.7,
    )  # fmt: skip


@dataclasses.dataclass
class EvalSettings:
    num: int = 200
    seed: int = 0
    num_inference_steps: int = 20
    all_cfg_scale: float | None = None  # None: the pipeline's defaults
    part_cfg_scale: float | None = None
    batch_size: int = 32
    max_thought_tokens: int = 200
    max_new_tokens: int = 64
    think_off: bool = True  # also score the think prompts drawn with think off


def embedded_arch() -> ModelArch:
    """The shipped size: 64 px ViT with 4 px patches (64 tokens per image after the 2x2 pixel shuffle), a 4-layer
    Qwen3, a 4-block MMDiT head on 8x8 latent tokens (x4 VAE, 2x2 patches).

    Measured (session 7, vqa on the same 200 fresh questions after the understanding stage): 16 tokens (8 px
    patches) 0.585 after 1,500 steps and 0.63 after 3,000; 64 tokens 0.595 after 1,153 steps and 0.695 after 2,653.
    The 8x8 ViT token grid equals the head's 8x8 latent grid, hence `dit_vlm_cond_scale=1.0`."""
    return ModelArch(
        vit_image_size=64, vit_patch_size=4, vit_hidden=96, vit_layers=3, vit_heads=4, vit_mlp=384,
        llm_hidden=192, llm_layers=4, llm_heads=6, llm_kv_heads=2, llm_head_dim=32, llm_mlp=576, llm_embed_std=0.5,
        dit_layers=4, dit_heads=4, dit_head_dim=32, dit_axes_rope=[8, 12, 12],
        vae_base_dim=8, vae_res_blocks=1, vae_z_dim=8, vae_dim_mult=[1, 2, 2], vae_temperal_downsample=[False, True],
        dit_vlm_cond_scale=1.0, dit_timestep_scale=0.001, gen_min_side=64, gen_max_side=64, gen_default_size=64, flow_shift=1.0,
        default_image_guidance=[3.0, 1.5], default_think_guidance=[3.0, 1.5], default_preserve_unedited=True,
    )  # fmt: skip


@dataclasses.dataclass
class ShapesTinyConfig:
    """Everything the recipe does; `internvlu train --recipe shapes-tiny key=value ...` overrides fields."""

    output_dir: str = "runs/shapes-tiny"
    seed: int = 0
    num_threads: int | None = 2
    world: WorldSettings = dataclasses.field(default_factory=WorldSettings)
    synth: SynthSettings = dataclasses.field(default_factory=SynthSettings)
    tokenizer: TokenizerSettings = dataclasses.field(default_factory=TokenizerSettings)
    vae: VAESettings = dataclasses.field(default_factory=VAESettings)
    arch: ModelArch = dataclasses.field(default_factory=embedded_arch)
    # The `vision` step: the InternViT pre-trained on per-patch labels, then kept frozen through the understanding
    # stage (`understanding.frozen`). Measured (session 9, 64 tokens, same data / tokenizer / VAE as session 8): 1,247
    # steps (8 min cap) reach 68% shape accuracy on held-out object patches, and 1,500 understanding steps from that
    # frozen ViT score vqa 0.695 on the 200 fresh questions, against 0.72 after the session-8 stage's 5,000 steps with
    # a trainable, un-pretrained ViT (session 7 at 16 tokens: pre-training, then training the ViT at lr 2e-3, gave no
    # gain; the frozen ViT keeps what it learnt). Shape accuracy was still rising at the cap: 4,000 steps / 16 min.
    # `vision.steps=0 understanding.frozen=[]` restores the session-8 recipe.
    vision: VisionPretrainConfig = dataclasses.field(
        default_factory=lambda: VisionPretrainConfig(steps=4000, max_minutes=16.0)
    )
    understanding: StageSettings = dataclasses.field(default_factory=_understanding_stage)
    generation: StageSettings = dataclasses.field(default_factory=_generation_stage)
    continued: StageSettings = dataclasses.field(default_factory=_continued_stage)
    unified: StageSettings = dataclasses.field(default_factory=_unified_stage)
    eval: EvalSettings = dataclasses.field(default_factory=EvalSettings)
    export_dtype: str = "bfloat16"
    # Pre-compute the VAE latents of every image before the stages (one file per image). Measured: no gain when the
    # stages see the data about once (the on-the-fly encode costs the same), so off by default.
    precompute_latents: bool = False
    install_to: str | None = None  # copy the final model folder here (e.g. src/internvlu/assets/shapes-tiny)
    # The whole recipe's wall-clock budget (the timeline's minutes; a resumed run counts its earlier steps). A stage
    # with `reserve_minutes` trains fewer steps on a slower machine instead of the recipe running over (its cosine
    # schedule follows the earlier cap). None: no budget.
    budget_minutes: float | None = 150.0
    stop_after: str | None = (
        None  # pilots: stop after this step (synth, tokenizer, vae, init, latents, a stage)
    )

    STAGES = ("understanding", "generation", "continued", "unified")

    def validate(self) -> ShapesTinyConfig:
        if self.export_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"export_dtype must be float32 or bfloat16, got {self.export_dtype!r}")
        if len(self.synth.task_weights) != len(ALL_TASKS):
            raise ValueError(
                f"synth.task_weights needs {len(ALL_TASKS)} weights {ALL_TASKS}, got {self.synth.task_weights}"
            )
        self.vae.arch.validate()
        self.arch.validate()
        if self.vae.arch.downsample_factor != self.arch.vae_downsample_factor:
            raise ValueError(
                f"vae.arch gives a x{self.vae.arch.downsample_factor} VAE but arch.vae_dim_mult a "
                f"x{self.arch.vae_downsample_factor} one; keep them equal"
            )
        if (self.vae.arch.z_dim, self.vae.arch.base_dim) != (self.arch.vae_z_dim, self.arch.vae_base_dim):
            raise ValueError("vae.arch.z_dim/base_dim must equal arch.vae_z_dim/vae_base_dim")
        if self.world.image_size % (2 * self.arch.vae_downsample_factor):
            raise ValueError(
                f"world.image_size={self.world.image_size} must be a multiple of {2 * self.arch.vae_downsample_factor}"
            )
        self.world.shapes_config().validate()
        self.vae.decoder.validate()
        self.vision.validate()
        if self.budget_minutes is not None and not self.budget_minutes > 0:
            raise ValueError(f"budget_minutes must be > 0 (or None for no budget), got {self.budget_minutes}")
        for name in self.STAGES:
            stage = getattr(self, name)
            _check_extra_data(name, stage)
            if stage.micro_batches < 1 or stage.batch_size % stage.micro_batches:
                raise ValueError(
                    f"{name}.micro_batches={stage.micro_batches} must be >= 1 and divide {name}.batch_size="
                    f"{stage.batch_size}"
                )
            if stage.reserve_minutes is not None and not stage.reserve_minutes >= 0:
                raise ValueError(f"{name}.reserve_minutes must be >= 0 (or None), got {stage.reserve_minutes}")
        known = ("synth", "tokenizer", "vae", "decoder", "init", "vision", "latents", *self.STAGES)
        if self.stop_after is not None and self.stop_after not in known:
            raise ValueError(f"stop_after={self.stop_after!r}; known steps: {known}")
        return self


def _check_extra_data(name: str, stage: StageSettings) -> None:
    from internvlu.synthesis.shapes_text import T2I_CATEGORIES

    if stage.extra_samples < 0:
        raise ValueError(f"{name}.extra_samples must be >= 0, got {stage.extra_samples}")
    if not stage.extra_samples:
        return
    unknown = sorted(set(stage.extra_t2i_categories) - set(T2I_CATEGORIES))
    if not stage.extra_t2i_categories or unknown:
        raise ValueError(
            f"{name}.extra_t2i_categories={stage.extra_t2i_categories!r} must name t2i categories from "
            f"{T2I_CATEGORIES} (unknown: {unknown})"
        )
    if stage.task_weights.get("t2i", 0.0) <= 0:
        raise ValueError(
            f"{name}.extra_samples={stage.extra_samples} adds t2i samples, but {name}.task_weights="
            f"{stage.task_weights} never draws t2i"
        )


def shapes_tiny_config() -> ShapesTinyConfig:
    """The shipped recipe (about 150 min on 2 CPU cores)."""
    return ShapesTinyConfig()


def shapes_tiny_smoke_config() -> ShapesTinyConfig:
    """The same steps at toy sizes (well under a minute): CI's end-to-end check of the recipe's code path."""
    cfg = ShapesTinyConfig(output_dir="runs/shapes-tiny-smoke")
    cfg.synth = SynthSettings(num_samples=48, shard_size=48, workers=1)
    cfg.tokenizer = TokenizerSettings(vocab_size=400, corpus_samples=64, template_repeats=5)
    cfg.vae = VAESettings(
        arch=VAEArch(base_dim=4, z_dim=4),
        train=VAETrainConfig(steps=2, batch_size=4, eval_every=2, num_val=4),
        num_images=24,
        decoder=DecoderNoiseConfig(steps=2, batch_size=4, eval_every=2, num_val=4),
    )
    cfg.vision = VisionPretrainConfig(steps=3, batch_size=4, pool_size=8, num_val=4, eval_every=2)
    cfg.arch = embedded_arch()
    cfg.arch.vae_base_dim, cfg.arch.vae_z_dim = 4, 4
    cfg.arch.vit_hidden, cfg.arch.vit_layers, cfg.arch.vit_mlp = 32, 1, 64
    cfg.arch.llm_hidden, cfg.arch.llm_layers, cfg.arch.llm_mlp = 64, 1, 128
    cfg.arch.llm_heads, cfg.arch.llm_kv_heads, cfg.arch.llm_head_dim = 4, 2, 16
    cfg.arch.dit_layers, cfg.arch.dit_heads = 1, 1
    for stage in (getattr(cfg, name) for name in ShapesTinyConfig.STAGES):
        stage.steps, stage.batch_size, stage.warmup_steps, stage.max_minutes = 2, 4, 1, None
        stage.eval_num = 0
    # The stage-only synthesis path (StageSettings.extra_samples) runs in CI whatever the shipped settings.
    cfg.continued.extra_samples = 8
    cfg.continued.extra_t2i_categories = cfg.continued.extra_t2i_categories or ["placed"]
    cfg.eval = EvalSettings(
        num=1, num_inference_steps=1, batch_size=8, max_thought_tokens=8, max_new_tokens=8, think_off=False
    )
    cfg.export_dtype = "float32"
    cfg.precompute_latents = True  # covers the cache path too
    return cfg


PIPELINE_RECIPES: dict[str, Callable[[], ShapesTinyConfig]] = {
    "shapes-tiny": shapes_tiny_config,
    "shapes-tiny-smoke": shapes_tiny_smoke_config,
}


def resolve_shapes_config(name: str, overrides: list[str]) -> ShapesTinyConfig:
    from internvlu.training.config import apply_overrides
    from internvlu.training.model_factory import arch_preset

    if name not in PIPELINE_RECIPES:
        raise ValueError(f"unknown pipeline recipe {name!r}; known: {sorted(PIPELINE_RECIPES)}")

    def presets(tp: type, value: str) -> Any:
        if tp is ModelArch:
            return embedded_arch() if value == "embedded" else arch_preset(value)
        raise ValueError(f"no named presets for {tp.__name__}")

    return apply_overrides(PIPELINE_RECIPES[name](), overrides, presets=presets).validate()


def config_to_dict(cfg: ShapesTinyConfig) -> dict[str, Any]:
    from internvlu.training.config import to_dict

    return to_dict(cfg)


# --------------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------------


class _Timeline:
    """Wall-clock minutes per step, written to `timeline.json` after each (resumed runs add to it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = (
            json.loads(path.read_text()) if path.is_file() else {"steps": {}, "curve": []}
        )

    @property
    def minutes(self) -> float:
        return round(sum(v["minutes"] for v in self.data["steps"].values()), 3)

    def done(self, name: str) -> bool:
        return name in self.data["steps"]

    def record(self, name: str, minutes: float, **info: Any) -> None:
        self.data["steps"][name] = {"minutes": round(minutes, 3), **info}
        self.save()

    def point(self, stage: str, scores: dict[str, Any]) -> None:
        self.data["curve"].append({"after": stage, "minutes": self.minutes, **_headline(scores)})
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")


def _headline(scores: dict[str, Any]) -> dict[str, Any]:
    g = scores["geneval"]
    return {
        "num": scores["num"], "geneval_overall": round(g["overall"], 4), "single_object": round(g["single_object"], 4),
        "colors": round(g["colors"], 4), "vqa": round(scores["vqa"], 4), "edit": round(scores["edit"], 4),
        "think": round(scores["think"], 4), "think_off": None if scores["think_off"] is None else round(scores["think_off"], 4),
    }  # fmt: skip


def _sample_texts(cfg: ShapesTinyConfig) -> list[str]:
    """Text of fresh shapes samples (its own seed stream): prompts, questions, answers, thoughts."""
    from internvlu.synthesis.runner import RejectSample
    from internvlu.synthesis.shapes import ShapesGenerator

    gen = ShapesGenerator(cfg.world.shapes_config(ALL_TASKS, tuple(cfg.synth.task_weights)))
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0x70C,)))
    texts: list[str] = []
    n = 0
    while n < cfg.tokenizer.corpus_samples:
        try:
            s = gen.sample(rng, f"tok-{n}")
        except RejectSample:
            continue
        n += 1
        texts += [m.content for m in s.messages]
        texts += [t for t in (s.prompt, s.thought) if t]
    return texts


def _vae_images(cfg: ShapesTinyConfig) -> torch.Tensor:
    from internvlu.embedded.vae import images_to_tensor
    from internvlu.synthesis.runner import RejectSample
    from internvlu.synthesis.shapes import ShapesGenerator

    gen = ShapesGenerator(cfg.world.shapes_config(ALL_TASKS, tuple(cfg.synth.task_weights)))
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0x7AE,)))
    images: list[np.ndarray] = []
    while len(images) < cfg.vae.num_images:
        try:
            s = gen.sample(rng, f"vae-{len(images)}")
        except RejectSample:
            continue
        images += [np.asarray(ref.load().convert("RGB")) for ref in s.all_images()]
    return images_to_tensor(images[: cfg.vae.num_images])


MIN_STAGE_MINUTES = 1.0  # a stage whose budget is spent still trains this long (and the recipe runs over)


def stage_minutes_cap(
    name: str, stage: StageSettings, budget: float | None, used: float, warn: Callable[[str], None]
) -> float | None:
    """The stage's time cap: its `max_minutes`, lowered so that `reserve_minutes` of `budget` are left after it."""
    if budget is None or stage.reserve_minutes is None:
        return stage.max_minutes
    left = budget - used - stage.reserve_minutes
    cap = left if stage.max_minutes is None else min(stage.max_minutes, left)
    if cap < MIN_STAGE_MINUTES:
        warn(
            f"{name}: {used:.1f} of budget_minutes={budget} used, {stage.reserve_minutes} reserved for the later "
            f"steps: training {MIN_STAGE_MINUTES} min, the recipe will run over its budget"
        )
        cap = MIN_STAGE_MINUTES
    return round(cap, 3)


def _stage_data_dir(out: Path, name: str) -> Path:
    """Where a stage's own samples (StageSettings.extra_samples) are synthesized and read from."""
    return out / f"data-{name}"


def _stage_config(cfg: ShapesTinyConfig, name: str, stage: StageSettings, init: Path, out: Path):
    from internvlu.training.config import (
        CheckpointConfig,
        DataConfig,
        DropConfig,
        LogConfig,
        LoopConfig,
        LossConfig,
        ModelConfig,
        OptimConfig,
        ResolutionConfig,
        SampleConfig,
        TrainConfig,
    )  # fmt: skip

    last = name == ShapesTinyConfig.STAGES[-1]
    return TrainConfig(
        name=f"shapes-tiny/{name}",
        output_dir=str(out / name),
        seed=cfg.seed,
        model=ModelConfig(
            init="pretrained", path=str(init), trainable=list(stage.trainable), frozen=list(stage.frozen)
        ),
        data=DataConfig(
            sources=[str(out / "data")] + ([str(_stage_data_dir(out, name))] if stage.extra_samples else []),
            task_weights=dict(stage.task_weights),
            resolution=ResolutionConfig(mode="fixed", size=cfg.world.image_size),
            drop=DropConfig(),
            use_reference_latents=True,
            check_images=False,
            num_workers=1,
            latent_cache=str(out / "latents") if cfg.precompute_latents else None,
            group_by_length=stage.group_by_length,
            sort_micro_batches=stage.micro_batches > 1,
        ),
        loss=LossConfig(
            ntp_weight=stage.ntp_weight,
            flow_weight=stage.flow_weight,
            flow_shift=cfg.arch.flow_shift,
            edit_region_weight=stage.edit_region_weight,
            ntp_reduction=stage.ntp_reduction,
            logit_mean=stage.logit_mean,
        ),
        optim=OptimConfig(
            lr=stage.lr,
            weight_decay=stage.weight_decay,
            clip_grad_norm=1.0,
            warmup_steps=stage.warmup_steps,
            schedule="cosine",
            min_lr_ratio=0.1,
        ),
        train=LoopConfig(
            steps=stage.steps,
            global_batch_size=stage.batch_size,
            micro_batch_size=stage.batch_size // stage.micro_batches,
            dtype="float32",
            max_minutes=stage.max_minutes,
            num_threads=cfg.num_threads,
        ),
        checkpoint=CheckpointConfig(
            every=max(1, stage.steps // 4), keep_last=1, export_dtype=cfg.export_dtype if last else "float32"
        ),
        logging=LogConfig(
            every=max(1, min(25, stage.steps // 10)), progress=False, tensorboard=False, plot=True
        ),
        samples=SampleConfig(every=0, at_end=False),
    ).validate()


def _evaluate(
    model_dir: Path, cfg: ShapesTinyConfig, num: int, report_dir: Path | None = None
) -> dict[str, Any]:
    from internvlu.evaluation.shapes import evaluate_shapes
    from internvlu.pipeline import InternVLUPipeline

    pipe = InternVLUPipeline.from_pretrained(str(model_dir), dtype=torch.float32, device="cpu")
    e = cfg.eval
    with single_frame_convs_everywhere():
        return evaluate_shapes(
            pipe, num, e.seed, config=cfg.world.shapes_config(), batch_size=e.batch_size,
            num_inference_steps=e.num_inference_steps, all_cfg_scale=e.all_cfg_scale,
            part_cfg_scale=e.part_cfg_scale, max_thought_tokens=e.max_thought_tokens,
            max_new_tokens=e.max_new_tokens, think_off=e.think_off, report_dir=report_dir,
        )  # fmt: skip


def folder_size_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 3)


def run_shapes_recipe(cfg: ShapesTinyConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the whole recipe; returns the model card dict (also written to model/card.json)."""
    from internvlu.embedded.tokenizer import train_tokenizer
    from internvlu.embedded.vae import train_vae
    from internvlu.synthesis.runner import run_synthesis
    from internvlu.training.model_factory import build_fresh_pipeline
    from internvlu.training.precompute import precompute_latents
    from internvlu.training.trainer import Trainer

    cfg.validate()
    say = log or (lambda msg: logger.info(msg))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    (out / "recipe.json").write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n", encoding="utf-8")
    tl = _Timeline(out / "timeline.json")

    def step(name: str, fn: Callable[[], dict[str, Any] | None]) -> None:
        if tl.done(name):
            say(f"{name}: done before ({tl.data['steps'][name]['minutes']} min), skipped")
            return
        say(f"{name}: start (at {tl.minutes:.1f} min)")
        t0 = time.perf_counter()
        info = fn() or {}
        tl.record(name, (time.perf_counter() - t0) / 60, **info)
        say(f"{name}: {tl.data['steps'][name]}")

    def synth() -> dict[str, Any]:
        s = cfg.synth
        manifest = run_synthesis(
            "shapes", out / "data", s.num_samples, seed=cfg.seed, workers=s.workers, shard_size=s.shard_size,
            config=cfg.world.shapes_config(ALL_TASKS, tuple(s.task_weights)), contact_sheet_samples=16,
        )  # fmt: skip
        return {"num_samples": manifest["num_samples"]}

    def stage_synth(name: str, stage: StageSettings) -> int:
        """The stage's own t2i samples in `data-<stage>/` (complete shards of a resumed run with the same settings
        are kept; other settings start the folder afresh)."""
        world = dataclasses.replace(
            cfg.world.shapes_config(("t2i",)), t2i_categories=tuple(stage.extra_t2i_categories)
        )
        manifest = run_synthesis(
            "shapes", _stage_data_dir(out, name), stage.extra_samples, seed=cfg.seed, workers=cfg.synth.workers,
            shard_size=cfg.synth.shard_size, config=world, filters={"dedup": False}, contact_sheet_samples=16,
            overwrite="changed",
        )  # fmt: skip
        return manifest["num_samples"]

    def tokenizer() -> dict[str, Any]:
        t = cfg.tokenizer
        tok = train_tokenizer(_sample_texts(cfg), out / "tokenizer", t.vocab_size, t.template_repeats)
        return {"vocab": len(tok)}

    def vae() -> dict[str, Any]:
        images = _vae_images(cfg)
        if cfg.vae.pretrained:
            from diffusers import AutoencoderKLQwenImage

            from internvlu.embedded.vae import psnr

            model = AutoencoderKLQwenImage.from_pretrained(cfg.vae.pretrained).float().eval()
            model.save_pretrained(str(out / "vae"))
            db = round(psnr(model, images[-cfg.vae.train.num_val :]), 3)
            return {
                "psnr": db,
                "pretrained": cfg.vae.pretrained,
                "params": sum(p.numel() for p in model.parameters()),
            }
        model, history = train_vae(cfg.vae.arch, images, cfg.vae.train, log=lambda e: say(f"vae: {e}"))
        model.save_pretrained(str(out / "vae"))
        (out / "vae" / "history.json").write_text(json.dumps(history, indent=1) + "\n", encoding="utf-8")
        return {
            "psnr": history[-1]["psnr"],
            "steps": history[-1]["step"],
            "params": sum(p.numel() for p in model.parameters()),
        }

    def decoder() -> dict[str, Any]:
        from diffusers import AutoencoderKLQwenImage

        from internvlu.embedded.vae import harden_decoder

        if cfg.vae.decoder.steps == 0:
            return {"skipped": "vae.decoder.steps=0: the model uses vae/ as trained"}
        model = AutoencoderKLQwenImage.from_pretrained(str(out / "vae")).float().eval()
        model, history = harden_decoder(
            model, _vae_images(cfg), cfg.vae.decoder, log=lambda e: say(f"decoder: {e}")
        )
        model.save_pretrained(str(out / "vae_decoder"))
        (out / "vae_decoder" / "history.json").write_text(
            json.dumps(history, indent=1) + "\n", encoding="utf-8"
        )
        first, last = history[0], history[-1]
        return {
            "steps": last["step"],
            "psnr": last["psnr"],
            "psnr_noise_0.3": last["psnr_noise_0.3"],
            "psnr_before": first["psnr"],
            "psnr_noise_0.3_before": first["psnr_noise_0.3"],
        }

    def init() -> dict[str, Any]:
        from diffusers import AutoencoderKLQwenImage

        trained = AutoencoderKLQwenImage.from_pretrained(
            str(out / ("vae_decoder" if cfg.vae.decoder.steps else "vae"))
        )
        arch = dataclasses.replace(
            cfg.arch,
            vae_latents_mean=list(trained.config.latents_mean),
            vae_latents_std=list(trained.config.latents_std),
        )
        pipe = build_fresh_pipeline(arch, cfg.seed, str(out / "tokenizer"))
        pipe.vae.load_state_dict(trained.state_dict())
        pipe.save_pretrained(out / "init")
        params = {
            n: sum(p.numel() for p in m.parameters())
            for n, m in (
                ("vlm", pipe.vlm),
                ("generation_decoder", pipe.generation_decoder),
                ("vae", pipe.vae),
            )
        }
        return {"params": params}

    def vision() -> dict[str, Any]:
        from internvlu.embedded.vision import pretrain_vision
        from internvlu.pipeline import InternVLUPipeline
        from internvlu.synthesis.shapes import ShapesGenerator

        if cfg.vision.steps == 0:
            return {"skipped": "vision.steps=0: the understanding stage starts from init/"}
        pipe = InternVLUPipeline.from_pretrained(str(out / "init"), dtype=torch.float32, device="cpu")
        generator = ShapesGenerator(cfg.world.shapes_config(("understanding",), (1.0,)))
        history = pretrain_vision(pipe, generator, cfg.vision, log=lambda e: say(f"vision: {e}"))
        pipe.save_pretrained(out / "vision")
        (out / "vision" / "history.json").write_text(json.dumps(history, indent=1) + "\n", encoding="utf-8")
        last = history[-1]
        return {k: last[k] for k in ("step", "shape_acc_objects", "color_acc_objects", "bg_acc")}

    def latents() -> dict[str, Any]:
        if not cfg.precompute_latents:
            return {"skipped": "precompute_latents=false: the stages encode on the fly"}
        tc = _stage_config(cfg, "unified", cfg.unified, out / "init", out)
        tc.data.task_weights = {k: 1.0 for k in ALL_TASKS}
        with single_frame_convs_everywhere():
            return {"counts": precompute_latents(tc)}

    for name, fn in (
        ("synth", synth),
        ("tokenizer", tokenizer),
        ("vae", vae),
        ("decoder", decoder),
        ("init", init),
        ("vision", vision),
        ("latents", latents),
    ):
        step(name, fn)
        if cfg.stop_after == name:
            return {"stopped_after": name, "timeline": tl.data}

    current = out / ("vision" if cfg.vision.steps else "init")
    for name in ShapesTinyConfig.STAGES:
        stage: StageSettings = getattr(cfg, name)
        tc = _stage_config(cfg, name, stage, current, out)

        def run_stage(tc=tc, stage=stage, name=name) -> dict[str, Any]:
            t0 = time.perf_counter()
            extra: dict[str, Any] = {}
            if stage.extra_samples:
                extra = {"extra_samples": stage_synth(name, stage)}
            used = tl.minutes + (time.perf_counter() - t0) / 60
            tc.train.max_minutes = stage_minutes_cap(name, stage, cfg.budget_minutes, used, say)
            if stage.reserve_minutes is not None:
                extra["max_minutes"] = tc.train.max_minutes
            with single_frame_convs_everywhere():  # exact 2-D path for the frozen VAE's one-frame encodes
                result = Trainer(tc).train()
            last = result.history[-1] if result.history else {}
            return {
                "steps": result.step,
                "loss": last.get("loss"),
                "loss_ntp": last.get("loss_ntp"),
                "loss_flow": last.get("loss_flow"),
                **extra,
            }

        step(name, run_stage)
        current = out / name / "export"
        if stage.eval_num and not tl.done(f"eval-{name}"):
            t0 = time.perf_counter()
            scores = _evaluate(current, cfg, stage.eval_num)
            tl.record(f"eval-{name}", (time.perf_counter() - t0) / 60, **_headline(scores))
            tl.point(name, scores)
            say(f"eval after {name}: {_headline(scores)}")
        if cfg.stop_after == name:
            return {"stopped_after": name, "timeline": tl.data}

    model_dir = out / "model"

    def final() -> dict[str, Any]:
        if model_dir.exists():
            shutil.rmtree(model_dir)
        shutil.copytree(current, model_dir)
        scores = _evaluate(model_dir, cfg, cfg.eval.num, report_dir=out / "eval")
        (out / "eval" / "scores.json").write_text(
            json.dumps(scores, indent=2, default=str) + "\n", encoding="utf-8"
        )
        return {"scores": _headline(scores)}

    step("final-eval", final)
    from internvlu.embedded.card import write_model_card

    card = write_model_card(model_dir, cfg, tl.data, json.loads((out / "eval" / "scores.json").read_text()))
    if cfg.install_to:
        dest = Path(cfg.install_to)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(model_dir, dest)
        say(f"installed to {dest}")
    say(f"model: {model_dir} ({folder_size_mb(model_dir)} MB), total {tl.minutes:.1f} min")
    return card
