"""`InternVLUGenerationDecoder`: the `generation_decoder/` component (official `internvlu.diffusion` class).

It wraps the MMDiT head (`decoder.*` keys) with the learned `encoder_padding_token` and the
`decoder_projector` applied to the VLM conditioning. The released checkpoint uses the identity projector, so
its state dict is the padding token plus the transformer (654 tensors, 1,808,034,880 parameters).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from internvlu.diffusion.configuration import InternVLUGenerationDecoderConfig
from internvlu.diffusion.transformer import InternVLUTransformer2DModel


class InternVLUGenerationDecoder(nn.Module):
    """Generation decoder: context projector + MMDiT velocity predictor."""

    config_class = InternVLUGenerationDecoderConfig

    def __init__(self, config: InternVLUGenerationDecoderConfig) -> None:
        super().__init__()
        if not isinstance(config, InternVLUGenerationDecoderConfig):
            raise TypeError(
                f"config must be an InternVLUGenerationDecoderConfig, got {type(config).__name__}"
            )
        self.config = config
        # The top-level RoPE scale factors override decoder_config's (reference behaviour); the config
        # object itself stays unchanged.
        self.decoder = InternVLUTransformer2DModel(config.transformer_config())
        if config.padding_encoder_hidden_states:
            # Fills padded context rows in `pad_encoder_hidden_states`; never reaches the packed forward.
            self.encoder_padding_token = nn.Parameter(torch.zeros(config.input_hidden_size))
        else:
            self.encoder_padding_token = None
        if config.decoder_projector_type == "mlp2x_gelu":
            # Named "gelu" but the reference builds SiLU; kept for checkpoint compatibility.
            self.decoder_projector: nn.Module = nn.Sequential(
                nn.Linear(config.input_hidden_size, 3 * config.output_hidden_size),
                nn.SiLU(),
                nn.Linear(3 * config.output_hidden_size, config.output_hidden_size),
            )
        else:
            self.decoder_projector = nn.Identity()

    @classmethod
    def from_config(cls, config: InternVLUGenerationDecoderConfig | dict) -> InternVLUGenerationDecoder:
        if isinstance(config, dict):
            config = InternVLUGenerationDecoderConfig.from_dict(config)
        return cls(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.img_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.img_in.weight.device

    def init_non_persistent_buffers(self) -> None:
        """Recompute state that lives outside the state dict after a meta-device build (there is none;
        kept for a uniform loader API)."""
        self.decoder.init_non_persistent_buffers()

    def pad_encoder_hidden_states(
        self, encoder_hidden_states: Sequence[Tensor], encoder_image_token_mask: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The reference `prepare_forward_input`: pad the K context tensors to
        `M = max_sequence_length` (`pad_to_fix_length`) or `max(max T_k, max_sequence_length)` with the
        learned padding token, then apply the projector. Only for inspection/training: `forward` packs the
        unpadded tensors, so the padding never changes a velocity.

        Returns:
            (projected [K, M, out] context, attention mask [K, M] bool, image-token mask [K, M] bool).
        """
        if self.encoder_padding_token is None:
            raise ValueError(
                "padding_encoder_hidden_states is False: this decoder has no encoder_padding_token"
            )
        if len(encoder_hidden_states) != len(encoder_image_token_mask):
            raise ValueError(
                f"got {len(encoder_hidden_states)} context tensors but "
                f"{len(encoder_image_token_mask)} image masks"
            )
        lengths = [h.shape[0] for h in encoder_hidden_states]
        if self.config.pad_to_fix_length:
            width = self.config.max_sequence_length
        else:
            width = max([*lengths, self.config.max_sequence_length])
        num = len(encoder_hidden_states)
        token = self.encoder_padding_token
        padded = token[None, None].repeat(num, width, 1)  # [K, M, in]
        attention_mask = torch.zeros(num, width, dtype=torch.bool, device=token.device)
        image_mask = torch.zeros(num, width, dtype=torch.bool, device=token.device)
        for k, (hid, mask) in enumerate(zip(encoder_hidden_states, encoder_image_token_mask)):
            n = min(hid.shape[0], width)  # pad_to_fix_length truncates
            padded[k, :n] = hid[:n].to(token.dtype)
            attention_mask[k, :n] = True
            image_mask[k, :n] = mask[:n]
        return self.decoder_projector(padded), attention_mask, image_mask

    def forward(
        self,
        latents: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Sequence[Tensor],
        encoder_image_token_mask: Sequence[Tensor],
        image_grid_thw_gen: Tensor,
        image_fhw_cond: Sequence[Tensor],
        cond_latents: Sequence[Sequence[Tensor]] | None = None,
    ) -> Tensor:
        """Predict the flow velocity (ε − x0 convention of the scheduler) of K noisy latents.

        Args:
            latents: [K, C, H_l, W_l] noisy latents (C=16); H_l/W_l are the largest grid over the K samples.
            timestep: [K] scheduler timesteps on the 0..1000 scale; rounded to the model dtype first
                (§5.3.1).
            encoder_hidden_states: K tensors [T_k, input_hidden_size], the gathered VLM conditioning.
            encoder_image_token_mask: K bool [T_k], True at `<IMG_CONTEXT>` positions.
            image_grid_thw_gen: [K, 3] (1, H_g, W_g) latent-pixel size of each generated image.
            image_fhw_cond: K long [m_k, 3] ViT RoPE grids ((1, 16, 16) at full size) of the images in each
                context; an empty tensor for a context without images.
            cond_latents: per sample, a list of reference latents [C, h, w] (VAE mode, normalised,
                cropped to their grid); None or empty lists for no references.

        Returns:
            [K, C, H_l, W_l] velocity in the model dtype (zeros outside each sample's grid).
        """
        if len(encoder_hidden_states) != latents.shape[0]:
            raise ValueError(
                f"encoder_hidden_states must have one entry per sample (K={latents.shape[0]}), "
                f"got {len(encoder_hidden_states)}"
            )
        dtype = self.dtype
        context = []
        for k, hid in enumerate(encoder_hidden_states):
            if hid.ndim != 2 or hid.shape[1] != self.config.input_hidden_size:
                raise ValueError(
                    f"encoder_hidden_states[{k}] must be [T, {self.config.input_hidden_size}], "
                    f"got {tuple(hid.shape)}"
                )
            context.append(self.decoder_projector(hid.to(dtype)))
        if (
            cond_latents is not None
            and len(cond_latents) == latents.shape[0]
            and all(len(r) == 0 for r in cond_latents)
        ):
            cond_latents = None  # no sample has a reference: same as text-to-image
        return self.decoder(
            latents,
            timestep,
            context,
            encoder_image_token_mask,
            image_grid_thw_gen,
            image_fhw_cond,
            cond_latents,
        )
