"""Fonts and adaptive text layout for the text-rendering generator (text_render.py).

Fonts come from system font packages, looked up by file name (no fontconfig dependency):

* Latin families (``sans``, ``sans-bold``, ``serif``, ``serif-italic``, ``mono``, ``condensed``) use
  DejaVu (Debian ``fonts-dejavu-core``; matplotlib also ships DejaVu Sans, used as a last resort) or
  Liberation when DejaVu is absent;
* CJK families (``cjk-sans``, ``cjk-serif``, ``cjk-sans-bold``) use Noto CJK (Debian ``fonts-noto-cjk``,
  the Simplified Chinese face of the ``.ttc`` collection), else WenQuanYi / Droid Sans Fallback;
* ``builtin`` is Pillow's own scalable font (always present, Latin only).

A family whose files are missing is simply unavailable: :func:`resolve_fonts` returns only the families
it found, and the generator skips (and counts) samples that would need a missing family instead of
failing. Pillow's BASIC layout engine is forced so that output does not depend on whether libraqm is
installed.

Layout (:func:`fit_text`): the text is wrapped (words for Latin, characters for CJK, explicit ``\\n``
kept) and the font shrunk until the block fits the box minus padding, then aligned left / center / right
and top / middle / bottom. Every line's ink box is checked to lie inside the padded box, so drawing a
layout never touches pixels outside its box (text-editing pairs rely on this).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Align = Literal["left", "center", "right"]
VAlign = Literal["top", "middle", "bottom"]
ALIGNS: tuple[str, ...] = ("left", "center", "right")
VALIGNS: tuple[str, ...] = ("top", "middle", "bottom")

# family -> candidate (file name, face-name hint for .ttc collections), first found wins.
FONT_FAMILIES: dict[str, tuple[tuple[str, str], ...]] = {
    "sans": (("DejaVuSans.ttf", ""), ("LiberationSans-Regular.ttf", "")),
    "sans-bold": (("DejaVuSans-Bold.ttf", ""), ("LiberationSans-Bold.ttf", "")),
    "serif": (("DejaVuSerif.ttf", ""), ("LiberationSerif-Regular.ttf", "")),
    "serif-italic": (("DejaVuSerif-Italic.ttf", ""), ("LiberationSerif-Italic.ttf", "")),
    "mono": (("DejaVuSansMono.ttf", ""), ("LiberationMono-Regular.ttf", "")),
    "condensed": (("DejaVuSansCondensed.ttf", ""), ("LiberationSansNarrow-Regular.ttf", "")),
    "cjk-sans": (
        ("NotoSansCJK-Regular.ttc", "CJK SC"),
        ("NotoSansCJKsc-Regular.otf", ""),
        ("NotoSansSC-Regular.otf", ""),
        ("wqy-microhei.ttc", ""),
        ("wqy-zenhei.ttc", ""),
        ("DroidSansFallbackFull.ttf", ""),
    ),
    "cjk-serif": (
        ("NotoSerifCJK-Regular.ttc", "CJK SC"),
        ("NotoSerifCJKsc-Regular.otf", ""),
        ("NotoSerifSC-Regular.otf", ""),
    ),
    "cjk-sans-bold": (("NotoSansCJK-Bold.ttc", "CJK SC"), ("NotoSansCJKsc-Bold.otf", "")),
    "builtin": (),
}
CJK_FAMILIES: tuple[str, ...] = ("cjk-sans", "cjk-serif", "cjk-sans-bold")
LATIN_FAMILIES: tuple[str, ...] = tuple(f for f in FONT_FAMILIES if f not in CJK_FAMILIES)
# Words for captions ("in a bold sans-serif font").
FAMILY_TEXT: dict[str, str] = {
    "sans": "sans-serif",
    "sans-bold": "bold sans-serif",
    "serif": "serif",
    "serif-italic": "italic serif",
    "mono": "monospaced",
    "condensed": "condensed sans-serif",
    "builtin": "plain sans-serif",
    "cjk-sans": "Hei-style sans-serif",
    "cjk-serif": "Song-style serif",
    "cjk-sans-bold": "bold Hei-style sans-serif",
}


def _system_font_dirs() -> list[Path]:
    home = Path.home()
    dirs = [
        Path("/usr/share/fonts"),
        Path("/usr/local/share/fonts"),
        home / ".local/share/fonts",
        home / ".fonts",
        Path("/Library/Fonts"),
        Path("/System/Library/Fonts"),
        home / "Library/Fonts",
    ]
    if sys.platform == "win32":
        dirs.append(Path(os.environ.get("WINDIR", "C:/Windows")) / "Fonts")
    return dirs


def _matplotlib_font_dir() -> Path | None:
    try:
        import matplotlib  # optional: ships DejaVu Sans/Serif/Mono, a fallback for machines without them
    except ImportError:
        return None
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=16)
def _font_index(dirs: tuple[str, ...]) -> dict[str, Path]:
    """File name -> first path found, scanning `dirs` in order (sorted walk: the same machine, the same pick)."""
    found: dict[str, Path] = {}
    for root in dirs:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                found.setdefault(name, Path(dirpath) / name)
    return found


@dataclasses.dataclass(frozen=True)
class ResolvedFont:
    """A family resolved to a file (and a face index inside a collection); ``path=None`` is Pillow's builtin."""

    family: str
    path: str | None
    index: int = 0

    @property
    def is_cjk(self) -> bool:
        return self.family in CJK_FAMILIES

    def get(self, size: int) -> ImageFont.FreeTypeFont:
        return _load_font(self.path, self.index, size)

    def to_dict(self) -> dict[str, object]:
        return {
            "family": self.family,
            "file": Path(self.path).name if self.path else "pillow-builtin",
            "index": self.index,
        }


@functools.lru_cache(maxsize=512)
def _load_font(path: str | None, index: int, size: int) -> ImageFont.FreeTypeFont:
    if path is None:
        font = ImageFont.load_default(size)
        if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow built without FreeType
            raise RuntimeError("Pillow's builtin font needs FreeType support")
        return font
    # BASIC layout: the same glyph positions whether or not libraqm is installed.
    return ImageFont.truetype(path, size, index=index, layout_engine=ImageFont.Layout.BASIC)


def _face_index(path: Path, hint: str) -> int | None:
    """Index of the face whose name contains `hint` in a collection (0 without a hint)."""
    if not hint:
        return 0
    for index in range(32):
        try:
            name = " ".join(ImageFont.truetype(str(path), 12, index=index).getname() or ())
        except OSError:
            return None
        if hint in name:
            return index
    return None


def resolve_fonts(
    families: Iterable[str], font_dirs: Sequence[str | os.PathLike[str]] = ()
) -> dict[str, ResolvedFont]:
    """The available subset of `families` (user `font_dirs` first, then system dirs, then matplotlib's).

    Raises ValueError for an unknown family name.
    """
    dirs = [str(d) for d in font_dirs] + [str(d) for d in _system_font_dirs()]
    mpl = _matplotlib_font_dir()
    if mpl is not None:
        dirs.append(str(mpl))
    index = _font_index(tuple(dirs))
    resolved: dict[str, ResolvedFont] = {}
    for family in families:
        if family not in FONT_FAMILIES:
            raise ValueError(f"unknown font family {family!r}; known: {sorted(FONT_FAMILIES)}")
        if family == "builtin":
            resolved[family] = ResolvedFont(family, None)
            continue
        for filename, hint in FONT_FAMILIES[family]:
            path = index.get(filename)
            if path is None:
                continue
            face = _face_index(path, hint)
            if face is not None:
                resolved[family] = ResolvedFont(family, str(path), face)
                break
    return resolved


# --------------------------------------------------------------------------------------------------
# Glyph coverage
# --------------------------------------------------------------------------------------------------

_PROBE_SIZE = 24


@functools.lru_cache(maxsize=64)
def _notdef_mask(path: str | None, index: int) -> bytes:
    # U+10FFFD (private use, plane 16) is in no font we use: what the font draws for a missing glyph.
    return bytes(_load_font(path, index, _PROBE_SIZE).getmask("\U0010fffd"))


@functools.lru_cache(maxsize=65536)
def _has_glyph(path: str | None, index: int, char: str) -> bool:
    if char.isspace():
        return True
    return bytes(_load_font(path, index, _PROBE_SIZE).getmask(char)) != _notdef_mask(path, index)


def has_glyphs(font: ResolvedFont, text: str) -> bool:
    """Whether `font` draws every character of `text` (compared with its missing-glyph box)."""
    return all(_has_glyph(font.path, font.index, ch) for ch in text)


# --------------------------------------------------------------------------------------------------
# Wrapping and fitting
# --------------------------------------------------------------------------------------------------


def is_cjk_char(ch: str) -> bool:
    """CJK ideographs, kana, hangul and full-width forms: lines may break between any two of them."""
    return unicodedata.east_asian_width(ch) in ("W", "F")


def _tokens(paragraph: str) -> list[str]:
    """Break opportunities: a Latin word keeps its trailing space; each CJK character stands alone."""
    tokens: list[str] = []
    current = ""
    for ch in paragraph:
        if is_cjk_char(ch):
            if current:
                tokens.append(current)
                current = ""
            tokens.append(ch)
        elif ch == " ":
            tokens.append(current + " ")
            current = ""
        else:
            current += ch
    if current:
        tokens.append(current)
    return tokens


def line_width(font: ImageFont.FreeTypeFont, line: str) -> float:
    """Horizontal extent of a line: its ink box or its advance, whichever is wider."""
    if not line:
        return 0.0
    x0, _, x1, _ = font.getbbox(line, anchor="la")
    return max(float(x1 - x0), font.getlength(line))


def wrap_text(text: str, font: ImageFont.FreeTypeFont, max_width: float) -> list[str] | None:
    """Greedy wrap into lines no wider than `max_width`; None when one unbreakable token is too wide."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for token in _tokens(paragraph):
            candidate = line + token
            if line and line_width(font, candidate.rstrip()) > max_width:
                lines.append(line.rstrip())
                line = token.lstrip()
            else:
                line = candidate
            if line_width(font, line.rstrip()) > max_width:
                return None
        lines.append(line.rstrip())
    return lines


@dataclasses.dataclass
class TextLayout:
    """Where and how a text is drawn (everything in image pixels; boxes are [x0, y0, x1, y1), end-exclusive).

    Attributes:
        text: the text as given (``\\n`` = forced break).
        lines: the wrapped lines, top to bottom.
        font: the resolved font; font_size: its pixel size.
        box: the region the text must stay inside; padding: inner margin in pixels.
        align, valign: horizontal alignment of each line and vertical placement of the block.
        origins: (x, y) of each line's left end at the ascender line (Pillow anchor "la").
        ink_bbox: union of the lines' ink boxes.
        line_step: distance between baselines.
    """

    text: str
    lines: list[str]
    font: ResolvedFont
    font_size: int
    box: tuple[int, int, int, int]
    padding: int
    align: str
    valign: str
    origins: list[tuple[int, int]]
    ink_bbox: tuple[int, int, int, int]
    line_step: int

    def to_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "lines": list(self.lines),
            "font": self.font.to_dict(),
            "font_size": self.font_size,
            "box": list(self.box),
            "padding": self.padding,
            "align": self.align,
            "valign": self.valign,
            "origins": [list(o) for o in self.origins],
            "ink_bbox": list(self.ink_bbox),
            "line_step": self.line_step,
        }


def _place(
    text: str,
    lines: list[str],
    font: ResolvedFont,
    size: int,
    box: tuple[int, int, int, int],
    padding: int,
    align: str,
    valign: str,
    line_spacing: float,
) -> TextLayout | None:
    """Position wrapped lines in the box; None when any ink would leave the padded box."""
    face = font.get(size)
    ascent, descent = face.getmetrics()
    step = max(1, round((ascent + descent) * line_spacing))
    block = step * (len(lines) - 1) + ascent + descent
    x0, y0, x1, y1 = box[0] + padding, box[1] + padding, box[2] - padding, box[3] - padding
    if block > y1 - y0:
        return None
    top = {"top": y0, "middle": y0 + (y1 - y0 - block) // 2, "bottom": y1 - block}[valign]
    origins: list[tuple[int, int]] = []
    ink = [x1, y1, x0, y0]
    for k, line in enumerate(lines):
        # Align the ink, not the advance width: italics and glyphs like "Y" overhang their advance.
        bx0, by0, bx1, by1 = face.getbbox(line, anchor="la") if line else (0, 0, 0, 0)
        left = {"left": x0 - bx0, "center": round((x0 + x1 - bx0 - bx1) / 2), "right": x1 - bx1}[align]
        origin = (int(left), int(top + k * step))
        origins.append(origin)
        if not line:
            continue
        lx0, ly0, lx1, ly1 = origin[0] + bx0, origin[1] + by0, origin[0] + bx1, origin[1] + by1
        if lx0 < x0 or ly0 < y0 or lx1 > x1 or ly1 > y1:
            return None
        ink = [min(ink[0], lx0), min(ink[1], ly0), max(ink[2], lx1), max(ink[3], ly1)]
    if ink[0] >= ink[2]:
        return None  # nothing drawn
    return TextLayout(
        text, lines, font, size, box, padding, align, valign, origins, (ink[0], ink[1], ink[2], ink[3]), step
    )


def fit_text(
    text: str,
    font: ResolvedFont,
    box: tuple[int, int, int, int],
    *,
    max_size: int,
    min_size: int = 8,
    padding: int = 4,
    align: str = "center",
    valign: str = "middle",
    line_spacing: float = 1.15,
    max_lines: int = 8,
) -> TextLayout | None:
    """Largest font size in [min_size, max_size] at which `text` wraps and fits `box`; None if none does.

    Fitting is monotone in the size for all practical purposes, so a binary search finds the size in
    about log2(max_size - min_size) layout attempts.
    """
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
    if valign not in VALIGNS:
        raise ValueError(f"valign must be one of {VALIGNS}, got {valign!r}")
    if not text.strip():
        raise ValueError(f"text must be non-empty, got {text!r}")
    if min_size < 1 or max_size < min_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    inner_w = box[2] - box[0] - 2 * padding

    def attempt(size: int) -> TextLayout | None:
        lines = wrap_text(text, font.get(size), inner_w)
        if lines is None or len(lines) > max_lines:
            return None
        return _place(text, lines, font, size, box, padding, align, valign, line_spacing)

    best = attempt(min_size)
    if best is None:
        return None
    low, high = min_size, max_size  # invariant: `low` fits
    while low < high:
        mid = (low + high + 1) // 2
        layout = attempt(mid)
        if layout is not None:
            low, best = mid, layout
        else:
            high = mid - 1
    return best


def draw_layout(image: Image.Image, layout: TextLayout, color: tuple[int, int, int]) -> None:
    """Draw the layout's lines onto `image` (in place), anti-aliased over whatever is there."""
    draw = ImageDraw.Draw(image)
    face = layout.font.get(layout.font_size)
    for line, origin in zip(layout.lines, layout.origins):
        if line:
            draw.text(origin, line, font=face, fill=color, anchor="la")


def text_coverage(size: tuple[int, int], layout: TextLayout) -> np.ndarray:
    """(H, W) float32 ink coverage in [0, 1] of the layout (what draw_layout paints, as alpha)."""
    mask = Image.new("L", size, 0)
    draw_layout_mask = ImageDraw.Draw(mask)
    face = layout.font.get(layout.font_size)
    for line, origin in zip(layout.lines, layout.origins):
        if line:
            draw_layout_mask.text(origin, line, font=face, fill=255, anchor="la")
    return np.asarray(mask, dtype=np.float32) / 255.0
