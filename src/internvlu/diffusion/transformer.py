"""The MMDiT generation head of InternVL-U (`InternVLUTransformer2DModel`, spec §5.3-5.8).

One forward call handles K samples (generation slots, i.e. 3 CFG rows per prompt). Each sample becomes one
segment of a single packed sequence:

    [generated latent tokens (N_g) | reference latent tokens (sum N_c) | context tokens (T_k)]

Every block is "dual-stream": it holds an image-stream parameter set (`img_*`, `to_q/k/v`, `to_out.0`,
`norm_q/k`), used by generated and reference tokens, and a context-stream set (`txt_*`, `add_*_proj`,
`to_add_out`, `norm_added_q/k`), used by context tokens; all tokens of a segment attend to each other
(bidirectional), never across segments. Modulation is timestep-only adaLN; attention is gated (sigmoid gate
from a doubled query projection, applied after the output projection) with per-head RMS qk-norm and 3-D RoPE.

Module names reproduce the official state-dict keys (`decoder.` prefix stripped).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from internvlu.diffusion.configuration import InternVLUTransformerConfig
from internvlu.diffusion.rope import apply_rope, build_position_ids_3d, rope_cos_sin

try:  # optional CUDA kernel; everything works without it
    from flash_attn import flash_attn_varlen_func as _flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the environment
    _flash_attn_varlen_func = None

NORM_EPS = 1e-6


# ------------------------------------------------------------------------------------------------------------
# Small layers
# ------------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm with diffusers semantics: variance in fp32; with a half-precision weight the normalised value
    is cast to the weight dtype before the multiply."""

    def __init__(self, dim: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return x * self.weight


def layer_norm_fp32(x: Tensor) -> Tensor:
    """Affine-free LayerNorm (eps 1e-6) computed in fp32 and cast back (diffusers `FP32LayerNorm`)."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=NORM_EPS).to(x.dtype)


# Frequencies of the 256-channel timestep sinusoid: exp(-ln(10000) * i / 128), i = 0..127, in fp32. The
# angle is t * 1000 * f_i with t up to 1000, i.e. up to ~1e6 rad, where one fp32 ulp of f_i moves the angle
# by up to 0.06 rad. torch.exp is only faithfully rounded and differs by an ulp between torch builds, so we
# fix the table: correctly rounded values, except i=12, whose exact value lies within 0.01 ulp of a rounding
# midpoint and which the reference platform (torch 2.6 CPU, where the parity goldens come from) rounds up.
# Verified against the goldens: this table reproduces the reference velocities to ~5e-6; the torch.exp of
# torch 2.13 misses by ~5e-3.
_SINUSOID_CHANNELS = 256
_SINUSOID_ROUNDED_UP = {12: 0.4216965138912201}  # 0x3ED7E89B


def _sinusoid_frequencies() -> Tensor:
    half = _SINUSOID_CHANNELS // 2
    # Same fp32 ops as diffusers' get_timestep_embedding.
    exponent = (-math.log(10000) * torch.arange(half, dtype=torch.float32)) / half
    freqs = torch.exp(exponent.double()).float()  # correctly rounded
    for i, value in _SINUSOID_ROUNDED_UP.items():
        freqs[i] = value
    return freqs


_SINUSOID_FREQS = _sinusoid_frequencies()  # CPU constant, moved to the timestep's device on use


def timestep_sinusoid(timestep: Tensor, scale: float = 1000.0) -> Tensor:
    """diffusers `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0, scale=1000)`:
    [K] -> [K, 256] fp32, [cos | sin] of (t * f_i) * scale."""
    freqs = _SINUSOID_FREQS.to(timestep.device)
    angles = scale * (timestep[:, None].float() * freqs[None, :])  # [K, 128]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear (diffusers `TimestepEmbedding` names `linear_1`, `linear_2`)."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class TimestepProjEmbeddings(nn.Module):
    """Sinusoidal timestep features (256 channels, cos first, angle = t * 1000 * f_i) -> MLP (diffusers
    `QwenTimestepProjEmbeddings`; keys `timestep_embedder.linear_1/2`)."""

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(_SINUSOID_CHANNELS, embedding_dim)

    def forward(self, timestep: Tensor, dtype: torch.dtype) -> Tensor:
        return self.timestep_embedder(timestep_sinusoid(timestep).to(dtype))  # [K, D]


class GELUProjection(nn.Module):
    """Linear followed by tanh-approximated GELU (diffusers `GELU(approximate="tanh")`, key `proj`)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """D -> 4D -> D MLP in the diffusers `FeedForward` layout (`net.0.proj`, `net.2`; net.1 is a dropout)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.ModuleList(
            [GELUProjection(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)]
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x


# ------------------------------------------------------------------------------------------------------------
# Packing
# ------------------------------------------------------------------------------------------------------------


def patchify(latent: Tensor, p: int) -> Tensor:
    """[C, H, W] -> [(H/p)(W/p), C*p*p] tokens, row-major; features channel-major, then ph, then pw."""
    return rearrange(latent, "c (h ph) (w pw) -> (h w) (c ph pw)", ph=p, pw=p)


def unpatchify(tokens: Tensor, height: int, width: int, p: int) -> Tensor:
    """[(H/p)(W/p), C*p*p] -> [C, H, W] (inverse of `patchify`)."""
    return rearrange(tokens, "(h w) (c ph pw) -> c (h ph) (w pw)", h=height // p, w=width // p, ph=p, pw=p)


@dataclasses.dataclass
class PackLayout:
    """Where each token of the packed sequence comes from. All masks/ids are [N] over the packed sequence."""

    seqlens: list[int]  # tokens per sample
    num_gen_tokens: list[int]  # generated-image tokens per sample (they open each segment)
    cu_seqlens: Tensor  # [K+1] int64 segment boundaries
    sample_ids: Tensor  # [N] int64 sample of each token
    enc_token_mask: Tensor  # [N] bool, True on context tokens (context-stream weights)
    cond_token_mask: Tensor  # [N] bool, True on reference and context tokens (outputs discarded)

    @property
    def img_index(self) -> Tensor:
        return torch.nonzero(~self.enc_token_mask).flatten()

    @property
    def txt_index(self) -> Tensor:
        return torch.nonzero(self.enc_token_mask).flatten()


def build_pack_layout(
    num_gen_tokens: Sequence[int],
    num_ref_tokens: Sequence[int],
    num_context_tokens: Sequence[int],
    device: torch.device | None = None,
) -> PackLayout:
    """Layout of the packed sequence: sample k is [gen_k | refs_k | context_k]."""
    if not (len(num_gen_tokens) == len(num_ref_tokens) == len(num_context_tokens)):
        raise ValueError(
            f"token counts must have one entry per sample, got {len(num_gen_tokens)}, {len(num_ref_tokens)}, "
            f"{len(num_context_tokens)}"
        )
    counts = list(zip(num_gen_tokens, num_ref_tokens, num_context_tokens))
    seqlens = [sum(c) for c in counts]
    # Token kind, sample after sample: 0 generated, 1 reference, 2 context.
    kind = torch.repeat_interleave(
        torch.arange(3).repeat(len(counts)), torch.tensor(counts, dtype=torch.int64).reshape(-1)
    ).to(device)
    cu = torch.zeros(len(seqlens) + 1, dtype=torch.int64)
    cu[1:] = torch.cumsum(torch.tensor(seqlens, dtype=torch.int64), dim=0)
    return PackLayout(
        seqlens=seqlens,
        num_gen_tokens=list(num_gen_tokens),
        cu_seqlens=cu.to(device),
        sample_ids=torch.repeat_interleave(
            torch.arange(len(seqlens)), torch.tensor(seqlens, dtype=torch.int64)
        ).to(device),
        enc_token_mask=kind == 2,
        cond_token_mask=kind != 0,
    )


@dataclasses.dataclass
class PackedInputs:
    """Everything the blocks need: the packed tokens after `img_in`/`txt_in`, positions and rotary tables."""

    hidden_states: Tensor  # [N, D]
    layout: PackLayout
    position_ids: Tensor  # [N, 3] float32
    rope_cos: Tensor  # [N, head_dim/2] float32
    rope_sin: Tensor  # [N, head_dim/2] float32
    gen_grids: list[tuple[int, int]]  # (H_g, W_g) latent-pixel size of each generated image


# ------------------------------------------------------------------------------------------------------------
# Attention
# ------------------------------------------------------------------------------------------------------------


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, seqlens: Sequence[int], cu_seqlens: Tensor) -> Tensor:
    """Bidirectional attention within each segment of a packed sequence; [N, H, d] -> [N, H, d].

    flash-attn's varlen kernel when installed and the tensors are half precision on CUDA; otherwise PyTorch
    SDPA per segment in the tensors' own dtype (the reference forces bf16 only inside its flash path)."""
    if _flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
        max_len = max(seqlens)
        return _flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len, causal=False)
    outputs = []
    start = 0
    for length in seqlens:
        end = start + length
        seg = [rearrange(t[start:end], "l h d -> 1 h l d") for t in (q, k, v)]
        out = F.scaled_dot_product_attention(*seg)  # [1, H, L, d], scale 1/sqrt(d)
        outputs.append(rearrange(out, "1 h l d -> l h d"))
        start = end
    return torch.cat(outputs, dim=0)


class _Streams:
    """Routes tokens to the image-stream or context-stream weights by index (exact per-token selection)."""

    def __init__(self, layout: PackLayout) -> None:
        self.img = layout.img_index
        self.txt = layout.txt_index
        self.num_tokens = layout.enc_token_mask.shape[0]

    def merge(self, img: Tensor, txt: Tensor) -> Tensor:
        out = img.new_empty((self.num_tokens, *img.shape[1:]))
        out[self.img] = img
        out[self.txt] = txt.to(img.dtype)
        return out

    def apply(
        self, x: Tensor, img_fn: Callable[[Tensor], Tensor], txt_fn: Callable[[Tensor], Tensor]
    ) -> Tensor:
        return self.merge(img_fn(x[self.img]), txt_fn(x[self.txt]))


@dataclasses.dataclass
class _BlockContext:
    streams: _Streams
    mod_index: Tensor  # [N] row of cat([img_mod, txt_mod]) (2K rows) that modulates each token
    seqlens: list[int]
    cu_seqlens: Tensor
    rope_cos: Tensor
    rope_sin: Tensor


class GatedJointAttention(nn.Module):
    """Joint attention over the packed sequence with per-stream projections.

    The query projections are 2x wide: per head h, rows [2hd, 2hd + d) are the query and [2hd + d, 2(h+1)d)
    the gate. q/k get RMSNorm over the head dim, then RoPE; the output goes through the stream's output
    projection and is then multiplied by sigmoid(gate) (the gate acts after the output projection)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        # Image stream (generated + reference tokens).
        self.to_q = nn.Linear(dim, 2 * inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.norm_q = RMSNorm(head_dim)
        self.norm_k = RMSNorm(head_dim)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])
        # Context stream.
        self.add_q_proj = nn.Linear(dim, 2 * inner)
        self.add_k_proj = nn.Linear(dim, inner)
        self.add_v_proj = nn.Linear(dim, inner)
        self.norm_added_q = RMSNorm(head_dim)
        self.norm_added_k = RMSNorm(head_dim)
        self.to_add_out = nn.Linear(inner, dim)

    def _qkv(
        self, x: Tensor, to_q: nn.Linear, to_k: nn.Linear, to_v: nn.Linear, norm_q: RMSNorm, norm_k: RMSNorm
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        qg = rearrange(to_q(x), "n (h two d) -> n h two d", h=self.heads, two=2)  # per head: query | gate
        q = norm_q(qg[:, :, 0])  # [n, H, d]
        gate = rearrange(qg[:, :, 1], "n h d -> n (h d)")  # [n, H*d]
        k = norm_k(rearrange(to_k(x), "n (h d) -> n h d", h=self.heads))
        v = rearrange(to_v(x), "n (h d) -> n h d", h=self.heads)
        return q, k, v, gate

    def forward(self, x: Tensor, ctx: _BlockContext) -> Tensor:
        """[N, D] modulated tokens -> [N, D] gated attention output."""
        s = ctx.streams
        dtype = x.dtype
        q_i, k_i, v_i, gate_i = self._qkv(x[s.img], self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k)
        q_t, k_t, v_t, gate_t = self._qkv(
            x[s.txt], self.add_q_proj, self.add_k_proj, self.add_v_proj, self.norm_added_q, self.norm_added_k
        )
        q = apply_rope(s.merge(q_i, q_t).to(dtype), ctx.rope_cos, ctx.rope_sin)  # [N, H, d]
        k = apply_rope(s.merge(k_i, k_t).to(dtype), ctx.rope_cos, ctx.rope_sin)
        v = s.merge(v_i, v_t).to(dtype)
        o = varlen_attention(q, k, v, ctx.seqlens, ctx.cu_seqlens)
        o = rearrange(o, "n h d -> n (h d)")  # [N, H*d]
        out_i = self.to_out[1](self.to_out[0](o[s.img])) * torch.sigmoid(gate_i)
        out_t = self.to_add_out(o[s.txt]) * torch.sigmoid(gate_t)
        return s.merge(out_i, out_t)


# ------------------------------------------------------------------------------------------------------------
# Block and model
# ------------------------------------------------------------------------------------------------------------


class InternVLUTransformerBlock(nn.Module):
    """Dual-stream MMDiT block over the packed sequence: timestep-only adaLN, gated joint attention, GELU
    FFN."""

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.attn = GatedJointAttention(dim, num_heads, head_dim)
        self.img_mlp = FeedForward(dim)
        self.txt_mlp = FeedForward(dim)

    def forward(self, x: Tensor, temb: Tensor, ctx: _BlockContext) -> Tensor:
        """x [N, D], temb [K, D] -> [N, D]."""
        # Each token takes its sample's modulation from its own stream: rows 0..K-1 image, K..2K-1 context.
        mod = torch.cat([self.img_mod(temb), self.txt_mod(temb)], dim=0)[ctx.mod_index]  # [N, 6D]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        h = layer_norm_fp32(x) * (1 + scale1) + shift1
        x = x + gate1 * self.attn(h, ctx)
        h = layer_norm_fp32(x) * (1 + scale2) + shift2
        x = x + gate2 * ctx.streams.apply(h, self.img_mlp, self.txt_mlp)
        if x.dtype == torch.float16:
            x = x.clip(-65504, 65504)
        return x


class AdaLayerNormContinuous(nn.Module):
    """Output norm: Linear(SiLU(temb)) -> (scale, shift) (scale first), applied in fp32 to an affine-free
    LayerNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: Tensor, temb: Tensor, tokens_per_sample: Sequence[int]) -> Tensor:
        """x [N_gen, D] (samples concatenated), temb [K, D] -> [N_gen, D]."""
        emb = self.linear(self.silu(temb).to(x.dtype)).float()  # [K, 2D]
        emb = torch.repeat_interleave(emb, torch.tensor(list(tokens_per_sample), device=emb.device), dim=0)
        scale, shift = emb.chunk(2, dim=-1)
        xf = x.float()
        return (F.layer_norm(xf, (xf.shape[-1],), eps=NORM_EPS) * (1 + scale) + shift).to(x.dtype)


class InternVLUTransformer2DModel(nn.Module):
    """The MMDiT head. See the module docstring for the token layout."""

    def __init__(self, config: InternVLUTransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, InternVLUTransformerConfig):
            raise TypeError(f"config must be an InternVLUTransformerConfig, got {type(config).__name__}")
        self.config = config
        dim = config.inner_dim
        self.time_text_embed = TimestepProjEmbeddings(dim)
        self.txt_norm = RMSNorm(config.joint_attention_dim)
        self.img_in = nn.Linear(config.in_channels, dim)
        self.txt_in = nn.Linear(config.joint_attention_dim, dim)
        self.transformer_blocks = nn.ModuleList(
            [
                InternVLUTransformerBlock(dim, config.num_attention_heads, config.attention_head_dim)
                for _ in range(config.num_layers)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(dim)
        self.proj_out = nn.Linear(dim, config.patch_size**2 * config.latent_channels)

    @classmethod
    def from_config(cls, config: InternVLUTransformerConfig | dict) -> InternVLUTransformer2DModel:
        if isinstance(config, dict):
            config = InternVLUTransformerConfig.from_dict(config)
        return cls(config)

    def init_non_persistent_buffers(self) -> None:
        """Nothing to do: rotary tables are computed from positions in every call and the timestep
        frequencies are a module-level constant, so a model built on the meta device is complete after
        `load_state_dict(..., assign=True)`."""

    def initialize_weights(self, adaln_zero: bool = False) -> None:
        """Training init of the reference: Xavier-uniform Linear weights, zero biases, unit norm weights.

        `adaln_zero`: then zero the blocks' modulation Linears, the output norm's and the output projection (DiT's
        adaLN-Zero): each block starts as the identity and the head's first prediction is 0. The Xavier draws
        happen either way, so both inits consume the same random numbers."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        if adaln_zero:
            zeroed = [self.norm_out.linear, self.proj_out]
            for block in self.transformer_blocks:
                zeroed += [block.img_mod[1], block.txt_mod[1]]
            for linear in zeroed:
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)

    # -- inputs ----------------------------------------------------------------------------------------------

    def _validate(
        self,
        latents: Tensor,
        timestep: Tensor,
        context: Sequence[Tensor],
        context_image_mask: Sequence[Tensor],
        image_grid_thw_gen: Tensor,
        image_fhw_cond: Sequence[Tensor],
        cond_latents: Sequence[Sequence[Tensor]] | None,
    ) -> None:
        cfg = self.config
        p = cfg.patch_size
        if latents.ndim != 4:
            raise ValueError(f"latents must be [K, C, H, W], got shape {tuple(latents.shape)}")
        num, channels, height, width = latents.shape
        if channels != cfg.latent_channels:
            raise ValueError(
                f"latents have {channels} channels but the model expects out_channels={cfg.latent_channels}"
            )
        if timestep.shape != (num,):
            raise ValueError(f"timestep must have shape [K]=[{num}], got {tuple(timestep.shape)}")
        for name, value in (
            ("encoder_hidden_states", context),
            ("encoder_image_token_mask", context_image_mask),
            ("image_fhw_cond", image_fhw_cond),
        ):
            if len(value) != num:
                raise ValueError(f"{name} must have one entry per sample (K={num}), got {len(value)}")
        if cond_latents is not None and len(cond_latents) != num:
            raise ValueError(f"cond_latents must have one list per sample (K={num}), got {len(cond_latents)}")
        if tuple(image_grid_thw_gen.shape) != (num, 3):
            raise ValueError(
                f"image_grid_thw_gen must be [K, 3]=[{num}, 3], got {tuple(image_grid_thw_gen.shape)}"
            )
        for k, (t, h, w) in enumerate(image_grid_thw_gen.tolist()):
            if t != 1:
                raise ValueError(f"image_grid_thw_gen[{k}] has t={t}; only single images (t=1) are supported")
            if h <= 0 or w <= 0 or h % p or w % p:
                raise ValueError(
                    f"image_grid_thw_gen[{k}]=({t}, {h}, {w}): H and W must be positive multiples of {p}"
                )
            if h > height or w > width:
                raise ValueError(
                    f"image_grid_thw_gen[{k}]=({t}, {h}, {w}) is larger than the latents ({height}x{width})"
                )
        for k, (hid, mask) in enumerate(zip(context, context_image_mask)):
            if hid.ndim != 2 or hid.shape[1] != cfg.joint_attention_dim:
                raise ValueError(
                    f"encoder_hidden_states[{k}] must be [T, {cfg.joint_attention_dim}], "
                    f"got {tuple(hid.shape)}"
                )
            if mask.shape != (hid.shape[0],):
                raise ValueError(
                    f"encoder_image_token_mask[{k}] must be [T]=[{hid.shape[0]}], got {tuple(mask.shape)}"
                )
        for k, grids in enumerate(image_fhw_cond):
            if grids.numel() and (grids.ndim != 2 or grids.shape[1] != 3):
                raise ValueError(f"image_fhw_cond[{k}] must be [m, 3], got {tuple(grids.shape)}")
        if cond_latents is not None:
            for k, refs in enumerate(cond_latents):
                for j, ref in enumerate(refs):
                    if (
                        ref.ndim != 3
                        or ref.shape[0] != cfg.latent_channels
                        or ref.shape[1] % p
                        or ref.shape[2] % p
                    ):
                        raise ValueError(
                            f"cond_latents[{k}][{j}] must be [{cfg.latent_channels}, h, w] with h, w "
                            f"multiples of {p}, got {tuple(ref.shape)}"
                        )
            num_refs = max(len(refs) for refs in cond_latents) if cond_latents else 0
            if num_refs > 0:
                # Reference frames 1..n must stay inside the position range of the generated grid (§5.4
                # assertion, with the smallest generated grid of the batch).
                min_side = int(min(min(h, w) for _, h, w in image_grid_thw_gen.tolist())) // p
                limit = int(min_side // 2 / cfg.video_position_scale_factor)
                if num_refs >= limit:
                    raise ValueError(
                        f"{num_refs} reference image(s) per sample is too many for a generated grid of "
                        f"{min_side} tokens per side: the number of references must be < {limit}"
                    )

    def pack(
        self,
        latents: Tensor,
        encoder_hidden_states: Sequence[Tensor],
        encoder_image_token_mask: Sequence[Tensor],
        image_grid_thw_gen: Tensor,
        image_fhw_cond: Sequence[Tensor],
        cond_latents: Sequence[Sequence[Tensor]] | None = None,
    ) -> PackedInputs:
        """Build the packed sequence [gen | refs | context] per sample, embedded with `img_in` /
        `txt_norm`+`txt_in`, with its layout, 3-D positions and rotary tables (inputs already validated and in
        the model dtype)."""
        cfg = self.config
        p = cfg.patch_size
        device = latents.device
        gen_grids = [(int(h), int(w)) for _, h, w in image_grid_thw_gen.tolist()]
        refs = [list(r) for r in cond_latents] if cond_latents is not None else [[] for _ in gen_grids]

        image_tokens, num_gen, num_ref, positions = [], [], [], []
        for k, (h, w) in enumerate(gen_grids):
            gen = patchify(latents[k, :, :h, :w], p)  # [(h/p)(w/p), C p p]
            ref_tok = [patchify(r, p) for r in refs[k]]
            image_tokens += [gen, *ref_tok]
            num_gen.append(gen.shape[0])
            num_ref.append(sum(t.shape[0] for t in ref_tok))
            vit = image_fhw_cond[k]
            vit_grids = (
                [tuple(int(v) for v in row) for row in vit.reshape(-1, 3).tolist()] if vit.numel() else []
            )
            positions.append(
                build_position_ids_3d(
                    (1, h // p, w // p),
                    [(1, r.shape[1] // p, r.shape[2] // p) for r in refs[k]],
                    encoder_image_token_mask[k].to(device),
                    vit_grids,  # type: ignore[arg-type]
                    video_scale=cfg.video_position_scale_factor,
                    vlm_cond_scale=cfg.vlm_cond_position_scale_factor,
                )
            )
        num_ctx = [c.shape[0] for c in encoder_hidden_states]
        img = self.img_in(torch.cat(image_tokens, dim=0))  # [sum(N_g + N_c), D]
        txt = self.txt_in(self.txt_norm(torch.cat(list(encoder_hidden_states), dim=0)))  # [sum T_k, D]
        img_parts = img.split([g + r for g, r in zip(num_gen, num_ref)])
        txt_parts = txt.split(num_ctx)
        hidden = torch.cat([part for pair in zip(img_parts, txt_parts) for part in pair], dim=0)  # [N, D]

        position_ids = torch.cat(positions, dim=0)  # [N, 3]
        cos, sin = rope_cos_sin(position_ids, cfg.axes_dims_rope)
        return PackedInputs(
            hidden_states=hidden,
            layout=build_pack_layout(num_gen, num_ref, num_ctx, device),
            position_ids=position_ids,
            rope_cos=cos,
            rope_sin=sin,
            gen_grids=gen_grids,
        )

    # -- forward ---------------------------------------------------------------------------------------------

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
        """Predict the flow velocity of K noisy latents.

        Args:
            latents: [K, C, H_l, W_l] noisy latents; sample k uses its top-left `image_grid_thw_gen[k]`
                region.
            timestep: [K] scheduler timesteps on the 0..1000 scale (rounded to the model dtype, as the
                reference does).
            encoder_hidden_states: K tensors [T_k, joint_attention_dim] (projected VLM conditioning).
            encoder_image_token_mask: K bool [T_k], True at `<IMG_CONTEXT>` tokens.
            image_grid_thw_gen: [K, 3] (1, H_g, W_g) latent-pixel size of each generated image.
            image_fhw_cond: K long [m_k, 3] ViT token grids of the images in each context (empty if none).
            cond_latents: per sample, a list of normalised reference latents [C, h, w] (cropped to their
                grid).

        Returns:
            [K, C, H_l, W_l] velocity in the model dtype, zero outside each sample's grid.
        """
        self._validate(
            latents,
            timestep,
            encoder_hidden_states,
            encoder_image_token_mask,
            image_grid_thw_gen,
            image_fhw_cond,
            cond_latents,
        )
        # Everything runs in the parameter dtype (the reference pipeline casts its fp32 latents the same way).
        dtype = self.img_in.weight.dtype
        latents = latents.to(dtype)
        encoder_hidden_states = [h.to(dtype) for h in encoder_hidden_states]
        if cond_latents is not None:
            cond_latents = [[r.to(dtype) for r in refs] for refs in cond_latents]
        p = self.config.patch_size
        # The reference rounds the integer timestep to the model dtype before the sinusoid (bf16: 999 ->
        # 1000), then multiplies by `timestep_scale` (1.0 in the release). The sinusoid's angle is t * 1000 * f_i,
        # so at scale 1 even its slowest channel turns ~17 times over t in [0, 1000]: every integer timestep gets
        # an unrelated code that a large model memorises. A small model learns far faster from the smooth
        # standard-DiT code, which scale 0.001 gives (angle t * f_i); the embedded model uses it.
        t = timestep.to(dtype).float() * self.config.timestep_scale  # exact at scale 1: the sinusoid works in fp32
        temb = self.time_text_embed(t, dtype)  # [K, D]
        packed = self.pack(
            latents,
            encoder_hidden_states,
            encoder_image_token_mask,
            image_grid_thw_gen,
            image_fhw_cond,
            cond_latents,
        )
        layout = packed.layout
        num = latents.shape[0]
        ctx = _BlockContext(
            streams=_Streams(layout),
            mod_index=layout.sample_ids + num * layout.enc_token_mask.long(),
            seqlens=layout.seqlens,
            cu_seqlens=layout.cu_seqlens,
            rope_cos=packed.rope_cos,
            rope_sin=packed.rope_sin,
        )
        x = packed.hidden_states
        for block in self.transformer_blocks:
            x = block(x, temb, ctx)

        x = x[~layout.cond_token_mask]  # [sum N_g, D] generated tokens, sample after sample
        x = self.norm_out(x, temb, layout.num_gen_tokens)
        out = self.proj_out(x)  # [sum N_g, p*p*C]
        velocity = latents.new_zeros(latents.shape)
        for k, (part, (h, w)) in enumerate(zip(out.split(layout.num_gen_tokens), packed.gen_grids)):
            velocity[k, :, :h, :w] = unpatchify(part, h, w, p)
        return velocity
