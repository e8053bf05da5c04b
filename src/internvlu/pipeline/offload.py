"""Sequential CPU offload: stream each block's weights to the accelerator only while it runs.

`enable_model_cpu_offload` moves a whole component (the VLM, the MMDiT head, the VAE) at a time, so
peak accelerator memory is the largest component. Sequential offload goes one level down: every
repeated block (the elements of each `nn.ModuleList`: ViT layers, LLM layers, MMDiT blocks, VAE
blocks) and every large leaf layer outside them (token embeddings, LM head, big projections) is a
*unit* whose weights live in CPU memory and are copied to the device by a forward pre-hook and
dropped again by a forward hook. Everything else (norms, small projections, the special-token
table the VLM reads directly) is small and stays resident on the device. Peak weight memory on the
device becomes one block plus the resident part, at the cost of one host-to-device copy of every
weight per forward.

The CPU copies are kept (optionally pinned), so dropping a unit is a pointer swap, not a copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

# Leaf layers at least this large are streamed; smaller ones stay resident on the device.
MIN_UNIT_BYTES = 8 * 2**20


def _tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from (b for b in module.buffers() if b is not None)


def _nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(module))


def find_units(root: nn.Module, min_bytes: int = MIN_UNIT_BYTES) -> list[nn.Module]:
    """The modules whose weights are streamed: ModuleList elements (outermost ones) and large leaf
    modules outside any ModuleList."""
    units: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        if isinstance(module, nn.ModuleList):
            for child in module:
                if _nbytes(child) > 0:
                    units.append(child)
            return
        children = list(module.children())
        if not children:
            if _nbytes(module) >= min_bytes:
                units.append(module)
            return
        for child in children:
            visit(child)

    visit(root)
    return units


def _is_plain(tensor: torch.Tensor) -> bool:
    return type(tensor) in (torch.Tensor, nn.Parameter)


@dataclass
class SequentialOffload:
    """Hooks that stream the units of some modules to `device`; `detach()` removes them.

    Args:
        modules: the components to offload (their weights may be anywhere; they are moved to CPU).
        device: the execution device.
        pin_memory: pin the CPU copies (faster, asynchronous host-to-device copies on CUDA).
    """

    modules: list[nn.Module]
    device: torch.device
    pin_memory: bool = False
    units: list[nn.Module] = field(default_factory=list)
    onloads: int = 0
    _cpu: dict[int, torch.Tensor] = field(default_factory=dict)
    _handles: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)

    def attach(self) -> SequentialOffload:
        for module in self.modules:
            for tensor in _tensors(module):
                if not _is_plain(tensor):
                    raise ValueError(
                        f"sequential CPU offload needs plain tensors, but a weight is a {type(tensor).__name__} "
                        "(quantized?); use enable_model_cpu_offload with quantized weights"
                    )
            unit_list = find_units(module)
            in_unit = {id(t) for unit in unit_list for t in _tensors(unit)}
            for tensor in _tensors(module):
                if id(tensor) in in_unit:
                    cpu = tensor.data.to("cpu")
                    if self.pin_memory:
                        cpu = cpu.pin_memory()
                    self._cpu[id(tensor)] = cpu
                    tensor.data = cpu
                else:
                    tensor.data = tensor.data.to(self.device)  # resident part
            for unit in unit_list:
                self._handles.append(unit.register_forward_pre_hook(self._onload))
                self._handles.append(unit.register_forward_hook(self._offload))
            self.units += unit_list
        return self

    def _onload(self, unit: nn.Module, args: object) -> None:
        self.onloads += 1
        for tensor in _tensors(unit):
            tensor.data = self._cpu[id(tensor)].to(self.device, non_blocking=self.pin_memory)

    def _offload(self, unit: nn.Module, args: object, output: object) -> None:
        for tensor in _tensors(unit):
            tensor.data = self._cpu[id(tensor)]

    def detach(self, device: torch.device | str | None = None) -> None:
        """Remove the hooks; every weight goes to `device` (default: stays on the CPU / device split)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if device is not None:
            for module in self.modules:
                module.to(device)
        self._cpu.clear()

    def resident_bytes(self) -> int:
        """Bytes that stay on the device between units (the non-streamed part)."""
        in_unit = set(self._cpu)
        return sum(
            t.numel() * t.element_size() for m in self.modules for t in _tensors(m) if id(t) not in in_unit
        )

    def largest_unit_bytes(self) -> int:
        return max((_nbytes(u) for u in self.units), default=0)


def iter_unit_names(root: nn.Module, units: Iterable[nn.Module]) -> list[str]:
    """Qualified names of `units` inside `root` (for reports and tests)."""
    wanted = {id(u) for u in units}
    return [name for name, module in root.named_modules() if id(module) in wanted]
