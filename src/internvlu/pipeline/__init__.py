"""The InternVL-U pipeline and its typed results."""

from .outputs import ChatResult, ImageResult, InternVLUPipelineOutput
from .pipeline import InternVLUPipeline

__all__ = ["ChatResult", "ImageResult", "InternVLUPipeline", "InternVLUPipelineOutput"]
