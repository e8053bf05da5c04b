"""Record format: validation, bad-record accounting, JSONL and tar-shard round trips."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from internvlu.data import (
    BadRecordTracker,
    ImageRef,
    Message,
    RecordError,
    Sample,
    SampleReader,
    ShardWriter,
    TooManyBadRecordsError,
    read_samples,
    sha256_file,
    write_jsonl,
    write_shards,
)


def _image(seed: int, size: int = 16) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB")


def _samples() -> list[Sample]:
    """One good sample of every kind (including a multi-turn, two-image chat and a think-edit)."""
    return [
        Sample(
            id="und-1",
            task="understanding",
            images=[ImageRef.from_image("a", _image(0)), ImageRef.from_image("b", _image(1))],
            messages=[
                Message("user", "<image>\n<image>\nWhich is brighter?"),
                Message("assistant", "the first"),
                Message("user", "Are you sure?"),
                Message("assistant", "yes"),
            ],
            meta={"note": "two images"},
        ),
        Sample(id="t2i-1", task="t2i", prompt="a red circle", target=ImageRef.from_image("t", _image(2))),
        Sample(
            id="edit-1",
            task="edit",
            prompt="make it blue",
            images=[ImageRef.from_image("a", _image(3))],
            target=ImageRef.from_image("t", _image(4)),
            meta={"op": "recolor"},
        ),
        Sample(
            id="think 1",
            task="think",
            prompt="draw 1 plus 1 squares",
            thought="1 plus 1 is 2.",
            target=ImageRef.from_image("t", _image(5)),
        ),  # id with a space: key falls back to the index
        Sample(
            id="think-edit",
            task="think",
            prompt="paint it like grass",
            thought="Grass is green.",
            images=[ImageRef.from_image("a", _image(6))],
            target=ImageRef.from_image("t", _image(7)),
        ),
    ]


def _assert_same(read: list[Sample], written: list[Sample]) -> None:
    assert [s.id for s in read] == [s.id for s in written]
    for got, want in zip(read, written):
        assert (got.task, got.prompt, got.thought, got.meta, got.messages) == (
            want.task,
            want.prompt,
            want.thought,
            want.meta,
            want.messages,
        )
        assert len(got.all_images()) == len(want.all_images())
        for g, w in zip(got.all_images(), want.all_images()):
            assert g.is_loaded  # readers decode eagerly by default
            assert np.array_equal(np.asarray(g.load()), np.asarray(w.load()))


def test_jsonl_round_trip(tmp_path: Path) -> None:
    samples = _samples()
    assert write_jsonl(samples, tmp_path / "data.jsonl") == len(samples)
    line = json.loads((tmp_path / "data.jsonl").read_text().splitlines()[2])
    assert line["images"] == ["images/edit-1.image0.png"] and line["target"] == "images/edit-1.target.png"
    _assert_same(read_samples(tmp_path / "data.jsonl"), samples)
    lazy = read_samples(tmp_path / "data.jsonl", decode=False)
    assert not lazy[1].target.is_loaded and lazy[1].target.load().size == (16, 16)


def test_tar_round_trip_is_byte_stable(tmp_path: Path) -> None:
    samples = _samples()
    paths = write_shards(samples, tmp_path / "a", shard_size=2)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    with tarfile.open(paths[0]) as tar:
        names = tar.getnames()
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in tar.getmembers())
    assert names == ["und-1.image0.png", "und-1.image1.png", "und-1.json", "t2i-1.json", "t2i-1.target.png"]
    read = read_samples(tmp_path / "a")
    _assert_same(read, samples)
    assert read[0].location.endswith("shard-000000.tar:und-1.json")
    # Re-writing what was read reuses the PNG bytes: identical shards.
    again = write_shards(read, tmp_path / "b", shard_size=2)
    assert [sha256_file(p) for p in again] == [sha256_file(p) for p in paths]


def test_writer_rejects_bad_samples_and_keys(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "s.tar") as writer:
        with pytest.raises(RecordError, match="target"):
            writer.write(Sample(id="x", task="t2i", prompt="p"))
        with pytest.raises(ValueError, match="tar key"):
            writer.write(_samples()[1], key="bad.key")
        writer.write(_samples()[1])
        with pytest.raises(ValueError, match="duplicate key"):
            writer.write(_samples()[1])
    assert (tmp_path / "s.tar").is_file() and not (tmp_path / "s.tar.tmp").exists()
    with pytest.raises(ValueError, match="duplicate sample key"):
        write_jsonl([_samples()[1], _samples()[1]], tmp_path / "dup.jsonl")


# Every kind of bad JSONL record, with the reason and the field it must be reported under.
BAD_LINES: list[tuple[str, str, str]] = [
    ('{"id": "a", "task": "t2i", "prompt": "x", "target": "ok.png"', "invalid_json", "<record>"),
    ('["not", "an", "object"]', "not_an_object", "<record>"),
    ('{"task": "t2i", "prompt": "x", "target": "ok.png"}', "missing_field", "id"),
    ('{"id": "a", "task": "t2i", "prompt": 3, "target": "ok.png"}', "wrong_type", "prompt"),
    (
        '{"id": "a", "task": "edit", "prompt": "x", "images": "ok.png", "target": "ok.png"}',
        "wrong_type",
        "images",
    ),
    ('{"id": "a", "task": "paint", "prompt": "x", "target": "ok.png"}', "bad_value", "task"),
    (
        '{"id": "a", "task": "understanding", "messages": [{"role": "assistant", "content": "hi"}]}',
        "bad_value",
        "messages[0].role",
    ),
    (
        (
            '{"id": "a", "task": "understanding", "messages": [{"role": "user", "content": "q"},'
            ' {"role": "assistant", "content": "a"}], "target": "ok.png"}'
        ),
        "unexpected_field",
        "target",
    ),
    (
        (
            '{"id": "a", "task": "understanding", "images": ["ok.png"],'
            ' "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'
        ),
        "placeholder_mismatch",
        "messages",
    ),
    ('{"id": "a", "task": "t2i", "prompt": "x", "target": ""}', "empty_target", "target"),
    ('{"id": "a", "task": "think", "prompt": "x", "target": "ok.png"}', "missing_field", "thought"),
    ('{"id": "a", "task": "t2i", "prompt": "x", "target": "nowhere.png"}', "missing_image", "target"),
    (
        '{"id": "a", "task": "edit", "prompt": "x", "images": ["broken.png"], "target": "ok.png"}',
        "unreadable_image",
        "images[0]",
    ),
]
GOOD_LINE = '{"id": "g%d", "task": "t2i", "prompt": "a red circle", "target": "ok.png"}'


def _bad_jsonl(tmp_path: Path, good: int) -> Path:
    _image(0).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    lines = [GOOD_LINE % i for i in range(good)] + [line for line, _, _ in BAD_LINES]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")  # a trailing blank line is not a record
    return path


def test_every_bad_kind_is_counted_logged_and_located(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _bad_jsonl(tmp_path, good=3)
    reader = SampleReader(path, max_bad_fraction=1.0)
    with caplog.at_level(logging.WARNING, logger="internvlu.data"):
        good = list(reader)
    assert [s.id for s in good] == ["g0", "g1", "g2"]
    expected: dict[str, int] = {}
    for _, reason, _ in BAD_LINES:
        expected[reason] = expected.get(reason, 0) + 1
    assert reader.stats.summary() == {
        "seen": 3 + len(BAD_LINES),
        "bad": len(BAD_LINES),
        "by_reason": expected,
    }
    assert len(caplog.records) == len(BAD_LINES)
    for offset, (record, (_, reason, field)) in enumerate(zip(caplog.records, BAD_LINES)):
        message = record.getMessage()
        assert f"{path}:{4 + offset}:" in message  # file:line of the bad record
        assert f"field '{field}'" in message and f"[{reason}]" in message


def test_bad_fraction_threshold(tmp_path: Path) -> None:
    path = _bad_jsonl(tmp_path, good=20)
    # Below min_records the running check waits, but the end-of-data check still fires.
    reader = SampleReader(path, max_bad_fraction=0.1, min_records=1000)
    with pytest.raises(TooManyBadRecordsError, match=r"13 of 33 records .* max_bad_fraction=0.1") as info:
        list(reader)
    assert f"{path}:21" in str(info.value)  # the first problem is named with its location
    # With a low min_records the run stops early, before every record was read.
    early = SampleReader(path, max_bad_fraction=0.04, min_records=21)  # 1 bad of 21 > 4%
    seen = []
    with pytest.raises(TooManyBadRecordsError):
        for sample in early:
            seen.append(sample)
    assert early.stats.seen == 21 and len(seen) == 20
    # Under the threshold nothing is raised.
    assert len(read_samples(path, max_bad_fraction=0.5)) == 20


def test_tracker_validates_its_settings() -> None:
    with pytest.raises(ValueError, match="max_bad_fraction"):
        BadRecordTracker(max_bad_fraction=1.5)


def _raw_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_shard_members_are_counted(tmp_path: Path) -> None:
    png = io.BytesIO()
    _image(0).save(png, format="PNG")
    good = json.dumps({"id": "ok", "task": "t2i", "prompt": "p", "target": "ok.target.png"}).encode()
    missing = json.dumps({"id": "m", "task": "t2i", "prompt": "p", "target": "m.target.png"}).encode()
    broken = json.dumps({"id": "b", "task": "t2i", "prompt": "p", "target": "b.target.png"}).encode()
    shard = tmp_path / "bad.tar"
    _raw_tar(
        shard,
        {
            "ok.json": good,
            "ok.target.png": png.getvalue(),
            "m.json": missing,  # its image member is absent
            "b.json": broken,
            "b.target.png": b"garbage",
            "orphan.target.png": png.getvalue(),  # no json
            "j.json": b"{not json",
        },
    )
    reader = SampleReader(shard, max_bad_fraction=1.0)
    assert [s.id for s in reader] == ["ok"]
    assert reader.stats.by_reason == {
        "missing_image": 1,
        "unreadable_image": 1,
        "missing_json": 1,
        "invalid_json": 1,
    }
    # A truncated shard: what was read is kept, the break is counted once.
    truncated = tmp_path / "trunc.tar"
    with tarfile.open(shard) as tar:
        cut = tar.getmember("m.json").offset_data + 10  # inside the second sample's json
    truncated.write_bytes(shard.read_bytes()[:cut])
    reader = SampleReader(truncated, max_bad_fraction=1.0)
    assert [s.id for s in reader] == ["ok"] and reader.stats.by_reason["corrupt_shard"] == 1


def test_reader_shares_work_across_ranks(tmp_path: Path) -> None:
    samples = [
        Sample(id=f"s{i}", task="t2i", prompt=f"p{i}", target=ImageRef.from_image("t", _image(i, 8)))
        for i in range(7)
    ]
    write_shards(samples, tmp_path / "shards", shard_size=2)  # 4 shards
    write_jsonl(samples, tmp_path / "one.jsonl")
    for source in (tmp_path / "shards", tmp_path / "one.jsonl"):
        parts = [[s.id for s in SampleReader(source, rank=r, world_size=3)] for r in range(3)]
        assert sorted(i for part in parts for i in part) == sorted(s.id for s in samples) and all(parts)
    with pytest.raises(ValueError, match="does not exist"):
        SampleReader(tmp_path / "nothing.jsonl")
    with pytest.raises(ValueError, match="rank"):
        SampleReader(tmp_path / "one.jsonl", rank=3, world_size=3)
