"""Typed results of the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image


@dataclass
class InternVLUPipelineOutput:
    """Output of the official-compatible `InternVLUPipeline.__call__`.

    Attributes:
        generate_output: generated token ids [B, T] (text and text_image modes), else None.
        images: generated PIL images (image modes), B * num_images_per_prompt of them, prompt-major.
    """

    generate_output: torch.Tensor | None = None
    images: list[Image.Image] | None = None


@dataclass
class ChatResult:
    """Answer of `InternVLUPipeline.chat`: one entry per prompt."""

    texts: list[str]
    token_ids: list[list[int]]

    @property
    def text(self) -> str:
        return self.texts[0]


@dataclass
class ImageResult:
    """Images of `generate` / `edit`, prompt-major (prompt 0's images first).

    Attributes:
        images: B * num_images_per_prompt PIL images.
        thoughts: the chain of thought per prompt in think mode, else None.
        size: (height, width) of the returned images.
        settings: resolved sampling settings (steps, guidance, seed, size...) for provenance.
    """

    images: list[Image.Image]
    thoughts: list[str] | None = None
    size: tuple[int, int] = (0, 0)
    settings: dict = field(default_factory=dict)

    @property
    def image(self) -> Image.Image:
        return self.images[0]

    @property
    def thought(self) -> str | None:
        return None if self.thoughts is None else self.thoughts[0]
