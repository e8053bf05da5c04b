"""InternViT vision encoder (InternViT-300M-448px in the release), spec §2 steps 1-5.

Module and parameter names reproduce the official state-dict keys under `vision_model.`:
`embeddings.{class_embedding, patch_embedding, position_embedding}` and
`encoder.layers.N.{attn.qkv, attn.proj, attn.q_norm, attn.k_norm, mlp.fc1, mlp.fc2, norm1, norm2, ls1, ls2}`.
There is no final norm.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers.activations import ACT2FN

from internvlu.vlm.configuration import InternVisionConfig

_FLASH_ATTN_AVAILABLE = importlib.util.find_spec("flash_attn") is not None

VIT_ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


class InternRMSNorm(nn.Module):
    """RMSNorm computed in fp32 (weight only), as used by InternViT-6B and for qk-normalisation."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        input_dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(input_dtype)


def _make_norm(config: InternVisionConfig) -> nn.Module:
    if config.norm_type == "layer_norm":
        return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
    return InternRMSNorm(config.hidden_size, eps=config.layer_norm_eps)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at inference); a few lines instead of a timm dependency."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class InternVisionEmbeddings(nn.Module):
    """Patch conv + CLS token + (interpolated) absolute position embedding."""

    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.patch_size = config.patch_size
        self.grid_size = config.grid_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, self.embed_dim))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size
        )
        self.num_positions = self.grid_size**2 + 1
        self.position_embedding = nn.Parameter(torch.randn(1, self.num_positions, self.embed_dim))

    def _grid_position_embedding(self, height: int, width: int, dtype: torch.dtype) -> Tensor:
        """Grid part of the table resized to (height, width) patches: [1, height*width, D]."""
        grid = self.position_embedding[:, 1:]  # [1, g*g, D]
        if (height, width) == (self.grid_size, self.grid_size):
            # Bicubic resize to the same size is an exact identity; skip the work.
            return grid.to(dtype)
        # The reference resizes in fp32 whatever the model dtype.
        grid = rearrange(grid.float(), "1 (h w) d -> 1 d h w", h=self.grid_size, w=self.grid_size)
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return rearrange(grid, "1 d h w -> 1 (h w) d").to(dtype)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """[N, C, H, W] -> [N, 1 + (H/p)*(W/p), D]."""
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(dtype))  # [N, D, h, w]
        n, _, h, w = patches.shape
        patches = rearrange(patches, "n d h w -> n (h w) d")  # row-major: h outer, w inner
        cls = self.class_embedding.to(dtype).expand(n, 1, -1)  # [N, 1, D]
        x = torch.cat([cls, patches], dim=1)  # [N, 1 + h*w, D]
        pos = torch.cat(
            [self.position_embedding[:, :1].to(dtype), self._grid_position_embedding(h, w, dtype)], dim=1
        )  # [1, 1 + h*w, D]
        return x + pos.to(dtype)


class InternAttention(nn.Module):
    """Non-causal multi-head self-attention with a fused qkv projection and optional qk RMSNorm."""

    def __init__(self, config: InternVisionConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        if attn_implementation not in VIT_ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"unknown ViT attn_implementation {attn_implementation!r}; "
                f"expected one of {VIT_ATTN_IMPLEMENTATIONS}"
            )
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        self.attn_implementation = attn_implementation
        # The reference uses flash-attn only when the config asks for it AND it is installed.
        self.use_flash_attn = (
            config.use_flash_attn and _FLASH_ATTN_AVAILABLE and attn_implementation != "eager"
        )
        self.attention_dropout = config.attention_dropout
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=config.qkv_bias)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            # Over the full width (all heads flattened), as in the reference.
            self.q_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
            self.k_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.proj_drop = nn.Dropout(config.dropout)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q, k, v: [B, H, N, d] -> [B, H, N, d]."""
        dropout_p = self.attention_dropout if self.training else 0.0
        flash_ok = self.use_flash_attn and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
        if flash_ok:
            from flash_attn import flash_attn_func

            out = flash_attn_func(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                dropout_p=dropout_p,
                softmax_scale=self.scale,
                causal=False,
            )  # [B, N, H, d]
            return out.transpose(1, 2)
        if self.attn_implementation == "eager":
            # The reference's non-flash path: matmul + softmax in the model dtype (no fp32 upcast).
            attn = (q * self.scale) @ k.transpose(-2, -1)  # [B, H, N, N]
            attn = F.dropout(attn.softmax(dim=-1), p=dropout_p, training=self.training)
            return attn @ v
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=False, scale=self.scale)

    def forward(self, x: Tensor) -> Tensor:
        """[B, N, D] -> [B, N, D]."""
        qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        q, k, v = qkv.unbind(0)  # each [B, H, N, d]
        if self.qk_normalization:
            q = rearrange(
                self.q_norm(rearrange(q, "b h n d -> b n (h d)")), "b n (h d) -> b h n d", h=self.num_heads
            )
            k = rearrange(
                self.k_norm(rearrange(k, "b h n d -> b n (h d)")), "b n (h d) -> b h n d", h=self.num_heads
            )
        out = rearrange(self._attend(q, k, v), "b h n d -> b n (h d)")  # [B, N, D]
        return self.proj_drop(self.proj(out))


class InternMLP(nn.Module):
    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.act = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class InternVisionEncoderLayer(nn.Module):
    """Pre-norm block with layer scale: x += ls1*Attn(norm1(x)); x += ls2*MLP(norm2(x))."""

    def __init__(self, config: InternVisionConfig, drop_path_rate: float, attn_implementation: str) -> None:
        super().__init__()
        self.attn = InternAttention(config, attn_implementation)
        self.mlp = InternMLP(config)
        self.norm1 = _make_norm(config)
        self.norm2 = _make_norm(config)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))
        self.drop_path1 = DropPath(drop_path_rate)
        self.drop_path2 = DropPath(drop_path_rate)

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        # The .to(dtype) matters for the fp32 RMSNorm path under a half-precision model.
        x = x + self.drop_path1(self.attn(self.norm1(x).to(dtype)) * self.ls1)
        x = x + self.drop_path2(self.mlp(self.norm2(x).to(dtype)) * self.ls2)
        return x


class InternVisionEncoder(nn.Module):
    def __init__(self, config: InternVisionConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        n = config.num_hidden_layers
        # Linear stochastic-depth ramp (torch.linspace(0, rate, n)), in Python so meta-device init works.
        rates = [config.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self.layers = nn.ModuleList(
            [InternVisionEncoderLayer(config, rates[i], attn_implementation) for i in range(n)]
        )
        self.gradient_checkpointing = False

    def forward(
        self, x: Tensor, output_hidden_states: bool = False
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """[N, T, D] -> (last [N, T, D], (embeddings, layer 1 out, ..., layer L out) or None)."""
        states: list[Tensor] = [x] if output_hidden_states else []
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
            if output_hidden_states:
                states.append(x)
        return x, (tuple(states) if output_hidden_states else None)


@dataclass
class InternVisionOutput:
    last_hidden_state: Tensor  # [N, 1 + patches, D]
    hidden_states: tuple[Tensor, ...] | None  # len L+1; [0] = embeddings


class InternVisionModel(nn.Module):
    """InternViT: embeddings + encoder, no final norm. Input is the normalised image [N, 3, H, W]."""

    def __init__(self, config: InternVisionConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.embeddings = InternVisionEmbeddings(config)
        self.encoder = InternVisionEncoder(config, attn_implementation)

    def forward(self, pixel_values: Tensor, output_hidden_states: bool = False) -> InternVisionOutput:
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be [N, C, H, W], got shape {tuple(pixel_values.shape)}")
        x = self.embeddings(pixel_values)  # [N, 1 + h*w, D]
        last, states = self.encoder(x, output_hidden_states=output_hidden_states)
        return InternVisionOutput(last_hidden_state=last, hidden_states=states)


def pixel_shuffle_v2(x: Tensor, factor: int) -> Tensor:
    """Merge factor x factor neighbouring patch tokens into one token (spec §2 step 6).

    x: [N, h, w, C] -> [N, (h/f)*(w/f), f*f*C]. Output token (i, j), row-major over the reduced grid,
    holds input patches (f*i + dh, f*j + dw) concatenated with dh outer, dw middle, c inner.
    """
    _, h, w, _ = x.shape
    if h % factor or w % factor:
        raise ValueError(f"patch grid {h}x{w} is not divisible by the pixel-shuffle factor {factor}")
    return rearrange(x, "n (i dh) (j dw) c -> n (i j) (dh dw c)", dh=factor, dw=factor)
