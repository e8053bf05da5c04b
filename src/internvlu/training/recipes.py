"""Training recipes: Python functions returning a `TrainConfig`, derived from each other by mutation.

The three stages follow the paper (Table 3; /work/shared/design/paper-notes.md §2):

| | stage1 | stage2 | stage3 |
|---|---|---|---|
| trained | generation head (MLLM frozen) | generation head (MLLM frozen) | everything |
| data T2I:edit:und (+think) | 4:1 | 3:4 | 1:1:2 (+think 1) |
| resolution | 512 fixed | buckets 512-1024, aspect 0.5-2 | buckets 512-1024 |
| reference VAE latents | no | yes | yes |
| loss NTP:flow | 0:1 | 0:1 | 1:20 |
| lr / schedule | 3e-4 constant | 1e-4 cosine | 1e-5 cosine |
| weight decay / clip | 0 / 0.2 | 0 / 0.2 | 0.01 / 1.0 |
| steps / global batch | 250k / 2048 | 60k / 1024 | 20k / 1024 |
AdamW (0.9, 0.999, 1e-8) with 1000 warm-up steps everywhere; condition dropout 10% (T2I), 5% + 5% (editing);
logit-normal timesteps with shift 3.0. The full stages need `model.path=<checkpoint>` and `data.sources=...`.

Each stage has a `-tiny` variant: the same recipe on a fresh ~1.3M-parameter model, 64-128 px images and the built-in
toy data, sized to run on one CPU core in seconds (tests, docs). `lora` variants train PEFT adapters instead.
"""

from __future__ import annotations

from collections.abc import Callable

from internvlu.training.config import (
    CheckpointConfig,
    DataConfig,
    DropConfig,
    LogConfig,
    LoopConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    ResolutionConfig,
    SampleConfig,
    TrainConfig,
)
from internvlu.training.model_factory import tiny_arch

RECIPES: dict[str, Callable[[], TrainConfig]] = {}


def recipe(name: str) -> Callable[[Callable[[], TrainConfig]], Callable[[], TrainConfig]]:
    def register(fn: Callable[[], TrainConfig]) -> Callable[[], TrainConfig]:
        RECIPES[name] = fn
        return fn

    return register


def get_recipe(name: str) -> TrainConfig:
    """A fresh TrainConfig of the named recipe."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    config = RECIPES[name]()
    config.name = name
    return config


def list_recipes() -> dict[str, str]:
    """{name: first docstring line}."""
    return {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in sorted(RECIPES.items())}


# --------------------------------------------------------------------------------------------------
# Paper stages (full size)
# --------------------------------------------------------------------------------------------------


@recipe("stage1")
def stage1() -> TrainConfig:
    """Stage 1: generation-head pre-training at 512 px, MLLM frozen, T2I:edit 4:1, 3e-4 constant, clip 0.2."""
    return TrainConfig(
        output_dir="runs/stage1",
        model=ModelConfig(init="pretrained", path=None, trainable=["generation_decoder"]),
        data=DataConfig(
            sources=[],
            task_weights={"t2i": 4.0, "edit": 1.0},
            resolution=ResolutionConfig(mode="fixed", size=512),
            drop=DropConfig(t2i_all=0.10, edit_all=0.05, edit_text=0.05),
            use_reference_latents=False,
            num_workers=4,
        ),
        loss=LossConfig(ntp_weight=0.0, flow_weight=1.0, flow_shift=3.0),
        optim=OptimConfig(
            lr=3e-4, weight_decay=0.0, clip_grad_norm=0.2, warmup_steps=1000, schedule="constant"
        ),
        train=LoopConfig(steps=250_000, global_batch_size=2048, micro_batch_size=16, dtype="bfloat16"),
        parallel=ParallelConfig(activation_checkpointing=True),
        checkpoint=CheckpointConfig(every=2000, keep_last=3, export_dtype="bfloat16"),
        logging=LogConfig(every=10),
        samples=SampleConfig(every=5000, at_end=True, num_inference_steps=20, height=512, width=512),
    )


@recipe("stage2")
def stage2() -> TrainConfig:
    """Stage 2: any-resolution continued pre-training (512-1024 px buckets), T2I:edit 3:4, 1e-4 cosine."""
    cfg = stage1()
    cfg.output_dir = "runs/stage2"
    cfg.data.task_weights = {"t2i": 3.0, "edit": 4.0}
    cfg.data.resolution = ResolutionConfig(
        mode="buckets", levels=[512, 768, 1024], min_aspect=0.5, max_aspect=2.0
    )
    cfg.data.use_reference_latents = True
    cfg.optim.lr = 1e-4
    cfg.optim.schedule = "cosine"
    cfg.train.steps = 60_000
    cfg.train.global_batch_size = 1024
    cfg.train.micro_batch_size = 8
    return cfg


@recipe("stage3")
def stage3() -> TrainConfig:
    """Stage 3: unified SFT, everything trained, T2I:edit:und 1:1:2 + think, NTP:flow 1:20, 1e-5 cosine."""
    cfg = stage2()
    cfg.output_dir = "runs/stage3"
    cfg.model.trainable = ["vlm", "generation_decoder"]
    cfg.data.task_weights = {"t2i": 1.0, "edit": 1.0, "understanding": 2.0, "think": 1.0}
    cfg.loss.ntp_weight, cfg.loss.flow_weight = 1.0, 20.0
    cfg.optim.lr = 1e-5
    cfg.optim.weight_decay = 0.01
    cfg.optim.clip_grad_norm = 1.0
    cfg.train.steps = 20_000
    return cfg


@recipe("stage3-lora")
def stage3_lora() -> TrainConfig:
    """Stage 3 with LoRA (rank 64) on the LLM and the MMDiT head instead of full fine-tuning, 1e-4."""
    cfg = stage3()
    cfg.output_dir = "runs/stage3-lora"
    cfg.model.trainable = []  # adapters only
    cfg.lora.targets = ["llm", "dit"]
    cfg.lora.rank, cfg.lora.alpha = 64, 64.0
    cfg.optim.lr = 1e-4
    return cfg


# --------------------------------------------------------------------------------------------------
# Tiny variants (CPU, seconds)
# --------------------------------------------------------------------------------------------------


def _tiny(cfg: TrainConfig, name: str) -> TrainConfig:
    """Shrink a stage recipe: fresh tiny model, toy data, small images, a few steps, fp32 on one process."""
    cfg.output_dir = f"runs/{name}"
    cfg.model.init = "fresh"
    cfg.model.path = None
    cfg.model.arch = tiny_arch()
    cfg.data.sources = ["toy-anyres" if cfg.data.resolution.mode == "buckets" else "toy"]
    cfg.data.num_workers = 0
    if cfg.data.resolution.mode == "fixed":
        cfg.data.resolution.size = 64
    else:
        # >= 80 px sides: a generated grid needs > 2 x (references + 1) tokens per side (head position range).
        cfg.data.resolution.levels = [96, 128]
    # Tiny models learn in tens of steps only with a large step size and no long warm-up.
    cfg.optim.lr = 2e-3 if cfg.optim.lr >= 1e-4 else 1e-3
    cfg.optim.warmup_steps = 2
    cfg.train = LoopConfig(steps=30, global_batch_size=8, micro_batch_size=4, dtype="float32")
    cfg.parallel = ParallelConfig()
    cfg.checkpoint = CheckpointConfig(every=10, keep_last=2, export_dtype="float32")
    cfg.logging = LogConfig(every=1)
    cfg.samples = SampleConfig(
        every=0, at_end=False, num_inference_steps=4, height=64, width=64, max_new_tokens=8
    )
    return cfg


@recipe("stage1-tiny")
def stage1_tiny() -> TrainConfig:
    """Stage 1 on the tiny model and toy data (64 px, flow loss only; CPU, seconds)."""
    return _tiny(stage1(), "stage1-tiny")


@recipe("stage2-tiny")
def stage2_tiny() -> TrainConfig:
    """Stage 2 on the tiny model and toy data (96-128 px aspect buckets, reference latents; CPU, seconds)."""
    return _tiny(stage2(), "stage2-tiny")


@recipe("stage3-tiny")
def stage3_tiny() -> TrainConfig:
    """Stage 3 on the tiny model and toy data (both losses, everything trained; CPU, seconds)."""
    return _tiny(stage3(), "stage3-tiny")


@recipe("stage3-lora-tiny")
def stage3_lora_tiny() -> TrainConfig:
    """Stage 3 LoRA on the tiny model and toy data (adapters on the LLM and the head; CPU, seconds)."""
    cfg = _tiny(stage3_lora(), "stage3-lora-tiny")
    cfg.lora.rank, cfg.lora.alpha = 4, 8.0
    return cfg


@recipe("tiny")
def tiny() -> TrainConfig:
    """The default CPU example: stage 3 on the tiny model (both losses); point data.sources at your JSONL."""
    cfg = stage3_tiny()
    cfg.output_dir = "runs/tiny"
    return cfg
