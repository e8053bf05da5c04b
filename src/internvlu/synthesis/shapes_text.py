"""Shapes world, part 3: the vocabulary of task families, everyday knowledge, and text helpers.

Kept apart from the generator so the evaluation code can word prompts and parse answers the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from internvlu.synthesis.shapes_scene import Scene

UNDERSTANDING_FAMILIES: tuple[str, ...] = (
    "count_all",
    "count_shape",
    "count_color",
    "color_of",
    "shape_of",
    "position",
    "read_word",
    "background",
    "describe",
    "compare",
)
GENEVAL_CATEGORIES: tuple[str, ...] = (
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
)
T2I_CATEGORIES: tuple[str, ...] = (*GENEVAL_CATEGORIES, "text", "placed")
EDIT_OPS: tuple[str, ...] = ("recolor", "add", "remove", "move", "resize", "reshape", "replace_word")
THINK_KINDS: tuple[str, ...] = (
    "arithmetic",
    "color_knowledge",
    "shape_knowledge",
    "ordering",
    "edit_knowledge",
)
TASK_NAMES: tuple[str, ...] = ("understanding", "t2i", "edit", "think")

# Everyday knowledge: thing -> colour / shape. Only entries whose colour/shape is enabled are used.
COLOR_KNOWLEDGE: dict[str, str] = {
    "grass": "green",
    "a frog": "green",
    "a pine tree": "green",
    "a clear sky": "blue",
    "the sea": "blue",
    "a blueberry": "blue",
    "a banana": "yellow",
    "a lemon": "yellow",
    "a school bus": "yellow",
    "a ripe strawberry": "red",
    "a tomato": "red",
    "a fire truck": "red",
    "a carrot": "orange",
    "a pumpkin": "orange",
    "an orange": "orange",
    "chocolate": "brown",
    "coffee": "brown",
    "tree bark": "brown",
    "an eggplant": "purple",
    "a lavender flower": "purple",
    "an amethyst": "purple",
    "a flamingo": "pink",
    "cotton candy": "pink",
    "a pig": "pink",
}
SHAPE_KNOWLEDGE: dict[str, str] = {
    "a wheel": "circle",
    "a coin": "circle",
    "the full moon": "circle",
    "a chessboard square": "square",
    "a sticky note": "square",
    "a face of a die": "square",
    "a slice of pizza": "triangle",
    "a warning road sign": "triangle",
    "a pyramid seen from the side": "triangle",
    "a kite": "diamond",
    "the diamonds suit on a playing card": "diamond",
    "a starfish": "star",
    "a sheriff's badge": "star",
}
NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
RELATION_TEXT: dict[str, str] = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
OPPOSITE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


# --------------------------------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------------------------------


def with_article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def plural(shape: str) -> str:
    return f"{shape}s"


def join_words(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def count_phrase(n: int, noun: str) -> str:
    return f"{NUMBER_WORDS[n]} {noun if n == 1 else plural(noun)}"


def describe_scene(scene: Scene) -> str:
    """One-sentence caption: objects left to right, the background, then any words."""
    objects = sorted(scene.objects, key=lambda o: (o.cx, o.cy))
    parts = [with_article(o.describe()) for o in objects]
    text = f"{join_words(parts) if parts else 'Nothing'} on {with_article(scene.background)} background."
    text = text[0].upper() + text[1:]
    for word in scene.words:
        text += f' The word "{word.text}" is written in {word.color}.'
    return text


def cap(text: str) -> str:
    return text[0].upper() + text[1:]
