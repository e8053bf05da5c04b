"""Train a small byte-level BPE tokenizer (Qwen2 style) for a tiny model.

Same pre-tokenizer (Qwen2 split regex + byte level), NFC normalizer and special-token layout as the
release, trained on the model's own corpus plus every prompt string of the chat templates, so the
long system prompts compress to a few tokens. Saved as a `Qwen2Tokenizer` folder that
`AutoTokenizer.from_pretrained` loads offline.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ..constants import (
    IM_END_TOKEN,
    IM_START_TOKEN,
    SPECIAL_TOKEN_LIST,
    TEMPLATE_SYSTEM_PROMPTS,
    TEXT_DROPPED_PROMPT,
    THINK_END_TOKEN,
    THINK_START_TOKEN,
    UNCOND_PROMPT,
)

# Qwen2's pre-tokenizer split pattern (a fact of the format, needed for compatible tokenization).
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PAD_TOKEN = "<|endoftext|>"
# Special tokens in the release's order after the BPE vocabulary (the tiny parity tokenizer uses the same order).
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN,
    IM_START_TOKEN,
    IM_END_TOKEN,
    THINK_START_TOKEN,
    THINK_END_TOKEN,
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<img_uncond>",
    "<IMG_LINE_BREAK>",
    "<IMG_FRAME_BREAK>",
)
assert set(SPECIAL_TOKEN_LIST) <= set(SPECIAL_TOKENS)


def template_corpus() -> list[str]:
    """Every fixed string the prompts contain, so BPE learns merges for them."""
    lines = list(TEMPLATE_SYSTEM_PROMPTS.values())
    lines += ["system\n", "user\n", "assistant\n", UNCOND_PROMPT, TEXT_DROPPED_PROMPT]
    return lines


def train_tokenizer(
    corpus: Iterable[str], out_dir: str | Path, vocab_size: int = 2048, template_repeats: int = 1000
):
    """Train the BPE on `corpus` (+ template strings) and save a Qwen2Tokenizer folder; returns the tokenizer.

    Args:
        vocab_size: BPE vocabulary including the 256 byte symbols; special tokens come after it.
        template_repeats: weight of the template strings in the training counts.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be at least 300 (256 bytes + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )

    def lines() -> Iterable[str]:
        yield from corpus
        for _ in range(template_repeats):
            yield from template_corpus()

    tok.train_from_iterator(lines(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (PAD_TOKEN, IM_END_TOKEN)],
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    # The release names the Qwen2 class; AutoTokenizer then builds the same fast tokenizer from tokenizer.json.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "Qwen2Tokenizer"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return fast
