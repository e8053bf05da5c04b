"""Build the five pipeline components for training: from a checkpoint, or fresh from a size (`ModelArch`).

Fresh models follow the released structure exactly (InternViT + pixel shuffle + mlp1 + Qwen3, an MMDiT head fed by
the concatenated hidden states of layers [-1, -2], a Qwen-Image-style VAE, the DPM-Solver++ flow scheduler and the
InternVL-U processor) at any size, so an export of a fresh model loads with `InternVLUPipeline.from_pretrained`.
Without `tokenizer_path` the project's small byte-level BPE (internvlu.embedded.tokenizer) is trained in-process on
the template strings; it is deterministic (same ids on every machine), needs no download and keeps the long Chinese
system prompts short.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from internvlu.constants import IM_END_TOKEN, IM_START_TOKEN, SPECIAL_TOKEN_LIST
from internvlu.training.config import ModelArch, ModelConfig

logger = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
BUILTIN_BPE_VOCAB = 768
_CORPUS_WORDS = (
    "a an the of on in at to and with is are what which where how many color colour shape image picture background "
    "red orange yellow green blue purple pink brown black white gray light dark small medium large big circle square "
    "triangle diamond star left right top bottom center middle above below next make turn move add remove change "
    "into one two three four five there describe answer question the user wants draw first then think"
)


# --------------------------------------------------------------------------------------------------
# Size presets
# --------------------------------------------------------------------------------------------------


def tiny_arch() -> ModelArch:
    """The parity-fixture shape: ~1.4M parameters, 4 image tokens, 56 px ViT input; trains on CPU in seconds."""
    return ModelArch()


def mid_arch() -> ModelArch:
    """A research-size model (~92M parameters): 224 px ViT (64 image tokens), 512-wide LLM and head."""
    return ModelArch(
        vit_image_size=224, vit_patch_size=14, vit_hidden=256, vit_layers=4, vit_heads=4, vit_mlp=1024,
        llm_hidden=512, llm_layers=8, llm_heads=8, llm_kv_heads=4, llm_head_dim=64, llm_mlp=1536,
        dit_layers=6, dit_heads=8, dit_head_dim=64, dit_axes_rope=[16, 24, 24],
        vae_base_dim=32, vae_res_blocks=1, gen_min_side=256, gen_max_side=512, gen_default_size=256,
    )  # fmt: skip


def full_arch() -> ModelArch:
    """The released 4B structure (InternViT-300M, Qwen3-1.7B, 20-block 1.8B MMDiT, Qwen-Image VAE)."""
    return ModelArch(
        vit_image_size=448, vit_patch_size=14, vit_hidden=1024, vit_layers=24, vit_heads=16, vit_mlp=4096,
        llm_hidden=2048, llm_layers=28, llm_heads=16, llm_kv_heads=8, llm_head_dim=128, llm_mlp=6144,
        dit_layers=20, dit_heads=12, dit_head_dim=128, dit_axes_rope=[16, 56, 56],
        vae_base_dim=96, vae_res_blocks=2, gen_min_side=512, gen_max_side=1024, gen_default_size=512,
    )  # fmt: skip


ARCHS: dict[str, Callable[[], ModelArch]] = {"tiny": tiny_arch, "mid": mid_arch, "full": full_arch}


def arch_preset(name: str) -> ModelArch:
    if name not in ARCHS:
        raise ValueError(f"unknown model size {name!r}; known: {sorted(ARCHS)}")
    return ARCHS[name]()


# --------------------------------------------------------------------------------------------------
# Tokenizer and processor
# --------------------------------------------------------------------------------------------------


def build_tokenizer():
    """The project's tiny-model BPE (internvlu.embedded.tokenizer: Qwen2 pre-tokenizer, release special-token
    layout) trained on the template strings plus a small English word list. Deterministic: the same ids on every
    run and machine, so a fresh model and its export agree without a download."""
    import tempfile

    from internvlu.embedded.tokenizer import train_tokenizer

    words = _CORPUS_WORDS.split()
    corpus = [" ".join(words[i : i + 8]) for i in range(0, len(words), 4)] * 5 + [
        w.capitalize() + "." for w in words
    ]
    with tempfile.TemporaryDirectory() as tmp:
        return train_tokenizer(corpus, tmp, vocab_size=BUILTIN_BPE_VOCAB, template_repeats=20)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def build_processor(arch: ModelArch, tokenizer):
    from internvlu.processing.images import GenerationImageProcessor, UnderstandingImageProcessor
    from internvlu.processing_internvlu import InternVLUProcessor, ProcessorConfig

    vae_factor = arch.vae_downsample_factor
    config = ProcessorConfig(
        image_processor_kwargs=UnderstandingImageProcessor(size=(arch.vit_image_size, arch.vit_image_size)),
        image_gen_processor_kwargs=GenerationImageProcessor(
            vae_downsample_factor=vae_factor,
            min_dynamic_patch=(arch.gen_min_side // vae_factor) ** 2,
            max_dynamic_patch=(arch.gen_max_side // vae_factor) ** 2,
            max_length=arch.gen_max_side if arch.gen_max_side >= 1024 else None,
        ),
        image_seq_length=num_image_tokens(arch),
        extra={"processor_class": "InternVLUProcessor"},
    )
    return InternVLUProcessor(tokenizer, config)


def num_image_tokens(arch: ModelArch) -> int:
    return (arch.vit_image_size // arch.vit_patch_size) ** 2 // 4


# --------------------------------------------------------------------------------------------------
# Component configs
# --------------------------------------------------------------------------------------------------


def vlm_config(arch: ModelArch, tokenizer):
    from internvlu.vlm.configuration import InternVisionConfig, InternVLUChatConfig

    vocab = tokenizer.get_vocab()
    size = len(tokenizer)
    vocab_size = -(-size // arch.llm_vocab_multiple) * arch.llm_vocab_multiple
    vision = InternVisionConfig(
        patch_size=arch.vit_patch_size, image_size=arch.vit_image_size, hidden_size=arch.vit_hidden,
        num_attention_heads=arch.vit_heads, intermediate_size=arch.vit_mlp, num_hidden_layers=arch.vit_layers,
        qkv_bias=True, qk_normalization=False, norm_type="layer_norm", layer_norm_eps=1e-6, hidden_act="gelu",
        use_flash_attn=False,
    )  # fmt: skip
    llm = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": arch.llm_hidden,
        "num_hidden_layers": arch.llm_layers, "num_attention_heads": arch.llm_heads,
        "num_key_value_heads": arch.llm_kv_heads, "head_dim": arch.llm_head_dim, "intermediate_size": arch.llm_mlp,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
        "vocab_size": vocab_size, "tie_word_embeddings": False, "attention_bias": False, "attention_dropout": 0.0,
        "initializer_range": 0.02, "use_cache": True, "bos_token_id": vocab[PAD_TOKEN],
        "pad_token_id": vocab[PAD_TOKEN], "eos_token_id": vocab[IM_END_TOKEN],
    }  # fmt: skip
    return InternVLUChatConfig(
        vision_config=vision, llm_config=llm, template="qwen2_5-chat-v3", downsample_ratio=0.5,
        force_image_size=arch.vit_image_size, select_layer=-1, ps_version="v2", tie_word_embeddings=False,
    )  # fmt: skip


def decoder_config(arch: ModelArch):
    from internvlu.diffusion.configuration import InternVLUGenerationDecoderConfig, InternVLUTransformerConfig

    joint = 2 * arch.llm_hidden  # hidden states of layers [-1, -2], concatenated
    return InternVLUGenerationDecoderConfig(
        decoder_config=InternVLUTransformerConfig(
            patch_size=arch.dit_patch_size, in_channels=arch.dit_patch_size**2 * arch.vae_z_dim, out_channels=arch.vae_z_dim, num_layers=arch.dit_layers,
            attention_head_dim=arch.dit_head_dim, num_attention_heads=arch.dit_heads, joint_attention_dim=joint,
            axes_dims_rope=tuple(arch.dit_axes_rope), video_position_scale_factor=1.0,
            vlm_cond_position_scale_factor=arch.dit_vlm_cond_scale, timestep_scale=arch.dit_timestep_scale,
            extra={"_class_name": "InternVLUTransformer2DModel"},
        ),
        decoder_projector_type="identity", input_hidden_size=joint, output_hidden_size=joint,
        padding_encoder_hidden_states=True, pad_to_fix_length=False, max_sequence_length=768,
        vlm_select_layer=[-1, -2], gen_image_height=arch.gen_default_size, gen_image_width=arch.gen_default_size,
        video_position_scale_factor=1.0, vlm_cond_position_scale_factor=arch.dit_vlm_cond_scale, flow_shift=arch.flow_shift,
        vae_downsample_factor=arch.vae_downsample_factor,
        extra={"architectures": ["InternVLUGenerationDecoder"], **_guidance_defaults(arch)},
    )  # fmt: skip


def _guidance_defaults(arch: ModelArch) -> dict[str, Any]:
    out = {}
    for key in ("default_image_guidance", "default_think_guidance"):
        value = getattr(arch, key)
        if value is not None:
            if len(value) != 2:
                raise ValueError(f"model.arch.{key} must be [all_cfg_scale, part_cfg_scale], got {value!r}")
            out[key] = [float(v) for v in value]
    if arch.default_preserve_unedited:
        out["default_preserve_unedited"] = True
    return out


def build_vae(arch: ModelArch):
    from diffusers import AutoencoderKLQwenImage

    # Qwen-Image VAE structure; latents_mean/std default to diffusers' values (= the release's) when not given.
    stats = {}
    if arch.vae_latents_mean is not None:
        stats["latents_mean"] = list(arch.vae_latents_mean)
    if arch.vae_latents_std is not None:
        stats["latents_std"] = list(arch.vae_latents_std)
    if arch.vae_z_dim != 16 and len(stats) < 2:
        # diffusers' defaults have 16 entries; other latent widths start unnormalised.
        stats = {"latents_mean": [0.0] * arch.vae_z_dim, "latents_std": [1.0] * arch.vae_z_dim, **stats}
    return AutoencoderKLQwenImage(
        base_dim=arch.vae_base_dim, z_dim=arch.vae_z_dim, dim_mult=list(arch.vae_dim_mult),
        num_res_blocks=arch.vae_res_blocks, attn_scales=[], temperal_downsample=list(arch.vae_temperal_downsample),
        dropout=0.0, **stats,
    )  # fmt: skip


def build_scheduler(flow_shift: float = 3.0):
    """The release's DPM-Solver++ 2M flow scheduler (shift 3 unless told otherwise)."""
    from diffusers import DPMSolverMultistepScheduler

    from internvlu.presets import RELEASED_SCHEDULER_CONFIG

    return DPMSolverMultistepScheduler(**{**RELEASED_SCHEDULER_CONFIG, "flow_shift": flow_shift})


# --------------------------------------------------------------------------------------------------
# Whole pipeline
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def _init_fresh_weights(
    vlm, decoder, std: float, embed_std: float | None = None, dit_init: str = "xavier"
) -> None:
    """Training init: HF init for the LLM (done by its constructor), N(0, std) for the ViT's class/position
    tables and the special-token rows (their constructors draw N(0, 1), far larger than the token embeddings),
    the reference's Xavier init for the MMDiT head (or adaLN-Zero, `dit_init`).

    `embed_std` (ModelArch.llm_embed_std) redraws the token and special-token embeddings at that scale."""
    emb = vlm.vision_model.embeddings
    emb.class_embedding.normal_(0.0, std)
    emb.position_embedding.normal_(0.0, std)
    vlm.special_token_embedding.weight.normal_(0.0, std if embed_std is None else embed_std)
    if embed_std is not None:
        vlm.language_model.get_input_embeddings().weight.normal_(0.0, embed_std)
    decoder.decoder.initialize_weights(adaln_zero=dit_init == "adaln_zero")


def build_fresh_pipeline(
    arch: ModelArch, seed: int = 0, tokenizer_path: str | None = None, attn_implementation: str = "sdpa"
):
    """A new `InternVLUPipeline` of size `arch` with seeded random weights (fp32, CPU)."""
    from internvlu.diffusion import InternVLUGenerationDecoder
    from internvlu.pipeline import InternVLUPipeline
    from internvlu.vlm import InternVLUChatModel

    arch.validate()
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path else build_tokenizer()
    missing = [
        t for t in (*SPECIAL_TOKEN_LIST, IM_START_TOKEN, IM_END_TOKEN) if t not in tokenizer.get_vocab()
    ]
    if missing:
        raise ValueError(f"tokenizer at {tokenizer_path!r} lacks the InternVL-U tokens {missing}")
    processor = build_processor(arch, tokenizer)
    # One generator state for the whole build: the same seed gives the same weights on every machine.
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        vlm = InternVLUChatModel(vlm_config(arch, tokenizer), attn_implementation=attn_implementation)
        decoder = InternVLUGenerationDecoder(decoder_config(arch))
        _init_fresh_weights(vlm, decoder, std=0.02, embed_std=arch.llm_embed_std, dit_init=arch.dit_init)
        vae = build_vae(arch)
    finally:
        torch.random.set_rng_state(state)
    return InternVLUPipeline(vlm.float(), decoder.float(), vae.float().eval(), build_scheduler(arch.flow_shift), processor)


def build_pipeline(model: ModelConfig, seed: int = 0, device: str | torch.device = "cpu"):
    """The starting point of a run: the checkpoint at `model.path`, or a fresh model of `model.arch` (fp32)."""
    from internvlu.pipeline import InternVLUPipeline

    if model.init == "pretrained":
        if not model.path:
            raise ValueError("model.init='pretrained' needs model.path")
        pipe = InternVLUPipeline.from_pretrained(
            model.path, dtype=torch.float32, device=device, attn_implementation=model.attn_implementation
        )
    else:
        pipe = build_fresh_pipeline(model.arch, seed, model.tokenizer_path, model.attn_implementation).to(
            device
        )
    return pipe
