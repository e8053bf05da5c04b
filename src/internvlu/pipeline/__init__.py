"""The InternVL-U pipeline and its typed results."""

from .options import PerformanceOptions
from .outputs import ChatResult, ImageResult, InternVLUPipelineOutput
from .pipeline import InternVLUPipeline

__all__ = ["ChatResult", "ImageResult", "InternVLUPipeline", "InternVLUPipelineOutput", "PerformanceOptions"]
