"""Image loading/validation and the two image preprocessors of the InternVL-U processor.

Understanding side (ViT input, reference `GotOcr2ImageProcessorFast` with `crop_to_patches=False`):
    RGB uint8 -> bicubic+antialias resize of the *uint8* tensor to `size` (aspect ratio not kept, no tiling)
    -> (x - 255*mean) / (255*std).
Generation side (VAE reference images, reference `InternVLUDynamicResGenerationImageProcessor`):
    RGB uint8 -> `smart_resize` to multiples of 16 within [min_pixels, max_pixels] -> PIL bicubic
    -> x/255 -> (x - 0.5)/0.5, i.e. [-1, 1].
Both reproduce the reference bit for bit (checked against the parity goldens); the processor then rounds
the results to bf16 like the reference does.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image

from internvlu.utils.config import ConfigBase

ImageInput = Union[Image.Image, str, os.PathLike, np.ndarray, torch.Tensor]  # noqa: UP007 (runtime alias)

# PIL resampling filter id of bicubic (PIL.Image.Resampling.BICUBIC == 3), as stored in processor_config.json.
PIL_BICUBIC = 3
DEFAULT_MAX_IMAGE_PIXELS = 64 * 1024 * 1024
_CHANNEL_COUNTS = (1, 3, 4)


# --------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------


def _check_pixels(height: int, width: int, max_pixels: int, what: str) -> None:
    if height <= 0 or width <= 0:
        raise ValueError(f"{what} has an empty size {width}x{height} (WxH)")
    if height * width > max_pixels:
        raise ValueError(
            f"{what} has {width}x{height} = {width * height} pixels, more than max_image_pixels={max_pixels} "
            "(decompression-bomb guard; raise InternVLUProcessor.max_image_pixels to allow it)"
        )


def _open_path(path: str | os.PathLike[str], max_pixels: int) -> Image.Image:
    """Decode an image file to RGB; the pixel-count guard runs on the header, before decoding."""
    path_str = os.fspath(path)
    if not os.path.isfile(path_str):
        raise ValueError(f"image path {path_str!r} does not exist or is not a file")
    try:
        img = Image.open(path_str)  # parses the header only
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image file {path_str!r} is too large for PIL (decompression bomb): {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot read image file {path_str!r}: {exc}") from exc
    with img:
        _check_pixels(img.height, img.width, max_pixels, f"image file {path_str!r}")
        try:
            img.load()  # decode now, so truncated files fail here, with the path in the message
            return img.convert("RGB")  # a new image: it outlives the closed file
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"cannot decode image file {path_str!r} (truncated or corrupt?): {exc}") from exc


def _array_to_pil(arr: np.ndarray, what: str) -> Image.Image:
    """uint8 HW / HWC (C in 1,3,4) array -> PIL image."""
    if arr.dtype != np.uint8:
        raise TypeError(f"{what} must have dtype uint8 (0..255), got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        raise ValueError(
            f"{what} must be HW or HWC with C in {_CHANNEL_COUNTS}, got shape {tuple(arr.shape)}"
        )
    return Image.fromarray(np.ascontiguousarray(arr))  # uint8: HW -> "L", HWx3 -> "RGB", HWx4 -> "RGBA"


def load_image(image: ImageInput, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Turn any accepted image input into an RGB PIL image.

    Accepted: PIL images, paths (str / os.PathLike), numpy uint8 HW/HWC arrays, torch uint8 HW/CHW/HWC tensors
    (a 3-D tensor whose first dim is 1, 3 or 4 is read as CHW, the torch convention).
    Conversion to RGB is PIL's `convert("RGB")`, as in the reference (alpha is dropped, not composited).

    Raises:
        TypeError: not an image, or not uint8.
        ValueError: unreadable/truncated file, bad shape, or more than `max_pixels` pixels.
    """
    if isinstance(image, Image.Image):
        what = f"PIL image (mode {image.mode})"
        _check_pixels(image.height, image.width, max_pixels, what)
        try:
            image.load()  # a lazily opened file decodes here; a truncated one fails here
            return image if image.mode == "RGB" else image.convert("RGB")
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"cannot decode {what}: {exc}") from exc
    if isinstance(image, (str, os.PathLike)):
        return _open_path(image, max_pixels)
    if isinstance(image, np.ndarray):
        what = f"numpy image of shape {tuple(image.shape)}"
        if image.ndim not in (2, 3):
            raise ValueError(f"{what} must be HW or HWC")
        _check_pixels(image.shape[0], image.shape[1], max_pixels, what)
        return _array_to_pil(image, what).convert("RGB")
    if isinstance(image, torch.Tensor):
        what = f"torch image of shape {tuple(image.shape)}"
        if image.dtype != torch.uint8:
            raise TypeError(f"{what} must have dtype torch.uint8 (0..255), got {image.dtype}")
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in _CHANNEL_COUNTS:
            t = rearrange(t, "c h w -> h w c")
        elif t.ndim not in (2, 3):
            raise ValueError(f"{what} must be HW, CHW or HWC")
        _check_pixels(t.shape[0], t.shape[1], max_pixels, what)
        return _array_to_pil(t.numpy(), what).convert("RGB")
    raise TypeError(
        "expected an image (PIL.Image, path, numpy uint8 array or torch uint8 tensor), "
        f"got {type(image).__name__}: {image!r:.80}"
    )


def pil_to_uint8_chw(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor [3, H, W]."""
    arr = np.asarray(image, dtype=np.uint8)  # [H, W, 3]
    return rearrange(torch.from_numpy(arr.copy()), "h w c -> c h w").contiguous()


def round_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """Round to bfloat16 and back to float32 (the reference feeds bf16 pixels even to an fp32 model)."""
    return x.to(torch.bfloat16).to(torch.float32)


# --------------------------------------------------------------------------------------------------
# Understanding side
# --------------------------------------------------------------------------------------------------


def _check_mean_std(name: str, values: tuple[float, ...]) -> None:
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values (RGB), got {list(values)}")
    if name.endswith("std") and any(v <= 0 for v in values):
        raise ValueError(f"{name} must be positive, got {list(values)}")


def _require_true(obj: ConfigBase, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(obj, name) is not True:
            raise ValueError(
                f"{type(obj).__name__}.{name}={getattr(obj, name)!r} is not supported (must be true)"
            )


@dataclasses.dataclass
class UnderstandingImageProcessor(ConfigBase):
    """ViT-side preprocessing; the JSON form is `processor_config.json["image_processor_kwargs"]`.

    `crop_to_patches` is kept as read but ignored: the reference forces it to False at call time.
    """

    size: tuple[int, int] = (448, 448)  # (height, width); JSON {"height": h, "width": w}
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    resample: int = PIL_BICUBIC
    rescale_factor: float = 1 / 255
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True

    def validate(self) -> None:
        self.size = tuple(self.size)  # type: ignore[assignment]
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)
        if len(self.size) != 2 or any(not isinstance(s, int) or s <= 0 for s in self.size):
            raise ValueError(f"size must be (height, width) positive ints, got {self.size}")
        if self.resample != PIL_BICUBIC:
            raise ValueError(f"resample={self.resample!r} is not supported: only bicubic ({PIL_BICUBIC})")
        if not self.rescale_factor > 0:
            raise ValueError(f"rescale_factor must be > 0, got {self.rescale_factor}")
        _check_mean_std("image_mean", self.image_mean)
        _check_mean_std("image_std", self.image_std)
        _require_true(self, ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnderstandingImageProcessor:
        data = dict(data)
        size = data.get("size")
        if isinstance(size, dict):
            if set(size) != {"height", "width"}:
                raise ValueError(f"image_processor_kwargs.size must be {{'height', 'width'}}, got {size}")
            data["size"] = (size["height"], size["width"])
        return super().from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["size"] = {"height": self.size[0], "width": self.size[1]}
        return out

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> float32 [3, H, W] normalised pixels (not bf16-rounded)."""
        x = pil_to_uint8_chw(image)[None]  # [1, 3, h, w] uint8
        # Interpolating the uint8 tensor (output uint8, rounded and clamped) is what torchvision's resize does
        # for uint8 inputs; interpolating in float instead differs by up to 0.02 after normalisation.
        x = F.interpolate(x, size=self.size, mode="bicubic", antialias=True, align_corners=False)
        x = x[0]  # [3, H, W] uint8
        # Fused rescale+normalise of the reference fast processor: mean/std pre-scaled by 1/rescale in fp32.
        mean = torch.tensor(self.image_mean, dtype=torch.float32) * (1.0 / self.rescale_factor)
        std = torch.tensor(self.image_std, dtype=torch.float32) * (1.0 / self.rescale_factor)
        return (x.to(torch.float32) - mean[:, None, None]) / std[:, None, None]


# --------------------------------------------------------------------------------------------------
# Generation side
# --------------------------------------------------------------------------------------------------


def smart_resize(
    height: int,
    width: int,
    factor: int,
    min_pixels: int,
    max_pixels: int,
    max_length: int | None = None,
) -> tuple[int, int]:
    """Target (height, width): multiples of `factor`, area in [min_pixels, max_pixels], aspect ratio ~kept.

    Python's `round` is banker's rounding (round(4.5) == 4): a 72x96 (HxW) image becomes 64x96, as in the
    reference.
    """
    if height < factor or width < factor:
        raise ValueError(f"image of {width}x{height} (WxH) is too small: both sides must be >= {factor} px")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image of {width}x{height} (WxH) has an aspect ratio above 200")
    if max_length is not None and max(height, width) > max_length:
        scale = max_length / max(height, width)
        height, width = int(height * scale), int(width * scale)
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    # Rounding up to reach min_pixels can overshoot max_length again.
    if max_length is not None and max(h_bar, w_bar) > max_length:
        scale = max_length / max(h_bar, w_bar)
        h_bar = math.floor(h_bar * scale / factor) * factor
        w_bar = math.floor(w_bar * scale / factor) * factor
    return h_bar, w_bar


@dataclasses.dataclass
class GenerationImageProcessor(ConfigBase):
    """VAE-side preprocessing of reference images.

    JSON form: `processor_config.json["image_gen_processor_kwargs"]`.
    Pixel range: min_dynamic_patch * vae_downsample_factor**2 .. max_dynamic_patch * vae_downsample_factor**2.
    Sides are multiples of `factor = vae_downsample_factor * merge_size` (16), where
    `merge_size = int(1 / gen_down_sample_ratio)`.
    """

    vae_downsample_factor: int = 8
    gen_down_sample_ratio: float = 0.5
    min_dynamic_patch: int = 4096
    max_dynamic_patch: int = 16384
    max_length: int | None = 1024  # None: no limit on the long side
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    temporal_patch_size: int = 1
    resample: int = PIL_BICUBIC
    rescale_factor: float = 1 / 255
    do_resize: bool = True
    do_pad: bool = False
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True

    def validate(self) -> None:
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)
        if not isinstance(self.vae_downsample_factor, int) or self.vae_downsample_factor <= 0:
            raise ValueError(
                f"vae_downsample_factor must be a positive int, got {self.vae_downsample_factor!r}"
            )
        if not 0 < self.gen_down_sample_ratio <= 1:
            raise ValueError(f"gen_down_sample_ratio must be in (0, 1], got {self.gen_down_sample_ratio!r}")
        if self.temporal_patch_size != 1:
            # With the reference class default 2, a still image becomes 6 channels, which the VAE cannot take.
            raise ValueError(
                f"temporal_patch_size must be 1 for still images, got {self.temporal_patch_size!r}"
            )
        if not 0 < self.min_dynamic_patch <= self.max_dynamic_patch:
            raise ValueError(
                "need 0 < min_dynamic_patch <= max_dynamic_patch, "
                f"got {self.min_dynamic_patch}, {self.max_dynamic_patch}"
            )
        if self.max_length is not None and (
            not isinstance(self.max_length, int) or self.max_length < self.factor
        ):
            raise ValueError(f"max_length must be None or an int >= {self.factor}, got {self.max_length!r}")
        if self.resample != PIL_BICUBIC:
            raise ValueError(f"resample={self.resample!r} is not supported: only bicubic ({PIL_BICUBIC})")
        if not self.rescale_factor > 0:
            raise ValueError(f"rescale_factor must be > 0, got {self.rescale_factor}")
        if self.do_pad:
            raise ValueError(
                "do_pad=True is not supported (the reference requires do_resize=True, do_pad=False)"
            )
        _check_mean_std("image_mean", self.image_mean)
        _check_mean_std("image_std", self.image_std)
        _require_true(self, ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"))

    @property
    def merge_size(self) -> int:
        return int(1.0 / self.gen_down_sample_ratio)

    @property
    def factor(self) -> int:
        """Side alignment of generation-side images (16 in the release): VAE factor x 2x2 DiT patch."""
        return self.vae_downsample_factor * self.merge_size

    @property
    def min_pixels(self) -> int:
        return self.min_dynamic_patch * self.vae_downsample_factor**2

    @property
    def max_pixels(self) -> int:
        return self.max_dynamic_patch * self.vae_downsample_factor**2

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) a reference image of that size is resized to."""
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels, self.max_length)

    def grid_thw(self, height: int, width: int) -> tuple[int, int, int]:
        """`image_grid_thw` row of an image of that (resized) size: (1, H/8, W/8) in VAE-latent pixels."""
        return (1, height // self.vae_downsample_factor, width // self.vae_downsample_factor)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> float32 [3, H', W'] in [-1, 1] (not bf16-rounded)."""
        h, w = self.target_size(image.height, image.width)
        resized = image.resize((w, h), resample=Image.Resampling.BICUBIC)
        # Same arithmetic as transformers' numpy path: rescale in float64, downcast, normalise in float32.
        x = (np.asarray(resized, dtype=np.uint8).astype(np.float64) * self.rescale_factor).astype(np.float32)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        x = (x - mean) / std  # [H', W', 3]
        return rearrange(torch.from_numpy(x), "h w c -> c h w").contiguous()


def pad_to_batch_max(images: list[torch.Tensor]) -> torch.Tensor:
    """Zero-pad [3, h, w] images at the bottom/right to the largest h and w -> [K, 3, Hmax, Wmax].

    Reference behaviour (`pad_images`), kept for parity of batched edits: the padded area is cropped away
    after VAE encoding but can leak into edge latents through the VAE's receptive field.
    """
    assert images, "pad_to_batch_max needs at least one image"
    h_max = max(img.shape[-2] for img in images)
    w_max = max(img.shape[-1] for img in images)
    out = images[0].new_zeros(len(images), images[0].shape[0], h_max, w_max)
    for k, img in enumerate(images):
        out[k, :, : img.shape[-2], : img.shape[-1]] = img
    return out
