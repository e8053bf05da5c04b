"""Think mode without the second LLM pass: conditioning states from the thought's own generation.

The reference writes the thought, then re-runs the whole LLM over prompt + thought + `<img>` to get
the conditioning hidden states of the conditional rows. Those states already exist: the prefill
computed them for the prompt and each decode step for one thought token. Here they are collected
from `generate(output_hidden_states=True)` and only the final `<img>` (plus, for a row that hit
`max_new_tokens`, its last thought token, which was never fed back) runs through the LLM, with the
generation's KV cache. The text-dropped and all-dropped rows never see the thought and still take a
normal forward.

Numerical differences against the re-run (all within float rounding; `test_perf_think.py`):
- positions: generation uses mask-aware positions (cumsum - 1) while the re-run uses `arange`
  offset by the left padding; RoPE is relative, so only the rounding of the angles differs;
- batch shapes: the decode steps see one token at a time and a different padded width.
Generated special tokens (e.g. `<ref>`) are embedded without `special_token_embedding` during
decoding but with it in the re-run; when a thought holds one, the result would differ for real,
so `conditioning_from_generation` returns None and the caller re-runs instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def _cache_of(output: Any) -> Any:
    for key in ("cache", "past_key_values"):
        value = output.get(key) if hasattr(output, "get") else None
        if value is not None:
            return value
    raise ValueError("the generation output holds no KV cache (generate with use_cache=True)")


@torch.no_grad()
def conditioning_from_generation(
    vlm: Any,
    output: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    kept: Sequence[Sequence[int]],
    *,
    select_layers: Sequence[int],
    img_start_id: int,
    im_start_id: int,
    img_context_id: int,
) -> tuple[list[Tensor], list[Tensor]] | None:
    """Conditioning states of the B conditional rows from a think-mode generation.

    Args:
        vlm: the `InternVLUChatModel` that generated (its weights on the cache's device).
        output: `vlm.generate(..., output_hidden_states=True, return_dict_in_generate=True)` output.
        prompt_ids, prompt_mask: [B, Lp] the left-padded prompts that were generated from.
        kept: per row, the thought tokens kept (those before the first stop token).
        select_layers: hidden-state indices concatenated on channels (the decoder's vlm_select_layer).
    Returns:
        (states: B tensors [T_b, J], image_masks: B bool tensors [T_b]) for the span from the user
        turn's `<|im_start|>` through the final `<img>`, as `stages.gather_conditioning` cuts it
        from a re-run; or None when a kept thought token is a special token (re-run needed).
    """
    special = set(vlm.special_token_ids or ())
    if any(tok in special for row in kept for tok in row):
        return None
    sequences = output.sequences  # [B, T] new tokens
    steps = output.hidden_states  # T entries: prefill [B, Lp, D], then T - 1 decode steps [B, 1, D]
    device = sequences.device
    B, T = sequences.shape
    Lp = prompt_ids.shape[1]
    if len(steps) != T or steps[0][0].shape[1] != Lp:
        raise AssertionError(f"{len(steps)} hidden-state steps for {T} tokens and a prompt of {Lp}")
    # [B, Lp + T - 1, J]: every position the generation fed through the LLM, selected layers concatenated.
    hidden = torch.cat([torch.cat([step[layer] for step in steps], dim=1) for layer in select_layers], dim=-1)
    prompt_mask = prompt_mask.to(device)
    prompt_ids = prompt_ids.to(device)
    k = torch.tensor([len(row) for row in kept], device=device)  # [B] kept thought lengths
    if bool((k > T).any()):
        raise AssertionError(f"kept thoughts {k.tolist()} longer than the {T} generated tokens")
    live = prompt_mask.sum(dim=1)  # [B]
    last_kept = k == T  # the row never stopped: its last token is thought but was never fed back

    # Final forward: [last generated token (attended only if kept), <img>] on top of the cache, whose
    # generated columns are attended up to the row's kept length (the stop token and later pads are not).
    tokens = torch.stack([sequences[:, -1], torch.full_like(sequences[:, -1], img_start_id)], dim=1)  # [B, 2]
    gen_cols = torch.arange(T - 1, device=device)[None, :] < k[:, None]  # [B, T-1]
    mask = torch.cat(
        [prompt_mask.bool(), gen_cols, last_kept[:, None], torch.ones_like(last_kept)[:, None]], dim=1
    ).long()  # [B, Lp + T + 1]
    img_pos = live + k
    positions = torch.stack([torch.where(last_kept, live + T - 1, img_pos), img_pos], dim=1)  # [B, 2]
    tail_states = vlm.forward_hidden_states(
        tokens, mask, None, position_ids=positions, past_key_values=_cache_of(output)
    )
    tail = torch.cat([tail_states[layer] for layer in select_layers], dim=-1)  # [B, 2, J]

    states, image_masks = [], []
    for b in range(B):
        live_b = prompt_mask[b].bool()
        ids_b = prompt_ids[b][live_b]
        k_b = int(k[b])
        parts = [hidden[b, :Lp][live_b], hidden[b, Lp : Lp + min(k_b, T - 1)]]
        if bool(last_kept[b]):
            parts.append(tail[b, :1])
        parts.append(tail[b, 1:])
        seq = torch.cat(parts, dim=0)  # [live + k_b + 1, J]
        starts = torch.nonzero(ids_b == im_start_id).flatten()
        if starts.numel() < 2:
            raise ValueError(
                f"row {b} has {starts.numel()} '<|im_start|>' tokens; the conditioning needs a system and a user turn"
            )
        s = int(starts[1])
        states.append(seq[s:])
        image_masks.append(
            torch.cat([ids_b[s:] == img_context_id, torch.zeros(k_b + 1, dtype=torch.bool, device=device)])
        )
    return states, image_masks
