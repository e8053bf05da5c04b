"""Weight-only quantisation of the LLM and the MMDiT blocks through torchao (`pip install internvlu[quant]`).

Only the large matrices are quantised: the `nn.Linear` layers of the LLM (its decoder layers and the
LM head, unless it is tied to the token embeddings) and of the MMDiT transformer blocks. The ViT, the projector, the MMDiT's input/output
projections, the embeddings, the norms and the VAE keep their dtype: they are small and sit at the
model's interfaces, where rounding errors cost the most. Activations stay in the model dtype
(weight-only), so the output changes only through the rounded weights.

Modes:
- "int8_weight_only": per-output-channel symmetric int8 (torchao `Int8WeightOnlyConfig`): weights
  take 1 byte instead of 2 (bf16) or 4 (fp32).
- "fp8_weight_only": float8 e4m3 with per-channel scales (torchao `Float8WeightOnlyConfig`), 1 byte.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

QUANT_MODES = ("int8_weight_only", "fp8_weight_only")
QUANT_COMPONENTS = ("vlm", "generation_decoder")


def tensor_nbytes(tensor: torch.Tensor) -> int:
    """Storage bytes of a tensor, looking inside tensor subclasses (quantized data + scales)."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_nbytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def module_nbytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of `module` (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor_nbytes(tensor)
    return total


def _torchao_config(mode: str) -> Any:
    try:
        import torchao.quantization as tq
    except ImportError as exc:
        raise ImportError(
            f"quantize({mode!r}) needs torchao: pip install 'internvlu[quant]' (or pip install torchao)"
        ) from exc
    if mode == "int8_weight_only":
        return tq.Int8WeightOnlyConfig()
    return tq.Float8WeightOnlyConfig()


def _linear_filter(module: nn.Module, prefixes: Iterable[str]) -> Callable[[nn.Module, str], bool]:
    """Select the nn.Linear layers under `prefixes`, except those whose weight is shared with another
    module (a tied LM head: quantizing it would keep the full-precision table for the embedding and
    add an int8 copy, costing memory instead of saving it)."""
    prefixes = tuple(prefixes)
    uses: dict[int, int] = {}
    for _, param in module.named_parameters(remove_duplicate=False):
        uses[id(param)] = uses.get(id(param), 0) + 1

    def keep(layer: nn.Module, name: str) -> bool:
        return (
            isinstance(layer, nn.Linear) and name.startswith(prefixes) and uses.get(id(layer.weight), 0) == 1
        )

    return keep


# Which submodules of each component are quantised (name prefixes inside the component).
TARGETS: dict[str, tuple[str, ...]] = {
    "vlm": ("language_model.model.layers.", "language_model.lm_head"),
    "generation_decoder": ("decoder.transformer_blocks.",),
}


def check_fp8_supported(device: torch.device, dtype: torch.dtype) -> None:
    """Raise RuntimeError when fp8 weight-only layers cannot run on this device/dtype."""
    import copy

    probe = nn.Linear(32, 32).to(device=device, dtype=dtype)
    quantized = copy.deepcopy(probe)
    try:
        from torchao.quantization import quantize_

        quantize_(quantized, _torchao_config("fp8_weight_only"))
        with torch.no_grad():
            out = quantized(torch.randn(2, 32, device=device, dtype=dtype))
        if not torch.isfinite(out).all():
            raise RuntimeError("non-finite output")
    except ImportError:
        raise
    except Exception as exc:  # torchao raises many kinds of errors on unsupported platforms
        raise RuntimeError(
            f"fp8 weight-only quantization is not supported with {dtype} on {device.type}: {exc}"
        ) from exc


@dataclass
class QuantReport:
    """What `quantize` did: bytes of each component's weights before and after, layers converted."""

    mode: str
    bytes_before: dict[str, int]
    bytes_after: dict[str, int]
    layers: dict[str, int]

    @property
    def saved_bytes(self) -> int:
        return sum(self.bytes_before.values()) - sum(self.bytes_after.values())


def quantize_modules(
    components: dict[str, nn.Module], mode: str, device: torch.device, dtype: torch.dtype
) -> QuantReport:
    """Quantise the target linears of each named component in place."""
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; choose one of {QUANT_MODES}")
    unknown = sorted(set(components) - set(TARGETS))
    if unknown:
        raise ValueError(f"cannot quantize components {unknown}; choose from {QUANT_COMPONENTS}")
    config = _torchao_config(mode)
    if mode == "fp8_weight_only":
        check_fp8_supported(device, dtype)
    from torchao.quantization import quantize_

    before, after, layers = {}, {}, {}
    for name, module in components.items():
        keep = _linear_filter(module, TARGETS[name])
        layers[name] = sum(keep(m, n) for n, m in module.named_modules())
        before[name] = module_nbytes(module)
        quantize_(module, config, filter_fn=keep)
        after[name] = module_nbytes(module)
    return QuantReport(mode=mode, bytes_before=before, bytes_after=after, layers=layers)


def is_quantized(module: nn.Module) -> bool:
    return any(type(p) not in (torch.Tensor, nn.Parameter) for p in module.parameters())
