"""Low-memory options: sequential CPU offload, weight-only quantization, VAE tiling/slicing, compile switches
(tiny checkpoint, CPU; behaviour only, never timings)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from internvlu import InternVLUPipeline
from internvlu.pipeline.offload import find_units, iter_unit_names
from internvlu.pipeline.quantization import is_quantized, module_nbytes

DATA = Path(__file__).parent / "data" / "parity"
CKPT = DATA / "tiny-ckpt"


def _load(dtype=torch.float32) -> InternVLUPipeline:
    p = InternVLUPipeline.from_pretrained(CKPT, torch_dtype=dtype)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def pipe() -> InternVLUPipeline:
    return _load()


def _image(pipe, size=64, steps=3, prompt="a red cube on a table"):
    return np.asarray(
        pipe.generate(prompt, height=size, width=size, num_inference_steps=steps, seed=3).image
    ).astype(int)


# ---------------------------------------------------------------------- sequential offload
def test_sequential_offload_gives_identical_outputs_and_streams_blocks(pipe):
    ref_image, ref_text = _image(pipe), pipe.chat("hello there", max_new_tokens=5).token_ids
    twin = _load()
    offload = twin.enable_sequential_cpu_offload(device="cpu")  # the hooks that stream weights to a GPU
    names = iter_unit_names(twin.generation_decoder, offload.units)
    assert "decoder.transformer_blocks.0" in names and "decoder.transformer_blocks.1" in names
    assert any(n.startswith("language_model.model.layers.") for n in iter_unit_names(twin.vlm, offload.units))
    assert np.array_equal(_image(twin), ref_image)
    assert twin.chat("hello there", max_new_tokens=5).token_ids == ref_text
    assert offload.onloads > 0
    # Between forwards every streamed weight is its CPU copy again.
    block = twin.generation_decoder.decoder.transformer_blocks[0]
    assert all(p.data.data_ptr() == offload._cpu[id(p)].data_ptr() for p in block.parameters())
    assert twin.device == torch.device("cpu")
    twin.disable_sequential_cpu_offload()
    assert np.array_equal(_image(twin), ref_image)
    twin.enable_sequential_cpu_offload(device="cpu")
    with pytest.raises(ValueError, match="sequential"):
        twin.to("cpu")  # the hooks own the weights' placement
    twin.disable_sequential_cpu_offload()


def test_find_units_picks_blocks_and_large_leaves():
    layer = torch.nn.Linear(2048, 2048)  # 16 MiB in fp32: large enough to stream
    root = torch.nn.Module()
    root.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])
    root.big = layer
    root.small = torch.nn.LayerNorm(4)
    assert iter_unit_names(root, find_units(root)) == ["blocks.0", "blocks.1", "big"]


# ---------------------------------------------------------------------- quantization
needs_torchao = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None, reason="torchao not installed (pip install internvlu[quant])"
)


@needs_torchao
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_weight_only_generates_close_to_unquantized(dtype):
    base = _load(dtype)
    quant = _load(dtype)
    report = quant.quantize("int8_weight_only")
    assert is_quantized(quant.vlm) and is_quantized(quant.generation_decoder)
    assert report.layers["vlm"] > 0 and report.layers["generation_decoder"] > 0
    assert report.bytes_after["generation_decoder"] < report.bytes_before["generation_decoder"]
    assert report.bytes_after["vlm"] == module_nbytes(quant.vlm)
    a, b = _image(base), _image(quant)
    assert a.shape == b.shape
    # Random tiny weights amplify rounding; a trained model differs far less. Same picture overall.
    assert np.abs(a - b).mean() < (2 if dtype == torch.float32 else 6)
    assert len(quant.chat("hello there", max_new_tokens=4).token_ids[0]) == 4
    # The ViT, the projector and the MMDiT input/output layers are never quantized.
    assert type(quant.vlm.mlp1[1].weight) is torch.nn.Parameter
    assert type(quant.generation_decoder.decoder.proj_out.weight) is torch.nn.Parameter


@needs_torchao
def test_fp8_weight_only_or_a_clean_error():
    quant = _load(torch.bfloat16)
    try:
        quant.quantize("fp8_weight_only", components="generation_decoder")
    except RuntimeError as exc:
        assert "fp8" in str(exc)
        pytest.skip(f"fp8 unsupported here: {exc}")
    assert is_quantized(quant.generation_decoder) and not is_quantized(quant.vlm)
    assert _image(quant, steps=2).shape == (64, 64, 3)


@needs_torchao
def test_quantize_errors_and_save_refusal(tmp_path):
    quant = _load()
    with pytest.raises(ValueError, match="int4"):
        quant.quantize("int4")
    with pytest.raises(ValueError, match="vae"):
        quant.quantize("int8_weight_only", components=("vae",))
    quant.quantize("int8_weight_only", components=("generation_decoder",))
    with pytest.raises(ValueError, match="already quantized"):
        quant.quantize("int8_weight_only")
    with pytest.raises(ValueError, match="quantized"):
        quant.save_pretrained(tmp_path / "q")
    with pytest.raises(ValueError, match="quantized"):
        quant.enable_sequential_cpu_offload(device="cpu")
    quant.enable_model_cpu_offload(device="cpu")  # whole-component moves work with quantized weights
    assert _image(quant, steps=2).shape == (64, 64, 3)


# ---------------------------------------------------------------------- VAE tiling and slicing
def test_vae_tiling_decodes_in_tiles_close_to_the_full_decode(pipe):
    from internvlu.pipeline import stages

    z = torch.randn((1, 16, 16, 16), generator=torch.Generator().manual_seed(0))  # a 128 px image

    def decode() -> torch.Tensor:
        return stages.decode_latents(pipe.vae, z)

    full = decode()
    calls = []
    tiled_decode = pipe.vae.tiled_decode
    pipe.vae.tiled_decode = lambda *a, **k: calls.append(1) or tiled_decode(*a, **k)
    try:
        pipe.enable_vae_tiling(tile_size=96, stride=64)
        tiled = decode()
        assert _image(pipe, size=128, steps=1).shape == (128, 128, 3)  # the pipeline decodes through it too
        pipe.enable_vae_tiling(tile_size=128, stride=128)  # one tile covers the image: plain decode
        single = decode()
    finally:
        pipe.disable_vae_tiling()
        del pipe.vae.tiled_decode
    assert calls == [1, 1]
    assert tiled.shape == full.shape and torch.equal(single, full)
    # Tiles see less context than the whole image; with random tiny weights the seams stay mild.
    assert float((tiled - full).abs().mean()) * 127.5 < 8
    with pytest.raises(ValueError, match="stride"):
        pipe.enable_vae_tiling(tile_size=64, stride=100)


def test_vae_slicing_is_exact(pipe):
    kw = {"height": 64, "width": 64, "num_inference_steps": 2, "seed": 1, "num_images_per_prompt": 2}
    ref = [np.asarray(im) for im in pipe.generate("a cat", **kw).images]
    pipe.enable_vae_slicing()
    try:
        sliced = [np.asarray(im) for im in pipe.generate("a cat", **kw).images]
    finally:
        pipe.disable_vae_slicing()
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(ref, sliced))


# ---------------------------------------------------------------------- compile switch (never compiled here)
def test_enable_compile_wraps_blocks_and_disable_unwraps():
    twin = _load()
    count = twin.enable_compile(("generation_decoder", "vlm"))
    blocks = list(twin.generation_decoder.decoder.transformer_blocks)
    assert count == len(blocks) + len(twin.vlm.language_model.model.layers) + len(
        twin.vlm.vision_model.encoder.layers
    )
    assert all(b._compiled_call_impl is not None for b in blocks)
    twin.disable_compile()
    assert all(b._compiled_call_impl is None for b in blocks)
    with pytest.raises(ValueError, match="vae"):
        twin.enable_compile("vae")


def test_a_tied_lm_head_is_left_alone():
    from internvlu.pipeline.quantization import _linear_filter

    root = torch.nn.Module()
    root.lm_head = torch.nn.Linear(8, 16, bias=False)
    root.embed = torch.nn.Embedding(16, 8)
    assert _linear_filter(root, ("lm_head",))(root.lm_head, "lm_head")
    root.embed.weight = root.lm_head.weight  # tied: quantizing would add an int8 copy, not save memory
    assert not _linear_filter(root, ("lm_head",))(root.lm_head, "lm_head")
