"""Typed training configuration: nested dataclasses, strict JSON round trip and dotted CLI overrides.

A recipe (recipes.py) is a Python function returning a `TrainConfig`; the command line only overrides
fields, e.g. `optim.lr=1e-4 data.sources=[a.jsonl,b.tar] model.arch.dit_layers=4`. Every value is
checked against the field's type, and an unknown key is an error that lists the valid keys (typos never
pass silently). The resolved config is written as JSON next to every checkpoint and export.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")

TASK_NAMES = ("understanding", "t2i", "edit", "think")


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelArch:
    """Sizes of a freshly initialised model (ignored when starting from a checkpoint).

    Named presets live in model_factory.ARCHS ("tiny", "mid", "full"); `model.arch=mid` on the command
    line selects one, `model.arch.dit_layers=4` changes one field.
    """

    # InternViT
    vit_image_size: int = 56
    vit_patch_size: int = 14
    vit_hidden: int = 64
    vit_layers: int = 2
    vit_heads: int = 4
    vit_mlp: int = 128
    # Qwen3 language model
    llm_hidden: int = 64
    llm_layers: int = 2
    llm_heads: int = 4
    llm_kv_heads: int = 2
    llm_head_dim: int = 16
    llm_mlp: int = 128
    llm_vocab_multiple: int = 64  # vocab = len(tokenizer) rounded up to this (Qwen convention)
    # Init std of the token embeddings of a fresh LLM (None: transformers' initializer_range, 0.02). The head reads
    # the LLM's last two hidden states; from a 0.02 init a small LLM's states at "red" and "blue" in the same prompt
    # have cosine 0.85 untrained and 0.96 after the understanding stage, so the head cannot tell the words apart;
    # at 0.3 or more the token identity dominates the residual stream (cosine 0.03 untrained).
    llm_embed_std: float | None = None
    # MMDiT generation head
    dit_layers: int = 2
    dit_heads: int = 2
    dit_head_dim: int = 32
    dit_axes_rope: list[int] = dataclasses.field(default_factory=lambda: [8, 12, 12])
    # Latent patch side of the head (the release: 2). 1 gives a small x4-VAE model one token per latent pixel.
    dit_patch_size: int = 2
    # Qwen-Image-style VAE (random init for fresh models; it stays frozen)
    vae_base_dim: int = 8
    vae_res_blocks: int = 1
    vae_z_dim: int = 16
    # len(vae_dim_mult) - 1 spatial halvings: [1, 2, 4, 4] is the release's x8 VAE, [1, 2, 2] a x4 one.
    vae_dim_mult: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 4])
    vae_temperal_downsample: list[bool] = dataclasses.field(default_factory=lambda: [False, True, True])
    # Latent normalisation; None keeps diffusers' defaults (the release's values, 16 channels).
    vae_latents_mean: list[float] | None = None
    vae_latents_std: list[float] | None = None
    # Where the ViT token grid lands on the generated token grid (ViT grid / generated grid at the default size).
    dit_vlm_cond_scale: float = 0.25
    # Multiplier of the head's timestep before its sinusoid (decoder_config.timestep_scale; the release: 1.0).
    # 0.001 gives the smooth standard-DiT timestep code that a small model learns far faster.
    dit_timestep_scale: float = 1.0
    # Fresh-head init: "xavier" (the reference's training init: every Linear Xavier-uniform) or "adaln_zero"
    # (DiT's adaLN-Zero: the per-block modulations, the output norm's modulation and the output projection start
    # at zero, so every block starts as the identity and the head predicts 0). Only affects training from scratch.
    dit_init: str = "xavier"
    # Flow shift of the sigmas (the release: 3.0, for 512-1024 px). Small images lose their structure at lower
    # noise levels, so a small model trained at 64 px uses less shift; it goes into the decoder config
    # (`flow_shift`, the pipeline's default at inference) and the scheduler config.
    flow_shift: float = 3.0
    # Guidance (all_cfg_scale, part_cfg_scale) the pipeline uses when a call names none; None: the release's
    # (4.5, 2.0) and, for think mode, (3.5, 1.5). Written into the decoder config when set.
    default_image_guidance: list[float] | None = None
    default_think_guidance: list[float] | None = None
    # Edits keep the pixels the instruction does not act on unless a call says otherwise (the pipeline's
    # `preserve_unedited`; an automatic change mask, internvlu.sampling.preserve). Written into the decoder config
    # when True; the release's config has no such key (off).
    default_preserve_unedited: bool = False
    # Processor: generation-side pixel range of reference images, default output size
    gen_min_side: int = 64
    gen_max_side: int = 96
    gen_default_size: int = 64

    @property
    def vae_downsample_factor(self) -> int:
        return 2 ** (len(self.vae_dim_mult) - 1)

    def validate(self) -> None:
        if len(self.vae_temperal_downsample) != len(self.vae_dim_mult) - 1:
            raise ValueError(
                f"model.arch.vae_temperal_downsample {self.vae_temperal_downsample} needs "
                f"len(vae_dim_mult) - 1 = {len(self.vae_dim_mult) - 1} entries"
            )
        for name in ("vae_latents_mean", "vae_latents_std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.vae_z_dim:
                raise ValueError(f"model.arch.{name} has {len(value)} values, vae_z_dim is {self.vae_z_dim}")
        if not isinstance(self.dit_patch_size, int) or self.dit_patch_size < 1:
            raise ValueError(f"model.arch.dit_patch_size must be an integer >= 1, got {self.dit_patch_size!r}")
        if not isinstance(self.default_preserve_unedited, bool):
            raise TypeError(
                f"model.arch.default_preserve_unedited must be true or false, got {self.default_preserve_unedited!r}"
            )
        if self.dit_init not in ("xavier", "adaln_zero"):
            raise ValueError(f"model.arch.dit_init must be 'xavier' or 'adaln_zero', got {self.dit_init!r}")
        if sum(self.dit_axes_rope) != self.dit_head_dim:
            raise ValueError(
                f"model.arch.dit_axes_rope {self.dit_axes_rope} must sum to dit_head_dim={self.dit_head_dim}"
            )
        if self.llm_heads % self.llm_kv_heads:
            raise ValueError(
                f"model.arch.llm_heads={self.llm_heads} must be a multiple of llm_kv_heads={self.llm_kv_heads}"
            )
        if self.vit_hidden % self.vit_heads:
            raise ValueError(
                f"model.arch.vit_hidden={self.vit_hidden} must be divisible by vit_heads={self.vit_heads}"
            )
        if (self.vit_image_size // self.vit_patch_size) % 2:
            raise ValueError(
                f"model.arch.vit_image_size/vit_patch_size = {self.vit_image_size // self.vit_patch_size} must be even "
                "(2x2 pixel shuffle)"
            )


@dataclasses.dataclass
class ModelConfig:
    """Where the weights come from and what is trained.

    Attributes:
        init: "pretrained" loads `path` (the released checkpoint or any export, official layout);
            "fresh" builds a new model of size `arch` with seeded random weights.
        tokenizer_path: for fresh models, a `processor/` folder whose tokenizer to use; None builds the small
            built-in BPE tokenizer (fine for tiny/mid research models, not for the released vocabulary).
        trainable / frozen: module-path prefixes of the training module (`vlm`, `vlm.vision_model`,
            `vlm.language_model`, `vlm.mlp1`, `vlm.special_token_embedding`, `generation_decoder`, ...); a
            parameter trains when it matches a `trainable` prefix and no `frozen` prefix. Frozen parameters get no
            optimizer state. With LoRA, the adapters always train and the base weights of the adapted components
            (`vlm.language_model` for "llm", `generation_decoder.decoder` for "dit") are frozen; `trainable` may
            then be empty (adapters only) or name other parts to train fully.
    """

    init: Literal["pretrained", "fresh"] = "fresh"
    path: str | None = None
    arch: ModelArch = dataclasses.field(default_factory=ModelArch)
    tokenizer_path: str | None = None
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    trainable: list[str] = dataclasses.field(default_factory=lambda: ["generation_decoder"])
    frozen: list[str] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        if self.init == "pretrained" and not self.path:
            raise ValueError(
                "model.init='pretrained' needs model.path=<checkpoint folder in the official layout>"
            )


@dataclasses.dataclass
class ResolutionConfig:
    """Target-image sizes.

    mode "fixed": every target is resized to cover `size` x `size` and centre-cropped (stage 1).
    mode "buckets": aspect-ratio buckets; each target goes to the bucket nearest its aspect ratio (clamped to
    [min_aspect, max_aspect], as width/height) at the largest level of `levels` (square-equivalent sides) not above
    its own size (the smallest level for smaller images), sides multiples of 16.
    """

    mode: Literal["fixed", "buckets"] = "fixed"
    size: int = 64
    levels: list[int] = dataclasses.field(default_factory=lambda: [64, 96])
    min_aspect: float = 0.5
    max_aspect: float = 2.0
    num_aspects: int = 9

    def validate(self) -> None:
        if self.size % 16 or self.size <= 0:
            raise ValueError(f"data.resolution.size must be a positive multiple of 16, got {self.size}")
        if not self.levels or any(lv <= 0 or lv % 16 for lv in self.levels):
            raise ValueError(f"data.resolution.levels must be positive multiples of 16, got {self.levels}")
        if not 0 < self.min_aspect <= 1 <= self.max_aspect:
            raise ValueError(
                f"need 0 < data.resolution.min_aspect <= 1 <= max_aspect, got {self.min_aspect}, {self.max_aspect}"
            )
        if self.num_aspects < 1:
            raise ValueError(f"data.resolution.num_aspects must be >= 1, got {self.num_aspects}")


@dataclasses.dataclass
class DropConfig:
    """Condition dropout, producing exactly the inference guidance rows (paper §5.1).

    t2i_all: text-to-image (and think without inputs) rows become "Here is a random image <img_uncond>:".
    edit_all / edit_text: editing (and think with inputs) rows become the fully dropped row (no images) or the
    text-dropped row ("<image>\\n"... "Generate an image based on reference images.", images kept).
    """

    t2i_all: float = 0.10
    edit_all: float = 0.05
    edit_text: float = 0.05

    def validate(self) -> None:
        for name in ("t2i_all", "edit_all", "edit_text"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.drop.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.edit_all + self.edit_text > 1.0:
            raise ValueError(
                f"data.drop.edit_all + edit_text must be <= 1, got {self.edit_all + self.edit_text}"
            )


@dataclasses.dataclass
class DataConfig:
    """Training data.

    Attributes:
        sources: JSONL files, tar shards, folders or globs (see internvlu.data.expand_sources); "toy" or "toy:N"
            is a built-in synthetic set (N records per task) for smoke tests.
        task_weights: sampling weight per task kind; tasks without records are left out (with a warning).
        max_bad_fraction: stop with an error when more than this fraction of records is bad.
        check_images: decode every image once while indexing (bad files are counted before training starts);
            False only checks they exist and counts decode failures when they are first used.
        use_reference_latents: feed the VAE latents of editing inputs to the head (stage 2 on; inference always
            does); False gives the head only the ViT tokens of the inputs (stage 1).
        num_workers: threads that build the next micro-batches (decode, resize, tokenise) ahead of the step.
        max_tokens: refuse rows longer than this many tokens (None: no limit).
        latent_cache: folder of pre-computed VAE posteriors, read (and filled) during training.
        group_by_length: plan this many global batches at once and batch rows of similar token length together
            (less padding in the LLM; 1: every batch is drawn as it comes). See dataset.LengthGroupedSampler.
        sort_micro_batches: when a step accumulates several micro-batches, sort the step's rows by token length
            before splitting them, so that long rows share a micro-batch. The step sees the same samples and (the
            losses being normalised by the step's global counts) the same gradient, up to float summation order;
            only the padding shrinks. No effect with one micro-batch per step.
    """

    sources: list[str] = dataclasses.field(default_factory=lambda: ["toy"])
    task_weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"t2i": 4.0, "edit": 1.0})
    max_bad_fraction: float = 0.01
    check_images: bool = True
    resolution: ResolutionConfig = dataclasses.field(default_factory=ResolutionConfig)
    drop: DropConfig = dataclasses.field(default_factory=DropConfig)
    use_reference_latents: bool = False
    num_workers: int = 0
    max_tokens: int | None = None
    latent_cache: str | None = (
        None  # folder of pre-computed VAE posteriors (latents.py); None: encode every step
    )
    group_by_length: int = 1
    sort_micro_batches: bool = False

    def validate(self) -> None:
        if not self.sources:
            raise ValueError("data.sources is empty; give JSONL files / tar shards / folders, or 'toy'")
        unknown = sorted(set(self.task_weights) - set(TASK_NAMES))
        if unknown:
            raise ValueError(f"data.task_weights has unknown tasks {unknown}; known: {list(TASK_NAMES)}")
        if any(w < 0 for w in self.task_weights.values()) or not any(
            w > 0 for w in self.task_weights.values()
        ):
            raise ValueError(f"data.task_weights must be >= 0 with at least one > 0, got {self.task_weights}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"data.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.group_by_length < 1:
            raise ValueError(f"data.group_by_length must be >= 1 (1: off), got {self.group_by_length}")


@dataclasses.dataclass
class LossConfig:
    """Loss weights and the flow-matching time distribution.

    total = ntp_weight * L_ntp + flow_weight * L_flow, where L_ntp is the token-mean cross-entropy over supervised
    tokens and L_flow the sample-mean of the per-image MSE between predicted and true velocity (eps - z).
    Timesteps: u ~ N(logit_mean, logit_std), t = sigmoid(u), sigma = shift*t / (1 + (shift-1)*t) (the flow-sigma
    shift of the inference scheduler); the head sees int(sigma*1000) (discrete_timesteps) like at inference.
    """

    ntp_weight: float = 0.0
    flow_weight: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    flow_shift: float = 3.0
    # Feed the head int(sigma*1000), the integer timestep the inference scheduler feeds at that noise level (see
    # losses.model_timesteps); False feeds the continuous sigma*1000.
    discrete_timesteps: bool = True
    latent_sampling: Literal["mode", "sample"] = (
        "mode"  # VAE posterior mean (as inference encodes references) or a sample
    )
    # Edit-region weighting (the release config's `region_weighting` idea): in an edit whose one reference has the
    # target's latent size, latent pixels where target and reference differ (max |difference| over channels above
    # `edit_region_threshold`, grown by one pixel) weigh 1 + edit_region_weight in that sample's flow MSE; the
    # weights are then scaled to mean 1, so the sample keeps its share of the loss. Why: most of an edit is a copy,
    # and an unweighted loss lets the head learn the copy long before the asked change. 0 turns it off.
    edit_region_weight: float = 0.0
    edit_region_threshold: float = 0.25  # in normalised latent units
    # What L_ntp averages over: every supervised token ("token", the release's convention) or every assistant turn
    # ("turn": each answer's / thought's mean token loss, then the mean over turns). With "token", long texts
    # (thoughts, captions) dominate and one-word answers get a few percent of the gradient.
    ntp_reduction: Literal["token", "turn"] = "token"

    def validate(self) -> None:
        if self.ntp_weight < 0 or self.flow_weight < 0 or self.ntp_weight + self.flow_weight == 0:
            raise ValueError(
                f"loss weights must be >= 0 and not both 0, got {self.ntp_weight}, {self.flow_weight}"
            )
        if self.ntp_reduction not in ("token", "turn"):
            raise ValueError(f"loss.ntp_reduction must be 'token' or 'turn', got {self.ntp_reduction!r}")
        if self.edit_region_weight < 0 or self.edit_region_threshold <= 0:
            raise ValueError(
                f"loss.edit_region_weight must be >= 0 and loss.edit_region_threshold > 0, got "
                f"{self.edit_region_weight}, {self.edit_region_threshold}"
            )
        if self.logit_std <= 0 or self.flow_shift <= 0:
            raise ValueError(
                f"loss.logit_std and loss.flow_shift must be > 0, got {self.logit_std}, {self.flow_shift}"
            )


@dataclasses.dataclass
class OptimConfig:
    """AdamW with linear warm-up, then a constant or cosine learning rate.

    Weight decay applies to matrices (ndim >= 2) only; biases, norms and single vectors are not decayed.
    """

    lr: float = 1e-3
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_grad_norm: float | None = 1.0
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError(f"optim.clip_grad_norm must be > 0 or null, got {self.clip_grad_norm}")


@dataclasses.dataclass
class LoopConfig:
    """Steps and batch sizes. global_batch_size = micro_batch_size x world size x accumulation steps."""

    steps: int = 20
    global_batch_size: int = 4
    micro_batch_size: int = 4
    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16 = mixed precision (fp32 master weights)
    max_minutes: float | None = (
        None  # stop early (checkpoint + export) after this much training time (all resumes)
    )
    num_threads: int | None = None  # CPU intra-op threads (torch.set_num_threads); None keeps torch's default

    def validate(self) -> None:
        for name in ("steps", "global_batch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass
class ParallelConfig:
    """Scale-out options (parallelize.py). FSDP2 is used whenever the run has more than one process."""

    fsdp: Literal["auto", "always", "never"] = "auto"  # auto: shard when world_size > 1
    reshard_after_forward: bool = True
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile every transformer block (first step takes a while)


@dataclasses.dataclass
class LoraSettings:
    """PEFT LoRA adapters; with `targets` non-empty only the adapters train (on top of `model.trainable`'s
    modules being frozen). Merged into the base weights on export."""

    targets: list[Literal["llm", "dit"]] = dataclasses.field(default_factory=list)
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    llm_modules: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    dit_modules: list[str] = dataclasses.field(
        default_factory=lambda: [
            "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
            "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
        ]
    )  # fmt: skip

    def validate(self) -> None:
        if self.targets and self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")


@dataclasses.dataclass
class CheckpointConfig:
    """Periodic atomic checkpoints and the export to the official inference layout.

    resume: "auto" continues from `output_dir/checkpoints/latest` when it exists; "never" starts over (and refuses
    to overwrite existing checkpoints); any other value is a checkpoint folder to resume from.
    """

    every: int = 0  # steps between checkpoints; 0 = only at the end
    keep_last: int = 2
    resume: str = "auto"
    export_final: bool = True  # write output_dir/export (official layout) at the end
    export_dtype: Literal["float32", "bfloat16"] = "float32"

    def validate(self) -> None:
        if self.every < 0 or self.keep_last < 1:
            raise ValueError(
                f"checkpoint.every must be >= 0 and keep_last >= 1, got {self.every}, {self.keep_last}"
            )


@dataclasses.dataclass
class LogConfig:
    every: int = 1  # steps between metric lines
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = True  # when the tensorboard package is installed
    plot: bool = True  # loss-curve PNG at the end


@dataclasses.dataclass
class SampleConfig:
    """Sample images and answers on a fixed prompt set every `every` steps (0 = off) and at the end."""

    every: int = 0
    at_end: bool = False
    prompts: list[str] = dataclasses.field(
        default_factory=lambda: [
            "A red circle on a white background.",
            "A blue square on a black background.",
        ]
    )
    questions: list[str] = dataclasses.field(default_factory=lambda: ["What can you draw?"])
    num_inference_steps: int = 10
    height: int | None = None
    width: int | None = None
    all_cfg_scale: float = 4.5
    part_cfg_scale: float = 2.0
    max_new_tokens: int = 32
    seed: int = 0


@dataclasses.dataclass
class DebugConfig:
    """Fault injection for the crash/resume tests (the process SIGKILLs itself)."""

    kill_at_step: int | None = None  # after this step's optimizer update, before any checkpoint of that step
    kill_during_checkpoint_at_step: int | None = None  # after writing the weights of this step's checkpoint


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; `recipes.py` builds these."""

    name: str = "custom"
    output_dir: str = "runs/custom"
    seed: int = 0
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: LoopConfig = dataclasses.field(default_factory=LoopConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LogConfig = dataclasses.field(default_factory=LogConfig)
    samples: SampleConfig = dataclasses.field(default_factory=SampleConfig)
    debug: DebugConfig = dataclasses.field(default_factory=DebugConfig)

    def validate(self) -> TrainConfig:
        """Check every section; returns self. Raises ValueError naming the bad field."""
        for section in _iter_dataclasses(self):
            check = getattr(section, "validate", None)
            if callable(check) and section is not self:
                check()
        if not self.model.trainable and not self.lora.targets:
            raise ValueError("model.trainable is empty and no LoRA target is set: nothing would be trained")
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


# --------------------------------------------------------------------------------------------------
# Generic dataclass <-> dict and overrides
# --------------------------------------------------------------------------------------------------


def _iter_dataclasses(obj: Any):
    yield obj
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _iter_dataclasses(value)


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain JSON-able dict."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a JSON value to the annotated type `tp`; ValueError names `where`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except (ValueError, TypeError) as exc:
                errors.append(str(exc))
        raise ValueError(f"{where}: {value!r} matches none of {tp} ({'; '.join(errors)})")
    if origin is Literal:
        if value not in get_args(tp):
            raise ValueError(f"{where} must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin is list:
        (item,) = get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, str) and item is str:
            value = [
                value
            ]  # `data.sources=a.jsonl` on a command line: one item, no shell-glob brackets needed
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        key_t, val_t = get_args(tp) or (Any, Any)
        return {
            _coerce(k, key_t, f"{where} key"): _coerce(v, val_t, f"{where}[{k!r}]") for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported config type {tp}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Strict dict -> dataclass: unknown keys raise; missing keys keep their defaults."""
    if not isinstance(data, dict):
        raise TypeError(f"{where or cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown config key(s) {[_join(where, k) for k in unknown]}; valid: {names}")
    kwargs = {k: _coerce(v, hints[k], _join(where, k)) for k, v in data.items()}
    return cls(**kwargs)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def parse_value(text: str) -> Any:
    """Command-line value: JSON when it parses (numbers, true/false/null, [..], {..}), else the raw string.

    `[a.jsonl,b.tar]` (a list of bare words) is accepted as a list of strings for convenience.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        inner = stripped[1:-1].strip()
        return [part.strip() for part in inner.split(",")] if inner else []
    return text


# Named values a dataclass-typed field accepts from the command line (e.g. model.arch=mid).
PresetLookup = typing.Callable[[type, str], Any]


def apply_overrides(config: T, overrides: Sequence[str], presets: PresetLookup | None = None) -> T:
    """Apply `a.b.c=value` overrides in order (mutates and returns `config`).

    Args:
        presets: resolves a string assigned to a dataclass-typed field (e.g. `model.arch=mid`).
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        key = key.removeprefix("--")
        parts = key.split(".")
        target: Any = config
        for i, part in enumerate(parts[:-1]):
            if not dataclasses.is_dataclass(target) or part not in {
                f.name for f in dataclasses.fields(target)
            }:
                raise ValueError(f"unknown config key {'.'.join(parts[: i + 1])!r} in override {item!r}")
            target = getattr(target, part)
        leaf = parts[-1]
        if not dataclasses.is_dataclass(target):
            raise ValueError(f"{'.'.join(parts[:-1])!r} is not a config section (override {item!r})")
        fields = {f.name for f in dataclasses.fields(target)}
        if leaf not in fields:
            raise ValueError(f"unknown config key {key!r}; valid keys here: {sorted(fields)}")
        tp = _hints(type(target))[leaf]
        value = parse_value(raw)
        if dataclasses.is_dataclass(tp) and isinstance(value, str):
            if presets is None:
                raise ValueError(f"{key} is a section; set its fields ({key}.FIELD=...) instead")
            value = presets(tp, value)
        setattr(target, leaf, _coerce(value, tp, key))
    return config
