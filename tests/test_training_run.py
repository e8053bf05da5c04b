"""End-to-end training runs on the tiny model (CPU, fp32, one thread): losses go down, exports load in the inference
pipeline and denoise, one process equals two (gloo, FSDP2), a SIGKILLed run resumes to the same weights, LoRA merges
back into the official keys, checkpoints are atomic."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import internvlu.pipeline.pipeline as pipeline_module
from internvlu import InternVLUPipeline
from internvlu.cli import main
from internvlu.data import ImageRef, Sample, write_jsonl
from internvlu.pipeline import stages
from internvlu.training.batching import generation_pixels
from internvlu.training.checkpointing import CheckpointManager
from internvlu.training.cli import resolve_config
from internvlu.training.model_factory import build_fresh_pipeline, tiny_arch
from internvlu.training.observability import plot_losses
from internvlu.training.parallelize import DistEnv
from internvlu.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
# Equivalence tolerances (fp32; differences come only from the order of floating-point sums).
WEIGHT_ATOL = (
    2e-5  # max |w_a - w_b| over all trained weights (observed ~2e-6); an Adam step moves weights ~lr=1e-3
)
LOSS_RTOL = 1e-5  # per-step total loss (observed ~1e-7)
SUBPROCESS_TIMEOUT = 600


@pytest.fixture(autouse=True)
def one_thread():
    # Tests share two cores with other work; one intra-op thread is both faster and more stable there.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _config(recipe: str, out: Path, *overrides: str):
    return resolve_config(
        recipe, [f"output_dir={out}", "logging.progress=false", "train.num_threads=1", *overrides]
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_cli(args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "internvlu", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), "-m", "internvlu", "train", *args]  # fmt: skip
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False
    )


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_tiny_recipe_lowers_both_losses_and_exports_a_working_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = Trainer(
        _config("tiny", out, "train.steps=30", "checkpoint.every=10", "checkpoint.keep_last=2")
    ).train()
    hist = result.history
    ntp = [r["loss_ntp"] for r in hist if r["loss_ntp"] is not None]
    flow = [r["loss_flow"] for r in hist if r["loss_flow"] is not None]
    assert np.mean(ntp[-5:]) < 0.9 * np.mean(ntp[:3]), ntp
    assert np.mean(flow[-5:]) < 0.9 * np.mean(flow[:3]), flow
    # Observability and checkpoint rotation.
    assert [r["step"] for r in _metrics(out)] == list(range(1, 31))
    assert {"loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "peak_mem_mb"} <= set(
        _metrics(out)[0]
    )
    assert Image.open(out / "loss_curve.png").size[0] > 100
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest",
        "step-00000020",
        "step-00000030",
    ]
    # The export is an official-layout folder: it loads, draws and answers.
    pipe = InternVLUPipeline.from_pretrained(out / "export", torch_dtype=torch.float32)
    image = pipe.generate("A red circle on a white background.", height=64, width=64, num_inference_steps=3,
                          seed=0, progress=False).images[0]  # fmt: skip
    assert image.size == (64, 64)
    assert isinstance(pipe.chat("What colour is the background?", max_new_tokens=4).texts[0], str)
    trained = _weights(result.checkpoint)
    exported = pipe.generation_decoder.state_dict()
    key = "decoder.proj_out.weight"
    assert torch.equal(exported[key], trained[f"generation_decoder.{key}"])


def test_a_model_trained_this_way_denoises_with_the_inference_pipeline(tmp_path: Path) -> None:
    """Train the head on one image, then sample with the inference pipeline (its scheduler, guidance and conditioning
    code): the generated latent must approach the training latent (a wrong time/velocity convention or a different
    conditioning sequence would leave it as far off as an untrained head)."""
    target = Image.new("RGB", (64, 64), (220, 30, 30))
    prompt = "A red picture"
    write_jsonl([Sample(id="red", task="t2i", prompt=prompt, target=ImageRef.from_image("t", target))],
                tmp_path / "data" / "train.jsonl")  # fmt: skip
    out = tmp_path / "run"
    cfg = _config(
        "stage1-tiny", out, f"data.sources={tmp_path / 'data' / 'train.jsonl'}", 'data.task_weights={"t2i": 1}',
        "data.drop.t2i_all=0", "train.steps=150", "train.global_batch_size=4", "train.micro_batch_size=4",
        "optim.lr=1e-2", "optim.warmup_steps=5", "optim.schedule=cosine", "optim.clip_grad_norm=1.0",
        "checkpoint.every=0", f"data.latent_cache={tmp_path / 'latents'}",
    )  # fmt: skip
    Trainer(cfg).train()
    build_fresh_pipeline(tiny_arch(), seed=cfg.seed).save_pretrained(tmp_path / "untrained")

    def generated_error(folder: Path) -> float:
        pipe = InternVLUPipeline.from_pretrained(folder, torch_dtype=torch.float32)
        z = stages.encode_references(
            pipe.vae, generation_pixels(target, pipe.processor.generation_processor)[None]
        )
        seen = {}
        decode = stages.decode_latents

        def capture(vae, latents):
            seen["z"] = latents.clone()
            return decode(vae, latents)

        pipeline_module.stages.decode_latents = capture
        try:
            pipe.generate(prompt, height=64, width=64, num_inference_steps=20, all_cfg_scale=1.0, part_cfg_scale=1.0,
                          seed=0, progress=False)  # fmt: skip
        finally:
            pipeline_module.stages.decode_latents = decode
        return float((seen["z"] - z).norm() / z.norm())

    trained, untrained = generated_error(out / "export"), generated_error(tmp_path / "untrained")
    print(f"relative latent error: trained {trained:.3f}, untrained {untrained:.3f}")
    assert trained < 1.0, (trained, untrained)  # closer than the zero latent
    assert trained < 0.3 * untrained, (trained, untrained)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    common = ["train.steps=4", "train.global_batch_size=8", "checkpoint.every=0", "checkpoint.export_final=false",
              "logging.progress=false", "train.num_threads=1"]  # fmt: skip
    two = tmp_path / "two"
    proc = _run_cli(["--recipe", "tiny", f"output_dir={two}", "train.micro_batch_size=2", *common], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr and "fsdp=True" in proc.stderr
    one = tmp_path / "one"
    Trainer(_config("tiny", one, "train.micro_batch_size=4", *common)).train()
    losses_one = [r["loss"] for r in _metrics(one)]
    losses_two = [r["loss"] for r in _metrics(two)]
    assert np.allclose(losses_two, losses_one, rtol=LOSS_RTOL, atol=0), (losses_one, losses_two)
    diff = _max_diff(
        _weights(one / "checkpoints" / "step-00000004"), _weights(two / "checkpoints" / "step-00000004")
    )
    assert diff < WEIGHT_ATOL, diff


def test_sigkill_while_checkpointing_then_resume_ends_with_the_same_weights(tmp_path: Path) -> None:
    common = ["train.steps=8", "checkpoint.every=3", "checkpoint.export_final=false", "logging.progress=false",
              "train.num_threads=1"]  # fmt: skip
    killed = tmp_path / "killed"
    # The process SIGKILLs itself after writing the weights of the step-6 checkpoint, before renaming it.
    proc = _run_cli(
        ["--recipe", "tiny", f"output_dir={killed}", "debug.kill_during_checkpoint_at_step=6", *common]
    )
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-3000:])
    ckpts = killed / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-00000003"  # never points at the broken save
    assert (ckpts / "step-00000006.tmp").is_dir() and not (ckpts / "step-00000006").exists()
    resumed = Trainer(_config("tiny", killed, *common)).train()  # checkpoint.resume=auto
    assert resumed.history[0]["step"] == 4 and not (ckpts / "step-00000006.tmp").exists()
    reference = tmp_path / "reference"
    # Two threads build the next step's batches ahead: the data must not change.
    Trainer(_config("tiny", reference, *common, "data.num_workers=2")).train()
    diff = _max_diff(_weights(ckpts / "step-00000008"), _weights(reference / "checkpoints" / "step-00000008"))
    assert diff < WEIGHT_ATOL, diff
    # metrics.jsonl holds each step once: the steps redone after the resume replaced the lost ones.
    assert [r["step"] for r in _metrics(killed)] == list(range(1, 9))
    assert np.allclose(
        [r["loss"] for r in _metrics(killed)], [r["loss"] for r in _metrics(reference)], rtol=LOSS_RTOL
    )


def test_length_grouped_batches_resume_inside_a_group_to_the_same_weights(tmp_path: Path) -> None:
    # Groups of 4 steps with checkpoints every 3: the step-3 checkpoint lies inside the first group.
    common = ["train.steps=6", "checkpoint.every=3", "checkpoint.keep_last=3", "checkpoint.export_final=false",
              "data.group_by_length=4", "data.num_workers=2"]  # fmt: skip
    out = tmp_path / "run"
    Trainer(_config("tiny", out, *common)).train()
    ckpts = out / "checkpoints"
    reference = _weights(ckpts / "step-00000006")
    losses = [r["loss"] for r in _metrics(out)]
    state = json.loads((ckpts / "step-00000003" / "trainer_state.json").read_text())
    assert state["sampler"]["group"]["consumed"] == 3
    shutil.rmtree(ckpts / "step-00000006")
    (ckpts / "latest").write_text("step-00000003\n")
    resumed = Trainer(_config("tiny", out, *common)).train()
    assert resumed.history[0]["step"] == 4
    assert _max_diff(_weights(ckpts / "step-00000006"), reference) < WEIGHT_ATOL
    assert np.allclose([r["loss"] for r in _metrics(out)], losses, rtol=LOSS_RTOL)


def test_length_sorted_micro_batches_train_like_one_batch_with_less_padding(tmp_path: Path) -> None:
    common = ["train.steps=3", "train.global_batch_size=8", "checkpoint.every=0", "checkpoint.export_final=false",
              "logging.progress=false", "train.num_threads=1"]  # fmt: skip

    def first_steps(*extra: str) -> list:
        trainer = Trainer(_config("tiny", tmp_path / "probe", "train.micro_batch_size=4", *common, *extra))
        plans = [trainer._plan_step()[0] for _ in range(4)]
        return [trainer.builder.build(m, trainer.index) for micro in plans for m in micro]

    plain, ordered = first_steps(), first_steps("data.sort_micro_batches=true")
    assert sorted(i for b in ordered for i in b.indices) == sorted(i for b in plain for i in b.indices)
    assert sum(b.num_tokens for b in ordered) == sum(b.num_tokens for b in plain)
    cells = [sum(b.input_ids.numel() for b in batches) for batches in (plain, ordered)]
    assert cells[1] < cells[0], cells  # the same real tokens in fewer padded cells
    whole, split = tmp_path / "whole", tmp_path / "split"
    Trainer(_config("tiny", whole, "train.micro_batch_size=8", *common)).train()
    Trainer(_config("tiny", split, "train.micro_batch_size=4", "data.sort_micro_batches=true", *common)).train()
    losses = [[r["loss"] for r in _metrics(run)] for run in (whole, split)]
    assert np.allclose(losses[1], losses[0], rtol=LOSS_RTOL, atol=0), losses
    diff = _max_diff(_weights(whole / "checkpoints" / "step-00000003"), _weights(split / "checkpoints" / "step-00000003"))
    assert diff < WEIGHT_ATOL, diff


def test_lora_trains_adapters_only_and_merges_into_the_official_keys(tmp_path: Path) -> None:
    out = tmp_path / "lora"
    trainer = Trainer(_config("stage3-lora-tiny", out, "train.steps=3", "checkpoint.every=0"))
    trained = {n for n, p in trainer.module.named_parameters() if p.requires_grad}
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert any(n.startswith("vlm.language_model.") for n in trained)
    assert any(n.startswith("generation_decoder.decoder.") for n in trained)
    # Frozen weights are not handed to the optimizer, so they never get AdamW state.
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == len(trained)
    result = trainer.train()
    assert set(_weights(result.checkpoint)) == trained  # checkpoints hold the adapters only
    # Any checkpoint exports later from the command line, the same way the run's final export was made.
    assert main(["train", "--export", str(result.checkpoint), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "model_index.json").is_file()
    merged = InternVLUPipeline.from_pretrained(out / "export", torch_dtype=torch.float32)
    base = build_fresh_pipeline(tiny_arch(), seed=0)
    for name in ("vlm", "generation_decoder"):
        merged_sd, base_sd = getattr(merged, name).state_dict(), getattr(base, name).state_dict()
        assert merged_sd.keys() == base_sd.keys()
    moved = [
        k
        for k in base.vlm.state_dict()
        if "q_proj" in k and not torch.equal(merged.vlm.state_dict()[k], base.vlm.state_dict()[k])
    ]
    assert moved  # the adapters were folded into the base weights


def test_checkpoint_manager_only_publishes_complete_checkpoints(tmp_path: Path) -> None:
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    manager = CheckpointManager(tmp_path, env, keep_last=2)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    for step in (1, 2, 3):
        manager.save(step, model, opt, {"step": step, "sampler": {}, "world_size": 1}, {"cfg": step})
    assert manager.latest() == tmp_path / "step-00000003"
    assert sorted(p.name for p in manager.complete()) == ["step-00000002", "step-00000003"]
    (tmp_path / "step-00000004.tmp").mkdir()  # an interrupted save
    assert manager.latest() == tmp_path / "step-00000003"
    manager.clean_partial()
    assert not (tmp_path / "step-00000004.tmp").exists()
    (tmp_path / "latest").unlink()  # even without the pointer the newest complete checkpoint is found
    assert manager.latest() == tmp_path / "step-00000003"
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    state = manager.load(manager.latest(), fresh, fresh_opt)
    assert state["step"] == 3 and torch.equal(fresh.weight, model.weight)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_samples_precomputed_latents_and_the_pil_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    cache = tmp_path / "latents"
    cfg = _config("stage2-tiny", out, "train.steps=2", "checkpoint.every=0", "checkpoint.export_final=false",
                  "samples.every=2", "samples.prompts=[A red circle.]", f"data.latent_cache={cache}",
                  "data.sources=toy-anyres:2")  # fmt: skip
    from internvlu.training.precompute import precompute_latents

    counts = precompute_latents(cfg)
    assert counts["encoded"] == counts["images"] > 0
    trainer = Trainer(cfg)
    trainer.train()
    assert trainer.latents.misses == 0 and trainer.latents.hits > 0  # every latent came from the cache
    record = json.loads((out / "samples" / "step-00000002" / "samples.json").read_text())
    assert (
        record["images"][0]["prompt"] == "A red circle."
        and (out / "samples" / "step-00000002" / "00.png").is_file()
    )
    assert isinstance(record["answers"][0]["answer"], str)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # force the PIL fallback
    png = plot_losses(out / "metrics.jsonl", tmp_path / "curve.png")
    assert png is not None and Image.open(png).size == (800, 450)


def test_training_starts_from_a_checkpoint_folder_and_keeps_frozen_parts(tmp_path: Path) -> None:
    ckpt = ROOT / "tests" / "data" / "parity" / "tiny-ckpt"
    out = tmp_path / "from-ckpt"
    Trainer(_config("stage1-tiny", out, "model.init=pretrained", f"model.path={ckpt}", "train.steps=2",
                    "checkpoint.every=0")).train()  # fmt: skip
    start = InternVLUPipeline.from_pretrained(ckpt, torch_dtype=torch.float32)
    done = InternVLUPipeline.from_pretrained(out / "export", torch_dtype=torch.float32)
    vlm_a, vlm_b = start.vlm.state_dict(), done.vlm.state_dict()
    assert all(torch.equal(vlm_a[k], vlm_b[k]) for k in vlm_a)  # stage 1: the MLLM stays frozen
    key = "decoder.proj_out.weight"
    assert not torch.equal(
        start.generation_decoder.state_dict()[key], done.generation_decoder.state_dict()[key]
    )
    assert done.processor.tokenizer.get_vocab() == start.processor.tokenizer.get_vocab()


def test_bf16_mixed_precision_with_activation_checkpointing_and_accumulation(tmp_path: Path) -> None:
    # bf16 autocast over fp32 master weights, checkpointed blocks and 2 micro-batches per step.
    out = tmp_path / "bf16"
    result = Trainer(
        _config("tiny", out, "train.steps=3", "train.dtype=bfloat16", "parallel.activation_checkpointing=true",
                "train.global_batch_size=4", "train.micro_batch_size=2")  # fmt: skip
    ).train()
    losses = [r["loss"] for r in result.history]
    assert len(losses) == 3 and all(np.isfinite(losses)), losses
    trained = _weights(result.checkpoint)
    assert all(t.dtype == torch.float32 for t in trained.values())  # master weights stay fp32
