"""VLM half of InternVL-U: InternViT encoder, pixel-shuffle + `mlp1` projector, transformers LLM.

The official `model_index.json` names this module (`"internvlu.vlm"`) and class `InternVLUChatModel`.
"""

from __future__ import annotations

from internvlu.vlm.configuration import SUPPORTED_LLM_ARCHITECTURES, InternVisionConfig, InternVLUChatConfig
from internvlu.vlm.modeling import InternVLUChatModel
from internvlu.vlm.vision import InternRMSNorm, InternVisionModel, pixel_shuffle_v2

__all__ = [
    "SUPPORTED_LLM_ARCHITECTURES",
    "InternRMSNorm",
    "InternVLUChatConfig",
    "InternVLUChatModel",
    "InternVisionConfig",
    "InternVisionModel",
    "pixel_shuffle_v2",
]
