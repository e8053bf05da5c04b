"""Training of InternVL-U: the paper's three-stage recipe (flow matching + next-token), full and LoRA fine-tuning,
from one CPU process to many GPUs with FSDP2, resumable and exportable to the official inference layout.

    from internvlu.training import get_recipe, apply_overrides, train
    config = apply_overrides(get_recipe("tiny"), ["data.sources=[my_data/train.jsonl]", "output_dir=runs/mine"])
    result = train(config)            # checkpoints, metrics.jsonl, loss_curve.png, export/ under output_dir

Command line: `internvlu train --recipe NAME [key=value ...]` (training/cli.py). See docs/training.md.
"""

from __future__ import annotations

from internvlu.training.config import TrainConfig, apply_overrides
from internvlu.training.recipes import get_recipe, list_recipes

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "apply_overrides",
    "export_checkpoint",
    "get_recipe",
    "list_recipes",
    "train",
]


def __getattr__(name: str):
    # The trainer pulls in torch.distributed, transformers and diffusers: import it on first use only.
    if name in ("Trainer", "TrainResult", "export_checkpoint", "train"):
        from internvlu.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'internvlu.training' has no attribute {name!r}")
