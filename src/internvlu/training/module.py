"""The training forward: one VLM pass gives both the next-token loss and the generation head's conditioning.

`InternVLUForTraining` holds the two trainable components under the names the state dicts use (`vlm.*`,
`generation_decoder.*`), so FSDP wraps one root module whose forward calls everything (parallelize.py). The
conditioning is built with the pipeline's own stage functions (`conditioning_spans`, `gather_conditioning`) from
the hidden states of `vlm_select_layer` ([-1, -2] concatenated), exactly as inference does.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from internvlu.pipeline import stages
from internvlu.training.losses import flow_loss_per_sample, ntp_loss_sum


@dataclasses.dataclass
class ModelInputs:
    """A micro-batch on the device.

    Text side: R rows. Generation side: K images, one per generation row (`gen_rows`), with their noisy
    latents padded to the largest grid.
    """

    input_ids: Tensor  # [R, L]
    attention_mask: Tensor  # [R, L]
    labels: Tensor  # [R, L]
    pixel_values: Tensor | None  # [N, 3, S, S]
    gen_rows: list[int]  # K rows that end with a generation <img>
    noisy_latents: Tensor | None  # [K, C, H, W]
    timesteps: Tensor | None  # [K], sigma * 1000
    velocity_target: Tensor | None  # [K, C, H, W] = eps - z
    grids: list[tuple[int, int]]  # K latent (h, w)
    image_fhw_cond: list[Tensor]  # K [m_k, 3] ViT grids of the context images
    cond_latents: list[list[Tensor]] | None  # K lists of reference latents [C, h, w]
    flow_weights: list[Tensor | None] | None = None  # K per-pixel flow-loss weights [h, w] (edit regions) or None


@dataclasses.dataclass
class LossSums:
    """Loss sums of one micro-batch (normalised by the trainer with global counts)."""

    ntp_sum: Tensor  # scalar fp32, summed token cross-entropy
    ntp_tokens: int
    flow_sum: Tensor  # scalar fp32, summed per-image MSE
    flow_samples: int
    aux: Tensor  # 0-valued term that keeps every sharded module in the graph (see `keep_all_modules`)


class InternVLUForTraining(nn.Module):
    """VLM + generation head with a loss-computing forward.

    Args:
        vlm, generation_decoder: the pipeline components (trained in place).
        token_ids: the processor's `token_ids()` (needs <|im_start|>, <img>, <IMG_CONTEXT>).
        vit_grid: side of the ViT token grid of one context image ((1, g, g) RoPE grids).
        keep_all_modules: run every sub-network in every micro-batch, adding 0 x its output when the batch does not
            use it (no image, no generation row, no text label). Sharded training needs this: all processes must take
            part in the same gathers and gradient reductions.
    """

    def __init__(
        self,
        vlm: nn.Module,
        generation_decoder: nn.Module,
        token_ids: dict,
        vit_grid: int,
        keep_all_modules: bool = False,
        ntp_reduction: str = "token",
    ) -> None:
        super().__init__()
        self.vlm = vlm
        self.generation_decoder = generation_decoder
        self.im_start_id = int(token_ids["<|im_start|>"])
        self.img_start_id = int(token_ids["<img>"])
        self.img_context_id = int(token_ids["<IMG_CONTEXT>"])
        self.vit_grid = vit_grid
        self.keep_all_modules = keep_all_modules
        self.compute_ntp = True
        self.ntp_reduction = ntp_reduction  # "token" | "turn" (LossConfig.ntp_reduction)

    def vlm_trains(self) -> bool:
        return any(p.requires_grad for p in self.vlm.parameters())

    def forward(self, inputs: ModelInputs) -> LossSums:
        vlm = self.vlm
        lm = vlm.language_model
        aux = torch.zeros((), device=inputs.input_ids.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.vlm_trains()):
            embeds = vlm.build_inputs_embeds(inputs.input_ids, inputs.pixel_values)  # [R, L, D]
            if inputs.pixel_values is None and self.keep_all_modules:
                aux = aux + 0.0 * self._dummy_vit(embeds.dtype)
            n = inputs.input_ids.shape[1]
            # Right padding: positions 0..n-1 of every row are its real tokens (inference text generation uses the
            # same positions; the conditioning forward's arange differs only by a relative shift).
            position_ids = torch.arange(n, device=embeds.device).expand(
                inputs.input_ids.shape[0], n
            )  # [R, L]
            out = lm.model(
                inputs_embeds=embeds,
                attention_mask=inputs.attention_mask,
                position_ids=position_ids,
                use_cache=False,
                output_hidden_states=True,
                return_dict=True,
            )
            hidden_states = out.hidden_states  # L_llm + 1 tensors [R, L, D]; [-1] is final-norm-ed
            if self.compute_ntp:
                ntp_sum, ntp_tokens = ntp_loss_sum(
                    hidden_states[-1], inputs.labels, lm.lm_head, self.ntp_reduction
                )
            else:
                ntp_sum, ntp_tokens = hidden_states[-1].new_zeros((), dtype=torch.float32), 0
            if ntp_tokens == 0 and self.keep_all_modules:
                aux = aux + 0.0 * lm.lm_head(hidden_states[-1][:1, :1]).float().sum()

        flow_sum = aux.new_zeros(())
        k = len(inputs.gen_rows)
        if k:
            layers = self.generation_decoder.config.vlm_select_layer
            rows = torch.tensor(inputs.gen_rows, device=inputs.input_ids.device)
            hidden = torch.cat([hidden_states[i][rows] for i in layers], dim=-1)  # [K, L, J]
            ids, mask = inputs.input_ids[rows], inputs.attention_mask[rows]
            spans = stages.conditioning_spans(ids, mask, self.im_start_id, self.img_start_id)
            states, image_masks = stages.gather_conditioning(hidden, ids, mask, spans, self.img_context_id)
            grid_thw = torch.tensor([(1, h, w) for h, w in inputs.grids], dtype=torch.long, device=ids.device)
            assert inputs.noisy_latents is not None and inputs.timesteps is not None
            assert inputs.velocity_target is not None
            pred = self.generation_decoder(
                inputs.noisy_latents,
                inputs.timesteps,
                states,
                image_masks,
                grid_thw,
                inputs.image_fhw_cond,
                inputs.cond_latents,
            )  # [K, C, H, W]
            flow_sum = flow_loss_per_sample(pred, inputs.velocity_target, inputs.grids, inputs.flow_weights).sum()
        elif self.keep_all_modules:
            aux = aux + 0.0 * self._dummy_head(hidden_states[-1])
        return LossSums(ntp_sum, ntp_tokens, flow_sum, k, aux)

    # -- dummies for sharded training ---------------------------------------------------------------------------

    def _dummy_vit(self, dtype: torch.dtype) -> Tensor:
        cfg = self.vlm.config
        size = cfg.force_image_size or cfg.vision_config.image_size
        device = self.vlm.device
        return (
            self.vlm.extract_feature(torch.zeros(1, 3, size, size, device=device, dtype=dtype)).float().sum()
        )

    def _dummy_head(self, hidden: Tensor) -> Tensor:
        dec = self.generation_decoder
        width = dec.config.input_hidden_size
        device = hidden.device
        channels = dec.decoder.config.latent_channels
        p = dec.decoder.config.patch_size
        latents = torch.zeros(1, channels, p, p, device=device)
        context = [torch.zeros(1, width, device=device, dtype=hidden.dtype)]
        out = dec(
            latents, torch.zeros(1, device=device), context, [torch.zeros(1, dtype=torch.bool, device=device)],
            torch.tensor([[1, p, p]], device=device), [torch.zeros(0, 3, dtype=torch.long, device=device)], None,
        )  # fmt: skip
        return out.float().sum()
