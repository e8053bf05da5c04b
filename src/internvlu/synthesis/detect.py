"""A classical detector for the shapes world: pixels -> scene graph, plus comparison helpers.

It shares only the world's *definitions* with the generator (palette, background colours, shape names,
the star's inner radius, the font) and re-derives everything else from the pixels:

1. Background: the world background nearest to the median border colour.
2. Pixel labels: nearest colour among the 8 object colours and the 4 achromatic colours. Object-colour
   pixels belong to objects; achromatic pixels that are not the background are ink (words).
3. Objects: 8-connected components of each object colour. Components without a 3x3 core (1-px rings
   from anti-aliasing, stray pixels) or below ``min_area_frac`` of the image are dropped as noise.
4. Shape: the component's mask, cropped to its bounding box, is compared (IoU) with the five shapes
   drawn from their definitions in the unit square at the mask's own resolution; the best wins.
5. Words: ink components are grouped into words by proximity, and each word is read by matching its
   mask against every vocabulary word rendered in the world's font at the size that fits its box.

On ground-truth images every step is exact (flat colours, no anti-aliasing, separated objects), and
``compare_scene`` checks that. On model outputs the same steps give GenEval-style scores
(:func:`geneval_check`, :func:`relations`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from internvlu.synthesis.shapes_scene import (
    BACKGROUNDS,
    COLORS,
    DEFAULT_WORDS,
    SHAPES,
    STAR_INNER_RATIO,
    Scene,
    region_of,
)

_MAX_SHAPE_GRID = 64  # larger masks are reduced to this before template matching
_ACHROMATIC: dict[str, tuple[int, int, int]] = dict(BACKGROUNDS)  # black/white double as ink colours


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DetectedObject:
    shape: str
    color: str
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (end-exclusive)
    centroid: tuple[float, float]  # x, y
    area: int
    shape_score: float  # soft IoU with the chosen template (1.0 = perfect)
    color_distance: float  # RGB distance of the mean colour to the palette colour

    def describe(self) -> str:
        return f"{self.color} {self.shape}"


@dataclasses.dataclass
class DetectedWord:
    text: str | None  # best vocabulary match (None without a vocabulary)
    bbox: tuple[int, int, int, int]
    area: int
    score: float  # IoU of the ink mask with the matched word's rendering


@dataclasses.dataclass
class DetectedScene:
    width: int
    height: int
    background: str
    objects: list[DetectedObject]
    words: list[DetectedWord]

    def find(self, shape: str | None = None, color: str | None = None) -> list[DetectedObject]:
        return [
            o
            for o in self.objects
            if (shape is None or o.shape == shape) and (color is None or o.color == color)
        ]

    def count(self, shape: str | None = None, color: str | None = None) -> int:
        return len(self.find(shape, color))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Connected components (run-length union-find: no scipy needed, fast enough for <= 512 px)
# --------------------------------------------------------------------------------------------------


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean (H, W) mask -> (labels (H, W) int32 with 0 = none, count)."""
    height, _ = mask.shape
    runs: list[tuple[int, int, int]] = []  # (row, start, end) end-exclusive
    row_runs: list[list[int]] = []
    padded = np.zeros((height, mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    for y in range(height):
        starts, ends = np.flatnonzero(edges[y] == 1), np.flatnonzero(edges[y] == -1)
        row_runs.append(list(range(len(runs), len(runs) + len(starts))))
        runs.extend((y, int(s), int(e)) for s, e in zip(starts, ends))
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for y in range(1, height):
        prev = row_runs[y - 1]
        lo = 0  # runs of a row are sorted and disjoint: the previous-row runs a run touches are contiguous
        for i in row_runs[y]:
            _, s, e = runs[i]
            while lo < len(prev) and runs[prev[lo]][2] < s:
                lo += 1  # ends left of this run, so left of every later run of the row too
            k = lo
            # Every previous-row run from `lo` that starts by `e` overlaps, diagonal touch included
            # (8-connectivity).
            while k < len(prev) and runs[prev[k]][1] <= e:
                ri, rj = find(i), find(prev[k])
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
                k += 1
    labels = np.zeros(mask.shape, dtype=np.int32)
    ids: dict[int, int] = {}
    for i, (y, s, e) in enumerate(runs):
        labels[y, s:e] = ids.setdefault(find(i), len(ids) + 1)
    return labels, len(ids)


def _eroded(mask: np.ndarray) -> np.ndarray:
    """3x3 erosion: pixels whose whole 8-neighbourhood is in the mask."""
    padded = np.pad(mask, 1, constant_values=False)
    height, width = mask.shape
    out = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            out &= padded[dy : dy + height, dx : dx + width]
    return out


# --------------------------------------------------------------------------------------------------
# Shape templates (drawn from their definitions, independently of the renderer)
# --------------------------------------------------------------------------------------------------


def _unit_star(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    angles = -math.pi / 2 + np.arange(10) * math.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER_RATIO)
    px, py = radii * np.cos(angles), radii * np.sin(angles)
    px = (px - px.min()) / (px.max() - px.min())  # normalise the star to fill the unit square
    py = (py - py.min()) / (py.max() - py.min())
    inside = np.zeros(xs.shape, dtype=bool)
    for k in range(10):
        x0, y0, x1, y1 = px[k], py[k], px[(k + 1) % 10], py[(k + 1) % 10]
        if y0 == y1:
            continue
        crosses = (y0 > ys) != (y1 > ys)
        inside ^= crosses & (xs < x0 + (ys - y0) * (x1 - x0) / (y1 - y0))
    return inside


def unit_shape(name: str, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Inside-test of a shape filling the unit square (its bounding box), at points (xs, ys)."""
    if name == "circle":
        return (xs - 0.5) ** 2 + (ys - 0.5) ** 2 <= 0.25
    if name == "square":
        return np.ones(xs.shape, dtype=bool)
    if name == "diamond":
        return np.abs(xs - 0.5) + np.abs(ys - 0.5) <= 0.5
    if name == "triangle":
        return ys >= 2 * np.abs(xs - 0.5)  # apex at top centre, base along the bottom
    if name == "star":
        return _unit_star(xs, ys)
    raise ValueError(f"unknown shape {name!r}; expected one of {SHAPES}")


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """(shape, IoU) of a boolean mask cropped to its bounding box, against every shape template.

    Templates are sampled at the mask's own pixel centres, mapped into the unit square, i.e. rasterised
    the way the world rasterises (pixel in <=> centre inside), so ground truth matches almost exactly
    even for 14-pixel objects. Masks larger than 64 px are first reduced (majority vote) to bound cost.
    """
    h, w = mask.shape
    if max(h, w) > _MAX_SHAPE_GRID:
        scale = _MAX_SHAPE_GRID / max(h, w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
        small = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.BOX)
        mask = np.asarray(small) >= 128
    xs, ys = np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h)
    best, best_score = "", -1.0
    for name in SHAPES:
        template = unit_shape(name, xs, ys)
        union = np.logical_or(template, mask).sum()
        score = float(np.logical_and(template, mask).sum() / union) if union else 0.0
        if score > best_score:
            best, best_score = name, score
    return best, best_score


# --------------------------------------------------------------------------------------------------
# Word reading
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _word_template(text: str, font_size: int) -> np.ndarray:
    font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    draw = ImageDraw.Draw(canvas)
    draw.fontmode = "1"
    draw.text((2 - left, 2 - top), text, fill=255, font=font)
    ink = np.asarray(canvas) > 0
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


@functools.lru_cache(maxsize=4096)
def _fitted_template(text: str, h: int, w: int) -> np.ndarray:
    """`text` rendered at the font size whose ink box is closest to h x w, resized to exactly h x w.

    Cached by box size: a noise image has dozens of ink specks, mostly of a few small sizes.
    """
    sizes = range(max(4, h // 2), 3 * h + 4)
    size = min(
        sizes,
        key=lambda s: abs(_word_template(text, s).shape[0] - h) + abs(_word_template(text, s).shape[1] - w),
    )
    template = _word_template(text, size)
    if template.shape != (h, w):
        template = (
            np.asarray(Image.fromarray(template.astype(np.uint8) * 255).resize((w, h), Image.Resampling.BOX))
            > 127
        )
    return template


def read_word(mask: np.ndarray, vocabulary: Sequence[str]) -> tuple[str | None, float]:
    """Best vocabulary word for a cropped ink mask, and its IoU.

    Each candidate is rendered at the font size whose ink box is closest to the mask's, resized to the
    mask's exact box, and compared by IoU; at the right size a ground-truth word matches exactly.
    """
    h, w = mask.shape
    best: tuple[str | None, float] = (None, 0.0)
    for text in vocabulary:
        template = _fitted_template(text, h, w)
        inter, union = np.logical_and(template, mask).sum(), np.logical_or(template, mask).sum()
        score = float(inter / union) if union else 0.0
        if score > best[1]:
            best = (text, score)
    return best


def _group_words(boxes: list[tuple[int, int, int, int]]) -> list[list[int]]:
    """Group letter boxes into words: vertically overlapping and horizontally close.

    Merges, again and again, the first pair of groups (in list order) that the rule joins, until no pair
    is left. Rather than rescanning every pair after each merge (cubic: seconds on a noise image with
    hundreds of specks), it keeps each group's union box and first partner and, after a merge, updates
    only what the merge changed, so the groups come out exactly as the plain rescan would make them.
    """
    n = len(boxes)
    groups = [[i] for i in range(n)]
    if n < 2:
        return groups
    box = np.asarray(boxes, dtype=np.int64).reshape(n, 4)  # (n, 4) union box of each group
    alive = np.ones(n, dtype=bool)

    def joins(a: int) -> np.ndarray:
        """(n,) bool: the rule holds between group `a` and each other live group."""
        heights = box[:, 3] - box[:, 1]
        height_a = heights[a]
        overlap = np.minimum(box[a, 3], box[:, 3]) - np.maximum(box[a, 1], box[:, 1])
        gap = np.maximum(box[a, 0], box[:, 0]) - np.minimum(box[a, 2], box[:, 2])
        ok = (overlap >= 0.5 * np.minimum(height_a, heights)) & (gap <= 0.5 * np.maximum(height_a, heights))
        ok &= alive
        ok[a] = False
        return ok

    def first_partner(a: int) -> int:
        later = np.flatnonzero(joins(a)[a + 1 :])
        return a + 1 + int(later[0]) if later.size else n  # n = none

    # first[a]: the first later group the rule joins to group a. Invariant: the next merge of the rescan
    # is (a, first[a]) for the smallest a that has one, so every group before it has none.
    first = np.array([first_partner(a) for a in range(n)])
    while True:
        pending = np.flatnonzero(first < n)
        if not pending.size:
            break
        a = int(pending[0])
        b = int(first[a])
        groups[a] += groups[b]
        box[a, :2] = np.minimum(box[a, :2], box[b, :2])
        box[a, 2:] = np.maximum(box[a, 2:], box[b, 2:])
        alive[b] = False
        first[b] = n
        # Only pairs with the grown group a or the removed group b changed: groups before a (none had a
        # partner) may now join a; a gets a fresh partner; groups whose partner was b look again.
        earlier = np.flatnonzero(joins(a)[:a])
        first[earlier] = a
        first[a] = first_partner(a)
        for c in np.flatnonzero(first == b):
            first[c] = first_partner(int(c))
    return [groups[i] for i in range(n) if alive[i]]


def _union_box(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------


def _box_of(ys: np.ndarray, xs: np.ndarray) -> tuple[int, int, int, int]:
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _component_boxes(labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel count (count + 1,) and box (count + 1, 4) of every label in one pass (row 0 = unlabelled),
    instead of one full-image scan per label (a noise image has thousands of specks)."""
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs]
    sizes = np.bincount(ids, minlength=count + 1)
    boxes = np.zeros((count + 1, 4), dtype=np.int64)
    if ids.size:
        order = np.argsort(ids, kind="stable")
        ids, ys, xs = ids[order], ys[order], xs[order]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])  # labels are 1..count, none empty
        boxes[ids[starts], 0] = np.minimum.reduceat(xs, starts)
        boxes[ids[starts], 1] = np.minimum.reduceat(ys, starts)
        boxes[ids[starts], 2] = np.maximum.reduceat(xs, starts) + 1
        boxes[ids[starts], 3] = np.maximum.reduceat(ys, starts) + 1
    return sizes, boxes


def detect_scene(
    image: Image.Image | np.ndarray,
    *,
    vocabulary: Sequence[str] = DEFAULT_WORDS,
    min_area_frac: float = 0.002,
) -> DetectedScene:
    """Detect background, objects and words in a shapes-world image.

    Args:
        image: RGB PIL image or (H, W, 3) uint8 array.
        vocabulary: words the reader may return.
        min_area_frac: objects smaller than this fraction of the image are ignored as noise.

    Returns:
        The :class:`DetectedScene`; objects sorted by (centroid x, centroid y).
    """
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {rgb.shape}")
    pixels = rgb.astype(np.int32)
    height, width, _ = pixels.shape

    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])  # (2H + 2W, 3)
    border_rgb = np.median(border, axis=0)
    background = min(BACKGROUNDS, key=lambda k: float(np.sum((np.asarray(BACKGROUNDS[k]) - border_rgb) ** 2)))

    names = [*COLORS, *_ACHROMATIC]
    table = np.asarray([*COLORS.values(), *_ACHROMATIC.values()], dtype=np.int32)  # (C, 3)
    dist = ((pixels[:, :, None, :] - table[None, None]) ** 2).sum(-1)  # (H, W, C)
    nearest = dist.argmin(-1)  # (H, W)

    objects: list[DetectedObject] = []
    min_area = max(4, int(min_area_frac * height * width))
    for index, color in enumerate(COLORS):
        mask = nearest == index
        if not mask.any():
            continue
        labels, count = label_components(mask)
        core = _eroded(mask)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        has_core = np.bincount(labels[core], minlength=count + 1) > 0
        for label in range(1, count + 1):
            if sizes[label] < min_area or not has_core[label]:
                continue  # decided from counts, before building the component's full-image mask
            component = labels == label
            ys, xs = np.nonzero(component)
            x0, y0, x1, y1 = _box_of(ys, xs)
            shape, score = classify_shape(component[y0:y1, x0:x1])
            mean = pixels[component].mean(axis=0)
            objects.append(
                DetectedObject(
                    shape=shape,
                    color=color,
                    bbox=(x0, y0, x1, y1),
                    centroid=(float(xs.mean() + 0.5), float(ys.mean() + 0.5)),
                    area=int(xs.size),
                    shape_score=round(score, 4),
                    color_distance=round(float(np.linalg.norm(mean - table[index])), 2),
                )
            )
    objects.sort(key=lambda o: (o.centroid[0], o.centroid[1]))

    background_index = names.index(background)
    ink = (nearest >= len(COLORS)) & (nearest != background_index)
    words: list[DetectedWord] = []
    if ink.any():
        labels, count = label_components(ink)
        sizes, label_boxes = _component_boxes(labels, count)
        boxes: list[tuple[int, int, int, int]] = [
            (int(x0), int(y0), int(x1), int(y1))
            for x0, y0, x1, y1 in label_boxes[1:][sizes[1:] >= 3]  # single stray pixels are not letters
        ]
        for group in _group_words(boxes):
            x0, y0, x1, y1 = _union_box([boxes[i] for i in group])
            crop = ink[y0:y1, x0:x1]
            text, score = read_word(crop, vocabulary) if vocabulary else (None, 0.0)
            words.append(
                DetectedWord(text=text, bbox=(x0, y0, x1, y1), area=int(crop.sum()), score=round(score, 4))
            )
        words.sort(key=lambda w: (w.bbox[1], w.bbox[0]))
    return DetectedScene(width=width, height=height, background=background, objects=objects, words=words)


# --------------------------------------------------------------------------------------------------
# Comparison helpers
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SceneComparison:
    ok: bool
    problems: list[str]


def compare_scene(
    detected: DetectedScene, scene: Scene | dict[str, Any], tol_px: float = 1.0
) -> SceneComparison:
    """Check a detection against a stored scene graph: background, each object (shape, colour, centroid,
    bbox within `tol_px`, area within 2%), no extra objects, and each word (text, bbox)."""
    truth = scene if isinstance(scene, Scene) else Scene.from_dict(scene)
    problems: list[str] = []
    if detected.background != truth.background:
        problems.append(f"background {detected.background!r} != {truth.background!r}")
    unmatched = list(detected.objects)
    for obj in truth.objects:
        match = next(
            (
                d
                for d in unmatched
                if d.shape == obj.shape
                and d.color == obj.color
                and math.dist(d.centroid, obj.centroid) <= tol_px
            ),
            None,
        )
        if match is None:
            problems.append(f"missing {obj.describe()} at ({obj.centroid[0]:.1f}, {obj.centroid[1]:.1f})")
            continue
        unmatched.remove(match)
        if max(abs(a - b) for a, b in zip(match.bbox, obj.bbox)) > tol_px:
            problems.append(f"{obj.describe()} bbox {match.bbox} != {tuple(obj.bbox)}")
        if abs(match.area - obj.area) > max(1, 0.02 * obj.area):
            problems.append(f"{obj.describe()} area {match.area} != {obj.area}")
    problems += [f"extra {d.describe()} at ({d.centroid[0]:.1f}, {d.centroid[1]:.1f})" for d in unmatched]
    if len(detected.words) != len(truth.words):
        problems.append(f"{len(detected.words)} words detected, {len(truth.words)} expected")
    for word in truth.words:
        match_word = next(
            (
                d
                for d in detected.words
                if d.text == word.text and max(abs(a - b) for a, b in zip(d.bbox, word.bbox)) <= tol_px
            ),
            None,
        )
        if match_word is None:
            problems.append(f"word {word.text!r} at {tuple(word.bbox)} not read")
    return SceneComparison(ok=not problems, problems=problems)


def relations(a: DetectedObject, b: DetectedObject, threshold: float = 0.1) -> set[str]:
    """GenEval's relative-position rule for a relative to b: centre offset shrunk by `threshold` x the
    summed box sizes; an axis counts when it carries more than half of the remaining direction."""
    boxes = np.asarray([a.bbox, b.bbox], dtype=np.float64).reshape(2, 2, 2)  # (object, corner, xy)
    centre = boxes.mean(axis=1)  # (2, 2)
    dims = np.abs(boxes[:, 1] - boxes[:, 0])  # (2, 2)
    offset = centre[0] - centre[1]
    revised = np.maximum(np.abs(offset) - threshold * (dims[0] + dims[1]), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def geneval_check(detected: DetectedScene, spec: dict[str, Any]) -> tuple[bool, str]:
    """Score one image against GenEval-layout metadata (``meta["geneval"]`` of shapes t2i samples).

    `include` items need at least `count` objects of the class (with `color` when given) and, with
    ``position: [relation, i]``, one of them in that relation to an object of include item i; with
    ``region``, only objects whose centroid lies in that 3x3 cell (`region_of`) count; `exclude`
    items fail when `count` or more objects of the class are present. Returns (correct, reason).
    """
    include = spec.get("include", [])
    for item in include:
        found = detected.find(shape=item["class"], color=item.get("color"))
        if "region" in item:  # centroid in that cell of the 3x3 grid
            found = [o for o in found if region_of(*o.centroid, detected.width) == item["region"]]
        if len(found) < item["count"]:
            what = f"{item.get('color', '')} {item['class']}".strip() + (
                f" in the {item['region']} cell" if "region" in item else ""
            )
            return False, f"expected {item['count']} {what}, found {len(found)}"
        if "position" in item:
            rel, ref_index = item["position"]
            ref = include[ref_index]
            targets = detected.find(shape=ref["class"], color=ref.get("color"))
            if not any(rel in relations(a, b) for a in found for b in targets if a is not b):
                return False, f"no {item['class']} {rel} a {ref['class']}"
    for item in spec.get("exclude", []):
        if detected.count(shape=item["class"], color=item.get("color")) >= item["count"]:
            return False, f"{item['count']} or more {item['class']} present"
    if "text" in spec and not any(w.text == spec["text"] for w in detected.words):
        return False, f"word {spec['text']!r} not found"
    return True, "ok"
