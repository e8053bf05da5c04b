"""internvlu: the open, installable, trainable implementation of InternVL-U.

    from internvlu import InternVLUPipeline
    pipe = InternVLUPipeline.from_pretrained("/path/to/InternVL-U", torch_dtype=torch.bfloat16)

Heavy imports (torch, transformers, diffusers) happen on first use of an attribute, so the CLI
starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "InternVLUPipeline": "internvlu.pipeline",
    "InternVLUPipelineOutput": "internvlu.pipeline",
    "ChatResult": "internvlu.pipeline",
    "ImageResult": "internvlu.pipeline",
    "InternVLUChatModel": "internvlu.vlm",
    "InternVLUGenerationDecoder": "internvlu.diffusion",
    "InternVLUProcessor": "internvlu.processing_internvlu",
}

__all__ = [*_LAZY, "__version__"]

if TYPE_CHECKING:
    from .diffusion import InternVLUGenerationDecoder
    from .pipeline import ChatResult, ImageResult, InternVLUPipeline, InternVLUPipelineOutput
    from .processing_internvlu import InternVLUProcessor
    from .vlm import InternVLUChatModel


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'internvlu' has no attribute {name!r}")
