"""Named model configurations: the released 4B shape, a ~0.5B mid-size shape for benchmarks.

Every preset returns typed configs for the three weight-bearing components; `build_components`
builds them (on the meta device by default: no memory, for key checks and sizing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .diffusion import InternVLUGenerationDecoder
from .diffusion.configuration import InternVLUGenerationDecoderConfig, released_generation_decoder_config
from .vlm import InternVLUChatModel
from .vlm.configuration import InternVisionConfig, InternVLUChatConfig

# Qwen-Image VAE (diffusers AutoencoderKLQwenImage) of the release; latents mean/std are diffusers' defaults.
RELEASED_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
}

# Scheduler of the release (DPM-Solver++ 2M, flow sigmas, shift 3).
RELEASED_SCHEDULER_CONFIG: dict[str, Any] = {
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
    "solver_type": "midpoint",
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "num_train_timesteps": 1000,
    "timestep_spacing": "linspace",
    "final_sigmas_type": "zero",
    "lower_order_final": True,
    "euler_at_final": False,
}

INTERN_VIT_300M: dict[str, Any] = {
    "num_channels": 3,
    "patch_size": 14,
    "image_size": 448,
    "qkv_bias": True,
    "hidden_size": 1024,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "qk_normalization": False,
    "num_hidden_layers": 24,
    "use_flash_attn": True,
    "hidden_act": "gelu",
    "norm_type": "layer_norm",
    "layer_norm_eps": 1e-6,
    "dropout": 0.0,
    "drop_path_rate": 0.0,
    "attention_dropout": 0.0,
}

QWEN3_1_7B: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "use_sliding_window": False,
    "tie_word_embeddings": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}


@dataclass
class ModelPreset:
    vlm: InternVLUChatConfig
    generation_decoder: InternVLUGenerationDecoderConfig
    vae: dict[str, Any]


def released() -> ModelPreset:
    """The 4B InternVL-U release: InternViT-300M + Qwen3-1.7B + 20-block 1536-wide MMDiT + Qwen-Image VAE."""
    vlm = InternVLUChatConfig(
        vision_config=InternVisionConfig.from_dict(INTERN_VIT_300M),
        llm_config=dict(QWEN3_1_7B),
        template="qwen2_5-chat-v3",
        force_image_size=448,
        downsample_ratio=0.5,
        select_layer=-1,
        ps_version="v2",
    )
    return ModelPreset(
        vlm=vlm, generation_decoder=released_generation_decoder_config(), vae=dict(RELEASED_VAE_CONFIG)
    )


def mid() -> ModelPreset:
    """A ~0.5B model of the same architecture (for benchmarks between tiny and full size)."""
    preset = released()
    vit = dict(
        INTERN_VIT_300M, hidden_size=512, num_attention_heads=8, intermediate_size=2048, num_hidden_layers=12
    )
    llm = dict(QWEN3_1_7B, hidden_size=1024, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=8,
               num_key_value_heads=4, tie_word_embeddings=True)  # fmt: skip
    preset.vlm = InternVLUChatConfig(
        vision_config=InternVisionConfig.from_dict(vit), llm_config=llm, template="qwen2_5-chat-v3",
        force_image_size=448, downsample_ratio=0.5, select_layer=-1, ps_version="v2",
    )  # fmt: skip
    dec = preset.generation_decoder.to_dict()
    dec.update(input_hidden_size=2048, output_hidden_size=2048)
    dec["decoder_config"].update(num_layers=6, num_attention_heads=8, joint_attention_dim=2048)
    preset.generation_decoder = InternVLUGenerationDecoderConfig.from_dict(dec)
    return preset


PRESETS = {"released": released, "mid": mid}


def build_components(
    preset: ModelPreset, device: str | torch.device = "meta"
) -> tuple[InternVLUChatModel, InternVLUGenerationDecoder, torch.nn.Module]:
    """Build (vlm, generation_decoder, vae) from a preset; on the meta device nothing is allocated."""
    from diffusers import AutoencoderKLQwenImage

    with torch.device(device):
        vlm = InternVLUChatModel(preset.vlm)
        decoder = InternVLUGenerationDecoder(preset.generation_decoder)
        vae = AutoencoderKLQwenImage(**preset.vae)
    return vlm, decoder, vae
