"""`Trainer`: the loop (micro-batch accumulation -> clip -> AdamW step -> LR -> log -> checkpoint -> samples).

Loss-specific work lives in `forward_backward_step` (override it for new objectives). Normalisation is global:
the next-token loss is the mean over every supervised token of the optimizer step on all processes, the flow loss
the mean over every generated image, so one process and N processes with the same global batch optimise the same
quantity (the counts are summed across processes before the first backward of the step).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from internvlu.data.records import BadRecordTracker, RecordError
from internvlu.training.batching import BatchBuilder, TrainBatch
from internvlu.training.checkpointing import CheckpointManager
from internvlu.training.config import TrainConfig
from internvlu.training.dataset import (
    LengthGroupedSampler,
    MixtureSampler,
    PlannedSample,
    TaskIndex,
    load_index,
)
from internvlu.training.latents import LatentEncoder
from internvlu.training.lora import apply_lora, is_lora_parameter
from internvlu.training.losses import (
    edit_region_weights,
    model_timesteps,
    noisy_latents,
    ntp_units,
    velocity_target,
)
from internvlu.training.module import InternVLUForTraining, ModelInputs
from internvlu.training.observability import MetricsLogger, Progress, peak_memory_mb, plot_losses
from internvlu.training.parallelize import (
    DistEnv,
    apply_activation_checkpointing,
    apply_compile,
    apply_fsdp,
    clip_grad_norm,
    init_distributed,
    unsharded,
)

logger = logging.getLogger("internvlu.training")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclasses.dataclass
class LossNorm:
    """Global denominators of one optimizer step."""

    ntp_tokens: float  # supervised tokens (or turns, with loss.ntp_reduction=turn)
    flow_samples: float


@dataclasses.dataclass
class TrainResult:
    step: int
    history: list[dict[str, Any]]
    output_dir: Path
    checkpoint: Path | None
    export: Path | None


def vit_grid_of(vlm: nn.Module) -> int:
    cfg = vlm.config
    size = cfg.force_image_size or cfg.vision_config.image_size
    return int(size // cfg.vision_config.patch_size * cfg.downsample_ratio)


def select_trainable(
    module: nn.Module, trainable: Sequence[str], frozen: Sequence[str], lora_paths: Sequence[str]
) -> int:
    """Set requires_grad from the prefixes (see ModelConfig); returns the number of trainable parameters.

    With LoRA, the adapters train and the base weights of the adapted components stay frozen; other components
    follow `trainable` / `frozen`.
    """

    def matches(name: str, prefixes: Sequence[str]) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    names = [n for n, _ in module.named_parameters()]
    if not names:
        raise ValueError("the training module has no parameters")
    for prefix in (*trainable, *frozen):
        if not any(matches(n, [prefix]) for n in names):
            raise ValueError(
                f"model.trainable/frozen prefix {prefix!r} matches no parameter (e.g. {names[0]!r})"
            )
    count = 0
    for name, p in module.named_parameters():
        if is_lora_parameter(name):
            train = True
        elif matches(name, lora_paths):
            train = False
        else:
            train = matches(name, trainable) and not matches(name, frozen)
        p.requires_grad_(train)
        count += p.numel() if train else 0
    if count == 0:
        raise ValueError("no parameter is trainable with this model.trainable / model.frozen / lora setting")
    return count


def lr_at(step: int, total: int, lr: float, warmup: int, schedule: str, min_ratio: float) -> float:
    """Learning rate of optimizer update `step` (0-based): linear warm-up, then constant or cosine decay."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = lr * min_ratio
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    """Builds everything from a `TrainConfig` and runs the loop.

    Args:
        config: the resolved configuration (validated here).
        env: distributed environment; default: from the launcher's environment variables.
    """

    def __init__(self, config: TrainConfig, env: DistEnv | None = None) -> None:
        self.config = config.validate()
        self.env = env or init_distributed()
        self.out = Path(config.output_dir)
        self.device = self.env.device
        _setup_logging(self.out, self.env)
        if config.train.num_threads is not None:
            torch.set_num_threads(config.train.num_threads)
        torch.manual_seed(config.seed)
        self._check_batch_sizes()
        self._build_model()
        self._build_data()
        self.optimizer = self._build_optimizer()
        self.checkpoints = CheckpointManager(self.out / "checkpoints", self.env, config.checkpoint.keep_last)
        self.step = 0
        self.elapsed_before = 0.0
        self.sampler_state = self.sampler.state_dict()
        self._resume()
        self.metrics = MetricsLogger(
            self.out, self.env.is_main, config.logging.tensorboard, resume_step=self.step
        )
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(config.to_json() + "\n", encoding="utf-8")
        self.history: list[dict[str, Any]] = []
        workers = config.data.num_workers
        self._pool = concurrent.futures.ThreadPoolExecutor(workers) if workers > 0 else None
        self._pending: tuple[list[Any], dict[str, Any]] | None = None

    # ------------------------------------------------------------------ setup
    def _check_batch_sizes(self) -> None:
        loop, world = self.config.train, self.env.world_size
        if loop.global_batch_size % (loop.micro_batch_size * world):
            raise ValueError(
                f"train.global_batch_size={loop.global_batch_size} must be a multiple of micro_batch_size x processes "
                f"= {loop.micro_batch_size} x {world}"
            )
        self.accumulation = loop.global_batch_size // (loop.micro_batch_size * world)

    def _build_model(self) -> None:
        from internvlu.training.model_factory import build_pipeline

        cfg = self.config
        # Checkpoint weights are read straight onto the device; a fresh model is built on the CPU and moved.
        self.pipe = build_pipeline(cfg.model, seed=cfg.seed, device=self.device)
        self.processor = self.pipe.processor
        self.vit_grid = vit_grid_of(self.pipe.vlm)
        module = InternVLUForTraining(
            self.pipe.vlm, self.pipe.generation_decoder, self.processor.token_ids(), self.vit_grid,
            keep_all_modules=self.env.distributed, ntp_reduction=cfg.loss.ntp_reduction,
        )  # fmt: skip
        lora_paths = apply_lora(module, cfg.lora)
        self.num_trainable = select_trainable(module, cfg.model.trainable, cfg.model.frozen, lora_paths)
        self.num_params = sum(p.numel() for p in module.parameters())
        module.compute_ntp = cfg.loss.ntp_weight > 0
        module.to(self.device)
        dtype = DTYPES[cfg.train.dtype]
        # The frozen VAE runs in the training dtype; the fp32 master weights of the trained parts stay fp32.
        self.pipe.vae.to(self.device)
        if dtype != torch.float32:
            self.pipe.vae.to(dtype=dtype)
        if cfg.parallel.activation_checkpointing:
            apply_activation_checkpointing(module)
        if cfg.parallel.compile:
            apply_compile(module)
        fsdp = cfg.parallel.fsdp == "always" or (cfg.parallel.fsdp == "auto" and self.env.distributed)
        if self.env.distributed and not fsdp:
            # Without FSDP nothing would synchronise the gradients of the processes.
            raise ValueError(
                "training with several processes needs parallel.fsdp=auto or always, not 'never'"
            )
        if fsdp:
            if self.env.mesh is None:
                raise ValueError(
                    "parallel.fsdp='always' needs a launcher (torchrun) to create the process group"
                )
            apply_fsdp(
                module,
                self.env,
                dtype if dtype != torch.float32 else None,
                cfg.parallel.reshard_after_forward,
            )
        self.fsdp = fsdp
        self.autocast_dtype = dtype if (dtype != torch.float32 and not fsdp) else None
        module.train()
        self.module = module
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.latents = LatentEncoder(
            self.pipe.vae,
            self.device,
            dtype,
            cache_dir=cfg.data.latent_cache,
            sampling=cfg.loss.latent_sampling,
        )
        logger.info(
            "model: %.2fM parameters, %.2fM trainable; %d process(es) on %s, fsdp=%s, dtype=%s, accumulation=%d",
            self.num_params / 1e6, self.num_trainable / 1e6, self.env.world_size, self.device, fsdp,
            cfg.train.dtype, self.accumulation,
        )  # fmt: skip

    def _build_data(self) -> None:
        cfg = self.config
        samples, tracker = load_index(
            cfg.data.sources, max_bad_fraction=cfg.data.max_bad_fraction, check_images=cfg.data.check_images
        )
        self.bad_records = tracker
        self.builder = BatchBuilder(self.processor, cfg.data, cfg.loss, cfg.seed, tracker=tracker)
        # Records the prompt code refuses (reserved tokens, too long) are bad records as well, counted by reason and
        # located like the reader's, against the same max_bad_fraction.
        self.render_check = BadRecordTracker(max_bad_fraction=cfg.data.max_bad_fraction)
        good = []
        for sample in samples:
            try:
                self.builder.check_record(sample)
            except ValueError as exc:
                self.render_check.add_bad(RecordError(sample.location, "<render>", "bad_value", str(exc)))
                continue
            self.render_check.add_good()
            good.append(sample)
        self.render_check.finish()
        self.index = TaskIndex(good)
        self.sampler: MixtureSampler | LengthGroupedSampler = MixtureSampler(
            self.index.counts(), cfg.data.task_weights, cfg.seed
        )
        if cfg.data.group_by_length > 1:
            self.sampler = LengthGroupedSampler(
                self.sampler,
                cfg.data.group_by_length,
                self._row_length,
            )
        logger.info(
            "data: %s records by task %s; mixture %s; bad %s",
            len(good),
            self.index.counts(),
            dict(zip(self.sampler.tasks, [round(float(p), 3) for p in self.sampler.probs])),
            tracker.summary(),
        )

    def _build_optimizer(self) -> torch.optim.Optimizer:
        opt = self.config.optim
        decay, no_decay = [], []
        for _, p in self.module.named_parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": opt.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        return torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps)

    def _resume(self) -> None:
        ck = self.config.checkpoint
        self.checkpoints.clean_partial()
        self.env.barrier()
        if ck.resume == "never":
            if self.checkpoints.latest() is not None:
                raise ValueError(
                    f"{self.checkpoints.root} already holds checkpoints; use checkpoint.resume=auto to continue "
                    "or a new output_dir"
                )
            return
        path = self.checkpoints.latest() if ck.resume == "auto" else Path(ck.resume)
        if path is None:
            return
        if not (path / "trainer_state.json").is_file():
            raise ValueError(f"checkpoint.resume={ck.resume!r}: {path} is not a complete checkpoint folder")
        state = self.checkpoints.load(path, self.module, self.optimizer)
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        self.sampler_state = self.sampler.state_dict()
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        logger.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------ data
    def _plan_step(self) -> tuple[list[list[PlannedSample]], dict[str, Any]]:
        """This process's micro-batches of the next global batch, and the sampler state after it."""
        plans = self.sampler.take(self.config.train.global_batch_size)
        local = plans[self.env.rank :: self.env.world_size]
        mb = self.config.train.micro_batch_size
        if self.config.data.sort_micro_batches and len(local) > mb:
            # Same rows, same global loss normalisation: only which rows share a micro-batch (and its padding)
            # changes. Per-row randomness is keyed by the global sample index, not by the position in the batch.
            local = sorted(local, key=self._row_length)
        return [local[i : i + mb] for i in range(0, len(local), mb)], self.sampler.state_dict()

    def _row_length(self, plan: PlannedSample) -> int:
        return self.builder.row_length(self.index.get(plan.task, plan.record), plan.index)

    def _submit_step(self) -> tuple[list[Any], dict[str, Any]]:
        micro, state = self._plan_step()
        if self._pool is None:
            return [self.builder.build(m, self.index) for m in micro], state
        return [self._pool.submit(self.builder.build, m, self.index) for m in micro], state

    def _next_batches(self) -> tuple[list[TrainBatch], dict[str, Any]]:
        pending = self._pending if self._pending is not None else self._submit_step()
        self._pending = None
        if self._pool is not None and self.step + 1 < self.config.train.steps:
            self._pending = self._submit_step()  # build the next step while this one computes
        items, state = pending
        batches = [b.result() if isinstance(b, concurrent.futures.Future) else b for b in items]
        return batches, state

    # ------------------------------------------------------------------ one step
    def prepare_inputs(self, batch: TrainBatch) -> ModelInputs:
        """VAE-encode targets / references, draw the noise, build the noisy latents (all seeded per sample)."""
        dev = self.device
        gen = batch.gen
        noisy = times = target = None
        grids: list[tuple[int, int]] = []
        fhw: list[torch.Tensor] = []
        cond = None
        weights: list[torch.Tensor | None] | None = None
        if gen:
            z_list = self.latents.encode([g.target for g in gen], seeds=[g.noise_seed + 1 for g in gen])
            grids = [tuple(z.shape[-2:]) for z in z_list]
            channels = z_list[0].shape[0]
            h_max, w_max = max(h for h, _ in grids), max(w for _, w in grids)
            z = torch.zeros(len(gen), channels, h_max, w_max)
            eps = torch.zeros_like(z)
            for k, (g, zk) in enumerate(zip(gen, z_list)):
                h, w = zk.shape[-2:]
                z[k, :, :h, :w] = zk
                eps[k, :, :h, :w] = torch.randn(
                    zk.shape, generator=torch.Generator().manual_seed(g.noise_seed)
                )
            sigma = torch.tensor([g.sigma for g in gen], dtype=torch.float32)
            noisy = noisy_latents(z, eps, sigma).to(dev)  # [K, C, H, W]
            target = velocity_target(z, eps).to(dev)
            times = model_timesteps(sigma, self.config.loss.discrete_timesteps).to(dev)
            fhw = [
                torch.tensor([[1, self.vit_grid, self.vit_grid]] * g.num_vit_images, dtype=torch.long)
                .reshape(-1, 3)
                .to(dev)
                for g in gen
            ]
            if any(g.refs for g in gen):
                flat = [r for g in gen for r in g.refs]
                encoded = self.latents.encode(
                    flat, seeds=[gen[0].noise_seed + 2 + i for i in range(len(flat))]
                )
                per_row, i = [], 0  # K lists of CPU reference latents
                for g in gen:
                    per_row.append(encoded[i : i + len(g.refs)])
                    i += len(g.refs)
                cond = [[e.to(dev) for e in refs] for refs in per_row]
                loss_cfg = self.config.loss
                if loss_cfg.edit_region_weight > 0:
                    weights = [
                        edit_region_weights(zk, refs[0], loss_cfg.edit_region_weight, loss_cfg.edit_region_threshold)
                        if len(refs) == 1 and refs[0].shape == zk.shape
                        else None
                        for zk, refs in zip(z_list, per_row)
                    ]  # fmt: skip
        return ModelInputs(
            input_ids=batch.input_ids.to(dev),
            attention_mask=batch.attention_mask.to(dev),
            labels=batch.labels.to(dev),
            pixel_values=batch.pixel_values.to(dev) if batch.pixel_values is not None else None,
            gen_rows=[g.row for g in gen],
            noisy_latents=noisy,
            timesteps=times,
            velocity_target=target,
            grids=grids,
            image_fhw_cond=fhw,
            cond_latents=cond,
            flow_weights=weights,
        )

    def forward_backward_step(self, batch: TrainBatch, norm: LossNorm) -> dict[str, float]:
        """Forward + backward of one micro-batch; returns its loss sums and counts (for logging)."""
        inputs = self.prepare_inputs(batch)
        if self.autocast_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                sums = self.module(inputs)
        else:
            sums = self.module(inputs)
        w = self.config.loss
        # x world size: FSDP averages gradients over processes, the global means need their sum.
        loss = (
            w.ntp_weight * sums.ntp_sum / max(norm.ntp_tokens, 1.0)
            + w.flow_weight * sums.flow_sum / max(norm.flow_samples, 1.0)
        ) * self.env.world_size + sums.aux
        if loss.requires_grad:
            loss.backward()
        return {
            "ntp_sum": float(sums.ntp_sum.detach()),
            "ntp_tokens": float(sums.ntp_tokens),
            "flow_sum": float(sums.flow_sum.detach()),
            "flow_samples": float(sums.flow_samples),
            "tokens": float(batch.num_tokens),
            "samples": float(batch.num_samples),
        }

    def train_step(self) -> dict[str, Any]:
        """One optimizer update over the global batch; returns the metric record of the step."""
        t0 = time.perf_counter()
        batches, sampler_state = self._next_batches()
        reduction = self.config.loss.ntp_reduction
        local = [sum(ntp_units(b.labels, reduction) for b in batches), sum(len(b.gen) for b in batches)]
        g_ntp, g_flow = self.env.all_reduce_sum([float(x) for x in local])
        norm = LossNorm(g_ntp, g_flow)
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for batch in batches:
            for key, value in self.forward_backward_step(batch, norm).items():
                totals[key] = totals.get(key, 0.0) + value
        opt = self.config.optim
        grad_norm = clip_grad_norm(self.params, opt.clip_grad_norm)
        lr = lr_at(
            self.step, self.config.train.steps, opt.lr, opt.warmup_steps, opt.schedule, opt.min_lr_ratio
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.step += 1
        self.sampler_state = sampler_state
        keys = ["ntp_sum", "ntp_tokens", "flow_sum", "flow_samples", "tokens", "samples"]
        sums = dict(zip(keys, self.env.all_reduce_sum([totals.get(k, 0.0) for k in keys])))
        dt = time.perf_counter() - t0
        w = self.config.loss
        loss_ntp = sums["ntp_sum"] / sums["ntp_tokens"] if sums["ntp_tokens"] else None
        loss_flow = sums["flow_sum"] / sums["flow_samples"] if sums["flow_samples"] else None
        loss = w.ntp_weight * (loss_ntp or 0.0) + w.flow_weight * (loss_flow or 0.0)
        return {
            "step": self.step,
            "loss": loss,
            "loss_ntp": loss_ntp,
            "loss_flow": loss_flow,
            "lr": lr,
            "grad_norm": grad_norm,
            "samples_per_s": sums["samples"] / dt,
            "tokens_per_s": sums["tokens"] / dt,
            "step_time_s": dt,
            "ntp_tokens": int(sums["ntp_tokens"]),
            "flow_images": int(sums["flow_samples"]),
            "peak_mem_mb": peak_memory_mb(self.device),
            # Passes over each task's records, from the consumed position (the sampler may be a step ahead).
            "epochs": {
                t: round(n / self.sampler.counts[t], 4) for t, n in self.sampler_state["taken"].items()
            },
        }

    # ------------------------------------------------------------------ loop
    def train(self) -> TrainResult:
        cfg = self.config
        total = cfg.train.steps
        progress = Progress(total, self.step, cfg.logging.progress and self.env.is_main)
        start = time.time()
        last_saved = None
        try:
            while self.step < total:
                record = self.train_step()
                record["elapsed_s"] = self.elapsed_before + time.time() - start
                self.history.append(record)
                if self.step % cfg.logging.every == 0 or self.step == total:
                    self.metrics.log(record)
                progress.update(record)
                if not math.isfinite(record["loss"]):
                    raise FloatingPointError(f"loss is {record['loss']} at step {self.step}")
                if cfg.debug.kill_at_step == self.step:
                    logger.warning("debug: SIGKILL after step %d", self.step)
                    os.kill(os.getpid(), signal.SIGKILL)
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    last_saved = self.save_checkpoint(record["elapsed_s"])
                if cfg.samples.every and self.step % cfg.samples.every == 0:
                    self.sample()
                if cfg.train.max_minutes is not None:
                    over = self.env.broadcast_object(record["elapsed_s"] > 60 * cfg.train.max_minutes)
                    if over:
                        logger.info(
                            "train.max_minutes=%s reached at step %d", cfg.train.max_minutes, self.step
                        )
                        break
        finally:
            progress.close()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
        elapsed = self.elapsed_before + time.time() - start
        if last_saved is None or not last_saved.name.endswith(f"{self.step:08d}"):
            last_saved = self.save_checkpoint(elapsed)
        if cfg.samples.at_end and not (cfg.samples.every and self.step % cfg.samples.every == 0):
            self.sample()
        export = None
        if cfg.checkpoint.export_final:
            if self.env.is_main:
                export = export_checkpoint(last_saved, self.out / "export", cfg.checkpoint.export_dtype)
            self.env.barrier()
        if self.env.is_main and cfg.logging.plot:
            plot_losses(self.metrics.path, self.out / "loss_curve.png")
        self.metrics.close()
        return TrainResult(self.step, self.history, self.out, last_saved, export)

    def save_checkpoint(self, elapsed: float) -> Path:
        state = {
            "step": self.step,
            "sampler": self.sampler_state,
            "elapsed_s": elapsed,
            "world_size": self.env.world_size,
            "bad_records": self.bad_records.summary(),
            "unrenderable_records": self.render_check.summary(),
        }
        kill = self.config.debug.kill_during_checkpoint_at_step == self.step
        return self.checkpoints.save(
            self.step, self.module, self.optimizer, state, self.config.to_dict(), kill
        )

    def sample(self) -> dict[str, Any]:
        """Images / answers on the fixed prompt set (all processes take part; rank 0 writes)."""
        self.module.eval()
        try:
            with unsharded(self.module):
                from internvlu.training.samples import write_samples

                return write_samples(
                    self.pipe, self.config.samples, self.out, self.step, write=self.env.is_main
                )
        finally:
            self.module.train()


# ----------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------


def export_checkpoint(
    checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str], dtype: str = "float32"
) -> Path:
    """Write a training checkpoint as a checkpoint folder in the official inference layout (LoRA merged).

    The starting model is rebuilt from the checkpoint's config (checkpoint path or seeded fresh init), the trained
    parameters are loaded over it, adapters are merged, and the pipeline is saved to `out_dir` (replaced
    atomically). Load it with `InternVLUPipeline.from_pretrained(out_dir)`.
    """
    from safetensors.torch import load_file

    from internvlu.training.lora import merge_lora
    from internvlu.training.model_factory import build_pipeline

    ckpt = Path(checkpoint)
    if not (ckpt / "model.safetensors").is_file():
        raise ValueError(f"{ckpt} is not a training checkpoint (no model.safetensors)")
    cfg = TrainConfig.from_dict(json.loads((ckpt / "config.json").read_text(encoding="utf-8")))
    pipe = build_pipeline(cfg.model, seed=cfg.seed)
    module = InternVLUForTraining(
        pipe.vlm, pipe.generation_decoder, pipe.processor.token_ids(), vit_grid_of(pipe.vlm)
    )
    apply_lora(module, cfg.lora)
    result = module.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint {ckpt} has parameters this model lacks: {result.unexpected_keys[:8]}")
    merge_lora(module)
    if dtype != "float32":
        pipe.to(dtype=DTYPES[dtype])
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp)
    (tmp / "training_config.json").write_text(cfg.to_json() + "\n", encoding="utf-8")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    logger.info("exported %s to %s", ckpt, out)
    return out


_FILE_HANDLER: logging.Handler | None = None


def _setup_logging(out: Path, env: DistEnv) -> None:
    """Log to stderr (rank 0: INFO, others: WARNING) and, on rank 0, to OUTPUT/train.log of the current run."""
    global _FILE_HANDLER
    log = logging.getLogger("internvlu")
    fmt = logging.Formatter(f"%(asctime)s [rank {env.rank}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    if not getattr(log, "_internvlu_training_handlers", False):
        log.setLevel(logging.INFO)
        stream = logging.StreamHandler(sys.stderr)
        stream.setLevel(logging.INFO if env.is_main else logging.WARNING)
        stream.setFormatter(fmt)
        log.addHandler(stream)
        log._internvlu_training_handlers = True  # type: ignore[attr-defined]
    if _FILE_HANDLER is not None:  # a previous run in this process (Python API, tests)
        log.removeHandler(_FILE_HANDLER)
        _FILE_HANDLER.close()
        _FILE_HANDLER = None
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _FILE_HANDLER = logging.FileHandler(out / "train.log", encoding="utf-8")
        _FILE_HANDLER.setFormatter(fmt)
        log.addHandler(_FILE_HANDLER)


def train(config: TrainConfig) -> TrainResult:
    """Python API: run a training config to the end (checkpoints, export, plot)."""
    return Trainer(config).train()
