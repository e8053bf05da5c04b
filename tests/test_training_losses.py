"""Loss conventions against the inference code: the scheduler's flow convention, the VLM's shifted CE, latents,
and the training forward's options (activation checkpointing, sharding dummies) leaving gradients unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from internvlu.pipeline import stages
from internvlu.presets import RELEASED_SCHEDULER_CONFIG
from internvlu.sampling.denoise import denoise
from internvlu.training.batching import BatchBuilder
from internvlu.training.config import DataConfig, LossConfig, ResolutionConfig
from internvlu.training.dataset import MixtureSampler, TaskIndex
from internvlu.training.latents import LatentEncoder
from internvlu.training.losses import (
    IGNORE_INDEX,
    edit_region_weights,
    flow_loss_per_sample,
    model_timesteps,
    noisy_latents,
    ntp_loss_sum,
    ntp_units,
    sample_sigma,
    shift_sigma,
    supervised_turns,
    velocity_target,
)
from internvlu.training.model_factory import build_fresh_pipeline, tiny_arch
from internvlu.training.module import InternVLUForTraining
from internvlu.training.parallelize import apply_activation_checkpointing
from internvlu.training.toy_data import toy_samples
from internvlu.training.trainer import Trainer, vit_grid_of


@pytest.fixture(scope="module")
def pipe():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_fresh_pipeline(tiny_arch(), seed=0)
    torch.set_num_threads(threads)


def test_an_exact_velocity_in_the_training_convention_denoises_with_the_inference_scheduler() -> None:
    z = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    scheduler = DPMSolverMultistepScheduler(**RELEASED_SCHEDULER_CONFIG)
    scheduler.set_timesteps(20)

    def velocity(x: torch.Tensor, t: torch.Tensor):
        sigma = scheduler.sigmas[scheduler.step_index or 0]
        # Training convention: x = (1 - s) z + s eps, v = eps - z  =>  v = (x - z) / s.
        eps = (x - (1 - sigma) * z) / sigma
        v = velocity_target(z, eps)
        assert torch.allclose(noisy_latents(z, eps, sigma.expand(2)), x, atol=1e-5)
        # The scheduler's integer timestep is what model_timesteps(sigma) gives the head in training.
        assert int(t) == int(model_timesteps(sigma))
        return v, v, v

    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    out = denoise(velocity, scheduler, noise, 4.5, 2.0)
    assert torch.allclose(out, z, atol=1e-4)


def test_training_sigmas_use_the_scheduler_shift() -> None:
    scheduler = DPMSolverMultistepScheduler(**RELEASED_SCHEDULER_CONFIG)
    scheduler.set_timesteps(20)
    # The scheduler's flow sigmas: shift(1 - linspace(1, 1/1000, n + 1)), high to low, last one dropped.
    expected = shift_sigma(1 - np.linspace(1, 1 / 1000, 21), 3.0)[::-1][:-1]
    assert np.allclose(scheduler.sigmas[:-1].numpy(), expected, atol=1e-5)
    rng = np.random.default_rng(0)
    s = np.array([sample_sigma(rng, 0.0, 1.0, 3.0) for _ in range(20000)])
    # P(sigma < shift(1/2)) = P(u < 0) = 1/2 for the logit-normal with mean 0.
    assert np.mean(s < shift_sigma(0.5, 3.0)) == pytest.approx(0.5, abs=0.02)


def test_ntp_loss_equals_the_vlm_shifted_cross_entropy(pipe) -> None:
    vlm = pipe.vlm
    ids = torch.randint(0, 700, (2, 9), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :4] = -100
    labels[1, :7] = -100
    mask = torch.ones_like(ids)
    ref = vlm(ids, mask, labels=labels).loss
    hidden = vlm.forward_hidden_states(ids, mask)[-1]
    total, count = ntp_loss_sum(hidden, labels, vlm.language_model.lm_head)
    assert count == (9 - 4) + (9 - 7)  # labelled positions after the shift
    assert torch.allclose(total / count, ref, atol=1e-5)


def test_flow_loss_ignores_the_padding_of_smaller_grids() -> None:
    pred = torch.zeros(2, 16, 8, 12)
    target = torch.zeros(2, 16, 8, 12)
    target[1, :, :, 8:] = 100.0  # outside sample 1's 8x8 grid
    target[0, :, 0, 0] = 1.0
    losses = flow_loss_per_sample(pred, target, [(8, 12), (8, 8)])
    assert losses[1] == 0 and losses[0] == pytest.approx(16 / (16 * 8 * 12))


def test_latent_cache_returns_what_the_vae_gives(pipe, tmp_path: Path) -> None:
    images = [torch.rand(3, 64, 64) * 2 - 1, torch.rand(3, 64, 96) * 2 - 1]
    plain = LatentEncoder(pipe.vae, torch.device("cpu")).encode(images)
    # Same normalisation as the pipeline's reference encoding.
    assert torch.allclose(plain[0], stages.encode_references(pipe.vae, images[0][None])[0], atol=1e-5)
    cached = LatentEncoder(pipe.vae, torch.device("cpu"), cache_dir=tmp_path)
    first = cached.encode(images)
    again = cached.encode(images)
    assert cached.misses == 2 and cached.hits == 2
    assert all(torch.allclose(a, b, atol=1e-6) and torch.equal(b, c) for a, b, c in zip(plain, first, again))
    sampled = LatentEncoder(pipe.vae, torch.device("cpu"), sampling="sample").encode(images, seeds=[5, 6])
    assert not torch.allclose(sampled[0], plain[0]) and sampled[1].shape == plain[1].shape


def _micro_batch(pipe, seed: int = 0, weights: dict | None = None):
    samples = toy_samples(2)
    index = TaskIndex(samples)
    weights = weights or {"t2i": 1, "edit": 1, "understanding": 1, "think": 1}
    sampler = MixtureSampler(index.counts(), weights, seed=seed)
    builder = BatchBuilder(pipe.processor, DataConfig(resolution=ResolutionConfig(size=64), use_reference_latents=True),
                           LossConfig(), seed)  # fmt: skip
    return builder.build(sampler.take(6), index)


def _grads(pipe, batch, checkpointing: bool, keep_all: bool) -> dict[str, torch.Tensor]:
    from internvlu.training.config import TrainConfig

    cfg = TrainConfig()
    cfg.loss.ntp_weight = 1.0
    module = InternVLUForTraining(pipe.vlm, pipe.generation_decoder, pipe.processor.token_ids(),
                                  vit_grid_of(pipe.vlm), keep_all_modules=keep_all)  # fmt: skip
    module.train()
    if checkpointing:
        apply_activation_checkpointing(module)
    trainer = Trainer.__new__(Trainer)  # only prepare_inputs is needed: no data, no optimizer
    trainer.config, trainer.device, trainer.vit_grid = cfg, torch.device("cpu"), vit_grid_of(pipe.vlm)
    trainer.latents = LatentEncoder(pipe.vae, torch.device("cpu"))
    inputs = trainer.prepare_inputs(batch)
    module.zero_grad(set_to_none=True)
    sums = module(inputs)
    (sums.ntp_sum / max(sums.ntp_tokens, 1) + sums.flow_sum / max(sums.flow_samples, 1) + sums.aux).backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_checkpointing_and_sharding_dummies_leave_gradients_unchanged(pipe) -> None:
    batch = _micro_batch(pipe)
    assert batch.num_ntp_tokens > 0 and batch.gen
    fresh = lambda: build_fresh_pipeline(tiny_arch(), seed=0)
    base = _grads(fresh(), batch, checkpointing=False, keep_all=False)
    ac = _grads(fresh(), batch, checkpointing=True, keep_all=False)
    dummy = _grads(fresh(), batch, checkpointing=False, keep_all=True)
    assert base.keys() == ac.keys()
    for name, g in base.items():
        assert torch.allclose(g, ac[name], atol=1e-6), name
        assert torch.allclose(g, dummy[name], atol=1e-6), name


def test_sharding_dummies_touch_unused_modules_with_zero_gradients(pipe) -> None:
    batch = _micro_batch(pipe, weights={"understanding": 1})  # no generation row: the head is unused
    assert not batch.gen
    fresh = lambda: build_fresh_pipeline(tiny_arch(), seed=0)
    base = _grads(fresh(), batch, checkpointing=False, keep_all=False)
    dummy = _grads(fresh(), batch, checkpointing=False, keep_all=True)
    head = [n for n in dummy if n.startswith("generation_decoder.decoder.")]
    assert head and not any(n in base for n in head)
    assert all(float(dummy[n].abs().max()) == 0.0 for n in head)  # every process joins the head's reductions
    for name, g in base.items():
        assert torch.allclose(g, dummy[name], atol=1e-6), name


def test_embed_std_makes_the_head_conditioning_tell_words_apart() -> None:
    """ModelArch.llm_embed_std redraws the fresh LLM's token and special-token embeddings; with it the hidden
    states the head reads at "red" and "blue" in the same prompt differ (the 0.02 default leaves them nearly
    parallel); ModelArch.dit_timestep_scale reaches the decoder config."""
    import dataclasses

    from internvlu.pipeline import stages

    def colour_token_cosine(p) -> float:
        ids = p.processor.token_ids()
        states = []
        for prompt in ("a photo of a red circle", "a photo of a blue circle"):
            text = f"<|im_start|>system\nx<|im_end|>\n<|im_start|>user\n{prompt}<img>"
            input_ids = torch.tensor([p.processor.tokenizer(text)["input_ids"]])
            mask = torch.ones_like(input_ids)
            with torch.no_grad():
                out = p.vlm.language_model.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
            hidden = torch.cat([out.hidden_states[-1], out.hidden_states[-2]], dim=-1)
            spans = stages.conditioning_spans(input_ids, mask, ids["<|im_start|>"], ids["<img>"])
            got, _ = stages.gather_conditioning(hidden, input_ids, mask, spans, ids["<IMG_CONTEXT>"])
            states.append(got[0])
        a, b = states
        differ = [i for i in range(len(a)) if not torch.equal(a[i], b[i])]
        first = differ[0]  # the colour word: the first position whose state depends on it
        return float(torch.nn.functional.cosine_similarity(a[first], b[first], dim=0))

    base = tiny_arch()
    wide = dataclasses.replace(base, llm_embed_std=0.5, dit_timestep_scale=0.001)
    narrow_pipe, wide_pipe = build_fresh_pipeline(base, seed=0), build_fresh_pipeline(wide, seed=0)
    emb = wide_pipe.vlm.language_model.get_input_embeddings().weight
    assert abs(float(emb.std()) - 0.5) < 0.05
    assert abs(float(wide_pipe.vlm.special_token_embedding.weight.std()) - 0.5) < 0.1
    assert wide_pipe.generation_decoder.decoder.config.timestep_scale == 0.001
    assert narrow_pipe.generation_decoder.decoder.config.timestep_scale == 1.0
    narrow_cos, wide_cos = colour_token_cosine(narrow_pipe), colour_token_cosine(wide_pipe)
    assert wide_cos < 0.1 and narrow_cos > 0.2


def test_adaln_zero_init_starts_the_head_at_zero_and_keeps_the_vlm() -> None:
    """ModelArch.dit_init="adaln_zero": the fresh head predicts exactly 0 (every block the identity) and still
    learns (the zeroed output projection gets gradient first); the Xavier draws happen either way, so the VLM and
    the head's other weights equal the default init's."""
    import dataclasses

    base = tiny_arch()
    zero = dataclasses.replace(base, dit_init="adaln_zero")
    xav, ada = build_fresh_pipeline(base, seed=0), build_fresh_pipeline(zero, seed=0)
    for (name, a), b in zip(xav.vlm.state_dict().items(), ada.vlm.state_dict().values()):
        assert torch.equal(a, b), name
    head = ada.generation_decoder.decoder
    assert torch.equal(head.transformer_blocks[0].attn.to_q.weight, xav.generation_decoder.decoder.transformer_blocks[0].attn.to_q.weight)
    c = head.config.latent_channels
    p = head.config.patch_size
    width = ada.generation_decoder.config.input_hidden_size
    args = (
        torch.randn(2, c, 2 * p, 2 * p), torch.tensor([300.0, 700.0]), [torch.randn(5, width)] * 2,
        [torch.zeros(5, dtype=torch.bool)] * 2, torch.tensor([[1, 2 * p, 2 * p]] * 2),
        [torch.zeros(0, 3, dtype=torch.long)] * 2, None,
    )  # fmt: skip
    assert torch.count_nonzero(ada.generation_decoder(*args)) == 0
    assert torch.count_nonzero(xav.generation_decoder(*args)) > 0
    opt = torch.optim.SGD(ada.generation_decoder.parameters(), lr=0.1)
    ada.generation_decoder(*args).sub(1.0).pow(2).mean().backward()
    opt.step()
    assert torch.count_nonzero(ada.generation_decoder(*args)) > 0
    with pytest.raises(ValueError, match="dit_init"):
        dataclasses.replace(base, dit_init="zeros").validate()


def test_patch_one_head_builds_and_generates() -> None:
    """ModelArch.dit_patch_size=1: one head token per latent pixel (in_channels = latent channels); the pipeline
    still generates at the default size, and a bad patch size is a clear config error."""
    import dataclasses

    arch = dataclasses.replace(tiny_arch(), dit_patch_size=1)
    pipe = build_fresh_pipeline(arch, seed=0)
    head = pipe.generation_decoder.decoder
    assert head.config.patch_size == 1 and head.config.in_channels == arch.vae_z_dim
    out = pipe.generate(["a photo of a red circle"], num_inference_steps=2, seed=0)
    side = arch.gen_default_size
    assert len(out.images) == 1 and out.images[0].size == (side, side)
    assert len(set(out.images[0].getdata())) > 1  # drawn, not a constant fill
    with pytest.raises(ValueError, match="dit_patch_size"):
        dataclasses.replace(tiny_arch(), dit_patch_size=0).validate()


def test_edit_region_weights_favour_the_changed_pixels() -> None:
    ref = torch.zeros(4, 8, 8)
    target = ref.clone()
    target[2, 3, 4] = 1.0  # one changed latent pixel
    w = edit_region_weights(target, ref, weight=9.0, threshold=0.25)
    assert w.shape == (8, 8) and w.mean().item() == pytest.approx(1.0)
    grown = w > w.min()
    assert grown.sum() == 9 and grown[2:5, 3:6].all()  # the pixel and its 8 neighbours
    assert w.max() / w.min() == pytest.approx(10.0)
    assert torch.equal(edit_region_weights(ref, ref, 9.0, 0.25), torch.ones(8, 8))  # nothing changed: uniform
    # The weighted MSE is the weight-averaged squared error; a None weight map is the plain MSE.
    pred, tgt = torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    tgt[:, :, 3, 4] = 2.0
    losses = flow_loss_per_sample(pred, tgt, [(8, 8), (8, 8)], [w, None])
    assert losses[1] == pytest.approx(4 * 4 / (4 * 64))
    assert losses[0] == pytest.approx(float((4 * w[3, 4] * 4) / (4 * 64)))
    with pytest.raises(ValueError, match="edit_region_weight"):
        LossConfig(edit_region_weight=-1.0).validate()


def test_trainer_weights_only_edit_samples(pipe) -> None:
    from internvlu.training.config import TrainConfig

    batch = _micro_batch(pipe, weights={"t2i": 1, "edit": 1})
    cfg = TrainConfig()
    cfg.loss.edit_region_weight = 10.0
    trainer = Trainer.__new__(Trainer)
    trainer.config, trainer.device, trainer.vit_grid = cfg, torch.device("cpu"), vit_grid_of(pipe.vlm)
    trainer.latents = LatentEncoder(pipe.vae, torch.device("cpu"))
    inputs = trainer.prepare_inputs(batch)
    assert inputs.flow_weights is not None and inputs.cond_latents is not None
    kinds = [bool(refs) for refs in inputs.cond_latents]
    assert any(kinds) and not all(kinds)
    for refs, w in zip(inputs.cond_latents, inputs.flow_weights):
        assert (w is None) == (len(refs) != 1)
        if w is not None:
            assert w.mean().item() == pytest.approx(1.0, abs=1e-5)
    cfg.loss.edit_region_weight = 0.0
    assert trainer.prepare_inputs(batch).flow_weights is None


def test_turn_reduction_weighs_each_answer_equally() -> None:
    torch.manual_seed(0)
    vocab, dim = 11, 8
    head = torch.nn.Linear(dim, vocab)
    hidden = torch.randn(2, 9, dim)
    labels = torch.full((2, 9), IGNORE_INDEX)
    labels[0, 2:5] = torch.tensor([1, 2, 3])  # row 0: a 3-token turn, then a 1-token turn
    labels[0, 7] = 4
    labels[1, 1:8] = torch.arange(7)  # row 1: one 7-token turn starting right after the row start
    ids, turns = supervised_turns(labels)
    assert turns == 3 and ids.tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2]
    token_sum, n = ntp_loss_sum(hidden, labels, head)
    turn_sum, t = ntp_loss_sum(hidden, labels, head, "turn")
    assert (n, t) == (11, 3) and ntp_units(labels, "token") == 11 and ntp_units(labels, "turn") == 3
    per = torch.nn.functional.cross_entropy(head(hidden[:, :-1]).flatten(0, 1), labels[:, 1:].flatten(),
                                            ignore_index=IGNORE_INDEX, reduction="none").view(2, 8)  # fmt: skip
    expected = per[0, 1:4].mean() + per[0, 6] + per[1, 0:7].mean()
    assert turn_sum.item() == pytest.approx(expected.item(), rel=1e-5)
    assert token_sum.item() == pytest.approx(per[labels[:, 1:] != IGNORE_INDEX].sum().item(), rel=1e-5)
    with pytest.raises(ValueError, match="ntp_reduction"):
        LossConfig(ntp_reduction="sample").validate()
