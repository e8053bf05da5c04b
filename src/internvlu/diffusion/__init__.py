"""Generation decoder of InternVL-U: the MMDiT head that turns VLM hidden states into flow velocities.

The official `model_index.json` names this package (`"generation_decoder": ["internvlu.diffusion",
"InternVLUGenerationDecoder"]`).
"""

from __future__ import annotations

from internvlu.diffusion.configuration import (
    InternVLUGenerationDecoderConfig,
    InternVLUTransformerConfig,
    released_generation_decoder_config,
)
from internvlu.diffusion.decoder import InternVLUGenerationDecoder
from internvlu.diffusion.rope import apply_rope, build_position_ids_3d, grid_positions, rope_cos_sin
from internvlu.diffusion.transformer import (
    InternVLUTransformer2DModel,
    InternVLUTransformerBlock,
    PackedInputs,
    PackLayout,
    build_pack_layout,
    patchify,
    unpatchify,
)

__all__ = [
    "InternVLUGenerationDecoder",
    "InternVLUGenerationDecoderConfig",
    "InternVLUTransformer2DModel",
    "InternVLUTransformerBlock",
    "InternVLUTransformerConfig",
    "PackLayout",
    "PackedInputs",
    "apply_rope",
    "build_pack_layout",
    "build_position_ids_3d",
    "grid_positions",
    "patchify",
    "released_generation_decoder_config",
    "rope_cos_sin",
    "unpatchify",
]
