"""InternVLUProcessor: prompts + images -> token ids and pixel tensors for the InternVL-U pipeline.

The module path and class name are the ones recorded in the checkpoint's model_index.json
(`["internvlu.processing_internvlu", "InternVLUProcessor"]`), so a stock diffusers loader resolves to this
class.

Output layout (reference §4.5-4.6):
- text mode: one row per prompt.
- image modes ("image", "text_image"): 3 rows per prompt, ordered [none x B, text x B, all x B] (conditional,
  text dropped with images kept, everything dropped), left padded.
- `pixel_values` / `pixel_values_gen`: the images of every row in row order (so in image modes: images of the
  `none` rows, then of the `text` rows; `all` rows have none), rounded to bf16 but kept in float32.
- `image_grid_thw_gen` / `generation_flags`: one entry per `<img>` token in row-major order: each input image
  (flag 0, its VAE-latent grid) then the row's generation slot (flag 1, the generation grid).
Deliberate differences from the reference (which crashes or mixes templates here): several images per
prompt in image modes, `None` entries in an image batch (that prompt is text-to-image and gets the -imgen
system prompt), and a requested generation size that is not a multiple of 16 is aligned down before its
grid is computed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, ProcessorMixin  # ProcessorMixin: see the class docstring

from internvlu.constants import (
    IM_END_TOKEN,
    IM_START_TOKEN,
    SPECIAL_TOKEN_LIST,
    THINK_END_TOKEN,
    THINK_START_TOKEN,
)
from internvlu.processing.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    GenerationImageProcessor,
    ImageInput,
    UnderstandingImageProcessor,
    load_image,
    pad_to_batch_max,
    round_to_bf16,
)
from internvlu.processing.templates import (
    BASE_TEMPLATE,
    CFG_ROW_ORDER,
    DropCond,
    build_prompt,
    check_base_template,
    check_generation_mode,
    images_in_row,
)
from internvlu.utils.config import ConfigBase

PROCESSOR_CONFIG_NAME = "processor_config.json"
DYNAMIC_GEN_PROCESSOR_CLASS = "InternVLUDynamicResGenerationImageProcessor"
FIX_GEN_PROCESSOR_CLASS = "InternVLUFixResGenerationImageProcessor"
# Used when neither height nor width is given (the pipeline always passes both).
DEFAULT_GEN_RESOLUTION = (512, 512)


# --------------------------------------------------------------------------------------------------
# Config and output types
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ProcessorConfig(ConfigBase):
    """`processor/processor_config.json`; unknown keys (e.g. `processor_class`) are kept in `extra`."""

    image_processor_kwargs: UnderstandingImageProcessor = dataclasses.field(
        default_factory=UnderstandingImageProcessor
    )
    image_gen_processor_class: str = DYNAMIC_GEN_PROCESSOR_CLASS
    image_gen_processor_kwargs: GenerationImageProcessor = dataclasses.field(
        default_factory=GenerationImageProcessor
    )
    image_seq_length: int = 256

    def validate(self) -> None:
        if self.image_gen_processor_class == FIX_GEN_PROCESSOR_CLASS:
            # The reference pipeline needs `merge_size`, which the fix-resolution class lacks (it crashes).
            raise ValueError(
                f"image_gen_processor_class {FIX_GEN_PROCESSOR_CLASS!r} is not supported; "
                f"use {DYNAMIC_GEN_PROCESSOR_CLASS!r}"
            )
        if self.image_gen_processor_class != DYNAMIC_GEN_PROCESSOR_CLASS:
            raise ValueError(f"unknown image_gen_processor_class {self.image_gen_processor_class!r}")
        if isinstance(self.image_seq_length, bool) or not isinstance(self.image_seq_length, int):
            raise ValueError(f"image_seq_length must be an int, got {self.image_seq_length!r}")
        if self.image_seq_length <= 0:
            raise ValueError(f"image_seq_length must be positive, got {self.image_seq_length}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessorConfig:
        if not isinstance(data, dict):
            raise TypeError(f"ProcessorConfig.from_dict expects a dict, got {type(data).__name__}")
        data = dict(data)
        for key, sub in (
            ("image_processor_kwargs", UnderstandingImageProcessor),
            ("image_gen_processor_kwargs", GenerationImageProcessor),
        ):
            if key in data:
                data[key] = sub.from_dict(data[key])
        return super().from_dict(data)


@dataclasses.dataclass
class ProcessorOutput:
    """Tensors for the VLM / diffusion head. R rows = num_prompts * rows_per_prompt; K = `<img>` tokens."""

    input_ids: torch.Tensor  # [R, L] long, left padded
    attention_mask: torch.Tensor  # [R, L] long
    pixel_values: torch.Tensor | None  # [N, 3, S, S] float32 holding bf16-rounded values
    # [K_real, 3, Hmax, Wmax] float32 (bf16-rounded), zero-padded bottom/right to the batch max
    pixel_values_gen: torch.Tensor | None
    image_grid_thw_gen: torch.Tensor | None  # [K_total, 3] long (image modes)
    generation_flags: torch.Tensor | None  # [K_total] long, 1 = image to generate (image modes)
    num_prompts: int
    rows_per_prompt: int  # 1 (text) or 3 (image modes)
    images_per_row: list[int]
    gen_sizes: list[tuple[int, int]]  # 16-aligned (h, w) per prompt; empty in text mode
    text: list[str]  # rendered rows (expanded image tokens, no padding)

    def to(self, device: torch.device | str) -> ProcessorOutput:
        """Move every tensor to `device` (dtypes unchanged; the pipeline casts pixels to the model dtype)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


# --------------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class InternVLUProcessor(ProcessorMixin):
    """Tokenizer + understanding/generation image preprocessing + prompt templates of InternVL-U.

    It subclasses `transformers.ProcessorMixin` only so that diffusers' component loader (which looks for a
    known base class in this module) finds `from_pretrained` / `save_pretrained`; `ProcessorMixin.__init__`
    and its attribute machinery are not used.

    Attributes:
        tokenizer: transformers tokenizer from the checkpoint's `processor/` folder, padding on the left.
        config: the parsed `processor_config.json`.
        template_name: base conversation template ("qwen2_5-chat-v3"); the pipeline sets it from the VLM
            config.
        max_image_pixels: inputs above this many pixels are rejected before decoding (decompression-bomb
            guard).
    """

    def __init__(
        self,
        tokenizer: Any,
        config: ProcessorConfig | None = None,
        template_name: str = BASE_TEMPLATE,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        # The downstream code (hidden-state masks, CoT splice) assumes left padding.
        tokenizer.padding_side = "left"
        self.tokenizer = tokenizer
        self.config = config if config is not None else ProcessorConfig()
        self.template_name = template_name
        self.max_image_pixels = max_image_pixels
        self._token_ids = self._resolve_token_ids()

    # -- properties ---------------------------------------------------------------------------------

    @property
    def understanding_processor(self) -> UnderstandingImageProcessor:
        return self.config.image_processor_kwargs

    @property
    def generation_processor(self) -> GenerationImageProcessor:
        return self.config.image_gen_processor_kwargs

    @property
    def image_seq_length(self) -> int:
        return self.config.image_seq_length

    @property
    def template_name(self) -> str:
        return self._template_name

    @template_name.setter
    def template_name(self, name: str) -> None:
        self._template_name = check_base_template(name)

    @property
    def max_image_pixels(self) -> int:
        return self._max_image_pixels

    @max_image_pixels.setter
    def max_image_pixels(self, value: int) -> None:
        if not _is_int(value) or value <= 0:
            raise ValueError(f"max_image_pixels must be a positive int, got {value!r}")
        self._max_image_pixels = int(value)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tokenizer={type(self.tokenizer).__name__}(len={len(self.tokenizer)}), "
            f"template_name={self.template_name!r}, image_seq_length={self.image_seq_length}, "
            f"understanding_size={self.understanding_processor.size}, "
            f"gen_pixels=[{self.generation_processor.min_pixels}, {self.generation_processor.max_pixels}])"
        )

    # -- tokens -------------------------------------------------------------------------------------

    def _resolve_token_ids(self) -> dict[str, int | None]:
        vocab = self.tokenizer.get_vocab()
        required = (*SPECIAL_TOKEN_LIST, IM_START_TOKEN, IM_END_TOKEN)
        missing = [t for t in required if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks the InternVL-U tokens {missing}")
        if self.tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token (the checkpoint's tokenizer uses <|endoftext|>)")
        ids: dict[str, int | None] = {t: vocab[t] for t in required}
        ids["pad"] = self.tokenizer.pad_token_id
        for t in (THINK_START_TOKEN, THINK_END_TOKEN):
            ids[t] = vocab.get(t)
        return ids

    def token_ids(self) -> dict[str, int | None]:
        """Ids of SPECIAL_TOKEN_LIST, <|im_start|>, <|im_end|>, "pad", <think>/</think> (None if absent)."""
        return dict(self._token_ids)

    # -- loading / saving ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        subfolder: str | None = None,
        template_name: str = BASE_TEMPLATE,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> InternVLUProcessor:
        """Load from a local `processor/` folder (tokenizer files + processor_config.json). No remote code."""
        path = os.fspath(pretrained_model_name_or_path)
        if subfolder:
            path = os.path.join(path, subfolder)
        if not os.path.isdir(path):
            raise ValueError(
                f"processor folder {path!r} does not exist (expected a local checkpoint 'processor/' dir)"
            )
        config_file = os.path.join(path, PROCESSOR_CONFIG_NAME)
        if not os.path.isfile(config_file):
            raise ValueError(f"{config_file!r} not found: not an InternVL-U processor folder")
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
        config = ProcessorConfig.from_json_file(config_file)
        return cls(tokenizer, config, template_name=template_name, max_image_pixels=max_image_pixels)

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> list[str]:
        """Write the tokenizer files and processor_config.json (same keys and values as read).

        Extra keyword arguments (e.g. `push_to_hub` from generic callers) are not supported and raise.
        """
        if kwargs:
            raise TypeError(f"save_pretrained got unsupported arguments {sorted(kwargs)}")
        save_directory = os.fspath(save_directory)
        os.makedirs(save_directory, exist_ok=True)
        files = list(self.tokenizer.save_pretrained(save_directory))
        config_file = os.path.join(save_directory, PROCESSOR_CONFIG_NAME)
        self.config.to_json_file(config_file)
        return files + [config_file]

    # -- sizes --------------------------------------------------------------------------------------

    def gen_size(self, height: int, width: int) -> tuple[int, int]:
        """Generation size the pipeline uses: each side floored to a multiple of 16 (reference: h//16*16)."""
        factor = self.generation_processor.factor
        for name, value in (("height", height), ("width", width)):
            if not _is_int(value):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
            if value // factor * factor < factor:
                raise ValueError(
                    f"{name}={value} is too small: at least {factor} px after alignment to {factor}"
                )
        return int(height) // factor * factor, int(width) // factor * factor

    @staticmethod
    def _requested_size(height: int | None, width: int | None) -> tuple[int, int]:
        if height is not None and width is not None:
            return height, width
        if height is not None:
            return height, height
        if width is not None:
            return width, width
        return DEFAULT_GEN_RESOLUTION

    # -- call ---------------------------------------------------------------------------------------

    def build_prompt(
        self,
        prompt: str,
        num_images: int = 0,
        generation_mode: str = "text",
        drop: DropCond | str = DropCond.NONE,
        system_prompt: str | None = None,
        think: bool = False,
    ) -> str:
        """One rendered row with this processor's template and image_seq_length (templates.build_prompt)."""
        return build_prompt(
            prompt,
            image_seq_length=self.image_seq_length,
            num_images=num_images,
            generation_mode=generation_mode,
            drop=drop,
            base_template=self.template_name,
            system_prompt=system_prompt,
            think=think,
        )

    @staticmethod
    def _image_entries(image: Any, num_prompts: int) -> list[list[Any]]:
        """Split the `image` argument into one (undecoded) list per prompt."""
        if image is None:
            return [[] for _ in range(num_prompts)]
        entries = list(image) if isinstance(image, (list, tuple)) else [image]
        if len(entries) != num_prompts:
            raise ValueError(
                f"got {num_prompts} prompt(s) but {len(entries)} image entries; pass one entry per prompt "
                "(None, an image, or a list of images; several images for one prompt: image=[[img1, img2]])"
            )
        return [[] if e is None else list(e) if isinstance(e, (list, tuple)) else [e] for e in entries]

    def load_images(self, image: Any, num_prompts: int) -> list[list[Any]]:
        """Per-prompt lists of RGB PIL images from the `image` argument of `__call__`."""
        return [
            [load_image(img, self.max_image_pixels) for img in imgs]
            for imgs in self._image_entries(image, num_prompts)
        ]

    def __call__(
        self,
        prompt: str | Sequence[str],
        image: ImageInput | Sequence[Any] | None = None,
        generation_mode: str = "text",
        height: int | None = None,
        width: int | None = None,
        system_prompt: str | None = None,
        think: bool = False,
        *,
        padding: bool | str = True,
        return_tensors: str = "pt",
    ) -> ProcessorOutput:
        """Tokenise prompts and preprocess their images.

        Args:
            prompt: one prompt or a list of B prompts (`<image>` placeholders allowed, at most one per image).
            image: None; one image (for one prompt); or a list of B entries, each None, an image, or a list
                of images. An image is a PIL image, a path, a numpy uint8 HWC array or a torch uint8 CHW/HWC
                tensor.
            generation_mode: "text" (understanding), "image" (one forward ending with `<img>`), or
                "text_image" (chain of thought first: rows end at the assistant prompt, without `<img>`).
            height, width: requested generation size (image modes); aligned down to multiples of 16.
                One alone means a square; neither means 512x512.
            system_prompt: replaces the system message of every row.
            think: in image modes, like "text_image": rows are left open for a chain of thought (no `<img>`).
                No effect in text mode.
            padding, return_tensors: accepted for call compatibility with the reference; only True/"longest"
                and "pt" are supported.
        """
        check_generation_mode(generation_mode)
        if padding not in (True, "longest"):
            raise ValueError(
                f"padding={padding!r} is not supported (rows are always padded to the longest, left)"
            )
        if return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r} is not supported (only 'pt')")
        if not isinstance(think, bool):
            raise TypeError(f"think must be a bool, got {type(think).__name__}")
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, (list, tuple)) and prompt:
            prompts = list(prompt)
        else:
            raise TypeError(f"prompt must be a str or a non-empty list of str, got {prompt!r:.80}")
        for p in prompts:
            if not isinstance(p, str):
                raise TypeError(f"every prompt must be a str, got {type(p).__name__}: {p!r:.80}")

        image_mode = generation_mode != "text"
        gen_size = self.gen_size(*self._requested_size(height, width)) if image_mode else None
        # Render first: prompt errors surface before any image is decoded.
        num_images = [len(e) for e in self._image_entries(image, len(prompts))]
        drops = CFG_ROW_ORDER if image_mode else (DropCond.NONE,)
        texts = [
            self.build_prompt(p, n, generation_mode, drop, system_prompt, think)
            for drop in drops
            for p, n in zip(prompts, num_images, strict=True)
        ]
        images = self.load_images(image, len(prompts))
        pixels = self._image_tensors(images, drops, gen_size)
        enc = self.tokenizer(
            texts, padding="longest", padding_side="left", return_tensors="pt", return_attention_mask=True
        )
        return ProcessorOutput(
            input_ids=enc["input_ids"].to(torch.long),
            attention_mask=enc["attention_mask"].to(torch.long),
            **pixels,
            num_prompts=len(prompts),
            rows_per_prompt=len(drops),
            gen_sizes=[gen_size] * len(prompts) if gen_size is not None else [],
            text=texts,
        )

    def _image_tensors(
        self,
        images: list[list[Any]],
        drops: Sequence[DropCond],
        gen_size: tuple[int, int] | None,
    ) -> dict[str, Any]:
        """Pixel tensors, grids and flags of all rows in row order ([drop][prompt]) as ProcessorOutput fields.

        `gen_size` is None in text mode (no generation-side tensors).
        """
        # Each input image is preprocessed once and shared by the rows that carry it.
        und = [
            [round_to_bf16(self.understanding_processor.preprocess(img)) for img in imgs] for imgs in images
        ]
        gen = [
            [self.generation_processor.preprocess(img) for img in imgs] if gen_size is not None else []
            for imgs in images
        ]
        row_und: list[torch.Tensor] = []
        row_gen: list[torch.Tensor] = []
        grids: list[tuple[int, int, int]] = []
        flags: list[int] = []
        images_per_row: list[int] = []
        for drop in drops:
            for b in range(len(images)):
                n = images_in_row(len(images[b]), drop)
                images_per_row.append(n)
                row_und.extend(und[b][:n])
                if gen_size is None:
                    continue
                # One grid/flag per `<img>` token of the row: its input images, then the generation slot.
                for g in gen[b][:n]:  # g: [3, H', W']
                    row_gen.append(g)
                    grids.append(self.generation_processor.grid_thw(g.shape[-2], g.shape[-1]))
                    flags.append(0)
                grids.append(self.generation_processor.grid_thw(*gen_size))
                flags.append(1)
        image_mode = gen_size is not None
        return {
            "pixel_values": torch.stack(row_und) if row_und else None,  # [N, 3, S, S]
            # [K_real, 3, Hmax, Wmax]; bf16 rounding after padding, as the reference does
            "pixel_values_gen": round_to_bf16(pad_to_batch_max(row_gen)) if row_gen else None,
            "image_grid_thw_gen": torch.tensor(grids, dtype=torch.long) if image_mode else None,  # [K, 3]
            "generation_flags": torch.tensor(flags, dtype=torch.long) if image_mode else None,  # [K]
            "images_per_row": images_per_row,
        }
