"""Prompt rendering of InternVL-U: the `qwen2_5-chat-v3` templates, prompt normalisation, CFG drop rows and
image-token expansion. This module is the single source of truth for prompt strings; inference (the processor)
and training both call `build_prompt`.

A rendered row (one user turn, generation prompt added) is
    <|im_start|>system\\n{SYS}<|im_end|>\\n<|im_start|>user\\n{CONTENT}<|im_end|>\\n<|im_start|>assistant\\n[<img>]
where every input image in CONTENT is `<img>` + `<IMG_CONTEXT>` x image_seq_length + `</img>`, and the
trailing `<img>` (the "generate an image here" trigger) is present only in generation_mode "image" without
think.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

from internvlu.constants import (
    GENERATION_MODES,
    IM_END_TOKEN,
    IM_START_TOKEN,
    IMAGE_PLACEHOLDER,
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    TEMPLATE_SYSTEM_PROMPTS,
    TEXT_DROPPED_PROMPT,
    UNCOND_PROMPT,
)

BASE_TEMPLATE = "qwen2_5-chat-v3"
IMGEN_SUFFIX = "-imgen"
EDITING_SUFFIX = "-editing"
# `_build_messages` of the reference appends "." unless the prompt ends with one of these.
FINAL_PUNCTUATION = (".", "!", "?", ",", ":", ";")
# Tokens the processor itself places; a user string holding them would desynchronise the image bookkeeping.
RESERVED_TOKENS = (IMG_CONTEXT_TOKEN, IMG_START_TOKEN, IMG_END_TOKEN)


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """FastChat-style conversation template with the MPT separator style."""

    name: str
    system_message: str
    system_template: str = IM_START_TOKEN + "system\n{system_message}"
    roles: tuple[str, str] = (IM_START_TOKEN + "user\n", IM_START_TOKEN + "assistant\n")
    sep: str = IM_END_TOKEN + "\n"

    def render(
        self,
        turns: Sequence[tuple[str, str]],
        *,
        add_generation_prompt: bool = True,
        system_message: str | None = None,
    ) -> str:
        """Render `turns` ((role, content) with role "user" or "assistant").

        MPT style: the system block and every non-empty turn end with `sep`; an empty turn renders as its role
        alone (that is how the generation prompt `<|im_start|>assistant\\n` is produced).
        `system_message` replaces the template's system message when not None (even when empty).
        """
        sys_msg = self.system_message if system_message is None else system_message
        out = self.system_template.format(system_message=sys_msg) + self.sep
        for role, content in turns:
            if role not in ("user", "assistant"):
                raise ValueError(f"turn role must be 'user' or 'assistant', got {role!r}")
            prefix = self.roles[0] if role == "user" else self.roles[1]
            out += prefix + content + self.sep if content else prefix
        if add_generation_prompt:
            out += self.roles[1]
        return out


TEMPLATES: dict[str, ChatTemplate] = {
    name: ChatTemplate(name=name, system_message=msg) for name, msg in TEMPLATE_SYSTEM_PROMPTS.items()
}


def get_template(name: str) -> ChatTemplate:
    """Template by name; ValueError listing the known names otherwise."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown conversation template {name!r}; known: {sorted(TEMPLATES)}") from None


def check_base_template(name: str) -> str:
    """A base template usable by the processor must exist with its -imgen and -editing siblings."""
    for full in (name, name + IMGEN_SUFFIX, name + EDITING_SUFFIX):
        get_template(full)
    return name


class DropCond(str, enum.Enum):
    """Which conditions a CFG row drops (reference `DropCondType`)."""

    NONE = "none"  # conditional row: prompt and images
    TEXT = "text"  # text dropped, input images kept
    ALL = "all"  # everything dropped


# Row order of the CFG tripling: [none x B, text x B, all x B].
CFG_ROW_ORDER: tuple[DropCond, ...] = (DropCond.NONE, DropCond.TEXT, DropCond.ALL)


def check_generation_mode(generation_mode: str) -> str:
    if generation_mode not in GENERATION_MODES:
        raise ValueError(f"unknown generation_mode {generation_mode!r}; expected one of {GENERATION_MODES}")
    return generation_mode


def template_name_for(base_template: str, generation_mode: str, has_images: bool) -> str:
    """`base` for text mode; `base-editing` for image modes with input images, else `base-imgen`.

    The reference picks -editing/-imgen once per call (whether `image` was passed at all); we pick it per
    prompt, which agrees whenever all prompts of a call have images or none do.
    """
    check_generation_mode(generation_mode)
    if generation_mode == "text":
        return base_template
    return base_template + (EDITING_SUFFIX if has_images else IMGEN_SUFFIX)


def _check_reserved(text: str, what: str, extra: tuple[str, ...] = ()) -> None:
    for token in RESERVED_TOKENS + extra:
        if token in text:
            raise ValueError(f"{what} must not contain the reserved token {token!r}: {text!r:.200}")


def normalize_user_prompt(prompt: str, num_images: int) -> str:
    """The reference `_build_messages` normalisation, in the reference's order.

    1. Prefix `"<image>\\n"` once per image that has no `<image>` placeholder in the prompt yet.
    2. Strip; upper-case the first character; append "." unless the text ends with one of . ! ? , : ;
    Because step 1 runs first, a prompt with images starts with "<" and keeps its own first letter as typed
    (reference behaviour, kept for parity). A Chinese prompt ending in "。" gets "。." (reference quirk).
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}: {prompt!r:.80}")
    slots = prompt.count(IMAGE_PLACEHOLDER)
    if slots > num_images:
        raise ValueError(
            f"prompt has {slots} {IMAGE_PLACEHOLDER} placeholders but only {num_images} image(s) were given: "
            f"{prompt!r:.200}"
        )
    text = ((IMAGE_PLACEHOLDER + "\n") * (num_images - slots) + prompt).strip()
    if text:
        text = text[0].upper() + text[1:]
        if not text.endswith(FINAL_PUNCTUATION):
            text += "."
    return text


def drop_content(content: str, drop: DropCond) -> str:
    """User content of a CFG row derived from the normalised conditional content."""
    drop = DropCond(drop)
    if drop is DropCond.NONE:
        return content
    n_images = content.count(IMAGE_PLACEHOLDER)
    if drop is DropCond.TEXT and n_images > 0:
        return (IMAGE_PLACEHOLDER + "\n") * n_images + TEXT_DROPPED_PROMPT
    return UNCOND_PROMPT


def images_in_row(num_images: int, drop: DropCond) -> int:
    """Input images a CFG row carries: all of them, except in the fully dropped row."""
    return 0 if DropCond(drop) is DropCond.ALL else num_images


def expand_image_tokens(text: str, image_seq_length: int) -> tuple[str, int]:
    """`<image>` -> `<img>` + `<IMG_CONTEXT>` x image_seq_length + `</img>` (one tile per image, no tiling).

    Returns the expanded text and the number of image spans.
    """
    if image_seq_length <= 0:
        raise ValueError(f"image_seq_length must be positive, got {image_seq_length}")
    # The reference first maps every `<image>` to `<IMG_CONTEXT>`, then expands each `<IMG_CONTEXT>` in order.
    parts = text.replace(IMAGE_PLACEHOLDER, IMG_CONTEXT_TOKEN).split(IMG_CONTEXT_TOKEN)
    span = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * image_seq_length + IMG_END_TOKEN
    return span.join(parts), len(parts) - 1


def build_prompt(
    prompt: str,
    *,
    image_seq_length: int,
    num_images: int = 0,
    generation_mode: str = "text",
    drop: DropCond | str = DropCond.NONE,
    base_template: str = BASE_TEMPLATE,
    system_prompt: str | None = None,
    think: bool = False,
) -> str:
    """Render one processor row: normalisation, CFG drop, template, image-token expansion, trailing `<img>`.

    Args:
        prompt: the raw user prompt (may hold `<image>` placeholders, at most `num_images`).
        image_seq_length: `<IMG_CONTEXT>` tokens per image (256 in the release).
        num_images: input images attached to this prompt (the row itself carries none when drop is "all").
        generation_mode: "text", "image" or "text_image".
        drop: CFG row kind; only "none" in text mode.
        base_template: "qwen2_5-chat-v3"; image modes use its -imgen / -editing siblings.
        system_prompt: replaces the template's system message when not None.
        think: in image modes, leave the row open for a chain of thought (no trailing `<img>`), as in
            "text_image".

    Returns:
        The row text, ready for the tokenizer (no padding).
    """
    check_generation_mode(generation_mode)
    drop = DropCond(drop)
    if not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"num_images must be a non-negative int, got {num_images!r}")
    if generation_mode == "text" and drop is not DropCond.NONE:
        raise ValueError(f"CFG drop {drop.value!r} only exists in image modes, not in generation_mode 'text'")
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}: {prompt!r:.80}")
    if generation_mode != "text" and not prompt.strip():
        raise ValueError(f"prompt is empty in generation_mode {generation_mode!r}: {prompt!r}")
    _check_reserved(prompt, "prompt")
    if system_prompt is not None:
        if not isinstance(system_prompt, str):
            raise TypeError(f"system_prompt must be a str or None, got {type(system_prompt).__name__}")
        _check_reserved(system_prompt, "system_prompt", extra=(IMAGE_PLACEHOLDER,))

    content = drop_content(normalize_user_prompt(prompt, num_images), drop)
    template = get_template(template_name_for(base_template, generation_mode, has_images=num_images > 0))
    text = template.render([("user", content)], system_message=system_prompt)
    text, n_spans = expand_image_tokens(text, image_seq_length)
    assert n_spans == images_in_row(num_images, drop), (n_spans, num_images, drop)
    if generation_mode == "image" and not think:
        text += IMG_START_TOKEN
    return text
