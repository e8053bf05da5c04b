"""`InternVLUChatModel`: InternViT -> pixel shuffle -> `mlp1` -> transformers causal LM (spec §2, §3).

The model is a plain `nn.Module` whose parameter names equal the official `vlm/model.safetensors` keys
(`vision_model.*`, `mlp1.{0,1,3}.*`, `language_model.model.*`, `language_model.lm_head.weight`,
`special_token_embedding.weight`). Weight loading, dtype casting and device placement belong to the
checkpoint loader; after loading into a meta-built model call `init_non_persistent_buffers()`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange
from torch import LongTensor, Tensor, nn

from internvlu.constants import SPECIAL_TOKEN_LIST
from internvlu.vlm.configuration import InternVLUChatConfig
from internvlu.vlm.vision import InternVisionModel, pixel_shuffle_v2

LLM_ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


class InternVLUChatModel(nn.Module):
    """The VLM half of InternVL-U.

    Args:
        config: the parsed `vlm/config.json`.
        attn_implementation: "sdpa" (default), "eager" or "flash_attention_2"; used by the LLM and,
            for "eager", by the ViT too (its matmul-softmax path, as in the reference without flash-attn).
            The ViT uses flash-attn by itself when installed, enabled in the config and the inputs are
            CUDA fp16/bf16.
    """

    config_class = InternVLUChatConfig

    def __init__(self, config: InternVLUChatConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        if not isinstance(config, InternVLUChatConfig):
            raise TypeError(f"config must be an InternVLUChatConfig, got {type(config).__name__}")
        if attn_implementation not in LLM_ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"unknown attn_implementation {attn_implementation!r}; "
                f"expected one of {LLM_ATTN_IMPLEMENTATIONS}"
            )
        self.config = config
        self.attn_implementation = attn_implementation
        vcfg = config.vision_config
        self.num_image_token: int = config.num_image_token
        self.select_layer = config.select_layer
        self.patch_size = vcfg.patch_size
        self.shuffle_factor = config.pixel_shuffle_factor

        llm_config = config.build_llm_config()
        llm_config._attn_implementation = attn_implementation
        # The transformers config object of the LLM (config.llm_config stays the raw dict of the file).
        self.llm_config = llm_config
        llm_hidden = llm_config.hidden_size
        vit_hidden = vcfg.hidden_size * self.shuffle_factor**2

        self.vision_model = InternVisionModel(
            vcfg, attn_implementation="eager" if attn_implementation == "eager" else "sdpa"
        )
        # Indices 0, 1, 3 carry weights (2 is the GELU): the official keys are mlp1.0/1/3.
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(vit_hidden),
            nn.Linear(vit_hidden, llm_hidden),
            nn.GELU(),
            nn.Linear(llm_hidden, llm_hidden),
        )
        # Built from the config, never from_pretrained: the weights come with the vlm checkpoint.
        self.language_model = config.llm_model_class()(llm_config)
        # Row order = SPECIAL_TOKEN_LIST (checkpoint contract).
        self.special_token_embedding = nn.Embedding(len(SPECIAL_TOKEN_LIST), llm_hidden)

        self.special_token_ids: tuple[int, ...] | None = None
        self.img_context_token_id: int | None = None
        self._cache_kwarg = _cache_kwarg_name(self.language_model.model.forward)

    @classmethod
    def from_config(
        cls, config: InternVLUChatConfig, attn_implementation: str = "sdpa"
    ) -> InternVLUChatModel:
        return cls(config, attn_implementation=attn_implementation)

    @property
    def device(self) -> torch.device:
        return self.special_token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.special_token_embedding.weight.dtype

    # ------------------------------------------------------------------ setup

    def set_token_ids(self, special_token_ids: Sequence[int], img_context_token_id: int) -> None:
        """Token ids of SPECIAL_TOKEN_LIST (in that order) and of `<IMG_CONTEXT>` in the tokenizer."""
        ids = tuple(int(i) for i in special_token_ids)
        if len(ids) != len(SPECIAL_TOKEN_LIST):
            raise ValueError(
                f"special_token_ids must hold {len(SPECIAL_TOKEN_LIST)} ids "
                f"(one per {SPECIAL_TOKEN_LIST}), got {len(ids)}"
            )
        if len(set(ids)) != len(ids):
            raise ValueError(f"special_token_ids must be distinct, got {ids}")
        vocab = self.language_model.get_input_embeddings().num_embeddings
        bad = [i for i in (*ids, int(img_context_token_id)) if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"token ids {bad} are outside the LLM vocabulary of size {vocab}")
        if int(img_context_token_id) not in ids:
            raise ValueError(
                f"img_context_token_id={img_context_token_id} is not among special_token_ids {ids}"
            )
        self.special_token_ids = ids
        self.img_context_token_id = int(img_context_token_id)

    def init_non_persistent_buffers(self) -> None:
        """Recompute non-persistent buffers (rotary `inv_freq`, `original_inv_freq`) on the model's device.

        Needed after building under `torch.device("meta")` and `load_state_dict(assign=True)`: those
        buffers are not in the checkpoint. They are computed in fp32, as a normal build does, which also
        repairs a `.to(bfloat16)` cast of them. Re-ties the LM head when `tie_word_embeddings` is set.
        """
        device = self.language_model.get_input_embeddings().weight.device
        if device.type == "meta":
            raise RuntimeError(
                "load the weights (load_state_dict(..., assign=True)) before init_non_persistent_buffers"
            )
        for name, module in self.named_modules():
            non_persistent = getattr(module, "_non_persistent_buffers_set", set())
            if not non_persistent:
                continue
            if not type(module).__name__.endswith("RotaryEmbedding"):
                raise RuntimeError(
                    f"don't know how to rebuild non-persistent buffers {sorted(non_persistent)} of {name}"
                )
            with torch.device("cpu"):
                fresh = type(module)(module.config)
            for buf in non_persistent:
                module._buffers[buf] = fresh._buffers[buf].to(device)
            module.attention_scaling = fresh.attention_scaling
        if getattr(self.llm_config, "tie_word_embeddings", False):
            self.language_model.tie_weights()

    def tied_weights(self) -> dict[str, str]:
        """{key that may be absent from a checkpoint: key it shares storage with} (a tied LM head)."""
        if getattr(self.llm_config, "tie_word_embeddings", False):
            return {"language_model.lm_head.weight": "language_model.model.embed_tokens.weight"}
        return {}

    def gradient_checkpointing_enable(self) -> None:
        """Activation checkpointing for both the ViT blocks and the LLM layers (training)."""
        self.vision_model.encoder.gradient_checkpointing = True
        self.language_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )

    # ------------------------------------------------------------------ vision

    def extract_feature(self, pixel_values: Tensor) -> Tensor:
        """Normalised images [N, 3, H, W] -> image tokens [N, (H/p)(W/p)/f^2, D_llm] (256 at 448 px)."""
        out = self.vision_model(pixel_values, output_hidden_states=self.select_layer != -1)
        if self.select_layer == -1:
            vit = out.last_hidden_state
        else:
            assert out.hidden_states is not None
            vit = out.hidden_states[self.select_layer]  # index 0 = embeddings
        vit = vit[:, 1:]  # drop CLS: [N, h*w, D_v]
        h = pixel_values.shape[-2] // self.patch_size
        w = pixel_values.shape[-1] // self.patch_size
        vit = rearrange(vit, "n (h w) c -> n h w c", h=h, w=w)  # [N, h, w, D_v]
        vit = pixel_shuffle_v2(vit, self.shuffle_factor)  # [N, h*w/f^2, f^2*D_v]
        return self.mlp1(vit)  # [N, T, D_llm]

    # ------------------------------------------------------------------ embeddings

    def build_inputs_embeds(self, input_ids: LongTensor, pixel_values: Tensor | None = None) -> Tensor:
        """Token embeddings with the special-token override and the ViT scatter (spec §3.2): [B, L, D_llm].

        Every SPECIAL_TOKEN_LIST token takes its `special_token_embedding` row instead of the LLM's
        embedding; then `<IMG_CONTEXT>` positions, in row-major (batch, position) order, take the image
        tokens of `pixel_values` in order (image k fills the k-th block of num_image_token positions).
        """
        if self.special_token_ids is None or self.img_context_token_id is None:
            raise RuntimeError("call set_token_ids(...) before building input embeddings")
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        embeds = self.language_model.get_input_embeddings()(input_ids)  # [B, L, D]
        special = self.special_token_embedding.weight.to(embeds.dtype)  # [10, D]
        for row, token_id in enumerate(self.special_token_ids):
            # torch.where == reference's `E*0 + w` for finite E, and likewise passes no gradient to E.
            embeds = torch.where((input_ids == token_id).unsqueeze(-1), special[row], embeds)

        is_context = input_ids == self.img_context_token_id  # [B, L]
        num_context = int(is_context.sum())
        if pixel_values is None:
            if num_context:
                raise ValueError(
                    f"input_ids hold {num_context} <IMG_CONTEXT> tokens (id {self.img_context_token_id}) "
                    "but pixel_values is None"
                )
            return embeds
        vit = self.extract_feature(pixel_values)  # [N, T, D]
        expected = vit.shape[0] * vit.shape[1]
        if num_context != expected:
            raise ValueError(
                f"input_ids hold {num_context} <IMG_CONTEXT> tokens (id {self.img_context_token_id}) but "
                f"pixel_values has {vit.shape[0]} images x {vit.shape[1]} tokens = {expected} "
                f"(num_image_token={self.num_image_token})"
            )
        # masked_scatter fills the selected positions in row-major order.
        return embeds.masked_scatter(is_context.unsqueeze(-1), vit.to(embeds.dtype))

    # ------------------------------------------------------------------ LLM calls

    @torch.no_grad()
    def generate(
        self,
        input_ids: LongTensor,
        attention_mask: Tensor,
        pixel_values: Tensor | None = None,
        *,
        eos_token_id: list[int],
        pad_token_id: int,
        streamer: Any = None,
        **generate_kwargs: Any,
    ) -> Any:
        """Autoregressive text generation from a left-padded prompt batch (spec §3.5).

        Returns the NEW token ids [B, T] (finished rows padded with the first eos id). With
        `return_dict_in_generate=True` the transformers output object is returned instead (its
        `sequences` are the new tokens). Positions follow the attention mask (cumsum - 1) and
        generated tokens are embedded by the plain `embed_tokens`, as in the reference. Greedy unless
        sampling kwargs are given; `max_new_tokens` etc. pass through to transformers.
        """
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != "
                f"input_ids shape {tuple(input_ids.shape)}"
            )
        embeds = self.build_inputs_embeds(input_ids, pixel_values)
        generate_kwargs.setdefault("do_sample", False)
        generate_kwargs.setdefault("use_cache", True)
        return self.language_model.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            eos_token_id=list(eos_token_id),
            pad_token_id=pad_token_id,
            streamer=streamer,
            **generate_kwargs,
        )

    def forward_hidden_states(
        self,
        input_ids: LongTensor,
        attention_mask: Tensor,
        pixel_values: Tensor | None = None,
        position_ids: LongTensor | None = None,
        past_key_values: Any = None,
    ) -> tuple[Tensor, ...]:
        """One full LLM forward; returns the HF hidden_states tuple (spec §3.6).

        Length L_llm + 1: [0] = input embeddings, [k] = output of layer k, [-1] = final-RMSNorm-ed
        output of the last layer. Positions default to arange(L) in every row, ignoring left padding,
        exactly like the reference's `generate_hidden_states` (RoPE is relative, so only rounding differs).
        """
        embeds = self.build_inputs_embeds(input_ids, pixel_values)  # [B, L, D]
        if position_ids is None:
            b, n = input_ids.shape
            position_ids = torch.arange(n, device=input_ids.device).unsqueeze(0).expand(b, n)  # [B, L]
        cache_kwargs = {self._cache_kwarg: past_key_values} if past_key_values is not None else {}
        out = self.language_model.model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=past_key_values is not None,
            output_hidden_states=True,
            return_dict=True,
            **cache_kwargs,
        )
        return tuple(out.hidden_states)

    def forward(
        self,
        input_ids: LongTensor,
        attention_mask: Tensor | None = None,
        pixel_values: Tensor | None = None,
        labels: LongTensor | None = None,
        position_ids: LongTensor | None = None,
        output_hidden_states: bool = False,
        **kw: Any,
    ) -> Any:
        """Training / understanding forward: the transformers CausalLMOutput.

        `loss` is the shifted next-token cross-entropy over `labels != -100` (transformers' loss).
        Extra kwargs (e.g. `use_cache`, `num_items_in_batch`) go to the language model.
        """
        embeds = self.build_inputs_embeds(input_ids, pixel_values)
        return self.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kw,
        )


def _cache_kwarg_name(forward: Any) -> str:
    """transformers renamed `past_key_values` to `cache` in 5.2x (the old name is deprecated)."""
    params = inspect.signature(forward).parameters
    return "cache" if "cache" in params else "past_key_values"
