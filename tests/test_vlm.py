"""InternVLUChatModel against the reference goldens (tiny checkpoint, fp32 CPU) plus structure checks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from internvlu.constants import SPECIAL_TOKEN_LIST
from internvlu.vlm import InternVisionConfig, InternVLUChatConfig, InternVLUChatModel, pixel_shuffle_v2

PARITY = Path(__file__).parent / "data" / "parity"
CKPT = PARITY / "tiny-ckpt"
GOLDEN = PARITY / "golden"
ATOL = 1e-4

TEXT_CASES = ["a_text_understanding", "e1_batch_text", "g_text_only"]
HIDDEN_CASES = ["b_t2i", "c_edit", "e2_batch_t2i"]


def _config_dict() -> dict:
    return json.loads((CKPT / "vlm" / "config.json").read_text())


def _token_ids() -> dict[str, int]:
    return json.loads((CKPT / "processor" / "added_tokens.json").read_text())


def _state_dict(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) for k, v in load_file(str(CKPT / "vlm" / "model.safetensors")).items()}


def _with_token_ids(model: InternVLUChatModel) -> InternVLUChatModel:
    tok = _token_ids()
    model.set_token_ids([tok[t] for t in SPECIAL_TOKEN_LIST], tok["<IMG_CONTEXT>"])
    return model


def _load_tiny(attn_implementation: str = "sdpa") -> InternVLUChatModel:
    model = InternVLUChatModel(InternVLUChatConfig.from_dict(_config_dict()), attn_implementation)
    model.load_state_dict(_state_dict(), strict=True)
    return _with_token_ids(model.eval())


def _golden(case: str) -> tuple[dict[str, np.ndarray], dict]:
    data = np.load(GOLDEN / f"{case}.npz")
    meta = json.loads((GOLDEN / f"{case}.json").read_text())
    return {k: data[k] for k in data.files}, meta


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def _max_err_attended(ours: torch.Tensor, ref: np.ndarray, mask: np.ndarray) -> float:
    """Max |ours - ref| where attention_mask == 1 (left-pad rows are garbage in the reference)."""
    diff = (ours.float() - _t(ref)).abs()
    return float(diff[_t(mask).bool()].max())


def _stop_ids() -> list[int]:
    tok = _token_ids()
    return [tok["<|im_end|>"], tok["<img>"]]


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def tiny(request: pytest.FixtureRequest) -> InternVLUChatModel:
    return _load_tiny(request.param)


# ---------------------------------------------------------------- config


def test_config_round_trip_and_llm_config() -> None:
    raw = _config_dict()
    cfg = InternVLUChatConfig.from_dict(raw)
    assert cfg.to_dict() == raw
    assert isinstance(cfg.vision_config, InternVisionConfig)
    assert cfg.vision_config.qkv_bias and cfg.vision_config.norm_type == "layer_norm"
    assert cfg.num_image_token == 4  # (56 // 14)^2 * 0.5^2
    llm = cfg.build_llm_config()
    assert type(llm).__name__ == "Qwen3Config"
    assert (llm.hidden_size, llm.num_hidden_layers, llm.vocab_size) == (64, 2, 1088)
    assert llm.tie_word_embeddings is False

    # Keys absent from a file are not invented on save.
    trimmed = copy.deepcopy(raw)
    for key in ("system_message", "thumbnail_pos", "transformers_version"):
        trimmed.pop(key, None)
    trimmed["vision_config"].pop("window_size")
    trimmed["unknown_future_key"] = {"a": 1}
    assert InternVLUChatConfig.from_dict(trimmed).to_dict() == trimmed


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("vision_config", "norm_type"), "batch_norm", "norm_type"),
        (("vision_config", "num_attention_heads"), 5, "divisible"),
        (("downsample_ratio",), 0.3, "downsample_ratio"),
        (("select_layer",), 7, "select_layer"),
        (("llm_config", "architectures"), [], "architectures"),
    ],
)
def test_config_validation(path: tuple[str, ...], value: object, match: str) -> None:
    raw = _config_dict()
    target = raw
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValueError, match=match):
        InternVLUChatConfig.from_dict(raw)


def test_unsupported_llm_architecture() -> None:
    raw = _config_dict()
    raw["llm_config"]["architectures"] = ["MistralForCausalLM"]
    cfg = InternVLUChatConfig.from_dict(raw)
    with pytest.raises(ValueError, match="MistralForCausalLM"):
        cfg.build_llm_config()
    with pytest.raises(ValueError, match="MistralForCausalLM"):
        InternVLUChatModel(cfg)


@pytest.mark.parametrize("arch", ["Qwen2ForCausalLM", "LlamaForCausalLM"])
def test_other_llm_architectures(arch: str) -> None:
    raw = _config_dict()
    raw["llm_config"]["architectures"] = [arch]
    model = _with_token_ids(InternVLUChatModel(InternVLUChatConfig.from_dict(raw)).eval())
    assert type(model.language_model).__name__ == arch
    ids = torch.tensor([[5, 6, _token_ids()["<img>"], 7]])
    states = model.forward_hidden_states(ids, torch.ones_like(ids))
    assert len(states) == 3 and states[-1].shape == (1, 4, 64)


# ---------------------------------------------------------------- structure


def test_tiny_state_dict_keys_match_checkpoint() -> None:
    model = InternVLUChatModel(InternVLUChatConfig.from_dict(_config_dict()))
    stored = load_file(str(CKPT / "vlm" / "model.safetensors"))
    ours = model.state_dict()
    assert set(ours) == set(stored)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in stored.items()}


def test_full_size_keys_on_meta() -> None:
    spec = json.loads((PARITY / "full-size-keys.json").read_text())
    assumed = spec["assumptions"]
    other = assumed["vlm_other"]
    cfg = InternVLUChatConfig(
        vision_config=InternVisionConfig.from_dict(assumed["vision_config"]),
        llm_config=dict(assumed["llm_config"], architectures=["Qwen3ForCausalLM"]),
        force_image_size=other["force_image_size"],
        downsample_ratio=other["downsample_ratio"],
        select_layer=other["select_layer"],
        ps_version=other["ps_version"],
    )
    with torch.device("meta"):
        model = InternVLUChatModel(cfg)
    assert model.num_image_token == 256
    expected = {key: list(shape) for key, shape in spec["components"]["vlm"]["keys"]}
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected
    assert sum(p.numel() for p in model.parameters()) == spec["components"]["vlm"]["num_params"]


def test_rms_norm_and_qk_norm_variant() -> None:
    raw = _config_dict()
    raw["vision_config"].update(norm_type="rms_norm", qk_normalization=True, qkv_bias=False)
    model = _with_token_ids(InternVLUChatModel(InternVLUChatConfig.from_dict(raw)).eval())
    keys = set(model.state_dict())
    prefix = "vision_model.encoder.layers.0."
    assert {prefix + "attn.q_norm.weight", prefix + "attn.k_norm.weight", prefix + "norm1.weight"} <= keys
    assert prefix + "norm1.bias" not in keys and prefix + "attn.qkv.bias" not in keys
    feats = model.extract_feature(torch.randn(2, 3, 56, 56))
    assert feats.shape == (2, 4, 64) and torch.isfinite(feats).all()


def test_pixel_shuffle_channel_order() -> None:
    n, h, w, c = 1, 4, 6, 3
    x = torch.arange(n * h * w * c, dtype=torch.float32).reshape(n, h, w, c)
    y = pixel_shuffle_v2(x, 2)  # [1, 2*3, 4*3]
    assert y.shape == (1, 6, 12)
    for i in range(2):
        for j in range(3):
            for dh in range(2):
                for dw in range(2):
                    got = y[0, i * 3 + j, dh * 2 * c + dw * c : dh * 2 * c + dw * c + c]
                    assert torch.equal(got, x[0, 2 * i + dh, 2 * j + dw])


def test_position_embedding_interpolation_for_other_sizes() -> None:
    model = _load_tiny()
    emb = model.vision_model.embeddings
    # 84x70 px -> a 6x5 patch grid: the 4x4 table is resized bicubically in fp32.
    grid = emb._grid_position_embedding(6, 5, torch.float32)
    table = emb.position_embedding[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    ref = F.interpolate(table, size=(6, 5), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(grid, ref)
    assert model.extract_feature(torch.randn(1, 3, 84, 84)).shape == (1, 9, 64)


# ---------------------------------------------------------------- goldens


@pytest.mark.parametrize("case", TEXT_CASES)
def test_generate_matches_golden(tiny: InternVLUChatModel, case: str) -> None:
    g, meta = _golden(case)
    ids, mask = _t(g["proc.input_ids"]), _t(g["proc.attention_mask"])
    pixels = _t(g["proc.pixel_values"]) if "proc.pixel_values" in g else None
    with torch.no_grad():
        if pixels is not None:
            vit = tiny.extract_feature(pixels)
            assert float((vit - _t(g["gen.vit_embeds"])).abs().max()) < ATOL
        embeds = tiny.build_inputs_embeds(ids, pixels)
    assert _max_err_attended(embeds, g["gen.prefill_inputs_embeds"], g["proc.attention_mask"]) < ATOL

    kwargs = dict(meta["call_kwargs"])
    assert kwargs["max_new_tokens"] == g["gen.output_ids"].shape[1]
    out = tiny.generate(
        ids,
        mask,
        pixels,
        eos_token_id=_stop_ids(),
        pad_token_id=1024,
        return_dict_in_generate=True,
        output_logits=True,
        **kwargs,
    )
    np.testing.assert_array_equal(out.sequences.numpy(), g["gen.output_ids"])
    logits = torch.stack(out.logits)  # [T, B, V]
    assert float((logits - _t(g["gen.step_logits"])).abs().max()) < ATOL

    plain = tiny.generate(ids, mask, pixels, eos_token_id=_stop_ids(), pad_token_id=1024, **kwargs)
    assert isinstance(plain, torch.Tensor)
    np.testing.assert_array_equal(plain.numpy(), g["gen.output_ids"])


def test_cot_generate_matches_golden(tiny: InternVLUChatModel) -> None:
    g, meta = _golden("d_text_image_t2i")
    rows = g["gen.input_ids"].shape[0]  # CoT runs on the conditional rows only
    ids, mask = _t(g["proc.input_ids"][:rows]), _t(g["proc.attention_mask"][:rows])
    out = tiny.generate(
        ids,
        mask,
        None,
        eos_token_id=_stop_ids(),
        pad_token_id=1024,
        max_new_tokens=meta["call_kwargs"]["max_new_tokens"],
        do_sample=False,
    )
    np.testing.assert_array_equal(out.numpy(), g["gen.output_ids"])


@pytest.mark.parametrize("case", HIDDEN_CASES)
def test_hidden_states_match_golden(tiny: InternVLUChatModel, case: str) -> None:
    g, _ = _golden(case)
    ids, mask = _t(g["proc.input_ids"]), _t(g["proc.attention_mask"])
    pixels = _t(g["proc.pixel_values"]) if "proc.pixel_values" in g else None
    with torch.no_grad():
        embeds = tiny.build_inputs_embeds(ids, pixels)
        states = tiny.forward_hidden_states(ids, mask, pixels)
    assert _max_err_attended(embeds, g["hid.inputs_embeds"], g["proc.attention_mask"]) < ATOL
    assert len(states) == tiny.llm_config.num_hidden_layers + 1
    for k, ref in enumerate(g["hid.hidden_states_all"]):
        assert _max_err_attended(states[k], ref, g["proc.attention_mask"]) < ATOL, f"hidden_states[{k}]"
    assert _max_err_attended(states[-1], g["hid.hidden_states_layer-1"], g["proc.attention_mask"]) < ATOL
    assert _max_err_attended(states[-2], g["hid.hidden_states_layer-2"], g["proc.attention_mask"]) < ATOL


# ---------------------------------------------------------------- loading, dtypes, errors


def test_meta_build_assign_load_equals_normal_build() -> None:
    cfg = InternVLUChatConfig.from_dict(_config_dict())
    with torch.device("meta"):
        meta_model = InternVLUChatModel(cfg)
    meta_model.load_state_dict(_state_dict(), strict=True, assign=True)
    assert meta_model.language_model.model.rotary_emb.inv_freq.is_meta  # not in the checkpoint
    meta_model.init_non_persistent_buffers()
    _with_token_ids(meta_model.eval())
    assert not any(t.is_meta for t in [*meta_model.parameters(), *meta_model.buffers()])

    normal = _load_tiny()
    g, _ = _golden("c_edit")
    ids, mask, pixels = _t(g["proc.input_ids"]), _t(g["proc.attention_mask"]), _t(g["proc.pixel_values"])
    with torch.no_grad():
        for a, b in zip(
            meta_model.forward_hidden_states(ids, mask, pixels),
            normal.forward_hidden_states(ids, mask, pixels),
        ):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bf16_close_to_fp32() -> None:
    ref = _load_tiny()
    model = _load_tiny().to(torch.bfloat16)
    model.init_non_persistent_buffers()  # .to() cast the rotary inv_freq; recompute it in fp32
    assert model.language_model.model.rotary_emb.inv_freq.dtype == torch.float32
    g, _ = _golden("c_edit")
    ids, mask, pixels = _t(g["proc.input_ids"]), _t(g["proc.attention_mask"]), _t(g["proc.pixel_values"])
    with torch.no_grad():
        ours = model.forward_hidden_states(ids, mask, pixels.to(torch.bfloat16))[-1]
        base = ref.forward_hidden_states(ids, mask, pixels)[-1]
    assert ours.dtype == torch.bfloat16
    attended = mask.bool()
    rel = (ours.float() - base)[attended].norm() / base[attended].norm()
    assert float(rel) < 0.05


def test_training_forward_loss_and_gradients() -> None:
    model = _load_tiny().train()
    g, _ = _golden("a_text_understanding")
    ids, mask, pixels = _t(g["proc.input_ids"]), _t(g["proc.attention_mask"]), _t(g["proc.pixel_values"])
    labels = ids.clone()
    labels[:, :30] = -100
    out = model(ids, attention_mask=mask, pixel_values=pixels, labels=labels)
    shift_logits, shift_labels = out.logits[:, :-1].float(), labels[:, 1:]
    expected = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    for name in (
        "special_token_embedding.weight",
        "mlp1.1.weight",
        "vision_model.embeddings.patch_embedding.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_image_context_count_errors() -> None:
    model = _load_tiny()
    g, _ = _golden("a_text_understanding")
    ids, pixels = _t(g["proc.input_ids"]), _t(g["proc.pixel_values"])
    context = _token_ids()["<IMG_CONTEXT>"]
    fewer = ids.clone()
    fewer[fewer == context] = 5
    fewer[0, -1] = context  # 1 context token for 1 image x 4 tokens
    with pytest.raises(ValueError, match="1 <IMG_CONTEXT> tokens"):
        model.build_inputs_embeds(fewer, pixels)
    with pytest.raises(ValueError, match="pixel_values is None"):
        model.build_inputs_embeds(ids, None)
    with pytest.raises(ValueError, match="2 images x 4 tokens"):
        model.build_inputs_embeds(ids, pixels.repeat(2, 1, 1, 1))


def test_token_ids_required_and_validated() -> None:
    model = InternVLUChatModel(InternVLUChatConfig.from_dict(_config_dict()))
    with pytest.raises(RuntimeError, match="set_token_ids"):
        model.build_inputs_embeds(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="10 ids"):
        model.set_token_ids([1, 2, 3], 2)
    with pytest.raises(ValueError, match="outside the LLM vocabulary"):
        model.set_token_ids(list(range(5000, 5010)), 5002)
