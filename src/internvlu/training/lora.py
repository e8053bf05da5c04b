"""LoRA adapters through PEFT on the language model and/or the MMDiT head; merge for export.

Adapters are injected in place (`peft.inject_adapter_in_model`), so the surrounding modules keep their official
names; an adapted Linear `x` becomes `x.base_layer` + `x.lora_A.default` / `x.lora_B.default`. `merge_lora` folds
the adapters into the base weights and puts the plain Linear back, which restores the official state-dict keys.
"""

from __future__ import annotations

import logging

from torch import nn

from internvlu.training.config import LoraSettings

logger = logging.getLogger(__name__)

# Component each LoRA target adapts, as a module path of the training module.
LORA_COMPONENTS = {"llm": "vlm.language_model", "dit": "generation_decoder.decoder"}


def _submodule(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def apply_lora(root: nn.Module, settings: LoraSettings) -> list[str]:
    """Inject adapters into the components named by `settings.targets`; returns their module paths."""
    if not settings.targets:
        return []
    from peft import LoraConfig, inject_adapter_in_model

    paths = []
    for target in dict.fromkeys(settings.targets):
        modules = settings.llm_modules if target == "llm" else settings.dit_modules
        config = LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=list(modules),
            bias="none",
        )
        path = LORA_COMPONENTS[target]
        inject_adapter_in_model(config, _submodule(root, path))
        paths.append(path)
    count = sum(p.numel() for n, p in root.named_parameters() if "lora_" in n)
    logger.info("LoRA (rank %d) on %s: %d adapter parameters", settings.rank, paths, count)
    return paths


def is_lora_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or ".lora_embedding_" in name


def merge_lora(root: nn.Module) -> int:
    """Fold every adapter into its base layer and restore the plain module; returns how many were merged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    replaced = 0
    for name, module in list(root.named_modules()):
        if not isinstance(module, BaseTunerLayer):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        if getattr(parent, child, None) is not module:
            continue  # a nested tuner layer already replaced through its parent
        module.merge()
        setattr(parent, child, module.get_base_layer())
        replaced += 1
    return replaced
