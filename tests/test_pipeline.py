"""End-to-end pipeline tests on the tiny parity checkpoint: parity with the reference's goldens,
invariants (batch = singles, determinism, save/load), the reference bugs we fix, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from internvlu import InternVLUPipeline
from internvlu.checkpoint.io import CheckpointError

DATA = Path(__file__).parent / "data" / "parity"
CKPT = DATA / "tiny-ckpt"
GOLDEN = DATA / "golden"


@pytest.fixture(scope="module")
def pipe() -> InternVLUPipeline:
    p = InternVLUPipeline.from_pretrained(CKPT, torch_dtype=torch.float32)
    p.set_progress_bar_config(disable=True)
    return p


def _case(name: str) -> tuple[dict, dict]:
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    arrays = dict(np.load(GOLDEN / f"{name}.npz"))
    return meta, arrays


def _inputs(meta: dict):
    names = meta.get("images")
    if not names:
        return None
    images = [Image.open(GOLDEN / "inputs" / f"{n}.png").convert("RGB") for n in names]
    return images[0] if isinstance(meta["prompt"], str) else images


def _call(pipe: InternVLUPipeline, name: str):
    meta, arrays = _case(name)
    kwargs = dict(meta["call_kwargs"])
    if meta.get("generator_seed") is not None:
        kwargs["generator"] = torch.Generator("cpu").manual_seed(meta["generator_seed"])
    torch.manual_seed(meta["global_seed"])
    out = pipe(meta["prompt"], image=_inputs(meta), generation_mode=meta["generation_mode"], **kwargs)
    return out, arrays


def _max_pixel_diff(images: list[Image.Image], golden: np.ndarray) -> int:
    ours = np.stack([np.asarray(im) for im in images]).astype(int)
    assert ours.shape == golden.shape, (ours.shape, golden.shape)
    return int(np.abs(ours - golden.astype(int)).max())


# ---------------------------------------------------------------------- parity
@pytest.mark.parametrize("name", ["a_text_understanding", "e1_batch_text", "g_text_only"])
def test_text_parity(pipe, name):
    out, arrays = _call(pipe, name)
    assert out.images is None
    np.testing.assert_array_equal(out.generate_output.cpu().numpy(), arrays["out.token_ids"])


@pytest.mark.parametrize("name", ["b_t2i", "c_edit", "e2_batch_t2i"])
def test_image_parity(pipe, name):
    out, arrays = _call(pipe, name)
    assert out.generate_output is None
    assert _max_pixel_diff(out.images, arrays["out.images"]) <= 2


def test_think_parity_chain_of_thought_ids(pipe):
    # The reference's image in this case comes from its buggy splice; the thought ids must match.
    out, arrays = _call(pipe, "d_text_image_t2i")
    np.testing.assert_array_equal(out.generate_output.cpu().numpy(), arrays["out.token_ids"])
    assert len(out.images) == 1 and out.images[0].size == (64, 64)


def test_think_splice_keeps_every_thought_token(pipe):
    from internvlu.pipeline import stages

    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10], [0, 7, 8, 9], [0, 0, 7, 8], [0, 0, 0, 7], [0, 0, 0, 7]])
    mask = (ids != 0).long()
    gen = torch.tensor([[11, 12, 99, 0], [13, 14, 15, 16]])  # row 0 stops at 99; row 1 never stops
    new_ids, new_mask, kept = stages.splice_thoughts(ids, mask, gen, 2, [99], img_start_id=50, pad_id=0)
    assert kept == [[11, 12], [13, 14, 15, 16]]
    rows = [r[m.bool()].tolist() for r, m in zip(new_ids, new_mask)]
    assert rows[0] == [5, 6, 11, 12, 50]
    assert rows[1] == [7, 8, 9, 10, 13, 14, 15, 16, 50]
    assert rows[2] == [7, 8, 9, 50] and rows[5] == [7, 50]
    assert int(new_mask.sum()) == sum(len(r) for r in rows)  # padding is never attended


# ---------------------------------------------------------------------- invariants
def _gen(pipe, prompt, seed, **kw):
    return pipe.generate(prompt, height=64, width=64, num_inference_steps=3, seed=seed, **kw)


def test_same_seed_same_images(pipe):
    a = _gen(pipe, "A red cube on a blue table.", 7).images[0]
    b = _gen(pipe, "A red cube on a blue table.", 7).images[0]
    c = _gen(pipe, "A red cube on a blue table.", 8).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_batch_equals_singles_generation(pipe):
    prompts = ["A red cube on a blue table.", "Two green circles on a white background, drawn flat."]
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    batch = pipe.generate(prompts, height=64, width=64, num_inference_steps=3, generator=gens).images
    singles = [
        pipe.generate(
            p, height=64, width=64, num_inference_steps=3, generator=torch.Generator().manual_seed(s)
        ).image
        for p, s in zip(prompts, (1, 2))
    ]
    for b, s in zip(batch, singles):
        assert np.abs(np.asarray(b).astype(int) - np.asarray(s).astype(int)).max() <= 1


def test_batch_equals_singles_chat(pipe):
    img_a = Image.open(GOLDEN / "inputs" / "img_a.png")
    prompts = ["What is shown in the picture?", "Describe the colors of the image in detail, please."]
    batch = pipe.chat(prompts, [img_a, None], max_new_tokens=6)
    singles = [pipe.chat(prompts[0], img_a, max_new_tokens=6), pipe.chat(prompts[1], max_new_tokens=6)]
    assert batch.token_ids == [s.token_ids[0] for s in singles]


def test_num_images_per_prompt(pipe):
    # The reference crashes for n > 1.
    res = pipe.generate(
        ["a cat", "a dog"], height=64, width=48, num_inference_steps=2, seed=3, num_images_per_prompt=2
    )
    assert len(res.images) == 4 and all(im.size == (48, 64) for im in res.images)
    arr = [np.asarray(im) for im in res.images]
    assert not np.array_equal(arr[0], arr[1])  # different noise per copy
    out = pipe(
        "a cat", generation_mode="image", height=64, width=64, num_inference_steps=2, num_images_per_prompt=3
    )
    assert len(out.images) == 3


def test_several_images_in_image_modes(pipe):
    # The reference crashes on more than one input image in image modes.
    img_a = Image.open(GOLDEN / "inputs" / "img_a.png")
    img_b = Image.open(GOLDEN / "inputs" / "img_b.png")
    # Two references need a generated grid of at least 6x6 tokens (the reference's RoPE-frame rule).
    kw = dict(height=96, width=96, num_inference_steps=2, seed=0)
    res = pipe.edit("Put the object of the first image into the second", [img_a, img_b], **kw)
    assert len(res.images) == 1
    single = pipe.edit("Put the object of the first image into the second", img_a, **kw)
    assert not np.array_equal(np.asarray(res.image), np.asarray(single.image))
    think = pipe.edit("Combine them", [img_a, img_b], think=True, max_thought_tokens=4, **kw)
    assert think.thoughts is not None and len(think.thoughts) == 1


def test_batched_edit_with_different_sizes(pipe):
    img_a = Image.open(GOLDEN / "inputs" / "img_a.png")
    img_b = Image.open(GOLDEN / "inputs" / "img_b.png")
    out = pipe(["make it red", "make it blue"], image=[img_a, img_b], generation_mode="image",
               height=64, width=80, num_inference_steps=2, all_cfg_scale=3.0, part_cfg_scale=1.2)  # fmt: skip
    assert [im.size for im in out.images] == [(80, 64), (80, 64)]


def test_think_mode_returns_thought(pipe):
    res = pipe.generate("Draw the colour of grass", think=True, max_thought_tokens=5, height=64, width=64,
                        num_inference_steps=2, seed=0)  # fmt: skip
    assert isinstance(res.thought, str)
    assert res.settings["all_cfg_scale"] == 3.5 and res.settings["part_cfg_scale"] == 1.5


def test_non_multiple_of_16_size_is_resized(pipe):
    res = pipe.generate("a cat", height=70, width=90, num_inference_steps=2, seed=0)
    assert res.image.size == (90, 70)


def test_stream_chat_matches_chat(pipe):
    pieces = list(pipe.stream_chat("Hello world! How are you today?", max_new_tokens=8))
    assert (
        "".join(pieces).strip() == pipe.chat("Hello world! How are you today?", max_new_tokens=8).text.strip()
    )


def test_progress_bar_can_be_turned_off(pipe, capsys):
    pipe.generate("a cat", height=64, width=64, num_inference_steps=2, seed=0, progress=False)
    assert "denoising" not in capsys.readouterr().err
    pipe.generate("a cat", height=64, width=64, num_inference_steps=2, seed=0, progress=True)
    assert "denoising" in capsys.readouterr().err


# ---------------------------------------------------------------------- loading / saving
def test_save_load_round_trip_is_exact(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "a")
    again = InternVLUPipeline.from_pretrained(tmp_path / "a", torch_dtype=torch.float32)
    for name in ("vlm", "generation_decoder", "vae"):
        sa, sb = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert json.loads((tmp_path / "a" / "model_index.json").read_text())["vlm"] == [
        "internvlu.vlm",
        "InternVLUChatModel",
    ]
    for sub in ("vlm", "generation_decoder"):
        assert json.loads((tmp_path / "a" / sub / "config.json").read_text()) == json.loads(
            (CKPT / sub / "config.json").read_text()
        )
    again.set_progress_bar_config(disable=True)
    a = _gen(pipe, "a red cube", 5).image
    b = _gen(again, "a red cube", 5).image
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_sharded_fp32_checkpoint_loads(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "s", max_shard_size="200KB")
    shards = sorted(p.name for p in (tmp_path / "s" / "generation_decoder").glob("model-*.safetensors"))
    assert (
        len(shards) > 1 and (tmp_path / "s" / "generation_decoder" / "model.safetensors.index.json").is_file()
    )
    again = InternVLUPipeline.from_pretrained(tmp_path / "s")
    sa, sb = pipe.generation_decoder.state_dict(), again.generation_decoder.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bf16_close_to_fp32(pipe):
    bf = InternVLUPipeline.from_pretrained(CKPT, torch_dtype=torch.bfloat16)
    bf.set_progress_bar_config(disable=True)
    assert bf.dtype == torch.bfloat16
    a = np.asarray(_gen(pipe, "a red cube", 4).image).astype(float)
    b = np.asarray(_gen(bf, "a red cube", 4).image).astype(float)
    assert np.abs(a - b).mean() < 12  # random tiny weights amplify rounding; same picture overall


def test_missing_component_is_an_error(tmp_path):
    shutil.copytree(CKPT, tmp_path / "ck")
    shutil.rmtree(tmp_path / "ck" / "vae")
    with pytest.raises(CheckpointError, match="vae"):
        InternVLUPipeline.from_pretrained(tmp_path / "ck")


def test_wrong_weights_are_listed(tmp_path):
    from safetensors.torch import load_file, save_file

    shutil.copytree(CKPT, tmp_path / "ck")
    path = tmp_path / "ck" / "generation_decoder" / "model.safetensors"
    state = load_file(str(path))
    state.pop("encoder_padding_token")
    state["decoder.img_in.weight"] = torch.zeros(3, 3)
    state["surprise.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as info:
        InternVLUPipeline.from_pretrained(tmp_path / "ck")
    message = str(info.value)
    assert (
        "encoder_padding_token" in message
        and "surprise.weight" in message
        and "decoder.img_in.weight" in message
    )


def test_not_a_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        InternVLUPipeline.from_pretrained("InternVL-U/InternVL-U")


# ---------------------------------------------------------------------- bad input
def test_bad_inputs(pipe, tmp_path):
    with pytest.raises(ValueError, match="generation_mode"):
        pipe("hi", generation_mode="video")
    with pytest.raises(TypeError, match="guidance_scale"):
        pipe("hi", generation_mode="image", guidance_scale=3.0)
    with pytest.raises((TypeError, ValueError), match="int"):
        pipe("hi", generation_mode="image", image=12345, num_inference_steps=1)
    with pytest.raises(ValueError, match="height"):
        pipe.generate("a cat", height=0, width=64)
    with pytest.raises(ValueError, match="-32"):
        pipe.generate("a cat", height=-32, width=64)
    with pytest.raises(ValueError, match="100000"):
        pipe.generate("a cat", height=100000, width=64)
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe.generate("a cat", height=64, width=64, num_inference_steps=0)
    with pytest.raises(ValueError, match="prompt"):
        pipe.generate("   ", height=64, width=64)
    with pytest.raises(ValueError, match="2"):
        pipe(["a", "b"], image=[Image.new("RGB", (32, 32))], generation_mode="image")
    truncated = tmp_path / "broken.png"
    data = (GOLDEN / "inputs" / "img_a.png").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="broken.png"):
        pipe.chat("what is this?", str(truncated))
    with pytest.raises(ValueError, match="missing.png"):
        pipe.chat("what is this?", str(tmp_path / "missing.png"))


def test_model_cpu_offload_gives_the_same_images(pipe):
    a = _gen(pipe, "a red cube", 11).image
    twin = InternVLUPipeline.from_pretrained(CKPT)
    twin.set_progress_bar_config(disable=True)
    twin.enable_model_cpu_offload(device="cpu")  # the same mechanism that moves parts to a GPU and back
    b = _gen(twin, "a red cube", 11).image
    assert np.array_equal(np.asarray(a), np.asarray(b))
    twin.disable_model_cpu_offload()
    assert twin.device.type == "cpu"


def test_checkpoint_sets_default_guidance_and_shift(pipe):
    # The release's defaults (the reference's fixed values) unless the decoder config names its own.
    assert pipe.default_guidance(False) == (4.5, 2.0) and pipe.default_guidance(True) == (3.5, 1.5)
    assert pipe.default_timestep_shift() == 3.0
    config = pipe.generation_decoder.config
    kw = {"num_inference_steps": 2, "height": 32, "width": 32}
    explicit = pipe("a cat", generation_mode="image", all_cfg_scale=2.0, part_cfg_scale=1.0, timestep_shift=1.0,
                    generator=torch.Generator().manual_seed(0), progress=False, **kw).images[0]  # fmt: skip
    try:
        config.extra["default_image_guidance"] = [2.0, 1.0]
        config.flow_shift = 1.0
        result = pipe.generate("a cat", seed=0, progress=False, **kw)
        assert (result.settings["all_cfg_scale"], result.settings["part_cfg_scale"]) == (2.0, 1.0)
        assert result.settings["timestep_shift"] == 1.0
        assert np.array_equal(np.asarray(result.images[0]), np.asarray(explicit))
        # The typed call takes the shift too: naming the default gives the same image, another shift another one.
        named = pipe.generate("a cat", seed=0, progress=False, timestep_shift=1.0, **kw)
        assert np.array_equal(np.asarray(named.images[0]), np.asarray(explicit))
        other = pipe.generate("a cat", seed=0, progress=False, timestep_shift=3.0, **kw)
        assert other.settings["timestep_shift"] == 3.0
        assert not np.array_equal(np.asarray(other.images[0]), np.asarray(explicit))
        for bad in (0, -1.0, "2", True):
            with pytest.raises(ValueError, match=f"timestep_shift must be a number > 0, got {bad!r}"):
                pipe.generate("a cat", seed=0, progress=False, timestep_shift=bad, **kw)
            with pytest.raises(ValueError, match=f"timestep_shift must be a number > 0, got {bad!r}"):
                pipe("a cat", generation_mode="image", timestep_shift=bad, progress=False, **kw)
        config.extra["default_image_guidance"] = [2.0]
        with pytest.raises(ValueError, match="default_image_guidance"):
            pipe.generate("a cat", seed=0, progress=False, **kw)
    finally:
        config.extra.pop("default_image_guidance", None)
        config.flow_shift = 3.0
    assert pipe.default_guidance(False) == (4.5, 2.0)


def test_preserve_unedited_keeps_the_source_outside_the_change_mask(pipe, monkeypatch):
    import internvlu.pipeline.pipeline as pipeline_module

    calls: list = []
    real = pipeline_module.denoise

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((kwargs.get("blend"), out))
        return out

    monkeypatch.setattr(pipeline_module, "denoise", spy)
    img = Image.open(GOLDEN / "inputs" / "img_a.png")
    config = pipe.generation_decoder.config
    kw = {"num_inference_steps": 3, "seed": 0}
    prompts = ["make it red", "make it blue"]
    assert pipe.default_preserve_unedited() is False  # the release's config has no such key
    free = pipe.edit(prompts, [img, img], **kw)
    assert calls[-1][0] is None and free.settings["preserve_unedited"] is False
    try:
        # A high threshold keeps the random model's mask small, so there is something outside it.
        config.extra["preserve_settings"] = {"threshold": 0.9, "dilate": 0}
        head = pipe.generation_decoder
        batches: list[int] = []
        real_forward = head.forward

        def counting_forward(x, *args, **kwargs):
            batches.append(x.shape[0])
            return real_forward(x, *args, **kwargs)

        head.forward = counting_forward  # an instance attribute over the class's method, deleted right after
        try:
            kept = pipe.edit(prompts, [img, img], preserve_unedited=True, **kw)
        finally:
            del head.forward
        # The x0 mask runs the conditional rows only (2 prompts, 2 draws); each of the 3 steps runs all 3 rows.
        assert batches == [2, 2, 6, 6, 6]
        blend, latents = calls[-1]
        assert blend is not None and 0 < float(blend.mask.mean()) < 0.5
        outside = ~blend.mask.expand_as(latents).bool()
        # The sampler's last sigma is 0, so outside the mask the result is the source's latents themselves.
        assert torch.allclose(latents[outside], blend.source[outside], atol=1e-5)
        assert not torch.allclose(latents, blend.source, atol=1e-3)
        assert kept.settings["preserve_unedited"] is True
        assert not np.array_equal(np.asarray(kept.images[0]), np.asarray(free.images[0]))
        # The official call takes it too, and the checkpoint's default turns it on for every edit.
        h, w = kept.size  # the official call draws at the checkpoint's size unless told the input's
        official = pipe(prompts, image=[img, img], generation_mode="image", preserve_unedited=True, height=h, width=w,
                        generator=torch.Generator().manual_seed(0), num_inference_steps=3)  # fmt: skip
        assert np.array_equal(np.asarray(official.images[0]), np.asarray(kept.images[0]))
        config.extra["default_preserve_unedited"] = True
        default = pipe.edit(prompts, [img, img], **kw)
        assert default.settings["preserve_unedited"] is True
        assert np.array_equal(np.asarray(default.images[1]), np.asarray(kept.images[1]))
        off = pipe.edit(prompts, [img, img], preserve_unedited=False, **kw)
        assert np.array_equal(np.asarray(off.images[0]), np.asarray(free.images[0]))
        # Where it cannot apply, the default quietly stays off (text-to-image, several inputs), and the
        # result's settings say so ...
        t2i = pipe.generate("a cat", height=32, width=32, **kw)
        assert calls[-1][0] is None and t2i.settings["preserve_unedited"] is False
        img_b = Image.open(GOLDEN / "inputs" / "img_b.png")
        merged = pipe.edit("merge", [img, img_b], height=96, width=96, **kw)
        assert calls[-1][0] is None and merged.settings["preserve_unedited"] is False
        resized = pipe.edit("make it red", img, height=96, width=96, **kw)
        assert calls[-1][0] is None and resized.settings["preserve_unedited"] is False
        # ... but asking for it is an error that says why.
        with pytest.raises(ValueError, match="cannot apply: output 0 has 0 input images"):
            pipe.generate("a cat", height=32, width=32, preserve_unedited=True, **kw)
        with pytest.raises(ValueError, match="output 0 has 2 input images; it needs exactly one"):
            pipe.edit("merge", [img, img_b], height=96, width=96, preserve_unedited=True, **kw)
        with pytest.raises(ValueError, match="at the input image's size"):
            pipe.edit("make it red", img, height=48, width=48, preserve_unedited=True, **kw)
        with pytest.raises(TypeError, match="preserve_unedited must be True, False or None, got 'yes'"):
            pipe.edit("make it red", img, preserve_unedited="yes", **kw)
        config.extra["default_preserve_unedited"] = "yes"
        with pytest.raises(TypeError, match="default_preserve_unedited must be true or false, got 'yes'"):
            pipe.edit("make it red", img, **kw)
        config.extra["default_preserve_unedited"] = True
        config.extra["preserve_settings"] = {"threshold": 2.0}
        with pytest.raises(ValueError, match="threshold must be in \\[0, 1\\), got 2.0"):
            pipe.edit("make it red", img, **kw)
        config.extra["preserve_settings"] = {"radius": 2}
        with pytest.raises(ValueError, match="unknown keys \\['radius'\\]"):
            pipe.edit("make it red", img, **kw)
    finally:
        config.extra.pop("preserve_settings", None)
        config.extra.pop("default_preserve_unedited", None)
