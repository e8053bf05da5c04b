"""Typed configs of the generation decoder (`generation_decoder/config.json`).

Two dataclasses mirror the two levels of the official file:
- `InternVLUGenerationDecoderConfig`: the wrapper (`model_type="internvlu_generation_decoder"`), whose
  fields are mostly training hints; only the projector, the padding token width and the two RoPE scale
  factors shape the model.
- `InternVLUTransformerConfig`: the nested `decoder_config` dict, i.e. the register-to-config arguments of
  the MMDiT (`InternVLUTransformer2DModel`). diffusers keeps unknown keys such as `_class_name` there; we
  keep them in `extra`.

Defaults are the official class defaults (spec §1.3), not the released values;
`released_generation_decoder_config()` returns the released 4B configuration.
"""

from __future__ import annotations

import dataclasses

from internvlu.utils.config import ConfigBase

MODEL_TYPE = "internvlu_generation_decoder"
DECODER_PROJECTOR_TYPES = ("identity", "mlp2x_gelu")


@dataclasses.dataclass
class InternVLUTransformerConfig(ConfigBase):
    """Architecture of the MMDiT head (`decoder_config`).

    Released: 20 layers, 12 heads x 128, joint dim 4096."""

    OMIT_ABSENT_DEFAULTS = True

    patch_size: int = 2
    in_channels: int = 64  # = patch_size**2 * latent channels (2x2 patches of 16-channel latents)
    out_channels: int | None = 16  # latent channels; None means in_channels (diffusers convention)
    num_layers: int = 60
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584  # width of the conditioning tokens (VLM hidden states)
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)  # (frame, height, width) rotary dims; sum = head dim
    video_position_scale_factor: float = 1.0  # RoPE scale of generated/reference latent tokens
    vlm_cond_position_scale_factor: float = 1.0  # RoPE scale of ViT tokens inside the context
    # Multiplier applied to the (dtype-rounded) scheduler timestep before the sinusoid (reference default 1.0;
    # absent from the released file). The embedded model uses 0.001 (see the transformer's forward).
    timestep_scale: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.axes_dims_rope, list):
            self.axes_dims_rope = tuple(self.axes_dims_rope)  # type: ignore[assignment]
        super().__post_init__()

    @property
    def latent_channels(self) -> int:
        return self.out_channels if self.out_channels is not None else self.in_channels

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def validate(self) -> None:
        for name in (
            "patch_size",
            "in_channels",
            "num_layers",
            "attention_head_dim",
            "num_attention_heads",
            "joint_attention_dim",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"decoder_config.{name} must be a positive int, got {value!r}")
        if self.out_channels is not None and (
            not isinstance(self.out_channels, int) or self.out_channels <= 0
        ):
            raise ValueError(
                f"decoder_config.out_channels must be a positive int or None, got {self.out_channels!r}"
            )
        if len(self.axes_dims_rope) != 3 or any(int(d) != d or d <= 0 or d % 2 for d in self.axes_dims_rope):
            raise ValueError(
                f"decoder_config.axes_dims_rope must be three positive even ints (frame, height, width), "
                f"got {list(self.axes_dims_rope)}"
            )
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError(
                f"decoder_config.axes_dims_rope {list(self.axes_dims_rope)} sums to "
                f"{sum(self.axes_dims_rope)}, but attention_head_dim is {self.attention_head_dim}; "
                "they must be equal"
            )
        # The head patchifies C-channel latents into p*p*C features and unpatchifies p*p*out_channels
        # back into the same C channels, so in_channels must be exactly p*p*out_channels.
        if self.in_channels != self.patch_size**2 * self.latent_channels:
            raise ValueError(
                f"decoder_config.in_channels ({self.in_channels}) must equal patch_size**2 * out_channels "
                f"({self.patch_size}**2 * {self.latent_channels})"
            )
        for name in ("video_position_scale_factor", "vlm_cond_position_scale_factor", "timestep_scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"decoder_config.{name} must be a positive number, got {value!r}")


@dataclasses.dataclass
class InternVLUGenerationDecoderConfig(ConfigBase):
    """`generation_decoder/config.json`.

    HF bookkeeping keys (`architectures`, `torch_dtype`, `transformers_version`, `is_composition`) are kept
    in `extra` and written back unchanged."""

    OMIT_ABSENT_DEFAULTS = True

    model_type: str = MODEL_TYPE
    decoder_config: InternVLUTransformerConfig = dataclasses.field(default_factory=InternVLUTransformerConfig)
    # "mlp2x_gelu" is Linear(in, 3*out) -> SiLU (sic) -> Linear(3*out, out); the release uses "identity".
    decoder_projector_type: str = "mlp2x_gelu"
    input_hidden_size: int = 1536  # width of the VLM conditioning (len(vlm_select_layer) * LLM width)
    output_hidden_size: int = 2304  # projector output width (only for "mlp2x_gelu")
    padding_encoder_hidden_states: bool = True  # creates `encoder_padding_token`
    pad_to_fix_length: bool = True
    max_sequence_length: int = 512  # minimum padded context length (no effect on packed outputs)
    vlm_select_layer: list[int] = dataclasses.field(default_factory=lambda: [-1])
    gen_image_height: int = 512  # default output size of a pipeline call
    gen_image_width: int = 512
    # These two override decoder_config's values when the transformer is built (reference behaviour).
    video_position_scale_factor: float = 1.0
    vlm_cond_position_scale_factor: float = 1.0
    flow_shift: float = 3.0
    # Stored, unused at inference (dead config in the reference).
    vae_projector_type: str = "mlp2x_gelu"
    visual_input_hidden_size: int = 4096
    vae_input_hidden_size: int = 64
    vae_downsample_factor: int = 32
    qk_norm: str | None = None
    # Training hints (§8).
    weighting_scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    sigmas_as_weight: bool = False
    discrete_timestep: bool = False
    mask_weight_type: str | None = None
    region_weighting: bool = False
    all_cfg_scale: float = 0.0
    part_cfg_scale: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.decoder_config, dict):
            self.decoder_config = InternVLUTransformerConfig.from_dict(self.decoder_config)
        elif not isinstance(self.decoder_config, InternVLUTransformerConfig):
            raise TypeError(
                "decoder_config must be a dict or InternVLUTransformerConfig, "
                f"got {type(self.decoder_config).__name__}"
            )
        super().__post_init__()

    def validate(self) -> None:
        if self.model_type != MODEL_TYPE:
            raise ValueError(f"model_type must be {MODEL_TYPE!r}, got {self.model_type!r}")
        if self.decoder_projector_type not in DECODER_PROJECTOR_TYPES:
            raise ValueError(
                f"decoder_projector_type must be one of {DECODER_PROJECTOR_TYPES}, "
                f"got {self.decoder_projector_type!r}"
            )
        for name in (
            "input_hidden_size",
            "output_hidden_size",
            "max_sequence_length",
            "gen_image_height",
            "gen_image_width",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if (
            not isinstance(self.vlm_select_layer, list)
            or not self.vlm_select_layer
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in self.vlm_select_layer)
        ):
            raise ValueError(
                f"vlm_select_layer must be a non-empty list of ints, got {self.vlm_select_layer!r}"
            )
        for name in ("video_position_scale_factor", "vlm_cond_position_scale_factor"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    @property
    def context_width(self) -> int:
        """Width of the projected context tokens that enter the transformer's `txt_norm`."""
        return (
            self.input_hidden_size if self.decoder_projector_type == "identity" else self.output_hidden_size
        )

    def transformer_config(self) -> InternVLUTransformerConfig:
        """The config the transformer is built from: `decoder_config` with the top-level RoPE scale factors
        written over its own (as the reference does), without mutating this config."""
        cfg = dataclasses.replace(
            self.decoder_config,
            video_position_scale_factor=self.video_position_scale_factor,
            vlm_cond_position_scale_factor=self.vlm_cond_position_scale_factor,
        )
        if cfg.joint_attention_dim != self.context_width:
            raise ValueError(
                f"decoder_config.joint_attention_dim ({cfg.joint_attention_dim}) must equal the projected "
                f"context width ({self.context_width}: input_hidden_size for 'identity', "
                f"output_hidden_size for 'mlp2x_gelu'; decoder_projector_type="
                f"{self.decoder_projector_type!r})"
            )
        return cfg


def released_generation_decoder_config() -> InternVLUGenerationDecoderConfig:
    """The released 4B generation decoder (spec §1.3 / §10.2): 1,808,034,880 parameters."""
    return InternVLUGenerationDecoderConfig(
        decoder_config=InternVLUTransformerConfig(
            patch_size=2,
            in_channels=64,
            out_channels=16,
            num_layers=20,
            attention_head_dim=128,
            num_attention_heads=12,
            joint_attention_dim=4096,
            axes_dims_rope=(16, 56, 56),
            video_position_scale_factor=1.0,
            vlm_cond_position_scale_factor=0.25,
            extra={"_class_name": "InternVLUTransformer2DModel"},
        ),
        decoder_projector_type="identity",
        input_hidden_size=4096,
        output_hidden_size=4096,
        padding_encoder_hidden_states=True,
        pad_to_fix_length=False,
        max_sequence_length=768,
        vlm_select_layer=[-1, -2],
        video_position_scale_factor=1.0,
        vlm_cond_position_scale_factor=0.25,
        flow_shift=3.0,
        vae_downsample_factor=8,
        extra={"architectures": ["InternVLUGenerationDecoder"]},
    )
