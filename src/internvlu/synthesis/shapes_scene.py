"""Shapes world, part 1: the palette, the scene graph, layout and pixel-exact rendering.

The world is built so that a classical detector (detect.py) recovers the scene graph exactly:

* flat colours, no anti-aliasing: every pixel is exactly the background, one object colour or the ink;
* 8 object colours at least 95 RGB units from each other and from the 4 backgrounds (white, light
  gray, gray, black), which are achromatic so that no object colour is a background colour;
* 5 upright shapes (circle, square, triangle, diamond, star) whose bounding-box-normalised masks differ
  by far more than rasterisation noise;
* objects never overlap or touch: boxes keep a gap of ``max(2, 5% of the side)`` pixels and a margin to
  the border, so one connected component is one object;
* words are black (light backgrounds) or white (dark backgrounds) in Pillow's built-in scalable font
  (``ImageFont.load_default(size)``, shipped inside Pillow, so no system font is needed), rendered
  without anti-aliasing (``fontmode = "1"``).

Object geometry: every shape fills the square box ``[cx - r, cx + r] x [cy - r, cy + r]`` (the star is
centred on its own extent), sampled at pixel centres ``(j + 0.5, i + 0.5)``. The scene graph stores both
the geometry (``cx, cy, r``) and what the pixels show (``bbox``, ``centroid``, ``area`` of the mask).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Object colours (GenEval's colour words minus black/white, which are backgrounds here).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 130, 0),
    "yellow": (250, 230, 40),
    "green": (30, 160, 50),
    "blue": (30, 80, 230),
    "purple": (140, 40, 190),
    "pink": (255, 110, 200),
    "brown": (120, 70, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "light gray": (200, 200, 200),
    "gray": (128, 128, 128),
    "black": (0, 0, 0),
}
# Ink of words: the achromatic extreme farthest from the background.
INK: dict[str, str] = {"white": "black", "light gray": "black", "gray": "white", "black": "white"}
INK_COLORS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "white": (255, 255, 255)}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
SIZE_NAMES: tuple[str, ...] = ("small", "medium", "large")
STAR_INNER_RATIO = 0.5  # inner / outer radius: fat points stay visible at 64 px
DEFAULT_WORDS: tuple[str, ...] = (
    "CAT",
    "DOG",
    "SUN",
    "BOX",
    "HAT",
    "CUP",
    "PEN",
    "BUS",
    "MAP",
    "KEY",
    "FOX",
    "BEE",
)

# 3x3 regions used by "move" edits: name -> (column, row).
REGIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top center": (1, 0),
    "top right": (2, 0),
    "middle left": (0, 1),
    "center": (1, 1),
    "middle right": (2, 1),
    "bottom left": (0, 2),
    "bottom center": (1, 2),
    "bottom right": (2, 2),
}


def margin_px(size: int) -> float:
    """Distance kept between any object or word and the image border."""
    return max(1.0, round(0.03 * size))


def gap_px(size: int) -> float:
    """Distance kept between the boxes of any two items (so components never touch)."""
    return max(2.0, round(0.05 * size))


# --------------------------------------------------------------------------------------------------
# Scene graph
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SceneObject:
    """One shape. Geometry (cx, cy, r) is chosen; bbox/centroid/area are measured from the mask."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    r: float
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0, x1, y1 (end-exclusive)
    centroid: tuple[float, float] = (0.0, 0.0)  # x, y of the mask's pixel centres
    area: int = 0

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r)

    def describe(self) -> str:
        return f"{self.color} {self.shape}"


@dataclasses.dataclass
class SceneWord:
    """One word; (x, y) is the top-left corner of its ink box."""

    text: str
    color: str
    font_size: int
    x: int
    y: int
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    area: int = 0

    @property
    def box(self) -> tuple[float, float, float, float]:
        h, w = glyph_mask(self.text, self.font_size).shape
        return (float(self.x), float(self.y), float(self.x + w), float(self.y + h))


@dataclasses.dataclass
class Scene:
    size: int
    background: str
    objects: list[SceneObject] = dataclasses.field(default_factory=list)
    words: list[SceneWord] = dataclasses.field(default_factory=list)

    def copy(self) -> Scene:
        return Scene(
            self.size,
            self.background,
            [dataclasses.replace(o) for o in self.objects],
            [dataclasses.replace(w) for w in self.words],
        )

    def find(self, shape: str | None = None, color: str | None = None) -> list[SceneObject]:
        return [
            o
            for o in self.objects
            if (shape is None or o.shape == shape) and (color is None or o.color == color)
        ]

    def to_dict(self) -> dict[str, Any]:
        def obj(o: SceneObject) -> dict[str, Any]:
            return {
                "shape": o.shape,
                "color": o.color,
                "size": o.size,
                "cx": round(o.cx, 3),
                "cy": round(o.cy, 3),
                "r": round(o.r, 3),
                "bbox": list(o.bbox),
                "centroid": [round(o.centroid[0], 3), round(o.centroid[1], 3)],
                "area": o.area,
            }

        def word(w: SceneWord) -> dict[str, Any]:
            return {
                "text": w.text,
                "color": w.color,
                "font_size": w.font_size,
                "x": w.x,
                "y": w.y,
                "bbox": list(w.bbox),
                "area": w.area,
            }

        return {
            "size": self.size,
            "background": self.background,
            "objects": [obj(o) for o in self.objects],
            "words": [word(w) for w in self.words],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        objects = [
            SceneObject(
                o["shape"],
                o["color"],
                o["size"],
                o["cx"],
                o["cy"],
                o["r"],
                tuple(o["bbox"]),
                tuple(o["centroid"]),
                o["area"],
            )  # type: ignore[arg-type]
            for o in data["objects"]
        ]
        words = [
            SceneWord(w["text"], w["color"], w["font_size"], w["x"], w["y"], tuple(w["bbox"]), w["area"])
            for w in data.get("words", [])
        ]  # type: ignore[arg-type]
        return cls(int(data["size"]), data["background"], objects, words)


# --------------------------------------------------------------------------------------------------
# Geometry and rendering
# --------------------------------------------------------------------------------------------------


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(centres, centres)  # xs, ys: (size, size) each


def polygon_mask(points: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test at every (xs, ys); points: (V, 2) vertices in order."""
    inside = np.zeros(xs.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(points, np.roll(points, -1, axis=0)):
        crosses = (y0 > ys) != (y1 > ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (xs < x_at)
    return inside


def star_points(cx: float, cy: float, r: float) -> np.ndarray:
    """10 vertices of an upright 5-pointed star, shifted so its vertical extent is centred on cy."""
    angles = -math.pi / 2 + np.arange(10) * math.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, r * STAR_INNER_RATIO)
    shift = r * (1 - math.cos(math.pi / 5)) / 2  # top tip at -r, lowest tips at r*cos(36deg)
    return np.stack([cx + radii * np.cos(angles), cy + shift + radii * np.sin(angles)], axis=1)


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Boolean (size, size) mask of one shape, sampled at pixel centres."""
    xs, ys = _pixel_grid(size)
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "triangle":
        pts = np.array([[cx, cy - r], [cx + r, cy + r], [cx - r, cy + r]])
        return polygon_mask(pts, xs, ys)
    if shape == "star":
        return polygon_mask(star_points(cx, cy, r), xs, ys)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


@functools.lru_cache(maxsize=64)
def _font(font_size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=font_size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RuntimeError(
            "Pillow was built without FreeType; the shapes world needs its scalable default font"
        )
    return font


@functools.lru_cache(maxsize=512)
def glyph_mask(text: str, font_size: int) -> np.ndarray:
    """Boolean mask of `text`'s ink, cropped to the ink box (no anti-aliasing)."""
    font = _font(font_size)
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    draw = ImageDraw.Draw(canvas)
    draw.fontmode = "1"  # binary glyphs: every ink pixel has exactly the ink colour
    draw.text((2 - left, 2 - top), text, fill=255, font=font)
    ink = np.asarray(canvas) > 0
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    if rows.size == 0:
        raise ValueError(f"word {text!r} renders no ink at font size {font_size}")
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    crop.setflags(write=False)  # cached and shared
    return crop


def _measure(mask: np.ndarray) -> tuple[tuple[int, int, int, int], tuple[float, float], int]:
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise AssertionError("rendered an item with no pixels")
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return bbox, (float(xs.mean() + 0.5), float(ys.mean() + 0.5)), int(xs.size)


def render_scene(scene: Scene) -> Image.Image:
    """Render `scene` to an RGB image; fills in each item's measured bbox, centroid and area."""
    size = scene.size
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = BACKGROUNDS[scene.background]
    painted = np.zeros((size, size), dtype=bool)
    for obj in scene.objects:
        mask = shape_mask(obj.shape, obj.cx, obj.cy, obj.r, size)
        assert not (mask & painted).any(), "layout let two items overlap"
        canvas[mask] = COLORS[obj.color]
        painted |= mask
        obj.bbox, obj.centroid, obj.area = _measure(mask)
    for word in scene.words:
        glyph = glyph_mask(word.text, word.font_size)
        h, w = glyph.shape
        mask = np.zeros((size, size), dtype=bool)
        mask[word.y : word.y + h, word.x : word.x + w] = glyph
        assert mask.sum() == glyph.sum(), "word placed outside the image"
        assert not (mask & painted).any(), "layout let a word overlap an item"
        canvas[mask] = INK_COLORS[word.color]
        painted |= mask
        word.bbox, _, word.area = _measure(mask)
    return Image.fromarray(canvas, mode="RGB")


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------

Box = tuple[float, float, float, float]


def box_fits(box: Box, others: list[Box], size: int) -> bool:
    """Inside the border margin and at least the gap away from every other box."""
    m, g = margin_px(size), gap_px(size)
    x0, y0, x1, y1 = box
    if x0 < m or y0 < m or x1 > size - m or y1 > size - m:
        return False
    return all(x1 + g <= a0 or a1 + g <= x0 or y1 + g <= b0 or b1 + g <= y0 for a0, b0, a1, b1 in others)


def scene_boxes(scene: Scene, skip: object | None = None) -> list[Box]:
    return [item.box for item in [*scene.objects, *scene.words] if item is not skip]


def snap(value: float) -> float:
    """Centres on a half-pixel grid: symmetric shapes rasterise symmetrically."""
    return round(value * 2) / 2


def sample_centre(rng: np.random.Generator, r: float, size: int) -> tuple[float, float]:
    lo, hi = margin_px(size) + r, size - margin_px(size) - r
    if hi < lo:
        raise ValueError(f"an object of half-extent {r:.1f}px does not fit a {size}px image")
    return snap(rng.uniform(lo, hi)), snap(rng.uniform(lo, hi))


def region_centre(region: str, r: float, size: int) -> tuple[float, float]:
    """Where a "move to REGION" edit puts an object: the cell centre, clamped inside the margin."""
    col, row = REGIONS[region]
    lo, hi = margin_px(size) + r, size - margin_px(size) - r
    cx = min(max((col + 0.5) * size / 3, lo), hi)
    cy = min(max((row + 0.5) * size / 3, lo), hi)
    return snap(cx), snap(cy)


def region_of(x: float, y: float, size: int) -> str:
    col, row = min(int(3 * x / size), 2), min(int(3 * y / size), 2)
    return next(name for name, cell in REGIONS.items() if cell == (col, row))


def relation(a: SceneObject, b: SceneObject, min_offset: float) -> dict[str, bool]:
    """Loose GenEval-style relations of a to b by centre offsets (image y grows downwards)."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    return {
        "left of": dx >= min_offset,
        "right of": -dx >= min_offset,
        "above": dy >= min_offset,
        "below": -dy >= min_offset,
    }
