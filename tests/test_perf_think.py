"""Think mode's KV-cache reuse against the reference-style re-run of the LLM (tiny checkpoint, fp32 CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from internvlu import InternVLUPipeline
from internvlu.constants import IM_START_TOKEN, IMG_CONTEXT_TOKEN, IMG_START_TOKEN
from internvlu.pipeline import stages
from internvlu.pipeline.think import conditioning_from_generation

DATA = Path(__file__).parent / "data" / "parity"
CKPT = DATA / "tiny-ckpt"
PROMPTS = ["Draw the colour of grass", "a much longer prompt about a red cube on a wooden table, please"]


@pytest.fixture(scope="module")
def pipe() -> InternVLUPipeline:
    p = InternVLUPipeline.from_pretrained(CKPT, torch_dtype=torch.float32)
    p.set_progress_bar_config(disable=True)
    return p


def _conditioning_of_both_paths(pipe, prompt, images=None, tokens=6):
    """(states, masks, images) of the conditioning rows with KV reuse on and off."""
    seen: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    original = pipe._condition

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out)
        return out

    pipe._condition = spy
    results = []
    try:
        for reuse in (True, False):
            pipe.set_performance(think_kv_reuse=reuse)
            seen.clear()
            kw = {} if images is None else {"images": images}
            res = pipe.generate(
                prompt,
                think=True,
                max_thought_tokens=tokens,
                height=64,
                width=64,
                num_inference_steps=3,
                seed=0,
                **kw,
            )
            results.append((seen[0], res))
    finally:
        del pipe._condition
        pipe.set_performance(think_kv_reuse=True)
    return results


def _max_pixel_diff(a, b) -> int:
    return max(int(np.abs(np.asarray(x).astype(int) - np.asarray(y).astype(int)).max()) for x, y in zip(a, b))


@pytest.mark.parametrize("case", ["t2i_batch", "edit"])
def test_kv_reuse_equals_rerun(pipe, case):
    if case == "t2i_batch":
        prompt, images = PROMPTS, None
    else:
        prompt, images = "Make the object red", Image.open(DATA / "golden" / "inputs" / "img_a.png")
    ((states_a, masks_a), res_a), ((states_b, masks_b), res_b) = _conditioning_of_both_paths(
        pipe, prompt, images
    )
    assert res_a.thoughts == res_b.thoughts
    assert len(states_a) == len(states_b)
    for x, y, mx, my in zip(states_a, states_b, masks_a, masks_b):
        assert x.shape == y.shape
        assert torch.equal(mx, my)
        torch.testing.assert_close(x, y, atol=1e-4, rtol=0)  # positions cumsum vs arange: rounding only
    assert _max_pixel_diff(res_a.images, res_b.images) <= 2


def test_kv_reuse_runs_the_llm_only_on_the_dropped_rows(pipe):
    calls: list[int] = []
    original = pipe.vlm.forward_hidden_states

    def spy(input_ids, *args, **kwargs):
        calls.append(int(input_ids.shape[0]) if kwargs.get("past_key_values") is None else -1)
        return original(input_ids, *args, **kwargs)

    pipe.vlm.forward_hidden_states = spy
    try:
        pipe.generate(
            PROMPTS[0], think=True, max_thought_tokens=4, height=64, width=64, num_inference_steps=2, seed=0
        )
        # one cached forward for <img>, one fresh forward for the (identical) text- and all-dropped rows
        assert calls == [-1, 1]
        calls.clear()
        pipe.set_performance(think_kv_reuse=False)
        pipe.generate(
            PROMPTS[0], think=True, max_thought_tokens=4, height=64, width=64, num_inference_steps=2, seed=0
        )
        assert calls == [2]  # the re-run: conditional row + one shared dropped row
    finally:
        del pipe.vlm.forward_hidden_states
        pipe.set_performance(think_kv_reuse=True)


def test_rows_that_stop_early_and_rows_that_hit_the_limit(pipe):
    ids_ = pipe.token_ids
    proc = pipe.processor(PROMPTS, generation_mode="text_image", height=64, width=64)
    B = proc.num_prompts
    ids, mask = proc.input_ids[:B], proc.attention_mask[:B]
    out = pipe.vlm.generate(
        ids,
        mask,
        None,
        eos_token_id=pipe._stop_ids(),
        pad_token_id=pipe._pad_id(),
        max_new_tokens=6,
        output_hidden_states=True,
        return_dict_in_generate=True,
        suppress_tokens=[ids_[IMG_CONTEXT_TOKEN]],
    )
    generated = out.sequences.clone()
    assert generated.shape[1] == 6
    # Pretend row 0 stopped after two tokens (its later columns are then ignored); row 1 ran to the limit.
    generated[0, 2] = pipe._stop_ids()[0]
    new_ids, new_mask, kept = stages.splice_thoughts(
        ids, mask, generated, B, pipe._stop_ids(), ids_[IMG_START_TOKEN], pipe._pad_id()
    )
    assert [len(k) for k in kept] == [2, 6]
    reused, reused_masks = conditioning_from_generation(
        pipe.vlm,
        out,
        ids,
        mask,
        kept,
        select_layers=pipe.generation_decoder.config.vlm_select_layer,
        img_start_id=ids_[IMG_START_TOKEN],
        im_start_id=ids_[IM_START_TOKEN],
        img_context_id=ids_[IMG_CONTEXT_TOKEN],
    )
    rerun, rerun_masks = pipe._condition(new_ids, new_mask, None, [0] * B)
    for x, y, mx, my in zip(reused, rerun, reused_masks, rerun_masks):
        assert x.shape == y.shape and torch.equal(mx, my)
        torch.testing.assert_close(x, y, atol=1e-4, rtol=0)


def test_special_token_in_thought_falls_back_to_rerun(pipe):
    ids_ = pipe.token_ids
    proc = pipe.processor(PROMPTS[0], generation_mode="text_image", height=64, width=64)
    ids, mask = proc.input_ids[:1], proc.attention_mask[:1]
    out = pipe.vlm.generate(
        ids,
        mask,
        None,
        eos_token_id=pipe._stop_ids(),
        pad_token_id=pipe._pad_id(),
        max_new_tokens=3,
        output_hidden_states=True,
        return_dict_in_generate=True,
    )
    kept = [
        [*out.sequences[0, :2].tolist(), ids_["<ref>"]]
    ]  # a special token: embedded differently in a re-run
    result = conditioning_from_generation(
        pipe.vlm,
        out,
        ids,
        mask,
        kept,
        select_layers=[-1, -2],
        img_start_id=ids_[IMG_START_TOKEN],
        im_start_id=ids_[IM_START_TOKEN],
        img_context_id=ids_[IMG_CONTEXT_TOKEN],
    )
    assert result is None


def test_beam_search_think_uses_the_rerun(pipe):
    res = pipe(
        "Draw the colour of grass",
        generation_mode="text_image",
        max_new_tokens=3,
        num_beams=2,
        height=64,
        width=64,
        num_inference_steps=2,
    )
    assert len(res.images) == 1 and res.generate_output.shape[0] == 1
