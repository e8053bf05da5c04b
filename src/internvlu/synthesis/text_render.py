"""Text rendering (paper §4.3): the ``text`` generator.

Families (``meta["family"]``):

* ``t2i/poster``: text on a plain, gradient or textured background (white paper, kraft paper, wood,
  lined paper, chalkboard) with an adaptive layout (wrapping, shrink to fit, alignment, several fonts
  including CJK); the prompt is a caption describing the text, its colour, font, lines and placement.
* ``think/poster``: the same picture from a short user-style request; the thought is the layout plan
  (font, size, line breaks, alignment, colour choice for contrast) read off the real layout.
* ``edit/add_text``, ``edit/remove_text``, ``edit/replace_text``, ``edit/replace_word``: editing pairs
  rendered from one layout (same region, font, colour, alignment and one font size for both texts), so
  input and target differ only inside the text region. Backgrounds include pictures from a user's
  folder (``image_dir``; a sidecar ``NAME.txt`` caption, when present, may supply the text, as the
  paper renders an image's own caption into it), optionally on a plate for legibility.
* ``understanding/read``, ``/color``, ``/line_count``: questions about the rendered text.

Ground truth in ``meta``: ``layout`` / ``target_layout`` (lines, font file and size, box, alignment,
line origins, ink box), ``text`` / ``target_text``, ``color``, ``background``, ``region`` (the box all
edits stay inside), ``rendered_text`` (image name -> expected text, what the OCR check reads) and
``language``. Texts come from a built-in phrase grammar (English and Chinese) or ``text_file``.

A font family whose files are missing is dropped at construction; Chinese samples without any CJK
font are skipped with the counted reason ``generator:no_cjk_font``. With ``ocr_check`` on and an OCR
engine installed (ocr.py), samples whose text does not read back are rejected (``ocr_mismatch``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from internvlu.constants import IMAGE_PLACEHOLDER
from internvlu.data.records import ImageRef, Message, Sample
from internvlu.synthesis.gen_common import (
    GeneratorConfig,
    check_min_int,
    check_range,
    check_subset,
    check_weights,
    pick,
    pick_weighted,
    probabilities,
)
from internvlu.synthesis.ocr import char_error_rate, load_ocr_engine
from internvlu.synthesis.runner import Generator, RejectSample, register_generator
from internvlu.synthesis.text_layout import (
    ALIGNS,
    CJK_FAMILIES,
    FAMILY_TEXT,
    LATIN_FAMILIES,
    VALIGNS,
    ResolvedFont,
    TextLayout,
    draw_layout,
    fit_text,
    has_glyphs,
    is_cjk_char,
    resolve_fonts,
)

logger = logging.getLogger("internvlu.synthesis")

TASKS: tuple[str, ...] = ("t2i", "think", "edit", "understanding")
BACKGROUNDS: tuple[str, ...] = (
    "solid",
    "gradient",
    "white_paper",
    "kraft_paper",
    "wood",
    "lined_paper",
    "chalkboard",
    "photo",
)
EDIT_OPS: tuple[str, ...] = ("add_text", "remove_text", "replace_text", "replace_word")
QUESTIONS: tuple[str, ...] = ("read", "color", "line_count")
LANGUAGES: tuple[str, ...] = ("en", "zh")
LANGUAGE_SHARE = {"en": 0.8, "zh": 0.2}  # default mix when language_weights is empty
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Text colours (name -> RGB, Chinese name); a colour is used only where it contrasts with the background.
TEXT_COLORS: dict[str, tuple[tuple[int, int, int], str]] = {
    "black": ((20, 20, 20), "黑色"),
    "white": ((250, 250, 250), "白色"),
    "red": ((205, 30, 30), "红色"),
    "dark red": ((130, 20, 25), "深红色"),
    "blue": ((30, 70, 205), "蓝色"),
    "navy": ((20, 30, 95), "藏青色"),
    "green": ((30, 135, 50), "绿色"),
    "dark green": ((20, 80, 40), "深绿色"),
    "orange": ((235, 120, 20), "橙色"),
    "yellow": ((245, 215, 40), "黄色"),
    "purple": ((120, 50, 165), "紫色"),
    "brown": ((105, 60, 25), "棕色"),
    "gray": ((105, 105, 105), "灰色"),
    "pink": ((230, 90, 160), "粉色"),
}
# Plain background colours (name -> RGB, Chinese name).
BG_COLORS: dict[str, tuple[tuple[int, int, int], str]] = {
    "white": ((255, 255, 255), "白色"),
    "cream": ((250, 243, 220), "米色"),
    "light gray": ((215, 215, 215), "浅灰色"),
    "light blue": ((190, 220, 245), "浅蓝色"),
    "pale green": ((205, 235, 200), "淡绿色"),
    "light pink": ((250, 215, 225), "浅粉色"),
    "pale yellow": ((252, 245, 180), "淡黄色"),
    "black": ((15, 15, 15), "黑色"),
    "navy": ((25, 35, 80), "藏青色"),
    "dark green": ((25, 70, 45), "深绿色"),
    "dark red": ((110, 25, 30), "深红色"),
    "teal": ((20, 110, 115), "青色"),
    "orange": ((240, 140, 40), "橙色"),
}
TEXTURE_TEXT: dict[str, tuple[str, str]] = {
    "white_paper": ("a sheet of white paper", "一张白纸"),
    "kraft_paper": ("a sheet of brown kraft paper", "一张牛皮纸"),
    "wood": ("a wooden board", "一块木板"),
    "lined_paper": ("a page of lined notebook paper", "一页横线笔记本纸"),
    "chalkboard": ("a green chalkboard", "一块绿色黑板"),
}
REGION_TEXT: dict[tuple[int, int], tuple[str, str]] = {
    (0, 0): ("top left", "左上角"),
    (1, 0): ("top", "上方"),
    (2, 0): ("top right", "右上角"),
    (0, 1): ("left side", "左侧"),
    (1, 1): ("center", "中央"),
    (2, 1): ("right side", "右侧"),
    (0, 2): ("bottom left", "左下角"),
    (1, 2): ("bottom", "下方"),
    (2, 2): ("bottom right", "右下角"),
}
ALIGN_TEXT = {"left": "left-aligned", "center": "centered", "right": "right-aligned"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

# --------------------------------------------------------------------------------------------------
# Built-in texts: a small phrase grammar, so that texts vary far beyond a fixed list.
# --------------------------------------------------------------------------------------------------

_ADJ = (
    "fresh",
    "golden",
    "quiet",
    "happy",
    "bright",
    "little",
    "grand",
    "wild",
    "sunny",
    "cozy",
    "modern",
    "secret",
    "lucky",
    "silver",
    "green",
    "urban",
    "simple",
    "royal",
    "daily",
    "ocean",
    "spicy",
    "sweet",
)
_NOUN = (
    "coffee",
    "garden",
    "bakery",
    "market",
    "library",
    "studio",
    "river",
    "mountain",
    "books",
    "flowers",
    "bread",
    "music",
    "station",
    "harbor",
    "kitchen",
    "theater",
    "museum",
    "pizza",
    "tea",
    "bicycle",
    "forest",
    "island",
    "candle",
    "window",
    "lantern",
    "journey",
    "cinema",
    "festival",
    "academy",
    "hotel",
)
_VERB = ("discover", "enjoy", "explore", "visit", "taste", "join", "celebrate", "build", "read", "share")
_NAME = ("Anna", "Leo", "Maya", "Omar", "Lucy", "Ivan", "Nora", "Kenji", "Sofia", "Hugo", "Priya", "Tom")
_PLACE = ("Paris", "Lisbon", "Oslo", "Kyoto", "Cairo", "Lima", "Austin", "Dublin", "Seoul", "Vienna")
_DAY = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_EN_TEMPLATES: tuple[Callable[[np.random.Generator], str], ...] = (
    lambda r: f"{pick(r, _ADJ)} {pick(r, _NOUN)}",
    lambda r: f"the {pick(r, _ADJ)} {pick(r, _NOUN)}",
    lambda r: f"{pick(r, _VERB)} the {pick(r, _NOUN)}",
    lambda r: f"welcome to {pick(r, _PLACE)}",
    lambda r: f"{pick(r, _NAME)}'s {pick(r, _NOUN)}",
    lambda r: f"open {pick(r, _DAY)} to {pick(r, _DAY)}",
    lambda r: f"sale {int(r.integers(1, 10)) * 10}% off",
    lambda r: f"{pick(r, _ADJ)} {pick(r, _NOUN)} for sale",
    lambda r: f"call {int(r.integers(200, 1000))}-{int(r.integers(1000, 10000))}",
    lambda r: f"best {pick(r, _NOUN)} in {pick(r, _PLACE)}",
    lambda r: f"room {int(r.integers(1, 500))}",
    lambda r: f"happy birthday {pick(r, _NAME)}",
    lambda r: f"{pick(r, _NOUN)} street {int(r.integers(1, 200))}",
    lambda r: f"{pick(r, _VERB)} {pick(r, _ADJ)} {pick(r, _NOUN)} every {pick(r, _DAY)}",
    lambda r: f"since {int(r.integers(1890, 2025))}",
)
_ZH_PHRASES = (
    "欢迎光临",
    "新年快乐",
    "生日快乐",
    "营业中",
    "禁止吸烟",
    "安全出口",
    "人工智能",
    "春眠不觉晓",
    "床前明月光",
    "学而时习之",
    "天天向上",
    "海纳百川",
    "书香门第",
    "一路平安",
    "恭喜发财",
    "万事如意",
    "请勿停车",
    "小心地滑",
    "今日特价",
    "新鲜水果",
    "手工面包",
    "咖啡馆",
    "图书馆",
    "火车站",
    "博物馆",
    "美好生活",
    "百年老店",
    "春夏秋冬",
    "山水之间",
    "江南小镇",
)
_ZH_ADJ = ("美味", "新鲜", "温暖", "快乐", "安静", "美丽", "传统", "现代")
_ZH_NOUN = ("咖啡", "面包", "书店", "花园", "茶馆", "市场", "餐厅", "小屋", "广场", "公园")
_ZH_PLACE = ("北京", "上海", "杭州", "成都", "西安", "广州", "苏州", "南京")


def english_text(rng: np.random.Generator, max_words: int) -> str:
    """One to three phrases from the grammar, in a random letter case, at most `max_words` words."""
    parts = [pick(rng, _EN_TEMPLATES)(rng) for _ in range(int(rng.choice(3, p=[0.6, 0.3, 0.1])) + 1)]
    words = " ".join(parts).split()[:max_words]
    style = int(rng.integers(3))
    if style == 0:
        return " ".join(words).upper()
    if style == 1:
        return " ".join(w[:1].upper() + w[1:] for w in words)
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def chinese_text(rng: np.random.Generator) -> str:
    kind = int(rng.integers(3))
    if kind == 0:
        return pick(rng, _ZH_PHRASES)
    if kind == 1:
        return f"{pick(rng, _ZH_ADJ)}{pick(rng, _ZH_NOUN)}"
    return f"{pick(rng, _ZH_PLACE)}{pick(rng, _ZH_ADJ)}{pick(rng, _ZH_NOUN)}"


def has_cjk(text: str) -> bool:
    return any(is_cjk_char(ch) for ch in text)


# --------------------------------------------------------------------------------------------------
# Colours and backgrounds
# --------------------------------------------------------------------------------------------------


def relative_luminance(rgb: np.ndarray | tuple[float, float, float]) -> float:
    """WCAG relative luminance of an sRGB colour (0..255 channels)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2])


def _luminance(pixels: np.ndarray) -> np.ndarray:
    """(N,) WCAG relative luminance of (N, 3) sRGB pixels."""
    c = pixels.astype(np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin @ np.array([0.2126, 0.7152, 0.0722])


def _contrast(la: float, lb: float) -> float:
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def contrast_ratio(
    a: np.ndarray | tuple[float, float, float], b: np.ndarray | tuple[float, float, float]
) -> float:
    la, lb = relative_luminance(a), relative_luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) smooth noise in [-1, 1]: a cells x cells random grid, bicubic-upsampled."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    up = Image.fromarray(grid, "L").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 127.5 - 1.0


def _to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def render_texture(
    kind: str, size: int, rng: np.random.Generator
) -> tuple[Image.Image, dict[str, Any], str, str]:
    """A procedural background: (image, descriptor, English phrase, Chinese phrase)."""
    if kind == "solid":
        name = pick(rng, list(BG_COLORS))
        rgb, zh = BG_COLORS[name]
        return (
            Image.new("RGB", (size, size), rgb),
            {"kind": kind, "color": name},
            f"a plain {name} background",
            f"纯{zh}背景",
        )
    if kind == "gradient":
        a, b = (str(n) for n in rng.choice(list(BG_COLORS), size=2, replace=False))
        direction = pick(rng, ("horizontal", "vertical", "diagonal"))
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1)
        t = {"horizontal": xs, "vertical": ys, "diagonal": (xs + ys) / 2}[direction][..., None]  # (H, W, 1)
        pixels = (1 - t) * np.asarray(BG_COLORS[a][0], np.float32) + t * np.asarray(
            BG_COLORS[b][0], np.float32
        )
        en = f"a {direction} gradient background from {a} to {b}"
        zh = f"从{BG_COLORS[a][1]}到{BG_COLORS[b][1]}的渐变背景"
        return _to_image(pixels), {"kind": kind, "colors": [a, b], "direction": direction}, en, zh
    base = {
        "white_paper": (244, 242, 235),
        "kraft_paper": (196, 160, 116),
        "lined_paper": (248, 247, 242),
        "chalkboard": (38, 62, 50),
    }
    if kind == "wood":
        warp = _smooth_noise(rng, size, 4) * size * 0.08
        period = size / float(rng.uniform(5, 10))
        xs = np.mgrid[0:size, 0:size][1].astype(np.float32)
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * (xs + warp) / period)  # (H, W) ring pattern
        light, dark = np.asarray((210, 165, 112), np.float32), np.asarray((150, 100, 58), np.float32)
        pixels = (
            light + grain[..., None] * (dark - light) + 5 * _smooth_noise(rng, size, size // 6)[..., None]
        )
        if rng.random() < 0.5:
            pixels = pixels.transpose(1, 0, 2)  # horizontal planks
    else:
        amp = {"white_paper": 3, "kraft_paper": 9, "lined_paper": 2, "chalkboard": 6}[kind]
        # Low- plus mid-frequency tint; no per-pixel noise, which would cost ~15 ms and ~60 KB per PNG.
        tint = _smooth_noise(rng, size, 6) * amp + _smooth_noise(rng, size, size // 4) * amp * 0.6
        pixels = np.asarray(base[kind], np.float32) + tint[..., None]
    image = _to_image(pixels)
    if kind == "kraft_paper":  # a few darker fibres
        draw = ImageDraw.Draw(image)
        for _ in range(size // 6):
            x, y = rng.uniform(0, size, 2)
            angle, length = rng.uniform(0, np.pi), rng.uniform(3, 10) * size / 256
            shade = int(rng.integers(140, 175))
            draw.line((x, y, x + length * np.cos(angle), y + length * np.sin(angle)), fill=(shade, 118, 80))
    if kind == "lined_paper":
        draw = ImageDraw.Draw(image)
        spacing = max(8, size // int(rng.integers(12, 18)))
        for y in range(spacing * 2, size, spacing):
            draw.line((0, y, size, y), fill=(170, 195, 230))
        margin = size // 8
        draw.line((margin, 0, margin, size), fill=(225, 120, 120))
    en, zh = TEXTURE_TEXT[kind]
    return image, {"kind": kind}, en, zh


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TextConfig(GeneratorConfig):
    """Settings of the ``text`` generator (all recorded in the manifest).

    Attributes:
        image_size: side of the square images (>= 64).
        tasks / task_weights: task kinds and their relative frequency (empty = equal).
        backgrounds: background kinds; "photo" needs `image_dir` and is used for edit / understanding.
        image_dir: folder of user pictures (searched recursively; NAME.txt beside NAME.jpg = its caption).
        caption_text_prob: chance that a photo with a caption gets (the start of) its caption as the text.
        fonts: Latin font families; cjk_fonts: CJK families; font_dirs: extra folders searched first.
        languages / language_weights: "en" and/or "zh" texts (empty weights = en 0.8, zh 0.2).
        text_file: UTF-8 file of texts, one per line, used instead of the built-in grammar when set.
        max_words: longest built-in English text, in words.
        min_font_size, max_font_frac: font size range (max as a fraction of image_size).
        edit_ops, questions: enabled edit operations and understanding questions.
        plate_prob: chance that text on a photo sits on a plain plate (always when no colour contrasts).
        zh_prompt_prob: chance that a Chinese text gets a Chinese prompt (else English).
        ocr_check: "off", "auto" (check when an engine is installed) or "on" (require an engine).
        ocr_engine: "auto", "rapidocr" or "tesseract"; ocr_max_cer: allowed character error rate.
    """

    image_size: int = 256
    tasks: tuple[str, ...] = TASKS
    task_weights: tuple[float, ...] = ()
    backgrounds: tuple[str, ...] = BACKGROUNDS[:-1]
    image_dir: str = ""
    caption_text_prob: float = 0.5
    fonts: tuple[str, ...] = ("sans", "sans-bold", "serif", "serif-italic", "mono", "condensed")
    cjk_fonts: tuple[str, ...] = CJK_FAMILIES
    font_dirs: tuple[str, ...] = ()
    languages: tuple[str, ...] = LANGUAGES
    language_weights: tuple[float, ...] = ()
    text_file: str = ""
    max_words: int = 8
    min_font_size: int = 10
    max_font_frac: float = 0.22
    edit_ops: tuple[str, ...] = EDIT_OPS
    questions: tuple[str, ...] = QUESTIONS
    plate_prob: float = 0.4
    zh_prompt_prob: float = 0.5
    ocr_check: str = "off"
    ocr_engine: str = "auto"
    ocr_max_cer: float = 0.0

    def validate(self) -> None:
        check_min_int("image_size", self.image_size, 64)
        check_subset("tasks", self.tasks, TASKS)
        check_weights("task_weights", self.task_weights, self.tasks)
        check_subset("backgrounds", self.backgrounds, BACKGROUNDS)
        if "photo" in self.backgrounds and not self.image_dir:
            raise ValueError("background 'photo' needs image_dir (a folder of pictures)")
        if self.image_dir and not Path(self.image_dir).is_dir():
            raise ValueError(f"image_dir {self.image_dir!r} is not a folder")
        check_subset("fonts", self.fonts, LATIN_FAMILIES)
        check_subset("cjk_fonts", self.cjk_fonts, CJK_FAMILIES, min_len=0)
        check_subset("languages", self.languages, LANGUAGES)
        check_weights("language_weights", self.language_weights, self.languages)
        if self.text_file and not Path(self.text_file).is_file():
            raise ValueError(f"text_file {self.text_file!r} does not exist")
        if not 1 <= self.max_words <= 40:
            raise ValueError(f"max_words must be in [1, 40], got {self.max_words}")
        if not 6 <= self.min_font_size <= self.max_font_frac * self.image_size:
            raise ValueError(
                f"need 6 <= min_font_size ({self.min_font_size}) <= max_font_frac * image_size "
                f"({self.max_font_frac} * {self.image_size})"
            )
        check_range("max_font_frac", self.max_font_frac, 0.05, 0.5)
        check_subset("edit_ops", self.edit_ops, EDIT_OPS)
        check_subset("questions", self.questions, QUESTIONS)
        for name in ("caption_text_prob", "plate_prob", "zh_prompt_prob"):
            check_range(name, getattr(self, name), 0.0, 1.0)
        if self.ocr_check not in ("off", "auto", "on"):
            raise ValueError(f"ocr_check must be 'off', 'auto' or 'on', got {self.ocr_check!r}")
        check_range("ocr_max_cer", self.ocr_max_cer, 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Canvas:
    """A background plus the description of it, and the text region chosen on it."""

    image: Image.Image
    info: dict[str, Any]
    en: str
    zh: str
    region: tuple[int, int, int, int]
    caption: str = ""  # the photo's own caption, when it has one


@dataclasses.dataclass
class _Style:
    font: ResolvedFont
    color: str
    align: str
    valign: str
    language: str


@register_generator("text")
class TextGenerator(Generator):
    """Rendered text: posters, text-editing pairs and text reading; see the module docstring."""

    config_class = TextConfig

    def __init__(self, config: TextConfig) -> None:
        super().__init__(config)
        self.cfg = config
        self.size = config.image_size
        fonts = resolve_fonts(config.fonts, config.font_dirs)
        missing = [f for f in config.fonts if f not in fonts]
        if missing:
            logger.warning("text generator: font families %s not found; using %s", missing, sorted(fonts))
        self.latin = [fonts[f] for f in config.fonts if f in fonts] or list(
            resolve_fonts(["builtin"]).values()
        )
        cjk = resolve_fonts(config.cjk_fonts, config.font_dirs)
        self.cjk = [cjk[f] for f in config.cjk_fonts if f in cjk]
        if config.languages == ("zh",) and not self.cjk:
            raise ValueError(
                f"languages=('zh',) needs a CJK font ({', '.join(config.cjk_fonts) or 'none enabled'}); "
                "install fonts-noto-cjk or add font_dirs"
            )
        self.task_p = probabilities(config.task_weights, len(config.tasks))
        default = [LANGUAGE_SHARE[lang] for lang in config.languages]
        self.lang_p = probabilities(config.language_weights or default, len(config.languages))
        self.texts: list[str] = []
        if config.text_file:
            lines = Path(config.text_file).read_text(encoding="utf-8").splitlines()
            self.texts = [line.strip() for line in lines if line.strip()]
            if not self.texts:
                raise ValueError(f"text_file {config.text_file!r} holds no text")
        self.photos: list[Path] = []
        if config.image_dir:
            root = Path(config.image_dir)
            self.photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if "photo" in config.backgrounds and not self.photos:
                raise ValueError(f"image_dir {config.image_dir!r} holds no {'/'.join(IMAGE_SUFFIXES)} files")
        self.ocr = None
        if config.ocr_check != "off":
            try:
                self.ocr = load_ocr_engine(config.ocr_engine)
            except ImportError:
                if config.ocr_check == "on":
                    raise
            if self.ocr is None and config.ocr_check == "on":
                raise ValueError(
                    "ocr_check='on' but no OCR engine is installed (see internvlu.synthesis.ocr)"
                )

    # ---- sampling --------------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator, sample_id: str) -> Sample:
        task = pick_weighted(rng, self.cfg.tasks, self.task_p)
        build = {
            "t2i": self._t2i,
            "think": self._think,
            "edit": self._edit,
            "understanding": self._understanding,
        }
        sample = build[task](rng, sample_id)
        if self.ocr is not None:
            self._ocr_check(sample)
        return sample

    def _ocr_check(self, sample: Sample) -> None:
        assert self.ocr is not None
        images = {ref.name: ref for ref in sample.all_images()}
        readings: dict[str, dict[str, Any]] = {}
        for name, expected in sample.meta["rendered_text"].items():
            read = self.ocr.read(images[name].load())
            cer = char_error_rate(expected, read)
            readings[name] = {"read": read, "cer": round(cer, 4)}
            if cer > self.cfg.ocr_max_cer:
                raise RejectSample("ocr_mismatch")
        sample.meta["ocr"] = {"engine": self.ocr.name, "images": readings}

    def _language(self, rng: np.random.Generator) -> str:
        language = pick_weighted(rng, self.cfg.languages, self.lang_p)
        if language == "zh" and not self.cjk:
            raise RejectSample("no_cjk_font")
        return language

    def _text(self, rng: np.random.Generator, language: str, canvas: _Canvas | None = None) -> str:
        if canvas is not None and canvas.caption and rng.random() < self.cfg.caption_text_prob:
            words = canvas.caption.split()
            return (
                " ".join(words[: self.cfg.max_words]) if not has_cjk(canvas.caption) else canvas.caption[:16]
            )
        if self.texts:
            return pick(rng, self.texts)
        return chinese_text(rng) if language == "zh" else english_text(rng, self.cfg.max_words)

    def _canvas(self, rng: np.random.Generator, allow_photo: bool) -> _Canvas:
        kinds = [k for k in self.cfg.backgrounds if allow_photo or k != "photo"]
        if not kinds:
            raise RejectSample("photo_background_needs_edit_or_understanding")
        kind = pick(rng, kinds)
        s = self.size
        if kind == "photo":
            path = pick(rng, self.photos)
            with Image.open(path) as img:
                img = img.convert("RGB")
            side = min(img.size)  # centre square crop, then resize
            left, top = (img.width - side) // 2, (img.height - side) // 2
            image = img.crop((left, top, left + side, top + side)).resize((s, s), Image.Resampling.BICUBIC)
            sidecar = path.with_suffix(".txt")
            caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
            rel = path.relative_to(self.cfg.image_dir).as_posix()
            w = int(rng.uniform(0.4, 0.85) * s)
            h = int(rng.uniform(0.15, 0.35) * s)
            info = {"kind": "photo", "file": rel}
            canvas = _Canvas(image, info, "the picture", "图片", (0, 0, w, h), caption)
        else:
            image, info, en, zh = render_texture(kind, s, rng)
            w = int(rng.uniform(0.5, 0.95) * s)
            h = int(rng.uniform(0.2, 0.8) * s)
            canvas = _Canvas(image, info, en, zh, (0, 0, w, h))
        x = int(rng.integers(0, s - w + 1))
        y = int(rng.integers(0, s - h + 1))
        canvas.region = (x, y, x + w, y + h)
        return canvas

    def _style(self, rng: np.random.Generator, canvas: _Canvas, language: str, text: str) -> _Style:
        fonts = self.cjk if (language == "zh" or has_cjk(text)) else self.latin
        if not fonts:
            raise RejectSample("no_cjk_font")
        font = pick(rng, fonts)
        if not has_glyphs(font, text):
            raise RejectSample("font_lacks_glyphs")
        x0, y0, x1, y1 = canvas.region
        patch = np.asarray(canvas.image.crop(canvas.region), dtype=np.float32)
        mean = patch.reshape(-1, 3).mean(0)
        # A photo region whose brightness varies (std of WCAG luminance > 0.06) gets a plate for legibility.
        busy = float(_luminance(patch.reshape(-1, 3)).std()) > 0.06
        if canvas.info["kind"] == "photo" and (busy or rng.random() < self.cfg.plate_prob):
            plate = "white" if relative_luminance(mean) < 0.5 else "black"
            rgb = np.asarray(BG_COLORS[plate][0], np.float32)
            radius = max(2, (y1 - y0) // 6)
            ImageDraw.Draw(canvas.image).rounded_rectangle(
                (x0, y0, x1 - 1, y1 - 1), radius, fill=tuple(int(v) for v in rgb)
            )
            canvas.info["plate"] = plate
            mean = rgb
        # Legible everywhere in the region: 4.5:1 against its mean colour (WCAG AA) and 3:1 against its
        # darkest and lightest 5% (gradients, wood grain).
        lum = _luminance(patch.reshape(-1, 3))
        extremes = (float(np.percentile(lum, 5)), float(np.percentile(lum, 95)))
        if "plate" in canvas.info:
            extremes = (relative_luminance(mean),) * 2
        good = [
            name
            for name, (rgb, _) in TEXT_COLORS.items()
            if contrast_ratio(rgb, mean) >= 4.5
            and min(_contrast(relative_luminance(rgb), e) for e in extremes) >= 3.0
        ]
        if not good:
            raise RejectSample("no_contrasting_color")
        return _Style(font, pick(rng, good), pick(rng, ALIGNS), pick(rng, VALIGNS), language)

    def _layout(
        self, text: str, style: _Style, region: tuple[int, int, int, int], max_size: int | None = None
    ) -> TextLayout:
        padding = max(2, (region[3] - region[1]) // 12)
        layout = fit_text(
            text,
            style.font,
            region,
            max_size=max_size or max(self.cfg.min_font_size, int(self.cfg.max_font_frac * self.size)),
            min_size=self.cfg.min_font_size,
            padding=padding,
            align=style.align,
            valign=style.valign,
            line_spacing=1.0 if style.font.is_cjk else 1.15,  # CJK fonts' ascent + descent already leave room
        )
        if layout is None:
            raise RejectSample("text_does_not_fit")
        return layout

    def _render(self, canvas: _Canvas, layout: TextLayout | None, color: str) -> Image.Image:
        image = canvas.image.copy()
        if layout is not None:
            draw_layout(image, layout, TEXT_COLORS[color][0])
        return image

    # ---- descriptions ----------------------------------------------------------------------------

    def _where(self, layout: TextLayout) -> tuple[str, str]:
        x0, y0, x1, y1 = layout.ink_bbox
        third = self.size / 3
        cell = (min(2, int((x0 + x1) / 2 // third)), min(2, int((y0 + y1) / 2 // third)))
        return REGION_TEXT[cell]

    @staticmethod
    def _quoted(text: str, zh: bool = False) -> str:
        return f"“{text}”" if zh else f'"{text}"'

    def _caption(self, canvas: _Canvas, layout: TextLayout, style: _Style, zh: bool) -> str:
        where_en, where_zh = self._where(layout)
        n = len(layout.lines)
        family = FAMILY_TEXT[style.font.family]
        if zh:
            lines = "" if n == 1 else f"，分{n}行"
            align = {"left": "左对齐", "center": "居中", "right": "右对齐"}[style.align]
            return (
                f"{canvas.zh}上用{TEXT_COLORS[style.color][1]}{'黑体' if 'sans' in style.font.family else '宋体'}字写着"
                f"{self._quoted(layout.text, True)}{lines}，文字{align}，位于画面{where_zh}。"
            )
        lines = "" if n == 1 else f" on {NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else n} lines"
        align = "" if n == 1 else f", {ALIGN_TEXT[style.align]},"
        head = canvas.en[:1].upper() + canvas.en[1:]
        return (
            f"{head} with the text {self._quoted(layout.text)} written in {style.color} {family} letters"
            f"{lines}{align} in the {where_en} of the image."
        )

    def _meta(self, family: str, canvas: _Canvas, style: _Style, **extra: Any) -> dict[str, Any]:
        return {
            "world": "text",
            "family": family,
            "language": style.language,
            "background": dict(canvas.info),
            "region": list(canvas.region),
            "color": {"name": style.color, "rgb": list(TEXT_COLORS[style.color][0])},
            **extra,
        }

    def _poster(self, rng: np.random.Generator, allow_photo: bool) -> tuple[_Canvas, _Style, TextLayout]:
        language = self._language(rng)
        canvas = self._canvas(rng, allow_photo)
        text = self._text(rng, language, canvas)
        style = self._style(rng, canvas, language, text)
        return canvas, style, self._layout(text, style, canvas.region)

    # ---- tasks -----------------------------------------------------------------------------------

    def _t2i(self, rng: np.random.Generator, sid: str) -> Sample:
        canvas, style, layout = self._poster(rng, allow_photo=False)
        zh = style.language == "zh" and rng.random() < self.cfg.zh_prompt_prob
        prompt = self._caption(canvas, layout, style, zh)
        target = ImageRef.from_image("target", self._render(canvas, layout, style.color))
        meta = self._meta(
            "t2i/poster",
            canvas,
            style,
            text=layout.text,
            layout=layout.to_dict(),
            rendered_text={"target": layout.text},
            prompt_language="zh" if zh else "en",
        )
        return Sample(id=sid, task="t2i", prompt=prompt, target=target, meta=meta)

    def _think(self, rng: np.random.Generator, sid: str) -> Sample:
        canvas, style, layout = self._poster(rng, allow_photo=False)
        what = pick(rng, ("a sign", "a poster", "a label", "a card", "a banner"))
        prompt = f"Make {what} on {canvas.en} that says {self._quoted(layout.text)}."
        where, _ = self._where(layout)
        n = len(layout.lines)
        split = " / ".join(self._quoted(line) for line in layout.lines)
        bg_mean = np.asarray(canvas.image.crop(canvas.region), np.float32).reshape(-1, 3).mean(0)
        tone = "light" if relative_luminance(bg_mean) >= 0.5 else "dark"
        thought = (
            f"The text to render is {self._quoted(layout.text)} ({len(layout.text)} characters). "
            f"The background is {canvas.en}; the text area spans {layout.box[2] - layout.box[0]}x"
            f"{layout.box[3] - layout.box[1]} pixels around the {where}. "
            f"At a {layout.font_size}px {FAMILY_TEXT[style.font.family]} font it wraps into {n} "
            f"line{'s' if n > 1 else ''}: {split}, which fits inside the area with {layout.padding}px padding. "
            f"I align the lines {style.align if style.align != 'center' else 'to the center'} and place the block "
            f"at the {style.valign} of the area. The background there is {tone}, so {style.color} letters keep "
            f"a contrast ratio of at least 4.5:1."
        )
        target = ImageRef.from_image("target", self._render(canvas, layout, style.color))
        meta = self._meta(
            "think/poster",
            canvas,
            style,
            text=layout.text,
            layout=layout.to_dict(),
            rendered_text={"target": layout.text},
            caption=self._caption(canvas, layout, style, False),
        )
        return Sample(id=sid, task="think", prompt=prompt, thought=thought, target=target, meta=meta)

    def _edit(self, rng: np.random.Generator, sid: str) -> Sample:
        op = pick(rng, self.cfg.edit_ops)
        canvas, style, layout = self._poster(rng, allow_photo=True)
        where, _ = self._where(layout)
        family = FAMILY_TEXT[style.font.family]
        text = layout.text
        if op in ("add_text", "remove_text"):
            plain = self._render(canvas, None, style.color)
            texted = self._render(canvas, layout, style.color)
            if op == "add_text":
                prompt = f"Add the text {self._quoted(text)} in {style.color} {family} letters in the {where} of the image."
                before, after, layouts, texts = plain, texted, (None, layout), ("", text)
            else:
                prompt = pick(
                    rng,
                    (
                        f"Remove the text {self._quoted(text)} from the image.",
                        "Erase all the text in the image.",
                    ),
                )
                before, after, layouts, texts = texted, plain, (layout, None), (text, "")
        else:
            new_text, prompt, op = self._replacement(rng, op, style.language, text)
            other = self._layout(new_text, style, canvas.region)
            size = min(
                layout.font_size, other.font_size
            )  # one size for both: a real text edit keeps the size
            layouts = (
                self._layout(text, style, canvas.region, size),
                self._layout(new_text, style, canvas.region, size),
            )
            before, after = (self._render(canvas, lay, style.color) for lay in layouts)
            texts = (text, new_text)
        if before.tobytes() == after.tobytes():
            raise RejectSample("edit_changes_nothing")
        rendered = {name: t for name, t in (("image0", texts[0]), ("target", texts[1])) if t}
        meta = self._meta(
            f"edit/{op}",
            canvas,
            style,
            text=texts[0],
            target_text=texts[1],
            layout=layouts[0].to_dict() if layouts[0] else None,
            target_layout=layouts[1].to_dict() if layouts[1] else None,
            rendered_text=rendered,
            edit={"op": op, "from": texts[0], "to": texts[1]},
        )
        return Sample(
            id=sid,
            task="edit",
            prompt=prompt,
            images=[ImageRef.from_image("image0", before)],
            target=ImageRef.from_image("target", after),
            meta=meta,
        )

    def _replacement(
        self, rng: np.random.Generator, op: str, language: str, text: str
    ) -> tuple[str, str, str]:
        """(new text, prompt, op actually done): replace_word needs a Latin text with a unique word."""
        words = text.split()
        counts = {w: words.count(w) for w in words}
        unique = [w for w in words if counts[w] == 1 and any(ch.isalpha() for ch in w)]
        if op == "replace_word" and len(words) >= 2 and unique and not has_cjk(text):
            old = pick(rng, unique)
            pool = [w for w in (*_ADJ, *_NOUN, *_VERB, *_NAME, *_PLACE) if w.casefold() != old.casefold()]
            new = pick(rng, pool)
            new = new.upper() if old.isupper() else (new[:1].upper() + new[1:] if old[:1].isupper() else new)
            new_text = " ".join(new if w == old else w for w in words)
            return new_text, f"Change the word {self._quoted(old)} to {self._quoted(new)}.", "replace_word"
        for _ in range(10):
            new_text = self._text(rng, language)
            if new_text != text:
                break
        else:
            raise RejectSample("no_replacement_text")
        return (
            new_text,
            f"Replace the text {self._quoted(text)} with {self._quoted(new_text)}.",
            "replace_text",
        )

    def _understanding(self, rng: np.random.Generator, sid: str) -> Sample:
        canvas, style, layout = self._poster(rng, allow_photo=True)
        image = ImageRef.from_image("image0", self._render(canvas, layout, style.color))
        joiner = "" if has_cjk(layout.text) else " "
        answers = {
            "read": ("What does the text in the image say?", joiner.join(layout.lines)),
            "color": ("What color is the text?", style.color),
            "line_count": ("How many lines of text are there?", str(len(layout.lines))),
        }
        order = [self.cfg.questions[int(i)] for i in rng.permutation(len(self.cfg.questions))]
        order = order[: int(rng.integers(1, len(order) + 1))]
        messages: list[Message] = []
        qa = []
        for k, name in enumerate(order):
            question, answer = answers[name]
            messages += [
                Message("user", f"{IMAGE_PLACEHOLDER}\n{question}" if k == 0 else question),
                Message("assistant", answer),
            ]
            qa.append({"family": name, "question": question, "answer": answer})
        meta = self._meta(
            f"understanding/{order[0]}",
            canvas,
            style,
            text=layout.text,
            layout=layout.to_dict(),
            rendered_text={"image0": layout.text},
            qa=qa,
        )
        return Sample(id=sid, task="understanding", images=[image], messages=messages, meta=meta)
