"""Training data path: rows identical to the inference processor's, labels, condition dropout, buckets, the
task mixture, and bad-record accounting."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from internvlu.data import ImageRef, Message, Sample, TooManyBadRecordsError, write_jsonl, write_shards
from internvlu.pipeline import stages
from internvlu.processing.templates import DropCond
from internvlu.training.batching import (
    BatchBuilder,
    bucket_sizes,
    choose_drop,
    render_sample,
    target_size,
)
from internvlu.training.config import DataConfig, DropConfig, LossConfig, ResolutionConfig
from internvlu.training.dataset import LengthGroupedSampler, MixtureSampler, TaskIndex, load_index
from internvlu.training.losses import IGNORE_INDEX
from internvlu.training.model_factory import build_processor, build_tokenizer, tiny_arch
from internvlu.training.toy_data import toy_samples

ROW = {DropCond.NONE: 0, DropCond.TEXT: 1, DropCond.ALL: 2}


@pytest.fixture(scope="module")
def processor():
    return build_processor(tiny_arch(), build_tokenizer())


@pytest.fixture(scope="module")
def toy() -> list[Sample]:
    return toy_samples(4)


def _by_task(samples: list[Sample], task: str) -> Sample:
    return next(s for s in samples if s.task == task)


def _supervised(row, tokenizer) -> str:
    return tokenizer.decode([t for t, lab in zip(row.input_ids, row.labels) if lab != IGNORE_INDEX])


@pytest.mark.parametrize("task", ["t2i", "edit"])
def test_generation_rows_equal_the_inference_processor_rows(processor, toy, task: str) -> None:
    sample = _by_task(toy, task)
    images = [[ref.load() for ref in sample.images]] if sample.images else None
    proc = processor(sample.prompt, image=images, generation_mode="image", height=64, width=64)
    for drop in (DropCond.NONE, DropCond.TEXT, DropCond.ALL):
        row = render_sample(sample, drop, processor)
        r = ROW[drop]
        expected = proc.input_ids[r][proc.attention_mask[r].bool()].tolist()
        assert row.input_ids == expected, drop
        assert all(lab == IGNORE_INDEX for lab in row.labels)  # no text loss on generation rows
        assert row.num_images == proc.images_per_row[r]


def test_think_rows_supervise_the_thought_and_the_closing_img(processor, toy) -> None:
    sample = _by_task(toy, "think")
    tok = processor.tokenizer
    row = render_sample(sample, DropCond.NONE, processor)
    # The prompt part is the inference think row (text_image: no trailing <img>) ...
    proc = processor(sample.prompt, generation_mode="text_image", height=64, width=64)
    prompt = proc.input_ids[0][proc.attention_mask[0].bool()].tolist()
    assert row.input_ids[: len(prompt)] == prompt
    assert all(lab == IGNORE_INDEX for lab in row.labels[: len(prompt)])
    # ... followed by the supervised "<think>\n...\n</think>\n<img>" that inference generates and stops at.
    assert _supervised(row, tok) == f"<think>\n{sample.thought}\n</think>\n<img>"
    assert row.input_ids[-1] == processor.token_ids()["<img>"]
    # The conditioning span runs from the user turn through the thought to the final <img>.
    ids = torch.tensor([row.input_ids])
    ((start, end),) = stages.conditioning_spans(
        ids, torch.ones_like(ids), processor.token_ids()["<|im_start|>"], processor.token_ids()["<img>"]
    )
    assert end == len(row.input_ids) - 1 and tok.decode(row.input_ids[start:]).startswith("<|im_start|>user")
    # Dropped think rows are the plain image-mode guidance rows (inference never shows them the thought).
    img_proc = processor(sample.prompt, generation_mode="image", height=64, width=64)
    for drop in (DropCond.TEXT, DropCond.ALL):
        dropped = render_sample(sample, drop, processor)
        assert (
            dropped.input_ids
            == img_proc.input_ids[ROW[drop]][img_proc.attention_mask[ROW[drop]].bool()].tolist()
        )
        assert all(lab == IGNORE_INDEX for lab in dropped.labels)


def test_understanding_labels_cover_assistant_turns_only(processor, toy) -> None:
    sample = _by_task(toy, "understanding")
    tok = processor.tokenizer
    row = render_sample(sample, DropCond.NONE, processor)
    answers = [m.content for m in sample.messages if m.role == "assistant"]
    assert _supervised(row, tok) == "".join(a + "<|im_end|>" for a in answers)
    # Segment-wise tokenisation equals tokenising the whole conversation string.
    assert tok(tok.decode(row.input_ids))["input_ids"] == row.input_ids
    # The first turn is exactly the inference text-mode prompt.
    proc = processor(
        sample.messages[0].content, image=[[r.load() for r in sample.images]], generation_mode="text"
    )
    first = proc.input_ids[0][proc.attention_mask[0].bool()].tolist()
    assert row.input_ids[: len(first)] == first
    assert (
        row.num_images == 1
        and row.input_ids.count(processor.token_ids()["<IMG_CONTEXT>"]) == processor.image_seq_length
    )


def test_condition_dropout_rates_and_kinds(toy) -> None:
    rates = DropConfig(t2i_all=0.10, edit_all=0.05, edit_text=0.05)
    n = 20000
    t2i = Counter(choose_drop(_by_task(toy, "t2i"), (i + 0.5) / n, rates) for i in range(n))
    edit = Counter(choose_drop(_by_task(toy, "edit"), (i + 0.5) / n, rates) for i in range(n))
    assert t2i[DropCond.ALL] / n == pytest.approx(0.10, abs=1e-3) and t2i[DropCond.TEXT] == 0
    assert edit[DropCond.ALL] / n == pytest.approx(0.05, abs=1e-3)
    assert edit[DropCond.TEXT] / n == pytest.approx(0.05, abs=1e-3)
    assert choose_drop(_by_task(toy, "understanding"), 0.0, rates) is DropCond.NONE


def test_builder_decisions_follow_the_configured_rates(processor, toy) -> None:
    builder = BatchBuilder(processor, DataConfig(), LossConfig(), seed=3)
    t2i = _by_task(toy, "t2i")
    drops = Counter(builder.decisions(t2i, i)[0] for i in range(4000))
    assert drops[DropCond.ALL] / 4000 == pytest.approx(0.10, abs=0.02)
    sigmas = torch.tensor([builder.decisions(t2i, i)[1] for i in range(4000)])
    # logit-normal + shift 3: median sigma = shift(0.5) = 0.75
    assert (
        float(sigmas.median()) == pytest.approx(0.75, abs=0.03)
        and 0 < float(sigmas.min())
        and float(sigmas.max()) < 1
    )
    assert builder.decisions(t2i, 7) == builder.decisions(t2i, 7)  # a pure function of (seed, index)


def test_aspect_buckets() -> None:
    res = ResolutionConfig(
        mode="buckets", levels=[512, 768, 1024], min_aspect=0.5, max_aspect=2.0, num_aspects=9
    )
    for level, sizes in bucket_sizes(res).items():
        for h, w in sizes:
            assert h % 16 == 0 and w % 16 == 0
            assert 0.45 <= w / h <= 2.1
            assert math.sqrt(h * w) == pytest.approx(level, rel=0.06)
    assert target_size(1000, 1000, res) == (768, 768)  # largest level not above its size
    assert target_size(300, 300, res) == (512, 512)  # small images go to the smallest level
    h, w = target_size(600, 2400, res)  # aspect 4 clamps to 2
    assert w / h == pytest.approx(2.0, rel=0.05)
    h, w = target_size(1024, 576, res)
    assert h > w and (h / w) == pytest.approx(16 / 9, rel=0.15)
    assert target_size(37, 91, ResolutionConfig(mode="fixed", size=64)) == (64, 64)


def test_batches_hold_right_padded_rows_pixels_and_generation_items(processor, toy) -> None:
    index = TaskIndex(toy)
    sampler = MixtureSampler(index.counts(), {"t2i": 1, "edit": 1, "understanding": 1, "think": 1}, seed=0)
    data = DataConfig(use_reference_latents=True, resolution=ResolutionConfig(mode="fixed", size=64))
    builder = BatchBuilder(processor, data, LossConfig(), seed=0)
    batch = builder.build(sampler.take(12), index)
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape
    lengths = batch.attention_mask.sum(1)
    for r, n in enumerate(lengths.tolist()):
        assert batch.attention_mask[r, :n].all() and not batch.attention_mask[r, n:].any()  # right padding
    ctx = processor.token_ids()["<IMG_CONTEXT>"]
    n_images = int((batch.input_ids == ctx).sum()) // processor.image_seq_length
    assert (batch.pixel_values.shape[0] if batch.pixel_values is not None else 0) == n_images
    gen_tasks = [t for t in batch.tasks if t != "understanding"]
    assert len(batch.gen) == len(gen_tasks)
    for item in batch.gen:
        assert (
            item.target.shape == (3, 64, 64)
            and -1.0 <= float(item.target.min()) <= float(item.target.max()) <= 1.0
        )
        assert len(item.refs) == (item.num_vit_images if batch.tasks[item.row] != "t2i" else 0)
    # An NTP-only stage (flow weight 0) builds the same rows but no generation items: no VAE encode, no head.
    ntp_only = BatchBuilder(processor, data, LossConfig(flow_weight=0.0), seed=0)
    sampler = MixtureSampler(index.counts(), {"t2i": 1, "edit": 1, "understanding": 1, "think": 1}, seed=0)
    text_batch = ntp_only.build(sampler.take(12), index)
    assert text_batch.gen == [] and text_batch.tasks == batch.tasks
    assert torch.equal(text_batch.input_ids, batch.input_ids) and torch.equal(text_batch.labels, batch.labels)


def test_mixture_sampler_is_deterministic_weighted_and_resumable() -> None:
    counts = {"t2i": 5, "edit": 3, "understanding": 7, "think": 0}
    weights = {"t2i": 4.0, "edit": 1.0, "understanding": 0.0, "think": 2.0}  # think has no data: left out
    a = MixtureSampler(counts, weights, seed=1)
    plans = a.take(5000)
    assert a.tasks == ["t2i", "edit"]
    share = Counter(p.task for p in plans)
    assert share["t2i"] / 5000 == pytest.approx(0.8, abs=0.02)
    # Each epoch of a task visits every record once.
    first_epoch = [p.record for p in plans if p.task == "edit"][:3]
    assert sorted(first_epoch) == [0, 1, 2]
    b = MixtureSampler(counts, weights, seed=1)
    b.take(1234)
    c = MixtureSampler(counts, weights, seed=1)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    assert c.take(100) == plans[1234:1334]


def test_length_grouping_pads_less_keeps_the_samples_and_resumes_inside_a_group(processor) -> None:
    index = TaskIndex(toy_samples(40))
    weights = {"t2i": 1, "edit": 1, "understanding": 1, "think": 1}
    builder = BatchBuilder(processor, DataConfig(resolution=ResolutionConfig(mode="fixed", size=64)), LossConfig(), 0)

    def length(p) -> int:
        return builder.row_length(index.get(p.task, p.record), p.index)

    def grouped() -> LengthGroupedSampler:
        return LengthGroupedSampler(MixtureSampler(index.counts(), weights, seed=3), 4, length)

    plain = MixtureSampler(index.counts(), weights, seed=3)
    a = grouped()
    plain_batches = [plain.take(8) for _ in range(8)]
    batches = [a.take(8) for _ in range(8)]
    # Each group of 4 steps uses exactly the samples the plain sampler draws for them, in another grouping.
    for g in (0, 4):
        assert sorted(p.index for b in batches[g : g + 4] for p in b) == list(range(g * 8, g * 8 + 32))
        assert sorted(p.index for b in plain_batches[g : g + 4] for p in b) == list(range(g * 8, g * 8 + 32))
    assert batches != plain_batches

    def padded(bs) -> float:  # padded tokens / real tokens, as BatchBuilder._collate pads
        lengths = [[length(p) for p in b] for b in bs]
        return sum(max(x) * len(x) for x in lengths) / sum(sum(x) for x in lengths)

    assert padded(batches) < padded(plain_batches)
    # The rendered rows have exactly the lengths the grouping sorted by.
    batch = builder.build(batches[0], index)
    assert batch.attention_mask.sum(1).tolist() == [length(p) for p in batches[0]]
    # Resume after 2 of a group's 4 batches (state through JSON), and at a group boundary.
    for done in (2, 4, 6):
        b = grouped()
        for _ in range(done):
            b.take(8)
        c = grouped()
        c.load_state_dict(json.loads(json.dumps(b.state_dict())))
        assert [c.take(8) for _ in range(8 - done)] == batches[done:]
    # Epoch counts follow the samples used so far, not the whole planned group.
    b = grouped()
    b.take(8)
    assert sum(b.state_dict()["taken"].values()) == 8
    # A state saved inside a group refuses a sampler that groups differently (or not at all).
    b = grouped()
    b.take(8)
    with pytest.raises(ValueError, match="group_by_length=4"):
        MixtureSampler(index.counts(), weights, seed=3).load_state_dict(b.state_dict())
    other = LengthGroupedSampler(MixtureSampler(index.counts(), weights, seed=3), 2, length)
    with pytest.raises(ValueError, match="group_by_length=4"):
        other.load_state_dict(b.state_dict())
    with pytest.raises(ValueError, match="group_by_length must be >= 1, got 0"):
        LengthGroupedSampler(MixtureSampler(index.counts(), weights, seed=3), 0, length)


def _solid(rgb: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (64, 64), rgb)


def test_bad_records_are_counted_located_and_bounded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = [Sample(id=f"g{i}", task="t2i", prompt="a red square", target=ImageRef.from_image("t", _solid((200, 0, 0))))
            for i in range(6)]  # fmt: skip
    write_jsonl(good, tmp_path / "train.jsonl")
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    lines.insert(2, json.dumps({"id": "bad1", "task": "t2i", "prompt": "x", "target": "images/missing.png"}))
    lines.insert(4, "{not json")
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        samples, tracker = load_index([str(tmp_path / "train.jsonl")], max_bad_fraction=0.5)
    assert len(samples) == 6 and tracker.summary()["by_reason"] == {"invalid_json": 1, "missing_image": 1}
    assert "train.jsonl:3" in caplog.text and "train.jsonl:5" in caplog.text
    with pytest.raises(TooManyBadRecordsError, match="2 of 8 records"):
        load_index([str(tmp_path / "train.jsonl")], max_bad_fraction=0.1)


def test_tar_shards_are_indexed_and_read_by_offset(tmp_path: Path) -> None:
    samples = [
        Sample(id=f"e{i}", task="edit", prompt="make it blue", images=[ImageRef.from_image("in", _solid((200, 0, 0)))],
               target=ImageRef.from_image("out", _solid((0, 0, 200))))
        for i in range(5)
    ]  # fmt: skip
    write_shards(samples, tmp_path / "shards", shard_size=2)
    loaded, tracker = load_index([str(tmp_path / "shards")])
    assert len(loaded) == 5 and tracker.bad == 0
    assert loaded[3].target.load().getpixel((5, 5)) == (0, 0, 200)
    assert loaded[3].images[0].load().getpixel((5, 5)) == (200, 0, 0)


def test_an_image_that_fails_late_is_counted_and_replaced(tmp_path: Path, processor) -> None:
    samples = [Sample(id=f"s{i}", task="t2i", prompt=f"picture {i}", target=ImageRef.from_image("t", _solid((i * 40, 0, 0))))
               for i in range(3)]  # fmt: skip
    write_jsonl(samples, tmp_path / "d.jsonl")
    loaded, tracker = load_index([str(tmp_path / "d.jsonl")], check_images=False, max_bad_fraction=0.5)
    loaded[0].target.path.write_bytes(b"\x89PNG broken")  # corrupt after indexing
    index = TaskIndex(loaded)
    builder = BatchBuilder(
        processor, DataConfig(resolution=ResolutionConfig(size=64)), LossConfig(), 0, tracker=tracker
    )
    from internvlu.training.dataset import PlannedSample

    batch = builder.build([PlannedSample(index=0, task="t2i", record=0)], index)
    assert tracker.by_reason["unreadable_image"] == 1 and len(batch.gen) == 1
    assert "Picture 1." in processor.tokenizer.decode(batch.input_ids[0])  # the next record stood in


def test_toy_records_are_valid_and_cover_every_task() -> None:
    samples = toy_samples(3, anyres=True)
    assert Counter(s.task for s in samples) == {"t2i": 3, "edit": 3, "understanding": 3, "think": 3}
    assert {s.target.load().size for s in samples if s.target is not None} == {(96, 96), (128, 80), (80, 128)}
    assert all(isinstance(m, Message) for s in samples for m in s.messages)
