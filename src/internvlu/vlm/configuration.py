"""Typed configs of the VLM half: `vlm/config.json` (`InternVLUChatConfig`) and its `vision_config`.

Both round-trip the official JSON exactly: unknown keys live in `extra` (see `ConfigBase`), and fields
that were absent from the file are not written back while they still hold their default, so
`Config.from_dict(d).to_dict() == d` for any file we can load.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

from internvlu.utils.config import ConfigBase


def _require_positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


def _require_probability(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}.{name} must be a number in [0, 1), got {value!r}")


@dataclasses.dataclass(kw_only=True)
class InternVisionConfig(ConfigBase):
    """`vlm/config.json` -> `vision_config`: the InternViT encoder.

    Structural fields (sizes) have no defaults on purpose; the options default to the reference
    `InternVisionConfig` values. `model_type "intern_vit_6b"` is a historical name kept as is.
    """

    OMIT_ABSENT_DEFAULTS = True

    # Structure.
    patch_size: int
    image_size: int
    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    num_hidden_layers: int
    num_channels: int = 3
    qkv_bias: bool = False
    qk_normalization: bool = False
    norm_type: str = "rms_norm"
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    # Kernels / regularisation (no effect on the weights).
    use_flash_attn: bool = True
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 0.1
    # Stored by newer InternVL configs, unused by InternViT-300M.
    downsample_ratio: float = 1.0
    window_size: int | None = None
    fullatt_block_indexes: list[int] | None = None
    architectures: list[str] = dataclasses.field(default_factory=lambda: ["InternVisionModel"])
    model_type: str = "intern_vit_6b"

    NORM_TYPES: ClassVar[tuple[str, ...]] = ("layer_norm", "rms_norm")

    def validate(self) -> None:
        owner = type(self).__name__
        for name in (
            "patch_size",
            "image_size",
            "hidden_size",
            "num_attention_heads",
            "intermediate_size",
            "num_hidden_layers",
            "num_channels",
        ):
            _require_positive_int(owner, name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{owner}.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.image_size < self.patch_size:
            raise ValueError(
                f"{owner}.image_size={self.image_size} is smaller than patch_size={self.patch_size}"
            )
        if self.norm_type not in self.NORM_TYPES:
            raise ValueError(f"{owner}.norm_type must be one of {self.NORM_TYPES}, got {self.norm_type!r}")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"{owner}.hidden_act={self.hidden_act!r} is not a known activation")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"{owner}.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        for name in ("dropout", "drop_path_rate", "attention_dropout"):
            _require_probability(owner, name, getattr(self, name))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def grid_size(self) -> int:
        """Side of the patch grid the position-embedding table was trained for."""
        return self.image_size // self.patch_size


def _llm_classes() -> dict[str, tuple[type, type]]:
    """`llm_config.architectures[0]` -> (config class, causal-LM class); imported lazily."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
    )

    return {
        "Qwen3ForCausalLM": (Qwen3Config, Qwen3ForCausalLM),
        "Qwen2ForCausalLM": (Qwen2Config, Qwen2ForCausalLM),
        "LlamaForCausalLM": (LlamaConfig, LlamaForCausalLM),
        "Qwen3MoeForCausalLM": (Qwen3MoeConfig, Qwen3MoeForCausalLM),
    }


SUPPORTED_LLM_ARCHITECTURES: tuple[str, ...] = (
    "Qwen3ForCausalLM",
    "Qwen2ForCausalLM",
    "LlamaForCausalLM",
    "Qwen3MoeForCausalLM",
)


@dataclasses.dataclass(kw_only=True)
class InternVLUChatConfig(ConfigBase):
    """`vlm/config.json` (`model_type="internvlu_chat"`).

    `llm_config` stays the raw dict of the file; `build_llm_config()` turns it into the transformers
    config of the class named by `llm_config["architectures"][0]`. Fields marked "stored" are kept for
    round-tripping and training code; inference ignores them (spec §1.2).
    """

    OMIT_ABSENT_DEFAULTS = True

    vision_config: InternVisionConfig
    llm_config: dict[str, Any]
    template: str = "qwen2_5-chat-v3"
    downsample_ratio: float = 0.5
    # Overrides vision_config.image_size for num_image_token only (the ViT itself adapts to any size).
    force_image_size: int | None = None
    # ViT layer fed to the projector: -1 = last block output, k >= 0 = hidden_states[k] (0 = embeddings).
    select_layer: int = -1
    # Stored only: the code always applies pixel_shuffle v2.
    ps_version: str = "v2"
    # Stored only; the reference forces it to llm_config's value, see build_llm_config().
    tie_word_embeddings: bool = False
    anyres_image_size: bool = False
    dynamic_image_size: bool = False
    use_thumbnail: bool = False
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 6
    pad2square: bool = False
    thumbnail_pos: str = "start"
    enable_multi_scale: bool = False
    scale_downsample_ratio: float = 0.5
    extra_select_layer: int = -1
    use_backbone_lora: int = 0
    use_llm_lora: int = 0
    system_message: str | None = None
    architectures: list[str] = dataclasses.field(default_factory=lambda: ["InternVLUChatModel"])
    model_type: str = "internvlu_chat"
    torch_dtype: str | None = None
    transformers_version: str | None = None

    MODEL_TYPE: ClassVar[str] = "internvlu_chat"

    @classmethod
    def _convert_nested(cls, known: dict[str, Any]) -> dict[str, Any]:
        if isinstance(known.get("vision_config"), dict):
            known = dict(known, vision_config=InternVisionConfig.from_dict(known["vision_config"]))
        return known

    def validate(self) -> None:
        owner = type(self).__name__
        if not isinstance(self.vision_config, InternVisionConfig):
            raise TypeError(
                f"{owner}.vision_config must be an InternVisionConfig (use from_dict for raw dicts), "
                f"got {type(self.vision_config).__name__}"
            )
        if not isinstance(self.llm_config, dict):
            raise TypeError(f"{owner}.llm_config must be a dict, got {type(self.llm_config).__name__}")
        archs = self.llm_config.get("architectures")
        if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
            raise ValueError(
                f"{owner}.llm_config['architectures'] must be a non-empty list of str, got {archs!r}"
            )
        if self.model_type != self.MODEL_TYPE:
            raise ValueError(f"{owner}.model_type must be {self.MODEL_TYPE!r}, got {self.model_type!r}")
        if not isinstance(self.template, str) or not self.template:
            raise ValueError(f"{owner}.template must be a non-empty str, got {self.template!r}")
        ratio = self.downsample_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
            raise ValueError(f"{owner}.downsample_ratio must be in (0, 1], got {ratio!r}")
        if abs(1.0 / ratio - round(1.0 / ratio)) > 1e-6:
            raise ValueError(f"{owner}.downsample_ratio={ratio} must be 1/k for an integer k (pixel shuffle)")
        if self.force_image_size is not None:
            _require_positive_int(owner, "force_image_size", self.force_image_size)
        if isinstance(self.select_layer, bool) or not isinstance(self.select_layer, int):
            raise TypeError(f"{owner}.select_layer must be an int, got {self.select_layer!r}")
        num_states = self.vision_config.num_hidden_layers + 1
        if not -num_states <= self.select_layer < num_states:
            raise ValueError(
                f"{owner}.select_layer={self.select_layer} is out of range for a ViT with "
                f"{self.vision_config.num_hidden_layers} layers"
            )
        if self.anyres_image_size:
            # The reference's anyres branch passes grid_thw to a ViT that cannot take it (spec §1.2).
            raise ValueError(
                f"{owner}.anyres_image_size=True is not supported (the reference cannot run it either)"
            )

    @property
    def llm_architecture(self) -> str:
        return self.llm_config["architectures"][0]

    @property
    def pixel_shuffle_factor(self) -> int:
        """Side of the square of ViT patches merged into one LLM token (2 for downsample_ratio 0.5)."""
        return round(1.0 / self.downsample_ratio)

    @property
    def num_image_token(self) -> int:
        """LLM tokens per image: (image_size // patch_size)^2 * downsample_ratio^2 (256 for the release)."""
        image_size = self.force_image_size or self.vision_config.image_size
        return int((image_size // self.vision_config.patch_size) ** 2 * (self.downsample_ratio**2))

    def build_llm_config(self) -> PretrainedConfig:
        """transformers config of the language model, from `llm_config` (class by `architectures[0]`).

        As in the reference, `tie_word_embeddings` comes from `llm_config` (class default when absent);
        the top-level field is only stored.
        """
        config_cls, _ = self._llm_classes()
        return config_cls.from_dict(copy.deepcopy(self.llm_config))

    def llm_model_class(self) -> type:
        """The transformers *ForCausalLM class named by `llm_config.architectures[0]`."""
        return self._llm_classes()[1]

    def _llm_classes(self) -> tuple[type, type]:
        classes = _llm_classes()
        arch = self.llm_architecture
        if arch not in classes:
            supported = ", ".join(SUPPORTED_LLM_ARCHITECTURES)
            raise ValueError(f"unsupported llm_config architecture {arch!r}; supported: {supported}")
        return classes[arch]
