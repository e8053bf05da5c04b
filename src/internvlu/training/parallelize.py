"""Scale-out applied from outside the model code: process group, activation checkpointing, torch.compile, FSDP2.

Order (as torchtitan): activation checkpointing -> compile -> FSDP2 `fully_shard` on every transformer block (ViT
layers, LLM decoder layers, MMDiT blocks), then on the root training module (embeddings, projectors, heads).
Parameter names never change (no wrapper modules), so state dicts, LoRA names and checkpoints stay the same with
or without these options. Model code never imports torch.distributed; this file does.

Backends: NCCL when CUDA is available, gloo otherwise (CPU runs with `torchrun --nproc_per_node N`). Launchers
(`torchrun`, `accelerate launch`) set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; without them the
run is one process and no process group is created.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: object | None = None  # torch DeviceMesh when a process group exists

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over all processes (fp64 on the CPU for gloo, on the device for NCCL)."""
        if not self.distributed:
            return list(values)
        device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast_object(self, obj):
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed(device: str | None = None) -> DistEnv:
    """Create the process group when launched by torchrun / accelerate with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistEnv(0, 1, 0, dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(dev.type, (world,))
    return DistEnv(rank, world, local_rank, dev, mesh)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The repeated blocks of the training module: ViT layers, LLM decoder layers, MMDiT blocks."""
    blocks: list[nn.Module] = []
    vlm = getattr(module, "vlm", None)
    if vlm is not None:
        blocks += list(vlm.vision_model.encoder.layers)
        blocks += list(vlm.language_model.model.layers)
    dec = getattr(module, "generation_decoder", None)
    if dec is not None:
        blocks += list(dec.decoder.transformer_blocks)
    return blocks


def _checkpointed_forward(forward):
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def apply_activation_checkpointing(module: nn.Module) -> None:
    """Recompute block activations in the backward pass (HF's mechanism for the ViT/LLM, a per-instance forward
    wrapper for the MMDiT blocks, which keeps parameter names unchanged)."""
    module.vlm.gradient_checkpointing_enable()
    for block in module.generation_decoder.decoder.transformer_blocks:
        if not getattr(block, "_internvlu_checkpointed", False):
            block.forward = _checkpointed_forward(block.forward)
            block._internvlu_checkpointed = True


def apply_compile(module: nn.Module) -> None:
    """torch.compile each block in place (names unchanged); the first step compiles (slow on CPU)."""
    for block in transformer_blocks(module):
        block.compile()


def apply_fsdp(
    module: nn.Module, env: DistEnv, param_dtype: torch.dtype | None, reshard_after_forward: bool
) -> None:
    """FSDP2: shard every block, then the root. `param_dtype` bf16 = mixed precision (fp32 reductions)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = (
        MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        if param_dtype
        else MixedPrecisionPolicy()
    )
    for block in transformer_blocks(module):
        fully_shard(block, mesh=env.mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(module, mesh=env.mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def unsharded(module: nn.Module) -> Iterator[None]:
    """Gather full parameters of every FSDP unit for calls that bypass the root forward (sampling)."""
    if not is_sharded(module):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def clip_grad_norm(params: list[nn.Parameter], max_norm: float | None) -> float:
    """Clip (when max_norm is set) and return the global gradient norm; works on sharded (DTensor) grads."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm is not None else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)
