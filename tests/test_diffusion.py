"""Generation decoder (MMDiT head): config round-trip, state-dict keys, golden parity, packing invariants."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from internvlu.diffusion import (
    InternVLUGenerationDecoder,
    InternVLUGenerationDecoderConfig,
    apply_rope,
    build_pack_layout,
    build_position_ids_3d,
    grid_positions,
    released_generation_decoder_config,
    rope_cos_sin,
)

PARITY = Path(__file__).parent / "data" / "parity"
CKPT = PARITY / "tiny-ckpt" / "generation_decoder"
GOLDEN_CASES = ["b_t2i", "c_edit", "e2_batch_t2i"]
ATOL = 1e-4


# ------------------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------------------


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(CKPT / "model.safetensors").items()}


@pytest.fixture(scope="module")
def decoder() -> InternVLUGenerationDecoder:
    model = InternVLUGenerationDecoder(InternVLUGenerationDecoderConfig.from_json_file(CKPT / "config.json"))
    model.load_state_dict(_tiny_state_dict(), strict=True)
    return model.eval()


def _load_golden(case: str) -> dict[str, np.ndarray]:
    with np.load(PARITY / "golden" / f"{case}.npz") as data:
        return dict(data)


def _ragged(g: dict[str, np.ndarray], key: str) -> list[torch.Tensor] | None:
    """A ragged list stored as `key.cat` + `key.lens` (no `.cat` when every entry is empty)."""
    lens = g[f"{key}.lens"].tolist()
    if f"{key}.cat" not in g:
        return None
    return list(torch.from_numpy(g[f"{key}.cat"]).split(lens))


@dataclasses.dataclass
class GoldenCase:
    g: dict[str, np.ndarray]
    encoder_hidden_states: list[torch.Tensor]
    encoder_image_token_mask: list[torch.Tensor]
    image_grid_thw_gen: torch.Tensor
    image_fhw_cond: list[torch.Tensor]
    cond_latents: list[list[torch.Tensor]] | None

    def inputs(self, step: int) -> dict:
        return {
            "latents": torch.from_numpy(self.g["dit.latent_model_input"][step]),
            "timestep": torch.from_numpy(self.g["dit.timestep"][step]),
            "encoder_hidden_states": self.encoder_hidden_states,
            "encoder_image_token_mask": self.encoder_image_token_mask,
            "image_grid_thw_gen": self.image_grid_thw_gen,
            "image_fhw_cond": self.image_fhw_cond,
            "cond_latents": self.cond_latents,
        }


def _golden_case(case: str) -> GoldenCase:
    g = _load_golden(case)
    hidden = _ragged(g, "diff_in.encoder_hidden_states")
    masks = _ragged(g, "diff_in.encoder_image_token_mask")
    assert hidden is not None and masks is not None
    num = len(hidden)
    fhw = _ragged(g, "diff_in.image_fhw_cond") or [torch.zeros(0, 3, dtype=torch.long)] * num
    refs = None
    if "vae.encode_out_normalized" in g:
        # Reference latents come from one VAE call over the (padded) reference images: crop each to its grid.
        latents = torch.from_numpy(g["vae.encode_out_normalized"])
        grids = torch.from_numpy(g["diff_in.image_grid_thw_gen_cond.cat"]).tolist()
        crops = [latents[i, :, :h, :w] for i, (_, h, w) in enumerate(grids)]
        refs, start = [], 0
        for n in g["diff_in.conditional_image.lens"].tolist():
            refs.append(crops[start : start + n])
            start += n
    return GoldenCase(g, hidden, masks, torch.from_numpy(g["diff_in.image_grid_thw_gen"]), fhw, refs)


@pytest.fixture(scope="module", params=GOLDEN_CASES)
def golden(request: pytest.FixtureRequest) -> GoldenCase:
    return _golden_case(request.param)


@pytest.fixture(scope="module")
def edit_case() -> GoldenCase:
    return _golden_case("c_edit")


# ------------------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------------------


def test_config_round_trips_the_checkpoint_file(tmp_path: Path) -> None:
    raw = json.loads((CKPT / "config.json").read_text())
    cfg = InternVLUGenerationDecoderConfig.from_json_file(CKPT / "config.json")
    assert cfg.to_dict() == raw
    assert cfg.decoder_config.extra == {"_class_name": "InternVLUTransformer2DModel"}
    assert cfg.decoder_config.axes_dims_rope == (8, 12, 12)
    assert "timestep_scale" not in cfg.decoder_config.to_dict()  # absent in the file, stays absent
    cfg.to_json_file(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text()) == raw


def test_top_level_scale_factors_override_decoder_config() -> None:
    raw = json.loads((CKPT / "config.json").read_text())
    raw["decoder_config"]["vlm_cond_position_scale_factor"] = 1.0
    raw["vlm_cond_position_scale_factor"] = 0.5
    cfg = InternVLUGenerationDecoderConfig.from_dict(raw)
    model = InternVLUGenerationDecoder(cfg)
    assert model.decoder.config.vlm_cond_position_scale_factor == 0.5
    assert cfg.decoder_config.vlm_cond_position_scale_factor == 1.0  # the config itself is not mutated
    assert cfg.to_dict() == raw


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"axes_dims_rope": (8, 12, 10)}, "axes_dims_rope"),
        ({"axes_dims_rope": (8, 11, 13)}, "axes_dims_rope"),
        ({"in_channels": 32}, "in_channels"),
        ({"num_layers": 0}, "num_layers"),
        ({"vlm_cond_position_scale_factor": 0.0}, "vlm_cond_position_scale_factor"),
    ],
)
def test_transformer_config_validation(change: dict, message: str) -> None:
    base = InternVLUGenerationDecoderConfig.from_json_file(CKPT / "config.json").decoder_config
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(base, **change)


def test_decoder_config_validation() -> None:
    raw = json.loads((CKPT / "config.json").read_text())
    with pytest.raises(ValueError, match="decoder_projector_type"):
        InternVLUGenerationDecoderConfig.from_dict({**raw, "decoder_projector_type": "mlp3x"})
    with pytest.raises(ValueError, match="model_type"):
        InternVLUGenerationDecoderConfig.from_dict({**raw, "model_type": "qwen3"})
    with pytest.raises(ValueError, match="joint_attention_dim"):
        InternVLUGenerationDecoder(
            InternVLUGenerationDecoderConfig.from_dict({**raw, "input_hidden_size": 256})
        )


# ------------------------------------------------------------------------------------------------------------
# state-dict keys
# ------------------------------------------------------------------------------------------------------------


def test_keys_and_shapes_equal_the_tiny_checkpoint(decoder: InternVLUGenerationDecoder) -> None:
    stored = load_file(CKPT / "model.safetensors")
    ours = decoder.state_dict()
    assert set(ours) == set(stored)
    assert all(ours[k].shape == stored[k].shape for k in stored)


def test_full_size_keys_shapes_and_param_count_on_meta() -> None:
    reference = json.loads((PARITY / "full-size-keys.json").read_text())["components"]["generation_decoder"]
    with torch.device("meta"):
        model = InternVLUGenerationDecoder(released_generation_decoder_config())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: shape for k, shape in reference["keys"]}
    assert sum(p.numel() for p in model.parameters()) == reference["num_params"] == 1_808_034_880


def test_mlp_projector_is_linear_silu_linear() -> None:
    raw = json.loads((CKPT / "config.json").read_text())
    cfg = InternVLUGenerationDecoderConfig.from_dict({**raw, "decoder_projector_type": "mlp2x_gelu"})
    model = InternVLUGenerationDecoder(cfg)
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("decoder_projector.")}
    assert keys == {
        "decoder_projector.0.weight": (384, 128),
        "decoder_projector.0.bias": (384,),
        "decoder_projector.2.weight": (128, 384),
        "decoder_projector.2.bias": (128,),
    }
    assert isinstance(model.decoder_projector[1], torch.nn.SiLU)  # "gelu" in the name, SiLU in the reference


def test_meta_build_then_assign_load_matches(
    edit_case: GoldenCase, decoder: InternVLUGenerationDecoder
) -> None:
    with torch.device("meta"):
        model = InternVLUGenerationDecoder(
            InternVLUGenerationDecoderConfig.from_json_file(CKPT / "config.json")
        )
    model.load_state_dict(_tiny_state_dict(), strict=True, assign=True)
    model.init_non_persistent_buffers()
    with torch.no_grad():
        torch.testing.assert_close(
            model(**edit_case.inputs(0)), decoder(**edit_case.inputs(0)), rtol=0, atol=0
        )


# ------------------------------------------------------------------------------------------------------------
# golden parity
# ------------------------------------------------------------------------------------------------------------


def test_padded_context_matches_golden(decoder: InternVLUGenerationDecoder, golden: GoldenCase) -> None:
    with torch.no_grad():
        padded, attention_mask, image_mask = decoder.pad_encoder_hidden_states(
            golden.encoder_hidden_states, golden.encoder_image_token_mask
        )
    np.testing.assert_allclose(padded.numpy(), golden.g["dit_in.encoder_hidden_states"], atol=ATOL, rtol=0)
    np.testing.assert_array_equal(attention_mask.numpy(), golden.g["dit_in.encoder_attention_mask"])
    np.testing.assert_array_equal(image_mask.numpy(), golden.g["dit_in.encoder_image_token_mask"])


def test_packing_positions_and_rope_match_golden(
    decoder: InternVLUGenerationDecoder, golden: GoldenCase
) -> None:
    g = golden.g
    inputs = golden.inputs(0)
    with torch.no_grad():
        context = [decoder.decoder_projector(h) for h in inputs["encoder_hidden_states"]]
        packed = decoder.decoder.pack(
            inputs["latents"],
            context,
            inputs["encoder_image_token_mask"],
            inputs["image_grid_thw_gen"],
            inputs["image_fhw_cond"],
            inputs["cond_latents"],
        )
    np.testing.assert_array_equal(packed.position_ids.numpy(), g["dit0.position_ids_3d"])
    np.testing.assert_array_equal(packed.layout.cu_seqlens.numpy(), g["dit0.cu_seqlens"][0])
    np.testing.assert_array_equal(packed.layout.enc_token_mask.numpy(), g["dit0.enc_token_mask"][0])
    np.testing.assert_array_equal(packed.layout.cond_token_mask.numpy(), g["dit0.cond_token_mask"][0])
    np.testing.assert_allclose(
        packed.hidden_states.numpy(), g["dit0.packed_hidden_states_after_img_in"][0], atol=ATOL, rtol=0
    )
    np.testing.assert_allclose(packed.rope_cos.numpy(), g["dit0.rope_freqs_real"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(packed.rope_sin.numpy(), g["dit0.rope_freqs_imag"], atol=ATOL, rtol=0)


def test_velocity_matches_golden_at_every_step(
    decoder: InternVLUGenerationDecoder, golden: GoldenCase
) -> None:
    for step in range(golden.g["dit.velocity"].shape[0]):
        with torch.no_grad():
            velocity = decoder(**golden.inputs(step))
        np.testing.assert_allclose(
            velocity.numpy(), golden.g["dit.velocity"][step], atol=ATOL, rtol=0, err_msg=f"step {step}"
        )


# ------------------------------------------------------------------------------------------------------------
# invariants
# ------------------------------------------------------------------------------------------------------------


def test_batch_equals_each_sample_alone(decoder: InternVLUGenerationDecoder, edit_case: GoldenCase) -> None:
    inputs = edit_case.inputs(1)
    with torch.no_grad():
        batched = decoder(**inputs)
        for k in range(batched.shape[0]):
            alone = decoder(
                latents=inputs["latents"][k : k + 1],
                timestep=inputs["timestep"][k : k + 1],
                encoder_hidden_states=inputs["encoder_hidden_states"][k : k + 1],
                encoder_image_token_mask=inputs["encoder_image_token_mask"][k : k + 1],
                image_grid_thw_gen=inputs["image_grid_thw_gen"][k : k + 1],
                image_fhw_cond=inputs["image_fhw_cond"][k : k + 1],
                cond_latents=inputs["cond_latents"][k : k + 1] if inputs["cond_latents"] else None,
            )
            torch.testing.assert_close(alone[0], batched[k], rtol=0, atol=1e-5)


def test_smaller_grid_is_zero_outside_and_independent_of_padding(
    decoder: InternVLUGenerationDecoder, edit_case: GoldenCase
) -> None:
    inputs = edit_case.inputs(0)
    small = inputs["image_grid_thw_gen"].clone()
    small[0] = torch.tensor([1, 8, 8])  # latents are 8x12
    with torch.no_grad():
        out = decoder(**{**inputs, "image_grid_thw_gen": small})
        noisy = inputs["latents"].clone()
        noisy[0, :, :, 8:] = 100.0  # latent pixels outside sample 0's grid must not matter
        out_noisy = decoder(**{**inputs, "latents": noisy, "image_grid_thw_gen": small})
    assert torch.all(out[0, :, :, 8:] == 0) and torch.all(out[0, :, :, :8] != 0)
    torch.testing.assert_close(out_noisy, out, rtol=0, atol=0)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.bfloat16, 0.02), (torch.float16, 0.005)])
def test_half_precision_close_to_fp32(edit_case: GoldenCase, dtype: torch.dtype, tol: float) -> None:
    model = InternVLUGenerationDecoder(InternVLUGenerationDecoderConfig.from_json_file(CKPT / "config.json"))
    model.load_state_dict(_tiny_state_dict(), strict=True)
    inputs = edit_case.inputs(0)
    # The model rounds t to its dtype before the sinusoid (bf16: 999 -> 1000); feed fp32 the same rounded t.
    inputs["timestep"] = inputs["timestep"].to(dtype).float()
    with torch.no_grad():
        reference = model(**inputs)
        out = model.to(dtype)(**inputs)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert ((out.float() - reference).norm() / reference.norm()).item() < tol


def test_timestep_is_rounded_to_model_dtype(edit_case: GoldenCase) -> None:
    model = InternVLUGenerationDecoder(InternVLUGenerationDecoderConfig.from_json_file(CKPT / "config.json"))
    model.load_state_dict(_tiny_state_dict(), strict=True)
    model = model.to(torch.bfloat16)
    inputs = edit_case.inputs(0)
    with torch.no_grad():
        at_999 = model(**{**inputs, "timestep": torch.full((3,), 999.0)})
        at_1000 = model(**{**inputs, "timestep": torch.full((3,), 1000.0)})
    torch.testing.assert_close(at_999, at_1000, rtol=0, atol=0)


def test_timestep_scale_multiplies_the_timestep_before_the_sinusoid(edit_case: GoldenCase) -> None:
    """decoder_config.timestep_scale (1.0 in the release): the model at scale s and timestep t equals the model at
    scale 1 and timestep s * t, and the embedded model's 0.001 gives a code that varies smoothly with t."""
    from internvlu.diffusion.transformer import timestep_sinusoid

    config = InternVLUGenerationDecoderConfig.from_json_file(CKPT / "config.json")
    assert config.decoder_config.timestep_scale == 1.0  # absent from the file: the reference default
    plain = InternVLUGenerationDecoder(config)
    plain.load_state_dict(_tiny_state_dict(), strict=True)
    scaled_config = InternVLUGenerationDecoderConfig.from_json_file(CKPT / "config.json")
    scaled_config.decoder_config.timestep_scale = 0.001
    scaled = InternVLUGenerationDecoder(scaled_config)
    scaled.load_state_dict(_tiny_state_dict(), strict=True)
    inputs = edit_case.inputs(0)
    with torch.no_grad():
        got = scaled.eval()(**{**inputs, "timestep": torch.full((3,), 500.0)})
        want = plain.eval()(**{**inputs, "timestep": torch.full((3,), 0.5)})
        other = plain(**{**inputs, "timestep": torch.full((3,), 500.0)})
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (got - other).abs().max() > 1e-3  # the scale is really applied
    # Neighbouring integer timesteps: at scale 0.001 most of the 256 channels barely move (the slow half of the
    # standard DiT code); at scale 1 every channel turns by >= 0.1 rad per step (a code per integer t).
    t = torch.tensor([500.0, 501.0])
    smooth = timestep_sinusoid(t * 0.001)
    rough = timestep_sinusoid(t)
    assert int(((smooth[0] - smooth[1]).abs() < 0.05).sum()) > 150
    assert int(((rough[0] - rough[1]).abs() < 0.05).sum()) < 40


# ------------------------------------------------------------------------------------------------------------
# positions and RoPE
# ------------------------------------------------------------------------------------------------------------


def test_positions_full_size_edit_example() -> None:
    """Spec §5.5: 512^2 output + one 512^2 reference; context `<|im_start|> user \\n <img>`, 256 ViT
    tokens, 3 text tokens."""
    context_mask = torch.tensor([False] * 4 + [True] * 256 + [False] * 3)
    pos = build_position_ids_3d(
        (1, 32, 32), [(1, 32, 32)], context_mask, [(1, 16, 16)], video_scale=1.0, vlm_cond_scale=0.25
    )
    block1, ctx = pos[: 2 * 1024], pos[2 * 1024 :]
    assert set(block1[:, 0].tolist()) == {0.0, 1.0}
    assert block1[:, 1:].min() == -16 and block1[:, 1:].max() == 15
    assert ctx[:4].tolist() == [[16.0] * 3, [17.0] * 3, [18.0] * 3, [19.0] * 3]
    vit = ctx[4:260]
    assert torch.all(vit[:, 0] == 20)
    assert vit[:, 1].unique().tolist()[:3] == pytest.approx([-32.0, -27.8, -23.6], abs=1e-5)
    assert vit[:, 1].min() == -32 and vit[:, 1].max() == 31
    assert ctx[260:].tolist() == [[32.0] * 3, [33.0] * 3, [34.0] * 3]


def test_vit_run_of_wrong_length_falls_back_to_text_positions() -> None:
    context_mask = torch.tensor([False, True, True, True, False])  # 3 image tokens, but the grid says 2x2 = 4
    pos = build_position_ids_3d(
        (1, 2, 2), [], context_mask, [(1, 2, 2)], video_scale=1.0, vlm_cond_scale=0.25
    )
    assert pos[4:].tolist() == [[float(p)] * 3 for p in range(1, 6)]


def test_more_image_runs_than_grids_raises() -> None:
    context_mask = torch.tensor([False, True, False, True])
    with pytest.raises(ValueError, match="image-token runs"):
        build_position_ids_3d((1, 2, 2), [], context_mask, [(1, 1, 1)], video_scale=1.0, vlm_cond_scale=1.0)


def test_grid_positions_are_centred() -> None:
    pos = grid_positions(1, 3, 4)
    assert pos[:, 1].unique().tolist() == [-2.0, -1.0, 0.0]  # h=3: -(3-1)..0
    assert pos[:, 2].unique().tolist() == [-2.0, -1.0, 0.0, 1.0]


def test_apply_rope_is_the_complex_pair_rotation() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 32, generator=gen)
    positions = torch.randn(5, 3, generator=gen) * 10
    cos, sin = rope_cos_sin(positions, (8, 12, 12))
    expected = torch.view_as_real(
        torch.view_as_complex(x.unflatten(-1, (-1, 2)))
        * torch.polar(torch.ones_like(cos), torch.atan2(sin, cos))[:, None]
    ).flatten(-2)
    torch.testing.assert_close(apply_rope(x, cos, sin), expected, rtol=0, atol=1e-5)


def test_pack_layout() -> None:
    layout = build_pack_layout([4, 6], [4, 0], [3, 2])
    assert layout.cu_seqlens.tolist() == [0, 11, 19]
    assert layout.enc_token_mask.tolist() == [False] * 8 + [True] * 3 + [False] * 6 + [True] * 2
    assert layout.cond_token_mask.tolist() == [False] * 4 + [True] * 7 + [False] * 6 + [True] * 2
    assert layout.sample_ids.tolist() == [0] * 11 + [1] * 8


# ------------------------------------------------------------------------------------------------------------
# input errors
# ------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise(decoder: InternVLUGenerationDecoder, edit_case: GoldenCase) -> None:
    inputs = edit_case.inputs(0)
    with pytest.raises(ValueError, match="channels"):
        decoder(**{**inputs, "latents": inputs["latents"][:, :8]})
    too_big = inputs["image_grid_thw_gen"].clone()
    too_big[1, 1] = 16
    with pytest.raises(ValueError, match="larger than the latents"):
        decoder(**{**inputs, "image_grid_thw_gen": too_big})
    odd = inputs["image_grid_thw_gen"].clone()
    odd[0, 2] = 7
    with pytest.raises(ValueError, match="multiples of 2"):
        decoder(**{**inputs, "image_grid_thw_gen": odd})
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        decoder(**{**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"][:2]})
    with pytest.raises(ValueError, match="encoder_image_token_mask"):
        decoder(**{**inputs, "encoder_image_token_mask": inputs["encoder_image_token_mask"][:2]})
    with pytest.raises(ValueError, match="image_fhw_cond"):
        decoder(**{**inputs, "image_fhw_cond": inputs["image_fhw_cond"][:2]})
    with pytest.raises(ValueError, match="cond_latents"):
        decoder(**{**inputs, "cond_latents": inputs["cond_latents"][:2]})
    with pytest.raises(ValueError, match="timestep"):
        decoder(**{**inputs, "timestep": inputs["timestep"][:1]})
    # A 4x6-token generated grid leaves room for fewer than 2 references (§5.4).
    two_refs = [inputs["cond_latents"][0] * 2, inputs["cond_latents"][1], []]
    with pytest.raises(ValueError, match="reference"):
        decoder(**{**inputs, "cond_latents": two_refs})
    # Sample 0's context holds one ViT image; without its grid the positions are undefined.
    no_grid = [torch.zeros(0, 3, dtype=torch.long), *inputs["image_fhw_cond"][1:]]
    with pytest.raises(ValueError, match="image-token runs"):
        decoder(**{**inputs, "image_fhw_cond": no_grid})
