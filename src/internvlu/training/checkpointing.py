"""Atomic, resumable training checkpoints and the export to the official inference layout.

Layout under `OUTPUT/checkpoints/`:
    step-00000120/             a complete checkpoint (the folder only gets this name once everything is written)
        model.safetensors      trainable parameters (fp32, full / unsharded, training-module names `vlm.*`, ...)
        optimizer.pt           AdamW state keyed by parameter name (full, unsharded)
        trainer_state.json     step, data position (sampler counters), elapsed time
        rng/rank-00000.pt      every process's torch / numpy / python RNG states
        config.json            the resolved TrainConfig
    latest                     text file naming the newest complete checkpoint (replaced atomically)
A checkpoint is written into `step-XXXXXXXX.tmp/` and renamed; `latest` is rewritten through a temporary file and
`os.replace`. A crash at any moment leaves `latest` naming a complete checkpoint (or absent before the first).
Frozen weights are not saved: resuming and exporting rebuild the starting model (checkpoint path or seeded fresh
init) and load the trained parameters over it. Full (gathered) state dicts make checkpoints independent of the
number of processes: a run can resume on a different world size.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from internvlu.training.parallelize import DistEnv

logger = logging.getLogger(__name__)

LATEST = "latest"
STEP_PREFIX = "step-"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.random.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.random.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (gathered) trainable parameters on the CPU; on rank 0 only when sharded (a collective call)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    state = get_model_state_dict(model, options=options)
    return {k: v.detach().float().contiguous() for k, v in state.items()}


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor], env: DistEnv) -> None:
    """Load a full trainable state dict (every process passes the same dict); raises on a key mismatch."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the trainable parameters of this run (same model, trainable and lora "
            f"settings needed): missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # strict=False: a trainable parameter that never received a gradient (e.g. the head's encoder_padding_token,
    # unused by the packed forward) has no AdamW state to restore; it keeps none, exactly as before the save.
    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False)
    )


class CheckpointManager:
    """Save / find / load checkpoints of one run folder."""

    def __init__(self, root: str | os.PathLike[str], env: DistEnv, keep_last: int = 2) -> None:
        self.root = Path(root)
        self.env = env
        self.keep_last = keep_last

    # -- finding ----------------------------------------------------------------------------------------------

    def complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        dirs = [
            p
            for p in self.root.iterdir()
            if p.is_dir() and p.name.startswith(STEP_PREFIX) and not p.name.endswith(".tmp")
        ]
        return sorted(dirs, key=lambda p: int(p.name[len(STEP_PREFIX) :]))

    def latest(self) -> Path | None:
        pointer = self.root / LATEST
        if pointer.is_file():
            path = self.root / pointer.read_text(encoding="utf-8").strip()
            if (path / "trainer_state.json").is_file():
                return path
            logger.warning("%s names %s, which is not a complete checkpoint; scanning", pointer, path)
        done = [p for p in self.complete() if (p / "trainer_state.json").is_file()]
        return done[-1] if done else None

    def clean_partial(self) -> None:
        """Remove leftovers of an interrupted save (rank 0)."""
        if self.env.is_main and self.root.is_dir():
            for p in self.root.glob(f"{STEP_PREFIX}*.tmp"):
                shutil.rmtree(p, ignore_errors=True)
                logger.info("removed the partial checkpoint %s", p)

    # -- saving -----------------------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        trainer_state: dict[str, Any],
        config: dict[str, Any],
        kill_after_weights: bool = False,
    ) -> Path:
        """Write a checkpoint of `step` (collective: every process calls it)."""
        name = f"{STEP_PREFIX}{step:08d}"
        final = self.root / name
        tmp = self.root / f"{name}.tmp"
        model_state = trainable_state_dict(model)  # collectives first, on every rank
        optim_state = optimizer_state_dict(model, optimizer)
        if self.env.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / "rng").mkdir(parents=True)
        self.env.barrier()
        torch.save(rng_state(), tmp / "rng" / f"rank-{self.env.rank:05d}.pt")
        if self.env.is_main:
            save_file(model_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            if kill_after_weights:
                logger.warning("debug: SIGKILL in the middle of writing checkpoint %s", tmp)
                os.kill(os.getpid(), signal.SIGKILL)
            torch.save(optim_state, tmp / "optimizer.pt")
            (tmp / "config.json").write_text(
                json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            (tmp / "trainer_state.json").write_text(
                json.dumps(trainer_state, indent=2) + "\n", encoding="utf-8"
            )
        self.env.barrier()
        if self.env.is_main:
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            if final.exists():  # a re-run of the same step after a resume
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            _write_text_atomic(self.root / LATEST, name + "\n")
            self._prune(keep=final)
        self.env.barrier()
        return final

    def _prune(self, keep: Path) -> None:
        done = self.complete()
        for old in done[: max(0, len(done) - self.keep_last)]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)

    # -- loading ----------------------------------------------------------------------------------------------

    def load(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Restore model, optimizer and this process's RNG; returns trainer_state."""
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        load_trainable(model, load_file(str(path / "model.safetensors")), self.env)
        load_optimizer(
            model, optimizer, torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
        )
        rng_file = path / "rng" / f"rank-{self.env.rank:05d}.pt"
        if rng_file.is_file() and state.get("world_size") == self.env.world_size:
            set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
        else:
            logger.warning(
                "checkpoint was written by %s processes, this run has %s: RNG states not restored "
                "(per-sample randomness is seeded by sample index and is unaffected)",
                state.get("world_size"),
                self.env.world_size,
            )
        return state
