"""Text rendering generator: layout, edit pairs confined to the text region, fonts (CJK fallback), OCR hook,
determinism, and shards that load in the training loader."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synth_helpers import draw_samples

from internvlu.data import Sample, SampleReader
from internvlu.synthesis import RejectSample, TextConfig, TextGenerator, run_synthesis, text_render
from internvlu.synthesis.ocr import char_error_rate, load_ocr_engine, normalize_text
from internvlu.synthesis.text_layout import fit_text, has_glyphs, resolve_fonts, wrap_text
from internvlu.synthesis.text_render import BACKGROUNDS, EDIT_OPS, TEXT_COLORS

CJK = resolve_fonts(["cjk-sans"])


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((160, 120), Image.Resampling.BICUBIC).save(root / f"p{i}.jpg")
    (root / "p0.txt").write_text("a bright abstract mosaic", encoding="utf-8")
    return root


def _pool(config: TextConfig, n: int, seed: int = 0) -> tuple[list[Sample], Counter[str]]:
    rejected: Counter[str] = Counter()
    return draw_samples(TextGenerator(config), n, seed, prefix="t", rejected=rejected), rejected


@pytest.fixture(scope="module")
def pool(photo_dir: Path) -> list[Sample]:
    samples, _ = _pool(
        TextConfig(image_size=128, backgrounds=BACKGROUNDS, image_dir=str(photo_dir), min_font_size=8), 160
    )
    return samples


def _box_mask(box: list[int], size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[box[1] : box[3], box[0] : box[2]] = True
    return mask


def test_families_records_and_layout_ground_truth(pool: list[Sample]) -> None:
    families = Counter(s.meta["family"] for s in pool)
    assert {"t2i/poster", "think/poster"} <= set(families)
    assert {f"edit/{op}" for op in EDIT_OPS} <= set(families)
    assert {"understanding/read", "understanding/color", "understanding/line_count"} & set(families)
    assert any(s.meta["background"]["kind"] == "photo" for s in pool)
    for sample in pool:
        sample.validate()
        assert all(ref.load().size == (128, 128) for ref in sample.all_images())
        for key in ("layout", "target_layout"):
            layout = sample.meta.get(key)
            if not layout:
                continue
            x0, y0, x1, y1 = layout["box"]
            ix0, iy0, ix1, iy1 = layout["ink_bbox"]
            assert x0 + layout["padding"] <= ix0 < ix1 <= x1 - layout["padding"]
            assert y0 + layout["padding"] <= iy0 < iy1 <= y1 - layout["padding"]
            # Wrapping only inserts line breaks: the characters are all still there, in order.
            assert "".join(layout["lines"]).replace(" ", "") == layout["text"].replace(" ", "")


def test_edit_targets_differ_from_inputs_only_inside_the_text_region(pool: list[Sample]) -> None:
    edits = [s for s in pool if s.task == "edit"]
    assert len(edits) >= 20
    for sample in edits:
        before = np.asarray(sample.images[0].load(), dtype=np.int16)
        after = np.asarray(sample.target.load(), dtype=np.int16)
        changed = (before != after).any(-1)
        assert changed.any(), sample.prompt
        assert not (changed & ~_box_mask(sample.meta["region"], 128)).any(), sample.meta["family"]
        edit = sample.meta["edit"]
        if edit["op"] in ("replace_text", "replace_word"):
            a, b = sample.meta["layout"], sample.meta["target_layout"]
            # One layout for both: same region, font, size, alignment; only the text differs.
            assert (a["box"], a["font"], a["font_size"], a["align"], a["valign"]) == (
                b["box"],
                b["font"],
                b["font_size"],
                b["align"],
                b["valign"],
            )
            assert (
                edit["from"] in sample.prompt and edit["to"] != edit["from"] or edit["op"] == "replace_word"
            )


def test_understanding_answers_match_the_rendering(pool: list[Sample]) -> None:
    for sample in (s for s in pool if s.task == "understanding"):
        layout = sample.meta["layout"]
        for qa in sample.meta["qa"]:
            if qa["family"] == "read":
                assert qa["answer"].replace(" ", "") == layout["text"].replace(" ", "")
            elif qa["family"] == "color":
                assert qa["answer"] == sample.meta["color"]["name"] and qa["answer"] in TEXT_COLORS
            else:
                assert qa["answer"] == str(len(layout["lines"]))


def test_fit_text_wraps_shrinks_and_aligns() -> None:
    font = resolve_fonts(["builtin"])["builtin"]
    text = "the quick brown fox jumps over the lazy dog"
    wide = fit_text(text, font, (0, 0, 200, 120), max_size=60, min_size=6, padding=4)
    narrow = fit_text(text, font, (0, 0, 80, 120), max_size=60, min_size=6, padding=4)
    assert wide is not None and narrow is not None
    assert len(narrow.lines) > 1 and narrow.font_size < wide.font_size
    assert fit_text(text, font, (0, 0, 20, 10), max_size=60, min_size=6) is None
    left = fit_text("AYE", font, (10, 10, 110, 60), max_size=20, padding=5, align="left")
    right = fit_text("AYE", font, (10, 10, 110, 60), max_size=20, padding=5, align="right")
    assert left is not None and right is not None
    assert left.ink_bbox[0] == 15 and right.ink_bbox[2] == 105  # alignment is on the ink, not the advance
    assert wrap_text("x" * 50, font.get(20), 30) is None  # an unbreakable word that cannot fit
    with pytest.raises(ValueError, match="align"):
        fit_text("a", font, (0, 0, 50, 50), max_size=10, align="justify")


@pytest.mark.skipif("cjk-sans" not in CJK, reason="no CJK font installed (Debian: fonts-noto-cjk)")
def test_cjk_text_renders_with_a_cjk_font() -> None:
    font = CJK["cjk-sans"]
    assert has_glyphs(font, "新年快乐") and not has_glyphs(resolve_fonts(["builtin"])["builtin"], "新年快乐")
    layout = fit_text("新年快乐欢迎光临", font, (0, 0, 120, 120), max_size=40, min_size=8)
    assert layout is not None and len(layout.lines) >= 2  # CJK wraps between characters
    samples, _ = _pool(TextConfig(image_size=128, languages=("zh",), tasks=("t2i",), min_font_size=8), 4)
    assert all(s.meta["layout"]["font"]["family"].startswith("cjk") for s in samples)


def test_missing_fonts_fall_back_and_skip_with_a_counted_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    # No CJK family enabled: Chinese candidates are skipped with a reason, English ones still render.
    samples, rejected = _pool(
        TextConfig(image_size=128, cjk_fonts=(), language_weights=(0.5, 0.5), min_font_size=8), 12
    )
    assert rejected["no_cjk_font"] > 0 and all(s.meta["language"] == "en" for s in samples)
    with pytest.raises(ValueError, match="CJK font"):
        TextGenerator(TextConfig(languages=("zh",), cjk_fonts=()))
    # No Latin font file found at all: Pillow's builtin font is used instead of failing.
    real = text_render.resolve_fonts
    monkeypatch.setattr(
        text_render, "resolve_fonts", lambda fams, dirs=(): real([f for f in fams if f == "builtin"])
    )
    samples, _ = _pool(TextConfig(image_size=128, languages=("en",), tasks=("t2i",), min_font_size=8), 3)
    assert {s.meta["layout"]["font"]["family"] for s in samples} == {"builtin"}


class _FakeOcr:
    name = "fake"

    def __init__(self, garble: bool) -> None:
        self.garble = garble

    def read(self, image: Image.Image) -> str:
        return "zzzz" if self.garble else self.expected

    expected = ""


def test_ocr_check_rejects_unreadable_text(monkeypatch: pytest.MonkeyPatch) -> None:
    assert char_error_rate("Hello World", "hello  world!") == 0.0
    assert normalize_text("ＡＢＣ 1") == "abc1" and char_error_rate("abcd", "abxd") == 0.25
    generator = TextGenerator(TextConfig(image_size=128, tasks=("t2i",), languages=("en",), min_font_size=8))
    fake = _FakeOcr(garble=True)
    generator.ocr = fake
    with pytest.raises(RejectSample, match="ocr_mismatch"):
        generator.sample(np.random.default_rng(0), "x")
    fake.garble = False
    plain = TextGenerator(TextConfig(image_size=128, tasks=("t2i",), languages=("en",), min_font_size=8))
    fake.expected = plain.sample(np.random.default_rng(0), "x").meta["text"]
    sample = generator.sample(np.random.default_rng(0), "x")
    assert sample.meta["ocr"]["engine"] == "fake" and sample.meta["ocr"]["images"]["target"]["cer"] == 0.0


@pytest.mark.skipif(
    load_ocr_engine("auto") is None, reason="no OCR engine installed (rapidocr-onnxruntime / tesseract)"
)
def test_real_ocr_engine_reads_rendered_text() -> None:
    config = TextConfig(
        image_size=256,
        tasks=("t2i",),
        languages=("en",),
        backgrounds=("solid",),
        fonts=("sans",),
        min_font_size=24,
        ocr_check="on",
        ocr_max_cer=0.2,
    )
    samples, _ = _pool(config, 2)
    assert all(s.meta["ocr"]["images"]["target"]["cer"] <= 0.2 for s in samples)


def test_generation_is_deterministic_and_shards_load_in_the_training_loader(tmp_path: Path) -> None:
    a, _ = _pool(TextConfig(image_size=128, min_font_size=8), 6, seed=5)
    b, _ = _pool(TextConfig(image_size=128, min_font_size=8), 6, seed=5)
    assert [s.to_json() for s in a] == [s.to_json() for s in b]
    assert all(x.target is None or x.target.png_bytes() == y.target.png_bytes() for x, y in zip(a, b))
    manifest = run_synthesis(
        "text",
        tmp_path / "text",
        8,
        shard_size=4,
        config={"image_size": 128, "min_font_size": 8},
        contact_sheet_samples=0,
    )
    assert manifest["num_samples"] == 8 and sum(manifest["counts_by_task"].values()) == 8
    assert len(list(SampleReader(tmp_path / "text"))) == 8
    from internvlu.training.dataset import load_index

    samples, tracker = load_index([str(tmp_path / "text")], max_bad_fraction=0.0)
    assert len(samples) == 8 and tracker.bad == 0
