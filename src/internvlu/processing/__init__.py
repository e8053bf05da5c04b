"""Prompt templates and image preprocessing shared by the processor (inference) and the training code.

The processor itself is `internvlu.processing_internvlu.InternVLUProcessor` (the module path recorded in the
checkpoint's model_index.json).
"""

from __future__ import annotations

from internvlu.processing.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    GenerationImageProcessor,
    ImageInput,
    UnderstandingImageProcessor,
    load_image,
    pad_to_batch_max,
    round_to_bf16,
    smart_resize,
)
from internvlu.processing.templates import (
    BASE_TEMPLATE,
    CFG_ROW_ORDER,
    TEMPLATES,
    ChatTemplate,
    DropCond,
    build_prompt,
    drop_content,
    expand_image_tokens,
    get_template,
    images_in_row,
    normalize_user_prompt,
    template_name_for,
)

__all__ = [
    "BASE_TEMPLATE",
    "CFG_ROW_ORDER",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "TEMPLATES",
    "ChatTemplate",
    "DropCond",
    "GenerationImageProcessor",
    "ImageInput",
    "UnderstandingImageProcessor",
    "build_prompt",
    "drop_content",
    "expand_image_tokens",
    "get_template",
    "images_in_row",
    "load_image",
    "normalize_user_prompt",
    "pad_to_batch_max",
    "round_to_bf16",
    "smart_resize",
    "template_name_for",
]
