"""A built-in synthetic data set for smoke tests and the tiny recipes (`data.sources=["toy"]`).

One flat-coloured shape on a plain background, in all four record kinds. Records are a pure function of their
index, so every process and every run sees the same data. Source strings:
    "toy"            16 records per task, 64x64 images
    "toy:N"          N records per task
    "toy-anyres:N"   N records per task, images alternating 96x96, 128x80 and 80x128 (for aspect-ratio buckets)
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from internvlu.data.records import ImageRef, Message, Sample

COLORS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 80, 230), "yellow": (250, 230, 40)}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}
SHAPES = ("circle", "square", "triangle")
# "think" prompts name a thing instead of the colour; the thought resolves it.
THINGS = {"red": "a ripe tomato", "green": "fresh grass", "blue": "a clear sky", "yellow": "a banana"}
ANYRES_SIZES = ((96, 96), (80, 128), (128, 80))  # (height, width)
DEFAULT_COUNT = 16


def is_toy_source(source: str) -> bool:
    return source == "toy" or source.startswith(("toy:", "toy-anyres"))


def render(
    shape: str, color: str, background: str, height: int = 64, width: int = 64, jitter: int = 0
) -> Image.Image:
    """One shape of radius ~30% of the short side, centred (shifted by `jitter` px)."""
    img = Image.new("RGB", (width, height), BACKGROUNDS[background])
    draw = ImageDraw.Draw(img)
    r = 0.3 * min(height, width)
    cx, cy = width / 2 + jitter, height / 2 - jitter
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        pts = [
            (cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
        draw.polygon(pts, fill=fill)
    return img


def _pick(i: int, anyres: bool) -> tuple[str, str, str, str, tuple[int, int], int]:
    colors, bgs = list(COLORS), list(BACKGROUNDS)
    color = colors[i % len(colors)]
    shape = SHAPES[(i // len(colors)) % len(SHAPES)]
    bg = bgs[(i // (len(colors) * len(SHAPES))) % len(bgs)]
    other = colors[(i + 1 + i // len(colors)) % len(colors)]
    if other == color:
        other = colors[(colors.index(color) + 1) % len(colors)]
    size = ANYRES_SIZES[i % len(ANYRES_SIZES)] if anyres else (64, 64)
    jitter = (i * 7) % 5 - 2
    return color, shape, bg, other, size, jitter


def toy_samples(count: int = DEFAULT_COUNT, anyres: bool = False) -> list[Sample]:
    """`count` records of each kind (understanding, t2i, edit, think), interleaved by index."""
    out: list[Sample] = []
    for i in range(count):
        color, shape, bg, other, (h, w), jit = _pick(i, anyres)
        target = render(shape, color, bg, h, w, jit)
        ref = lambda name, img: ImageRef.from_image(name, img)
        out.append(Sample(
            id=f"toy-t2i-{i}", task="t2i", prompt=f"A {color} {shape} on a {bg} background",
            target=ref(f"toy-t2i-{i}.png", target), location=f"toy:t2i:{i}",
        ))  # fmt: skip
        source = render(shape, other, bg, h, w, jit)
        out.append(Sample(
            id=f"toy-edit-{i}", task="edit", prompt=f"Make the {shape} {color}",
            images=[ref(f"toy-edit-{i}-in.png", source)], target=ref(f"toy-edit-{i}.png", target),
            location=f"toy:edit:{i}",
        ))  # fmt: skip
        out.append(Sample(
            id=f"toy-und-{i}", task="understanding", images=[ref(f"toy-und-{i}.png", target)],
            messages=[
                Message("user", "<image>\nWhat shape is in the image, and what colour is it?"),
                Message("assistant", f"A {color} {shape}."),
                Message("user", "What colour is the background?"),
                Message("assistant", f"The background is {bg}."),
            ],
            location=f"toy:understanding:{i}",
        ))  # fmt: skip
        out.append(Sample(
            id=f"toy-think-{i}", task="think", prompt=f"A {shape} with the colour of {THINGS[color]}, on {bg}",
            thought=f"{THINGS[color].capitalize()} is {color}, so I draw a {color} {shape} on a {bg} background.",
            target=ref(f"toy-think-{i}.png", target), location=f"toy:think:{i}",
        ))  # fmt: skip
    for sample in out:
        sample.validate()
    return out


def parse_toy_source(source: str) -> tuple[int, bool]:
    """ "toy[:N]" / "toy-anyres[:N]" -> (count, anyres)."""
    name, _, count = source.partition(":")
    if name not in ("toy", "toy-anyres"):
        raise ValueError(f"unknown toy source {source!r}; use toy, toy:N, toy-anyres or toy-anyres:N")
    if not count:
        return DEFAULT_COUNT, name == "toy-anyres"
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"toy source {source!r}: N must be a positive integer")
    return int(count), name == "toy-anyres"
