"""Speed switches and opt-in samplers: same images with every optimisation off, determinism, shapes
(tiny checkpoint, fp32 CPU; behaviour only, never timings)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from internvlu import InternVLUPipeline
from internvlu.pipeline.options import PerformanceOptions
from internvlu.sampling import SamplerOptions, StepCache
from internvlu.sampling.denoise import denoise

DATA = Path(__file__).parent / "data" / "parity"
CKPT = DATA / "tiny-ckpt"


@pytest.fixture(scope="module")
def pipe() -> InternVLUPipeline:
    p = InternVLUPipeline.from_pretrained(CKPT, torch_dtype=torch.float32)
    p.set_progress_bar_config(disable=True)
    return p


def _arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def _gen(pipe, **kw):
    kw = {"height": 64, "width": 64, "num_inference_steps": 3, "seed": 5, **kw}
    return pipe.generate(kw.pop("prompt", "a red cube on a table"), **kw)


@pytest.mark.parametrize("switch", ["condition_once", "batch_guidance", "dedupe_guidance"])
def test_each_switch_off_gives_the_same_images(pipe, switch):
    img = Image.open(DATA / "golden" / "inputs" / "img_a.png")
    on_t2i, on_edit = _gen(pipe).image, _gen(pipe, images=img, prompt="make it red").image
    pipe.set_performance(**{switch: False})
    try:
        off_t2i, off_edit = _gen(pipe).image, _gen(pipe, images=img, prompt="make it red").image
    finally:
        pipe.set_performance(**{switch: True})
    assert np.abs(_arr(on_t2i) - _arr(off_t2i)).max() <= 1
    assert np.abs(_arr(on_edit) - _arr(off_edit)).max() <= 1


def test_dedupe_runs_identical_rows_once(pipe):
    rows: list[int] = []
    original = pipe.vlm.forward_hidden_states
    pipe.vlm.forward_hidden_states = lambda ids, *a, **k: rows.append(ids.shape[0]) or original(ids, *a, **k)
    sizes: list[int] = []
    decoder_forward = pipe.generation_decoder.forward
    pipe.generation_decoder.forward = lambda x, *a, **k: (
        sizes.append(x.shape[0]) or decoder_forward(x, *a, **k)
    )
    try:
        _gen(pipe, prompt=["a cat", "a dog"], num_inference_steps=2)
        # 2 conditional rows + one dropped row: the dropped prompt is the same for every prompt and both blocks
        assert rows == [3] and sizes == [
            4,
            4,
        ]  # the MMDiT: 2 prompts x (conditional + one shared dropped block)
        rows.clear()
        sizes.clear()
        pipe.set_performance(dedupe_guidance=False, batch_guidance=False)
        _gen(pipe, prompt=["a cat", "a dog"], num_inference_steps=2)
        assert rows == [6] and sizes == [2, 2, 2] * 2  # three blocks, one MMDiT call per block and step
    finally:
        del pipe.vlm.forward_hidden_states, pipe.generation_decoder.forward
        pipe.set_performance(dedupe_guidance=True, batch_guidance=True)


def test_performance_options_validation(pipe):
    with pytest.raises(TypeError, match="warp_speed"):
        pipe.set_performance(warp_speed=True)
    with pytest.raises(TypeError, match="condition_once"):
        pipe.set_performance(condition_once="yes")
    off = PerformanceOptions.all_off()
    assert not any(vars(off).values())
    twin = pipe.copy()
    twin.set_performance(batch_guidance=False)
    assert pipe.performance.batch_guidance  # copies do not share switches


@pytest.mark.parametrize(
    ("name", "order"),
    [("default", None), ("dpm++2m", None), ("dpm++3m", None), ("unipc", None), ("unipc", 3)],
)
def test_samplers_are_deterministic_and_keep_the_size(pipe, name, order):
    pipe.set_sampler(name, order=order)
    try:
        a = _gen(pipe, num_inference_steps=5, height=48, width=80)
        b = _gen(pipe, num_inference_steps=5, height=48, width=80)
    finally:
        pipe.set_sampler()
    assert a.image.size == (80, 48)
    assert np.array_equal(_arr(a.image), _arr(b.image))


def test_dpm2m_is_the_default_and_unipc_differs(pipe):
    base = _arr(_gen(pipe, num_inference_steps=6).image)
    pipe.set_sampler("dpm++2m")
    same = _arr(_gen(pipe, num_inference_steps=6).image)
    pipe.set_sampler("unipc")
    other = _arr(_gen(pipe, num_inference_steps=6).image)
    pipe.set_sampler()
    assert np.array_equal(base, same)
    assert not np.array_equal(base, other)


def test_step_cache_calls_the_model_less_and_is_deterministic(pipe):
    calls = []
    forward = pipe.generation_decoder.forward
    pipe.generation_decoder.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    cache = StepCache(interval=2, warmup=2, cooldown=1)
    try:
        pipe.set_sampler("default", step_cache=cache)
        a = _gen(pipe, num_inference_steps=8).image
        assert (
            len(calls) == cache.model_calls(8) == 6
        )  # steps 0, 1 (warmup), 2, 4, 6 (every 2nd), 7 (cooldown)
        b = _gen(pipe, num_inference_steps=8).image
        pipe.set_sampler()
        full = _gen(pipe, num_inference_steps=8).image
    finally:
        del pipe.generation_decoder.forward
        pipe.set_sampler()
    assert np.array_equal(_arr(a), _arr(b))
    assert not np.array_equal(_arr(a), _arr(full))
    assert [cache.computes(i, 8) for i in range(8)] == [True, True, True, False, True, False, True, True]


def test_step_cache_interval_one_is_exact():
    torch.manual_seed(0)
    from diffusers import DPMSolverMultistepScheduler

    from internvlu.presets import RELEASED_SCHEDULER_CONFIG

    def velocity(x, t):
        v = torch.tanh(x) * (float(t) / 1000)
        return v, 0.5 * v, 0.25 * v

    results = []
    for cache in (None, StepCache(interval=1, warmup=1, cooldown=0)):
        scheduler = DPMSolverMultistepScheduler(**RELEASED_SCHEDULER_CONFIG)
        scheduler.set_timesteps(6)
        results.append(denoise(velocity, scheduler, torch.ones(1, 2, 4, 4), 4.5, 2.0, step_cache=cache))
    assert torch.equal(results[0], results[1])


def test_sampler_validation(pipe):
    with pytest.raises(ValueError, match="euler_ancestral"):
        pipe.set_sampler("euler_ancestral")
    with pytest.raises(ValueError, match="order"):
        pipe.set_sampler("unipc", order=5)
    with pytest.raises(ValueError, match="dpm\\+\\+3m"):
        SamplerOptions(name="dpm++2m", order=3)
    with pytest.raises(ValueError, match="interval"):
        StepCache(interval=0)
    with pytest.raises(ValueError, match="warmup"):
        StepCache(warmup=0)
    assert pipe.set_sampler("default", step_cache=3).step_cache == StepCache(interval=3)
    pipe.set_sampler()
    assert pipe.sampler.is_default
