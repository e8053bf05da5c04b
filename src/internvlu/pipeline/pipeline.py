"""`InternVLUPipeline`: understanding, generation, editing and think mode in one object.

Two ways in:
- the official call, unchanged: `pipe(prompt, image=None, generation_mode="text" | "image" | "text_image", **kw)`
  returning `InternVLUPipelineOutput(generate_output, images)`;
- typed task methods: `chat` (alias `understand`), `stream_chat`, `generate`, `edit`, each with `think=`.

Both go through the same stages: processor -> VLM (text generation and/or one conditioning
forward) -> generation decoder inside the denoising loop -> VAE decode.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..constants import (
    GENERATION_MODES,
    IM_END_TOKEN,
    IM_START_TOKEN,
    IMG_CONTEXT_TOKEN,
    IMG_START_TOKEN,
    SPECIAL_TOKEN_LIST,
)
from ..processing.images import load_image
from ..sampling.denoise import denoise
from ..sampling.guidance import NORM_TRUNC_TIMESTEP
from ..sampling.preserve import PreserveSettings, SourceBlend, change_mask
from ..sampling.samplers import SamplerOptions, StepCache, build_scheduler
from . import stages
from .loading import (
    COMPONENTS,
    load_diffusers_component,
    load_torch_component,
    parse_size,
    read_model_index,
    resolve_class,
    save_torch_component,
    write_model_index,
)
from .offload import SequentialOffload
from .options import PerformanceOptions
from .outputs import ChatResult, ImageResult, InternVLUPipelineOutput
from .quantization import QUANT_COMPONENTS, QuantReport, quantize_modules
from .think import conditioning_from_generation

logger = logging.getLogger(__name__)

# Keyword arguments of the official __call__, routed as the reference routes them.
TEXT_KWARGS = (
    "max_new_tokens",
    "min_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "num_beams",
    "repetition_penalty",
    "return_dict_in_generate",
    "output_hidden_states",
)
IMAGE_KWARGS = (
    "num_inference_steps",
    "num_images_per_prompt",
    "all_cfg_scale",
    "part_cfg_scale",
    "height",
    "width",
    "generator",
    "timestep_shift",
    "preserve_unedited",
)
# Guidance defaults of the reference: image mode, and think (text_image) mode.
IMAGE_GUIDANCE = (4.5, 2.0)
THINK_GUIDANCE = (3.5, 1.5)
DEFAULT_STEPS = 20
DEFAULT_THINK_TOKENS = 200
DEFAULT_TEXT_TOKENS = 1024
# Generation sizes beyond this multiple of the processor's trained pixel range are refused.
MAX_AREA_FACTOR = 4


def guidance_from_config(config: Mapping[str, Any], think: bool) -> tuple[float, float]:
    """The default (all_cfg_scale, part_cfg_scale) a generation-decoder config names: its
    `default_image_guidance` / `default_think_guidance` (a small model trained at another scale ships its
    own), else the release's (4.5, 2.0; think 3.5, 1.5). `config` is the decoder config's keys (its `extra`
    or its config.json)."""
    key = "default_think_guidance" if think else "default_image_guidance"
    value = config.get(key)
    if value is None:
        return THINK_GUIDANCE if think else IMAGE_GUIDANCE
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise ValueError(f"generation_decoder config {key} must be [all_cfg_scale, part_cfg_scale], got {value!r}")
    return float(value[0]), float(value[1])


class InternVLUPipeline:
    """InternVL-U: one model that understands, reasons, generates and edits images.

    Args:
        vlm: `internvlu.vlm.InternVLUChatModel` (InternViT + projector + LLM).
        generation_decoder: `internvlu.diffusion.InternVLUGenerationDecoder` (the MMDiT head).
        vae: diffusers `AutoencoderKLQwenImage`.
        scheduler: a diffusers flow scheduler (the release uses DPM-Solver++ 2M with flow sigmas).
        processor: `internvlu.processing_internvlu.InternVLUProcessor`.
    """

    model_cpu_offload_seq = "vlm->generation_decoder->vae"

    def __init__(self, vlm, generation_decoder, vae, scheduler, processor) -> None:
        self.vlm = vlm
        self.generation_decoder = generation_decoder
        self.vae = vae
        self.scheduler = scheduler
        self.processor = processor
        self.processor.template_name = vlm.config.template
        ids = processor.token_ids()
        self.token_ids: dict[str, int] = ids
        for token in (*SPECIAL_TOKEN_LIST, IM_START_TOKEN, IM_END_TOKEN):
            if ids.get(token) is None:
                raise ValueError(f"the tokenizer has no id for the required token {token!r}")
        vlm.set_token_ids([ids[t] for t in SPECIAL_TOKEN_LIST], ids[IMG_CONTEXT_TOKEN])
        self._model_index: dict[str, Any] | None = None
        self._progress_config: dict[str, Any] = {}
        self._offload_device: torch.device | None = None
        self._sequential: SequentialOffload | None = None
        self._lock = threading.RLock()
        # Speed switches (all on; each off only to measure it) and the solver of the denoising loop.
        self.performance = PerformanceOptions()
        self.sampler = SamplerOptions()
        self.quantization: QuantReport | None = None
        self._compiled: list[torch.nn.Module] = []

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        torch_dtype: torch.dtype | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        attn_implementation: str = "sdpa",
    ) -> InternVLUPipeline:
        """Load a checkpoint folder in the official layout (local only; no network, no remote code).

        Args:
            path: folder holding model_index.json and the five component folders.
            torch_dtype / dtype: weights' dtype (default float32); `dtype` is the transformers-5 name.
            device: where the weights are placed as they are read.
            attn_implementation: LLM attention ("sdpa" default, "eager", or "flash_attention_2").
        """
        if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
            raise ValueError(f"torch_dtype={torch_dtype} and dtype={dtype} disagree; pass one")
        dtype = dtype or torch_dtype or torch.float32
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
        folder = Path(path)
        index = read_model_index(folder)
        device = torch.device(device)
        classes = {name: resolve_class(name, index[name]) for name in COMPONENTS}
        vlm = load_torch_component(
            classes["vlm"], folder / "vlm", device, dtype, attn_implementation=attn_implementation
        )
        decoder = load_torch_component(
            classes["generation_decoder"], folder / "generation_decoder", device, dtype
        )
        vae = load_diffusers_component(classes["vae"], folder / "vae", device, dtype)
        scheduler = classes["scheduler"].from_pretrained(str(folder / "scheduler"))
        processor = classes["processor"].from_pretrained(str(folder / "processor"))
        pipe = cls(vlm, decoder, vae, scheduler, processor)
        pipe._model_index = index
        return pipe

    def save_pretrained(self, path: str | Path, max_shard_size: int | str | None = None) -> None:
        """Write the official layout (model_index.json + five component folders).

        Args:
            max_shard_size: split `vlm` / `generation_decoder` weights into shards of at most this
                size (bytes or a string like "2GB"); None writes one file per component.
        """
        if self.quantization is not None:
            raise ValueError(
                f"this pipeline's weights are quantized ({self.quantization.mode}); save_pretrained writes the "
                "official full-precision layout, so save before calling quantize()"
            )
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        shard = parse_size(max_shard_size)
        save_torch_component(self.vlm, folder / "vlm", shard)
        save_torch_component(self.generation_decoder, folder / "generation_decoder", shard)
        self.vae.save_pretrained(str(folder / "vae"))
        self.scheduler.save_pretrained(str(folder / "scheduler"))
        self.processor.save_pretrained(str(folder / "processor"))
        write_model_index(folder, self._model_index)

    # ------------------------------------------------------------------ device handling
    @property
    def device(self) -> torch.device:
        if self._offload_device is not None:
            return self._offload_device
        return next(self.vlm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vlm.parameters()).dtype

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> InternVLUPipeline:
        """Move (and optionally cast) every model component; returns self."""
        if self._sequential is not None:
            raise ValueError("call disable_sequential_cpu_offload() before moving the pipeline")
        if dtype is not None and self.quantization is not None:
            raise ValueError(f"cannot cast quantized weights ({self.quantization.mode}) to {dtype}")
        for module in (self.vlm, self.generation_decoder, self.vae):
            module.to(device=device, dtype=dtype)
        if dtype is not None:
            # Rotary inverse frequencies are kept in fp32; a blanket cast would round them.
            for module in (self.vlm, self.generation_decoder):
                module.init_non_persistent_buffers()
        return self

    def enable_model_cpu_offload(
        self, gpu_id: int | None = None, device: str | torch.device = "cuda"
    ) -> None:
        """Keep components on the CPU and move each to `device` only while it runs.

        Peak accelerator memory becomes the largest component (the VLM or the MMDiT head) instead
        of their sum.
        """
        self.disable_sequential_cpu_offload()
        self.to("cpu")
        self._offload_device = _target_device(device, gpu_id)

    def disable_model_cpu_offload(self) -> None:
        if self._offload_device is not None and self._sequential is None:
            device = self._offload_device
            self._offload_device = None
            self.to(device)

    def enable_sequential_cpu_offload(
        self, gpu_id: int | None = None, device: str | torch.device = "cuda", pin_memory: bool | None = None
    ) -> SequentialOffload:
        """Keep the weights on the CPU and stream them block by block to `device` while each block runs.

        Peak accelerator memory for weights becomes one block (an LLM layer or an MMDiT block) plus the
        small layers that stay resident, at the cost of copying every weight once per forward (one
        MMDiT pass per denoising step). Not combinable with quantization (`pipeline.offload`).
        """
        if self.quantization is not None:
            raise ValueError(
                "sequential CPU offload streams plain tensors; quantized weights work with enable_model_cpu_offload"
            )
        target = _target_device(device, gpu_id)
        if self._sequential is not None:
            self.disable_sequential_cpu_offload()
        if self._offload_device is not None:
            self._offload_device = None
        pin = target.type == "cuda" if pin_memory is None else pin_memory
        self._sequential = SequentialOffload(
            [self.vlm, self.generation_decoder, self.vae], target, pin_memory=pin
        ).attach()
        self._offload_device = target
        return self._sequential

    def disable_sequential_cpu_offload(self) -> None:
        if self._sequential is None:
            return
        device = self._offload_device
        self._sequential.detach(device)
        self._sequential = None
        self._offload_device = None

    @contextlib.contextmanager
    def _using(self, module: torch.nn.Module) -> Iterator[None]:
        """Run `module` on the execution device (moving it there and back under model CPU offload)."""
        if self._offload_device is None or self._sequential is not None:
            yield
            return
        module.to(self._offload_device)
        try:
            yield
        finally:
            module.to("cpu")
            if self._offload_device.type == "cuda":
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ speed and memory options
    def set_performance(self, **switches: bool) -> PerformanceOptions:
        """Turn individual speed optimisations on or off (see `PerformanceOptions`); returns the new set.

        Every switch is on by default; the outputs are the same either way up to float rounding.
        """
        self.performance = self.performance.replace(**switches)
        return self.performance

    def set_sampler(
        self,
        name: str = "default",
        *,
        order: int | None = None,
        step_cache: StepCache | int | None = None,
    ) -> SamplerOptions:
        """Choose the denoising solver (opt-in faster sampling; "default" is the checkpoint's DPM-Solver++ 2M).

        Args:
            name: "default", "dpm++2m", "dpm++3m" or "unipc" (see `internvlu.sampling.samplers`).
            order: UniPC's order (2 default, or 3).
            step_cache: reuse the previous step's MMDiT output on some steps: a `StepCache`, or an int
                interval (`StepCache(interval=n)`).
        """
        if isinstance(step_cache, int) and not isinstance(step_cache, bool):
            step_cache = StepCache(interval=step_cache)
        self.sampler = SamplerOptions(name=name, order=order, step_cache=step_cache)
        return self.sampler

    def quantize(
        self, mode: str = "int8_weight_only", components: Sequence[str] = QUANT_COMPONENTS
    ) -> QuantReport:
        """Weight-only quantization of the LLM and MMDiT-block linears via torchao (`pip install internvlu[quant]`).

        Args:
            mode: "int8_weight_only" or "fp8_weight_only" (fp8 raises RuntimeError where unsupported).
            components: any of "vlm" (the LLM's layers and LM head) and "generation_decoder" (the MMDiT blocks).
        Returns:
            a `QuantReport` with the weight bytes before and after (also kept as `pipe.quantization`).
        """
        if isinstance(components, str):
            components = (components,)
        if self._sequential is not None:
            raise ValueError("disable_sequential_cpu_offload() before quantizing")
        if self.quantization is not None:
            raise ValueError(f"this pipeline is already quantized ({self.quantization.mode})")
        bad = [c for c in components if c not in QUANT_COMPONENTS]
        if bad:
            raise ValueError(f"cannot quantize components {bad}; choose from {QUANT_COMPONENTS}")
        modules = {name: getattr(self, name) for name in components}
        device = next(self.vlm.parameters()).device
        self.quantization = quantize_modules(modules, mode, device, self.dtype)
        return self.quantization

    def enable_vae_tiling(self, tile_size: int = 256, stride: int = 192) -> None:
        """Decode (and encode) large images in overlapping tiles of `tile_size` pixels, blended over
        `tile_size - stride` pixels, so VAE memory stays that of one tile (diffusers' tiling)."""
        _check_positive_int("tile_size", tile_size)
        _check_positive_int("stride", stride)
        if tile_size % 8 or stride % 8 or stride > tile_size:
            raise ValueError(
                f"tile_size ({tile_size}) and stride ({stride}) must be multiples of 8 with stride <= tile_size"
            )
        self.vae.enable_tiling(
            tile_sample_min_height=tile_size,
            tile_sample_min_width=tile_size,
            tile_sample_stride_height=stride,
            tile_sample_stride_width=stride,
        )

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    def enable_vae_slicing(self) -> None:
        """Decode a batch of images one at a time (lower peak memory for num_images_per_prompt > 1)."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()

    def enable_compile(self, components: Sequence[str] = ("generation_decoder",), **compile_kwargs: Any) -> int:
        """torch.compile the repeated blocks of `components` in place (off by default).

        The MMDiT blocks ("generation_decoder") carry nearly all the denoising time; "vlm" compiles the
        LLM decoder layers and ViT layers. Blocks are compiled one by one (not whole models) because
        the packing code around them is dynamic Python. The first call per input shape compiles
        (tens of seconds); `compile_kwargs` go to `torch.compile` (e.g. mode="max-autotune").
        Returns the number of blocks compiled.
        """
        if isinstance(components, str):
            components = (components,)
        lists = {
            "generation_decoder": lambda: [self.generation_decoder.decoder.transformer_blocks],
            "vlm": lambda: [self.vlm.language_model.model.layers, self.vlm.vision_model.encoder.layers],
        }
        bad = [c for c in components if c not in lists]
        if bad:
            raise ValueError(f"cannot compile components {bad}; choose from {sorted(lists)}")
        count = 0
        for name in components:
            for blocks in lists[name]():
                for block in blocks:
                    block.compile(**compile_kwargs)
                    self._compiled.append(block)
                    count += 1
        return count

    def disable_compile(self) -> None:
        for block in self._compiled:
            block._compiled_call_impl = None
        self._compiled.clear()

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm options for the denoising progress bar, e.g. `disable=True` (diffusers convention)."""
        self._progress_config = dict(kwargs)

    # ------------------------------------------------------------------ the official call
    def __call__(
        self,
        prompt: str | list[str],
        image: Any = None,
        generation_mode: str = "text",
        **kwargs: Any,
    ) -> InternVLUPipelineOutput:
        """The official entry point: `generation_mode` "text" (answer), "image" (generate or edit when
        `image` is given) or "text_image" (think first, then draw). Keyword arguments are those of
        the reference (system_prompt, max_new_tokens, do_sample, temperature, top_p, num_beams,
        num_inference_steps, num_images_per_prompt, all_cfg_scale, part_cfg_scale, height, width,
        generator) plus `progress` (bool), `timestep_shift` and `preserve_unedited`.
        """
        if generation_mode not in GENERATION_MODES:
            raise ValueError(f"generation_mode must be one of {GENERATION_MODES}, got {generation_mode!r}")
        system_prompt = kwargs.pop("system_prompt", None)
        progress = kwargs.pop("progress", None)
        text_kw = {k: kwargs.pop(k) for k in TEXT_KWARGS if k in kwargs}
        image_kw = {k: kwargs.pop(k) for k in IMAGE_KWARGS if k in kwargs}
        if kwargs:
            raise TypeError(f"unknown keyword arguments for InternVLUPipeline.__call__: {sorted(kwargs)}")
        for flag in ("return_dict_in_generate", "output_hidden_states"):
            if text_kw.pop(flag, False):
                raise ValueError(
                    f"{flag}=True is not supported; use pipe.vlm.generate for raw generation outputs"
                )
        if generation_mode == "text":
            ids, _ = self._answer(prompt, image, system_prompt, text_kw)
            return InternVLUPipelineOutput(generate_output=ids)
        height = image_kw.pop("height", None)
        width = image_kw.pop("width", None)
        if height is None and width is None:
            height = self.generation_decoder.config.gen_image_height
            width = self.generation_decoder.config.gen_image_width
        elif height is None or width is None:
            # The reference uses a square of the one side given.
            height = width = height if height is not None else width
        think = generation_mode == "text_image"
        images, ids, _, _ = self._draw(
            prompt, image, think=think, height=height, width=width, system_prompt=system_prompt,
            text_kw=text_kw, progress=progress, **image_kw,
        )  # fmt: skip
        return InternVLUPipelineOutput(generate_output=ids, images=images)

    # ------------------------------------------------------------------ typed task methods
    def chat(
        self,
        prompt: str | list[str],
        images: Any = None,
        *,
        system_prompt: str | None = None,
        max_new_tokens: int = DEFAULT_TEXT_TOKENS,
        do_sample: bool = False,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        num_beams: int = 1,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        streamer: Any = None,
    ) -> ChatResult:
        """Answer about zero or more images.

        Args:
            prompt: one prompt or a batch; `<image>` marks where each image goes (default: first).
            images: None, one image, a list of images for one prompt, or one entry per prompt in a
                batch (each entry None, an image or a list of images). Images are PIL images, paths,
                uint8 arrays or tensors.
            seed: makes sampling (do_sample=True) reproducible.
        """
        text_kw = _sampling_kwargs(
            max_new_tokens, do_sample, temperature, top_p, top_k, num_beams, repetition_penalty
        )
        if seed is not None:
            torch.manual_seed(_check_seed(seed))
        ids, texts = self._answer(
            prompt, _images_for(prompt, images), system_prompt, text_kw, streamer=streamer
        )
        return ChatResult(
            texts=texts, token_ids=[_strip_after_stop(row, self._stop_ids()) for row in ids.tolist()]
        )

    understand = chat

    def stream_chat(self, prompt: str, images: Any = None, **kwargs: Any) -> Iterator[str]:
        """Yield the answer to one prompt piece by piece as it is generated."""
        from transformers import TextIteratorStreamer

        if not isinstance(prompt, str):
            raise TypeError(f"stream_chat takes one prompt string, got {type(prompt).__name__}")
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=False, skip_special_tokens=True)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                self.chat(prompt, images, streamer=streamer, **kwargs)
            except BaseException as exc:  # surfaced in the caller's thread below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if errors:
            raise errors[0]

    def generate(
        self,
        prompt: str | list[str],
        *,
        think: bool = False,
        images: Any = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = DEFAULT_STEPS,
        all_cfg_scale: float | None = None,
        part_cfg_scale: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        system_prompt: str | None = None,
        max_thought_tokens: int = DEFAULT_THINK_TOKENS,
        progress: bool | None = None,
        timestep_shift: float | None = None,
        preserve_unedited: bool | None = None,
    ) -> ImageResult:
        """Text-to-image (or, with `images`, image-conditioned generation).

        Args:
            think: write a chain of thought first and draw from it (guidance defaults 3.5 / 1.5).
            height, width: output size (default: the checkpoint's gen_image_height/width); the model
                draws at the nearest lower multiple of 16 and resizes to exactly this size.
            all_cfg_scale, part_cfg_scale: guidance on the full condition and on the images-only
                condition (defaults 4.5 / 2.0, think 3.5 / 1.5).
            seed / generator: noise source (seed makes a CPU generator; same seed, same images).
            timestep_shift: flow shift of the sampler's sigmas (default: the checkpoint's `flow_shift`).
            preserve_unedited: edits only: keep the pixels the instruction does not act on (an automatic
                change mask; outside it the source is kept, see `internvlu.sampling.preserve`). Needs one
                input image per prompt drawn at its own size. Default: the checkpoint's
                `default_preserve_unedited` (off for the release; on for the embedded model), applied
                where it can be.
        """
        if height is None and width is None:
            height = self.generation_decoder.config.gen_image_height
            width = self.generation_decoder.config.gen_image_width
        elif height is None or width is None:
            raise ValueError(f"give both height and width or neither, got height={height}, width={width}")
        if seed is not None:
            if generator is not None:
                raise ValueError("pass either seed or generator, not both")
            generator = torch.Generator("cpu").manual_seed(_check_seed(seed))
        images_out, _, thoughts, preserved = self._draw(
            prompt, _images_for(prompt, images), think=think, height=height, width=width,
            system_prompt=system_prompt, text_kw={"max_new_tokens": max_thought_tokens}, progress=progress,
            num_inference_steps=num_inference_steps, num_images_per_prompt=num_images_per_prompt,
            all_cfg_scale=all_cfg_scale, part_cfg_scale=part_cfg_scale, generator=generator,
            timestep_shift=timestep_shift, preserve_unedited=preserve_unedited,
        )  # fmt: skip
        guidance = self.default_guidance(think)
        return ImageResult(
            images=images_out,
            thoughts=thoughts if think else None,
            size=(images_out[0].height, images_out[0].width),
            settings={
                "think": think,
                "height": height,
                "width": width,
                "num_inference_steps": num_inference_steps,
                "num_images_per_prompt": num_images_per_prompt,
                "all_cfg_scale": guidance[0] if all_cfg_scale is None else all_cfg_scale,
                "part_cfg_scale": guidance[1] if part_cfg_scale is None else part_cfg_scale,
                "timestep_shift": self.default_timestep_shift() if timestep_shift is None else float(timestep_shift),
                # Whether the source was kept outside the change mask in this call (False for text-to-image,
                # or where the checkpoint's default could not apply).
                "preserve_unedited": preserved,
                "seed": seed,
            },
        )

    def edit(self, prompt: str | list[str], images: Any, **kwargs: Any) -> ImageResult:
        """Edit one or more input images by instruction; same options as `generate`.

        The output size defaults to the first input image's size, snapped into the model's pixel
        range (as the processor would resize it).
        """
        if images is None:
            raise ValueError("edit needs at least one input image (images=None)")
        if kwargs.get("height") is None and kwargs.get("width") is None:
            first = load_image(_first_image(images), self.processor.max_image_pixels)
            kwargs["height"], kwargs["width"] = self.processor.generation_processor.target_size(
                first.height, first.width
            )
        return self.generate(prompt, images=images, **kwargs)

    # ------------------------------------------------------------------ internals
    def _stop_ids(self) -> list[int]:
        return [self.token_ids[IM_END_TOKEN], self.token_ids[IMG_START_TOKEN]]

    def _generation_pad_id(self) -> int:
        """Filler after a row stops, as the reference gets it from transformers: the LLM config's pad id,
        else the first stop id."""
        pad = getattr(self.vlm.llm_config, "pad_token_id", None)
        return self._stop_ids()[0] if pad is None else int(pad)

    def _pad_id(self) -> int:
        pad = self.processor.tokenizer.pad_token_id
        return self.token_ids[IM_END_TOKEN] if pad is None else int(pad)

    def _text_generate(
        self, input_ids, attention_mask, pixel_values, text_kw, streamer=None, suppress=(), keep_states=False
    ):
        """New token ids [B, T]; with `keep_states` the transformers output with hidden states and cache."""
        device = self.device
        kw = dict(text_kw)
        if suppress:
            kw["suppress_tokens"] = list(suppress)
        if keep_states:
            kw.update(output_hidden_states=True, return_dict_in_generate=True, use_cache=True)
        with self._using(self.vlm), torch.no_grad():
            return self.vlm.generate(
                input_ids.to(device),
                attention_mask.to(device),
                None if pixel_values is None else pixel_values.to(device, self.dtype),
                eos_token_id=self._stop_ids(),
                pad_token_id=self._generation_pad_id(),
                streamer=streamer,
                **kw,
            )

    def _answer(self, prompt, image, system_prompt, text_kw, streamer=None) -> tuple[torch.Tensor, list[str]]:
        text_kw = dict(text_kw)
        text_kw.setdefault("max_new_tokens", DEFAULT_TEXT_TOKENS)
        with self._lock:
            proc = self.processor(prompt, image=image, generation_mode="text", system_prompt=system_prompt)
            ids = self._text_generate(
                proc.input_ids, proc.attention_mask, proc.pixel_values, text_kw, streamer
            )
        stops = self._stop_ids()
        texts = [
            self.processor.tokenizer.decode(_strip_after_stop(row, stops), skip_special_tokens=True)
            for row in ids.tolist()
        ]
        return ids, texts

    def default_guidance(self, think: bool) -> tuple[float, float]:
        """(all_cfg_scale, part_cfg_scale) used when a call names none (see `guidance_from_config`)."""
        return guidance_from_config(self.generation_decoder.config.extra, think)

    def default_timestep_shift(self) -> float:
        """The flow shift of the sampler's sigmas when a call names none: the checkpoint's `flow_shift` (the
        release's config says 3.0, the reference's fixed value)."""
        return float(self.generation_decoder.config.flow_shift)

    def default_preserve_unedited(self) -> bool:
        """Whether edits keep the unchanged pixels when a call does not say: the checkpoint's
        `default_preserve_unedited` (absent, so False, in the release's config)."""
        value = self.generation_decoder.config.extra.get("default_preserve_unedited", False)
        if not isinstance(value, bool):
            raise TypeError(
                f"generation_decoder config default_preserve_unedited must be true or false, got {value!r}"
            )
        return value

    def preserve_settings(self) -> PreserveSettings:
        """The change-mask settings: the checkpoint's `preserve_settings` mapping, else the defaults."""
        value = self.generation_decoder.config.extra.get("preserve_settings") or {}
        if not isinstance(value, Mapping):
            raise TypeError(f"generation_decoder config preserve_settings must be a mapping, got {value!r}")
        unknown = set(value) - {f.name for f in dataclasses.fields(PreserveSettings)}
        if unknown:
            raise ValueError(
                f"generation_decoder config preserve_settings has unknown keys {sorted(unknown)}"
            )
        return PreserveSettings(**value)

    def _draw(
        self,
        prompt,
        image,
        *,
        think: bool,
        height: int,
        width: int,
        system_prompt: str | None,
        text_kw: dict[str, Any],
        progress: bool | None,
        num_inference_steps: int = DEFAULT_STEPS,
        num_images_per_prompt: int = 1,
        all_cfg_scale: float | None = None,
        part_cfg_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        timestep_shift: float | None = None,
        preserve_unedited: bool | None = None,
    ) -> tuple[list[Image.Image], torch.Tensor | None, list[str] | None, bool]:
        """Generate (or edit) images; in think mode write the thought first.

        Returns (images, ids, thoughts, preserved): preserved says whether the source was kept outside an
        automatic change mask (`preserve_unedited`).
        """
        _check_positive_int("num_inference_steps", num_inference_steps)
        _check_positive_int("num_images_per_prompt", num_images_per_prompt)
        self._check_size(height, width)
        default_all, default_part = self.default_guidance(think)
        all_cfg = default_all if all_cfg_scale is None else float(all_cfg_scale)
        part_cfg = default_part if part_cfg_scale is None else float(part_cfg_scale)
        if timestep_shift is None:
            timestep_shift = self.default_timestep_shift()
        elif isinstance(timestep_shift, bool) or not isinstance(timestep_shift, (int, float)) or not timestep_shift > 0:
            raise ValueError(f"timestep_shift must be a number > 0, got {timestep_shift!r}")
        if preserve_unedited is not None and not isinstance(preserve_unedited, bool):
            raise TypeError(f"preserve_unedited must be True, False or None, got {preserve_unedited!r}")
        # None: the checkpoint's default, used only where it applies; True: asked for, so an error where it can't.
        auto = preserve_unedited is None and self.default_preserve_unedited()
        preserve = "auto" if auto else preserve_unedited
        mode = "text_image" if think else "image"
        with self._lock:
            proc = self.processor(
                prompt,
                image=image,
                generation_mode=mode,
                height=height,
                width=width,
                system_prompt=system_prompt,
            )
            B = proc.num_prompts
            input_ids, attention_mask = proc.input_ids, proc.attention_mask
            cot_ids, thoughts = None, None
            known_rows: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
            if think:
                text_kw = dict(text_kw)
                text_kw.setdefault("max_new_tokens", DEFAULT_THINK_TOKENS)
                n_cond_images = sum(proc.images_per_row[:B])
                pv = None if proc.pixel_values is None else proc.pixel_values[:n_cond_images]
                # Beam search reorders the cache between steps; it takes the re-run path.
                reuse = self.performance.think_kv_reuse and int(text_kw.get("num_beams", 1)) == 1
                # <IMG_CONTEXT> is a placeholder for ViT features, never text: a thought containing it
                # could not be re-embedded, so it is suppressed while thinking.
                generated = self._text_generate(
                    input_ids[:B],
                    attention_mask[:B],
                    pv,
                    text_kw,
                    suppress=[self.token_ids[IMG_CONTEXT_TOKEN]],
                    keep_states=reuse,
                )
                cot_ids = (generated.sequences if reuse else generated).cpu()
                prompt_ids, prompt_mask = input_ids[:B], attention_mask[:B]
                input_ids, attention_mask, kept = stages.splice_thoughts(
                    input_ids, attention_mask, cot_ids, B, self._stop_ids(),
                    self.token_ids[IMG_START_TOKEN], self._pad_id(),
                )  # fmt: skip
                thoughts = [
                    _clean_thought(self.processor.tokenizer.decode(k, skip_special_tokens=True)) for k in kept
                ]
                if reuse:
                    with self._using(self.vlm):
                        known = conditioning_from_generation(
                            self.vlm, generated, prompt_ids, prompt_mask, kept,
                            select_layers=self.generation_decoder.config.vlm_select_layer,
                            img_start_id=self.token_ids[IMG_START_TOKEN],
                            im_start_id=self.token_ids[IM_START_TOKEN],
                            img_context_id=self.token_ids[IMG_CONTEXT_TOKEN],
                        )  # fmt: skip
                    del generated
                    if known is not None:
                        known_rows = dict(enumerate(zip(*known)))
            latents, preserved = self._sample_latents(
                proc, input_ids, attention_mask, num_inference_steps, num_images_per_prompt,
                all_cfg, part_cfg, generator, timestep_shift, progress, known_rows, preserve,
            )  # fmt: skip
            with self._using(self.vae):
                pixels = stages.decode_latents(self.vae, latents.to(self.device))
        images = stages.pixels_to_pil(pixels)
        if images[0].size != (width, height):
            images = [im.resize((width, height), Image.Resampling.LANCZOS) for im in images]
        return images, cot_ids, thoughts, preserved

    def _check_size(self, height: Any, width: Any) -> None:
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < 16:
                raise ValueError(f"{name} must be at least 16 pixels, got {value}")
        limit = self.processor.generation_processor.max_pixels * MAX_AREA_FACTOR
        if height * width > limit:
            raise ValueError(
                f"height x width = {height} x {width} = {height * width} pixels is over this checkpoint's limit of "
                f"{limit} ({MAX_AREA_FACTOR}x its trained maximum)"
            )

    @torch.no_grad()
    def _condition(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None,
        images_per_row: Sequence[int],
        known: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One VLM forward over the guidance rows -> per-row conditioning states [T_r, J] and image masks [T_r].

        Rows in `known` (think mode's conditional rows, from the thought's generation) are not run.
        With `performance.dedupe_guidance`, identical rows (same ids, mask and images: the text-dropped
        and all-dropped rows of text-to-image) are run once and shared.
        """
        R = input_ids.shape[0]
        known = known or {}
        offsets = [0]
        for n in images_per_row:
            offsets.append(offsets[-1] + n)
        if len(images_per_row) != R:
            raise AssertionError(f"{len(images_per_row)} image counts for {R} rows")

        def row_pixels(r: int) -> torch.Tensor | None:
            if pixel_values is None or images_per_row[r] == 0:
                return None
            return pixel_values[offsets[r] : offsets[r + 1]]

        def same(r: int, q: int) -> bool:
            if not (torch.equal(input_ids[r], input_ids[q]) and torch.equal(attention_mask[r], attention_mask[q])):
                return False
            a, b = row_pixels(r), row_pixels(q)
            return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))

        run: list[int] = []
        alias: dict[int, int] = {}
        for r in range(R):
            if r in known:
                continue
            twin = next((q for q in run if same(r, q)), None) if self.performance.dedupe_guidance else None
            if twin is None:
                run.append(r)
            else:
                alias[r] = twin
        computed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if run:
            device = self.device
            ids, mask = input_ids[run], attention_mask[run]
            pixels = [p for p in (row_pixels(r) for r in run) if p is not None]
            pv = torch.cat(pixels) if pixels else None
            with self._using(self.vlm):
                hidden_states = self.vlm.forward_hidden_states(
                    ids.to(device), mask.to(device), None if pv is None else pv.to(device, self.dtype)
                )
            layers = self.generation_decoder.config.vlm_select_layer
            hidden = torch.cat([hidden_states[i] for i in layers], dim=-1)  # [len(run), L, J]
            spans = stages.conditioning_spans(
                ids, mask, self.token_ids[IM_START_TOKEN], self.token_ids[IMG_START_TOKEN]
            )
            states, masks = stages.gather_conditioning(
                hidden, ids.to(device), mask.to(device), spans, self.token_ids[IMG_CONTEXT_TOKEN]
            )
            computed = {r: (st, m) for r, st, m in zip(run, states, masks)}
        rows = [known.get(r) or computed.get(r) or computed[alias[r]] for r in range(R)]
        return [st for st, _ in rows], [m.to(st.device) for st, m in rows]

    def _vit_grid(self) -> int:
        cfg = self.vlm.config
        size = cfg.force_image_size or cfg.vision_config.image_size
        return int(size // cfg.vision_config.patch_size * cfg.downsample_ratio)

    @torch.no_grad()
    def _sample_latents(
        self, proc, input_ids, attention_mask, steps, n, all_cfg, part_cfg, generator, shift, progress, known=None,
        preserve: bool | str | None = None,
    ) -> tuple[torch.Tensor, bool]:
        """Sample the final latents [B*n, C, h, w] (fp32); the flag says whether a `SourceBlend` ran."""
        B = proc.num_prompts
        R = 3 * B
        device = self.device
        opts = self.performance

        def condition() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            return self._condition(input_ids, attention_mask, proc.pixel_values, proc.images_per_row, known)

        states, image_masks = condition()
        gen_grids, ref_grids = stages.split_grids(
            proc.image_grid_thw_gen, proc.generation_flags, proc.images_per_row
        )

        # Reference latents: the conditional and text-dropped rows hold the same images, in the same
        # order, so only the conditional half is encoded (the padded batch is the reference's).
        ref_latents: list[list[torch.Tensor]] = [[] for _ in range(R)]
        if proc.pixel_values_gen is not None:
            n_cond = sum(proc.images_per_row[:B])
            if proc.pixel_values_gen.shape[0] != 2 * n_cond:
                raise AssertionError(
                    f"{proc.pixel_values_gen.shape[0]} reference images for {n_cond} per half"
                )
            with self._using(self.vae):
                encoded = stages.encode_references(self.vae, proc.pixel_values_gen[:n_cond].to(device))
            encoded = encoded.to(self.generation_decoder_dtype)
            k = 0
            for r in range(B):
                for grid in ref_grids[r]:
                    h, w = int(grid[1]), int(grid[2])
                    ref_latents[r].append(encoded[k, :, :h, :w])  # [C, h, w], crop the batch padding
                    k += 1
                ref_latents[B + r] = list(ref_latents[r])
        g = self._vit_grid()
        fhw = [
            torch.tensor([[1, g, g]] * proc.images_per_row[r], dtype=torch.long).reshape(-1, 3)
            for r in range(R)
        ]

        # Row order after num_images_per_prompt: block-major, then prompt, then copy.
        order = [blk * B + b for blk in range(3) for b in range(B) for _ in range(n)]
        # Text-to-image: the text-dropped and all-dropped rows are the same prompt, so the head runs
        # on two blocks instead of three and reuses the result.
        same_pu = opts.dedupe_guidance and all(
            torch.equal(states[B + b], states[2 * B + b]) and not ref_latents[B + b] for b in range(B)
        )
        blocks = (0, 2) if same_pu else (0, 1, 2)
        rows = [order[blk * B * n + i] for blk in blocks for i in range(B * n)]
        dec_states = [states[r].to(self.generation_decoder_dtype) for r in rows]
        dec_masks = [image_masks[r] for r in rows]
        dec_grids = gen_grids[rows].to(device)
        dec_fhw = [fhw[r].to(device) for r in rows]
        dec_refs = [ref_latents[r] for r in rows]
        per_block = B * n

        h_l, w_l = int(gen_grids[:, 1].max()), int(gen_grids[:, 2].max())
        channels = self.vae.config.z_dim
        latents = _noise((B * n, channels, h_l, w_l), generator, device)  # [B*n, C, h, w] fp32

        def run_decoder(x: torch.Tensor, t: torch.Tensor, sl: slice) -> torch.Tensor:
            k = (sl.stop - sl.start) // per_block
            model_in = x.repeat(k, 1, 1, 1).to(self.generation_decoder_dtype)  # [k*B*n, C, h, w]
            timestep = t.to(device).expand(model_in.shape[0])
            with self._using(self.generation_decoder):
                return self.generation_decoder(
                    model_in, timestep, dec_states[sl], dec_masks[sl], dec_grids[sl], dec_fhw[sl], dec_refs[sl]
                ).float()

        def first_rows(x: torch.Tensor, t: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
            """The first `count` guidance rows' velocities (conditional, then text-dropped), each [B*n, C, h, w]."""
            if not opts.condition_once:
                condition()  # the naive loop: the VLM conditioning recomputed at every step (same values)
            k = min(count, len(blocks))  # text-to-image: block 2 stands in for the identical text-dropped row
            if opts.batch_guidance:
                return run_decoder(x, t, slice(0, k * per_block)).chunk(k)  # k x [B*n, C, h, w]
            return tuple(run_decoder(x, t, slice(i * per_block, (i + 1) * per_block)) for i in range(k))

        def velocity(x: torch.Tensor, t: torch.Tensor):
            chunks = first_rows(x, t, 3)
            if len(chunks) == 3:
                return chunks[0], chunks[1], chunks[2]
            return chunks[0], chunks[1], chunks[1]  # text-dropped row == all-dropped row

        blend = None
        if preserve:
            # Source latents per output image, in the conditional block's row order, or why there are none.
            source = _single_sources([ref_latents[order[i]] for i in range(B * n)], (h_l, w_l))
            if isinstance(source, str):
                if preserve != "auto":
                    raise ValueError(f"preserve_unedited=True cannot apply: {source}")
            else:
                source = source.to(device)
                settings = self.preserve_settings()
                noises = [_noise(tuple(latents.shape), generator, device) for _ in range(settings.draws)]
                blend = SourceBlend(change_mask(first_rows, source, noises, settings), source, latents.clone())

        scheduler = build_scheduler(self.scheduler, self.sampler, shift)
        scheduler.set_timesteps(steps, device=device)
        bar = None
        show = progress if progress is not None else not self._progress_config.get("disable", False)
        if show:
            from tqdm.auto import tqdm

            options = {k: v for k, v in self._progress_config.items() if k != "disable"}
            bar = tqdm(total=steps, desc="denoising", **options)
        try:
            final = denoise(
                velocity, scheduler, latents, all_cfg, part_cfg, NORM_TRUNC_TIMESTEP,
                on_step=(lambda i, total: bar.update(1)) if bar is not None else None,
                step_cache=self.sampler.step_cache, blend=blend,
            )  # fmt: skip
            return final, blend is not None
        finally:
            if bar is not None:
                bar.close()

    @property
    def generation_decoder_dtype(self) -> torch.dtype:
        return next(self.generation_decoder.parameters()).dtype

    def __repr__(self) -> str:
        return f"InternVLUPipeline(device={self.device}, dtype={self.dtype}, template={self.processor.template_name!r})"

    def copy(self) -> InternVLUPipeline:
        """A shallow copy sharing the models (own scheduler and progress settings)."""
        twin = copy.copy(self)
        twin.scheduler = copy.deepcopy(self.scheduler)
        twin._progress_config = dict(self._progress_config)
        twin.performance = dataclasses.replace(self.performance)
        return twin


# ---------------------------------------------------------------------- helpers
def _target_device(device: str | torch.device, gpu_id: int | None) -> torch.device:
    target = torch.device(device)
    if target.type == "cuda" and gpu_id is not None:
        target = torch.device("cuda", gpu_id)
    return target


def _single_sources(refs: list[list[torch.Tensor]], size: tuple[int, int]) -> torch.Tensor | str:
    """Stack each output's one source latent [C, h, w] into [N, C, h, w] fp32, or say why that is impossible."""
    for i, row in enumerate(refs):
        if len(row) != 1:
            return f"output {i} has {len(row)} input images; it needs exactly one"
        if tuple(row[0].shape[1:]) != size:
            return (
                f"output {i}'s input image has latent size {tuple(row[0].shape[1:])} and the output {size}; "
                "draw the edit at the input image's size (`edit` does when height and width are unset)"
            )
    return torch.stack([row[0] for row in refs]).float()


def _noise(shape: tuple[int, ...], generator, device: torch.device) -> torch.Tensor:
    """fp32 Gaussian noise; generators may live on another device (diffusers' randn_tensor rules)."""
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for {shape[0]} images; pass one per image")
        return torch.cat([_noise((1, *shape[1:]), g, device) for g in generator])
    gen_device = generator.device if generator is not None else device
    noise = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
    return noise.to(device)


def _sampling_kwargs(max_new_tokens, do_sample, temperature, top_p, top_k, num_beams, repetition_penalty):
    _check_positive_int("max_new_tokens", max_new_tokens)
    _check_positive_int("num_beams", num_beams)
    kw: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": bool(do_sample),
        "num_beams": num_beams,
    }
    if temperature is not None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        kw["temperature"] = float(temperature)
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        kw["top_p"] = float(top_p)
    if top_k is not None:
        _check_positive_int("top_k", top_k)
        kw["top_k"] = top_k
    if repetition_penalty is not None:
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
        kw["repetition_penalty"] = float(repetition_penalty)
    return kw


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return seed


def _strip_after_stop(row: list[int], stops: Sequence[int]) -> list[int]:
    for i, tok in enumerate(row):
        if tok in stops:
            return row[:i]
    return row


def _clean_thought(text: str) -> str:
    return text.replace("<think>", "").replace("</think>", "").strip()


def _images_for(prompt: Any, images: Any) -> Any:
    """Typed-API image argument -> the processor's per-prompt form.

    For one prompt, a plain list means several images of that prompt; for a batch, the list has one
    entry per prompt.
    """
    if images is None:
        return None
    if isinstance(prompt, str):
        return [list(images)] if isinstance(images, (list, tuple)) else images
    return images


def _first_image(images: Any) -> Any:
    while isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("edit needs at least one input image (got an empty list)")
        candidates = [x for x in images if x is not None]
        if not candidates:
            raise ValueError("edit needs at least one input image (all entries are None)")
        images = candidates[0]
    return images
