"""Records -> model batches, through the inference processor's own prompt code (one source of truth).

Row layouts (text before tokenisation; `[..]` = supervised by next-token loss):
- t2i / edit: `processor.build_prompt(prompt, n, "image", drop)`, i.e. exactly the inference row of that
  guidance kind, ending with the generation `<img>`; no text loss.
- think: the inference think row `build_prompt(prompt, n, "text_image")` (ends at "<|im_start|>assistant\\n")
  followed by `[<think>\\n{thought}\\n</think>\\n<img>]`: the model learns to write the thought and to stop it with
  `<img>`, the token at which inference stops and starts drawing. Dropped rows (condition dropout) are the plain
  image-mode drop rows (no thought), as inference builds its guidance rows.
- understanding: the text-mode template over all turns; each assistant turn is `[{content}<|im_end|>]` followed by
  an unsupervised "\\n". User turns are normalised like inference prompts (first letter upper-cased, final "."
  added).
Every row's generation conditioning is what the pipeline gathers: hidden states from the second `<|im_start|>`
through the last `<img>` (pipeline.stages.conditioning_spans). Rows are right-padded (positions 0..n-1 as in
inference text generation; no fully-masked query rows).

Condition dropout (paper §5.1) picks, per sample, the guidance row kind: t2i (and think without inputs) drop all with
p=t2i_all; edit (and think with inputs) drop all with p=edit_all and the text only with p=edit_text.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from internvlu.constants import (
    IMAGE_PLACEHOLDER,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    THINK_END_TOKEN,
    THINK_START_TOKEN,
)
from internvlu.data.records import BadRecordTracker, RecordError, Sample
from internvlu.processing.images import round_to_bf16
from internvlu.processing.templates import (
    RESERVED_TOKENS,
    DropCond,
    expand_image_tokens,
    get_template,
    images_in_row,
    normalize_user_prompt,
)
from internvlu.training.config import DataConfig, LossConfig, ResolutionConfig
from internvlu.training.dataset import PlannedSample, TaskIndex, load_uncached
from internvlu.training.losses import IGNORE_INDEX, ntp_units, sample_sigma

SIDE_ALIGN = 16  # VAE factor 8 x 2x2 head patch
_IMAGE_ERRORS = (OSError, SyntaxError, Image.DecompressionBombError)


# --------------------------------------------------------------------------------------------------
# Rendering: text rows and labels
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RenderedRow:
    """One token row: ids, labels (IGNORE_INDEX = no loss) and the number of input images it carries."""

    input_ids: list[int]
    labels: list[int]
    num_images: int
    generation: bool  # ends with the generation <img> (flow loss)


def _check_text(text: str, what: str) -> None:
    for token in RESERVED_TOKENS:
        if token in text:
            raise ValueError(f"{what} must not contain the reserved token {token!r}: {text!r:.200}")


def _tokenize(tokenizer: Any, text: str, first: bool) -> list[int]:
    # The first segment is tokenised exactly as the processor tokenises a row (default special-token handling).
    return list(tokenizer(text, add_special_tokens=first)["input_ids"])


def render_segments(tokenizer: Any, segments: Sequence[tuple[str, bool]]) -> tuple[list[int], list[int], int]:
    """Tokenise (text, supervised) segments (image tokens already expanded) one by one.

    Segment borders sit next to special tokens (<|im_start|>, <|im_end|>, <img>), where the tokenizer splits anyway,
    so the concatenation equals the tokenisation of the whole string (checked in the tests).

    Returns:
        (ids, labels, number of input-image spans).
    """
    ids: list[int] = []
    labels: list[int] = []
    n_images = 0
    for i, (text, supervised) in enumerate(segments):
        n_images += text.count(IMG_END_TOKEN)
        tok = _tokenize(tokenizer, text, first=i == 0)
        ids += tok
        labels += tok if supervised else [IGNORE_INDEX] * len(tok)
    return ids, labels, n_images


def understanding_segments(
    sample: Sample, base_template: str, image_seq_length: int
) -> list[tuple[str, bool]]:
    """Text-mode chat over all turns, split into (text, supervised) segments with image tokens expanded."""
    template = get_template(base_template)
    turns: list[tuple[str, str]] = []
    for m in sample.messages:
        _check_text(m.content, f"{m.role} turn")
        content = (
            normalize_user_prompt(m.content, m.content.count(IMAGE_PLACEHOLDER))
            if m.role == "user"
            else m.content
        )
        turns.append((m.role, content))
    user_role, assistant_role = template.roles
    segments: list[tuple[str, bool]] = []
    pending = template.system_template.format(system_message=template.system_message) + template.sep
    for role, content in turns:
        if role == "user":
            pending += user_role + content + template.sep
        else:
            segments.append((pending + assistant_role, False))
            # The loss covers the answer and its closing <|im_end|>; the separator's "\n" is formatting.
            segments.append((content + template.sep.rstrip("\n"), True))
            pending = "\n"
    if pending != "\n":
        raise ValueError("an understanding record must end with an assistant turn")
    segments.append(("\n", False))
    full = "".join(text for text, _ in segments)
    expected = template.render(turns, add_generation_prompt=False)
    assert full == expected, (full, expected)  # same string as the template renders
    return [(expand_image_tokens(text, image_seq_length)[0], sup) for text, sup in segments]


def generation_segments(sample: Sample, drop: DropCond, processor: Any) -> list[tuple[str, bool]]:
    """Inference row of this guidance kind (+ the supervised thought for a conditional think row)."""
    n = len(sample.images)
    assert sample.prompt is not None
    if sample.task == "think" and drop is DropCond.NONE:
        assert sample.thought is not None
        _check_text(sample.thought, "thought")
        prompt = processor.build_prompt(sample.prompt, n, "text_image", drop)
        thought = f"{THINK_START_TOKEN}\n{sample.thought.strip()}\n{THINK_END_TOKEN}\n{IMG_START_TOKEN}"
        return [(prompt, False), (thought, True)]
    return [(processor.build_prompt(sample.prompt, n, "image", drop), False)]


def render_sample(sample: Sample, drop: DropCond, processor: Any) -> RenderedRow:
    """Token row of a record for the given guidance kind (always NONE for understanding)."""
    if sample.task == "understanding":
        segments = understanding_segments(sample, processor.template_name, processor.image_seq_length)
        generation = False
    else:
        segments = generation_segments(sample, drop, processor)
        generation = True
    ids, labels, n_images = render_segments(processor.tokenizer, segments)
    expected = (
        len(sample.images) if sample.task == "understanding" else images_in_row(len(sample.images), drop)
    )
    assert n_images == expected, (n_images, expected)
    return RenderedRow(ids, labels, n_images, generation)


def choose_drop(sample: Sample, u: float, drop: Any) -> DropCond:
    """Guidance row kind from a uniform draw `u` (DataConfig.drop rates)."""
    if sample.task == "understanding":
        return DropCond.NONE
    if sample.images:  # editing, or think with input images
        if u < drop.edit_all:
            return DropCond.ALL
        if u < drop.edit_all + drop.edit_text:
            return DropCond.TEXT
        return DropCond.NONE
    return DropCond.ALL if u < drop.t2i_all else DropCond.NONE


# --------------------------------------------------------------------------------------------------
# Target sizes: fixed square or aspect-ratio buckets
# --------------------------------------------------------------------------------------------------


def bucket_sizes(res: ResolutionConfig) -> dict[int, list[tuple[int, int]]]:
    """{level: [(height, width), ...]} with aspect ratios (w/h) geometrically spaced in [min, max]."""
    if res.num_aspects == 1:
        aspects = [1.0]
    else:
        lo, hi = math.log(res.min_aspect), math.log(res.max_aspect)
        aspects = [math.exp(lo + (hi - lo) * i / (res.num_aspects - 1)) for i in range(res.num_aspects)]
    out: dict[int, list[tuple[int, int]]] = {}
    for level in sorted(res.levels):
        sizes = []
        for a in aspects:
            w = max(SIDE_ALIGN, round(level * math.sqrt(a) / SIDE_ALIGN) * SIDE_ALIGN)
            h = max(SIDE_ALIGN, round(level / math.sqrt(a) / SIDE_ALIGN) * SIDE_ALIGN)
            if (h, w) not in sizes:
                sizes.append((h, w))
        out[level] = sizes
    return out


def target_size(height: int, width: int, res: ResolutionConfig) -> tuple[int, int]:
    """(height, width) a target of that size is trained at."""
    if res.mode == "fixed":
        return res.size, res.size
    buckets = bucket_sizes(res)
    levels = sorted(buckets)
    side = math.sqrt(height * width)
    level = max((lv for lv in levels if lv <= side), default=levels[0])
    aspect = min(max(width / height, res.min_aspect), res.max_aspect)
    return min(buckets[level], key=lambda hw: abs(math.log(hw[1] / hw[0]) - math.log(aspect)))


def resize_cover(image: Image.Image, height: int, width: int) -> Image.Image:
    """Resize (bicubic) to cover height x width, then centre-crop to exactly that size."""
    if (image.height, image.width) == (height, width):
        return image
    scale = max(width / image.width, height / image.height)
    new_w, new_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    image = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


def generation_pixels(image: Image.Image, gen_processor: Any) -> torch.Tensor:
    """RGB image -> [3, H, W] float32 in [-1, 1], with the generation processor's rescale and normalisation
    arithmetic (its resize step is replaced by the bucket's cover-crop)."""
    x = (np.asarray(image, dtype=np.uint8).astype(np.float64) * gen_processor.rescale_factor).astype(
        np.float32
    )
    mean = np.asarray(gen_processor.image_mean, dtype=np.float32)
    std = np.asarray(gen_processor.image_std, dtype=np.float32)
    return torch.from_numpy(((x - mean) / std).transpose(2, 0, 1).copy())  # [3, H, W]


# --------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GenItem:
    """One image to generate (flow loss) in a batch."""

    row: int  # row of the batch whose conditioning drives it
    target: torch.Tensor  # [3, H, W] in [-1, 1]
    refs: list[torch.Tensor]  # reference images for VAE latents, [3, h, w] each (empty: none)
    num_vit_images: int  # ViT images in the row's context (-> image_fhw_cond rows)
    sigma: float
    noise_seed: int
    index: int  # global sample index


@dataclasses.dataclass
class TrainBatch:
    """A micro-batch on the CPU."""

    input_ids: torch.Tensor  # [R, L] long, right padded
    attention_mask: torch.Tensor  # [R, L] long
    labels: torch.Tensor  # [R, L] long, IGNORE_INDEX where unsupervised
    pixel_values: torch.Tensor | None  # [N, 3, S, S] ViT images in row-major order
    gen: list[GenItem]
    tasks: list[str]
    indices: list[int]
    drops: list[str]

    @property
    def num_ntp_tokens(self) -> int:
        return ntp_units(self.labels, "token")

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def num_samples(self) -> int:
        return self.input_ids.shape[0]


class BatchBuilder:
    """Turns planned samples into `TrainBatch`es (CPU work: decode, resize, tokenise).

    Per-sample randomness (condition dropout, sigma, noise seed) comes from a generator seeded by (seed, global
    sample index), so it does not depend on the number of processes or on where a run was resumed.
    """

    def __init__(
        self,
        processor: Any,
        data: DataConfig,
        loss: LossConfig,
        seed: int,
        tracker: BadRecordTracker | None = None,
    ) -> None:
        self.processor = processor
        self.data = data
        self.loss = loss
        self.seed = seed
        self.pad_id = int(processor.tokenizer.pad_token_id)
        self.tracker = (
            tracker if tracker is not None else BadRecordTracker(max_bad_fraction=data.max_bad_fraction)
        )
        self._lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()

    def decisions(self, sample: Sample, index: int) -> tuple[DropCond, float, int]:
        rng = np.random.default_rng([self.seed, 0x5EED, index])
        drop = choose_drop(sample, float(rng.random()), self.data.drop)
        sigma = sample_sigma(rng, self.loss.logit_mean, self.loss.logit_std, self.loss.flow_shift)
        noise_seed = int(rng.integers(0, 2**62))
        return drop, sigma, noise_seed

    def row_length(self, sample: Sample, index: int) -> int:
        """Tokens of the row `build` renders for global sample `index` (its drop decision included)."""
        drop, _, _ = self.decisions(sample, index)
        with self._tokenizer_lock:
            return len(render_sample(sample, drop, self.processor).input_ids)

    def build(self, planned: Sequence[PlannedSample], index: TaskIndex) -> TrainBatch:
        rows: list[RenderedRow] = []
        pixels: list[torch.Tensor] = []
        gen: list[GenItem] = []
        drops: list[str] = []
        used: list[PlannedSample] = []
        for plan in planned:
            # A record whose image fails to decode now (indexing without check_images) is counted as bad and
            # replaced by the next record of the same task: deterministic, and never silent.
            count = len(index.by_task[plan.task])
            for attempt in range(count):
                candidate = dataclasses.replace(plan, record=(plan.record + attempt) % count)
                sample = index.get(candidate.task, candidate.record)
                try:
                    item = self._build_one(sample, candidate.index, len(rows))
                except _IMAGE_ERRORS as exc:
                    self._report_bad(sample, exc)
                    continue
                break
            else:
                raise ValueError(f"every {plan.task!r} record failed to load; see the bad-record log")
            row, row_pixels, gen_item, drop = item
            rows.append(row)
            pixels += row_pixels
            if gen_item is not None:
                gen.append(gen_item)
            drops.append(drop.value)
            used.append(candidate)
        return self._collate(rows, pixels, gen, used, drops)

    def _build_one(self, sample: Sample, index: int, row_index: int):
        und = self.processor.understanding_processor
        gen_proc = self.processor.generation_processor
        drop, sigma, noise_seed = self.decisions(sample, index)
        with self._tokenizer_lock:  # a fast tokenizer is not safe to call from several threads at once
            row = render_sample(sample, drop, self.processor)
        if self.data.max_tokens is not None and len(row.input_ids) > self.data.max_tokens:
            raise ValueError(
                f"{sample.location}: row of {len(row.input_ids)} tokens exceeds data.max_tokens={self.data.max_tokens}"
            )
        inputs = [load_uncached(ref) for ref in sample.images[: row.num_images]]
        # Same preprocessing and bf16 rounding as the processor gives the ViT at inference.
        pixels = [round_to_bf16(und.preprocess(img)) for img in inputs]
        if not row.generation or self.loss.flow_weight == 0:
            # No flow loss (an NTP-only stage): the row still trains its text; encoding the target and running
            # the head would only add zero gradients.
            return row, pixels, None, drop
        assert sample.target is not None
        target_img = load_uncached(sample.target)
        h, w = target_size(target_img.height, target_img.width, self.data.resolution)
        target = generation_pixels(resize_cover(target_img, h, w), gen_proc)
        refs = (
            [round_to_bf16(gen_proc.preprocess(img)) for img in inputs]
            if self.data.use_reference_latents
            else []
        )
        return row, pixels, GenItem(row_index, target, refs, row.num_images, sigma, noise_seed, index), drop

    def _report_bad(self, sample: Sample, exc: BaseException) -> None:
        error = RecordError(
            sample.location, "images", "unreadable_image", f"image failed to decode during training: {exc}"
        )
        with self._lock:
            self.tracker.add_bad(error)

    def _collate(self, rows, pixels, gen, planned, drops) -> TrainBatch:
        width = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for r, row in enumerate(rows):
            n = len(row.input_ids)
            ids[r, :n] = torch.tensor(row.input_ids)
            mask[r, :n] = 1
            labels[r, :n] = torch.tensor(row.labels)
        return TrainBatch(
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            pixel_values=torch.stack(pixels) if pixels else None,
            gen=gen,
            tasks=[p.task for p in planned],
            indices=[p.index for p in planned],
            drops=drops,
        )

    def check_record(self, sample: Sample) -> None:
        """Render a record's conditional row (no images decoded); ValueError when it cannot be trained on."""
        row = render_sample(sample, DropCond.NONE, self.processor)
        if self.data.max_tokens is not None and len(row.input_ids) > self.data.max_tokens:
            raise ValueError(
                f"row of {len(row.input_ids)} tokens exceeds data.max_tokens={self.data.max_tokens}"
            )
