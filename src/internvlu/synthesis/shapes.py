"""Shapes world, part 2: the ``shapes`` generator: config and task families (text: shapes_text.py).

Every sample is built from scene graphs (shapes_scene.py) and carries them in ``meta``:

* ``meta["scenes"]``: the scene graph of each input image, in image order;
* ``meta["target_scene"]``: the scene graph of the target image (t2i / edit / think);
* ``meta["family"]``: ``task/family``, e.g. ``t2i/position`` or ``edit/recolor``;
* plus per-task ground truth: ``qa`` (understanding), ``geneval`` (t2i, GenEval's metadata layout),
  ``edit`` (edit), ``reasoning`` (think).

Task families:

* understanding: count (all / by shape / by colour), colour of, shape of, relative position (yes/no),
  reading a word, background colour, a full description, and a two-image comparison; 1..max_turns
  turns per sample.
* t2i: GenEval's six categories (single object, two objects, counting, colours, position, colour
  attribution) plus two optional categories: ``text`` (a word) and ``placed`` (one object of a named size and
  colour at a named cell of the 3x3 grid that move edits use); prompts read ``PREFIX + description``.
* edit: recolor, add, remove, move (to one of 9 regions), resize (one size step), reshape, replace a
  word. The target is the input scene with exactly that change re-rendered, so all other pixels match.
* think: arithmetic on counts, colour and shape knowledge ("the colour of grass"), ordering from chained
  relations, and a knowledge-driven recolour edit; the thought derives the answer, then plans the image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from internvlu.constants import IMAGE_PLACEHOLDER
from internvlu.data.records import ImageRef, Message, Sample
from internvlu.synthesis.gen_common import (
    GeneratorConfig,
    check_min_int,
    check_subset,
    check_weights,
    pick,
    pick_distinct,
    pick_weighted,
    probabilities,
)
from internvlu.synthesis.runner import Generator, RejectSample, register_generator
from internvlu.synthesis.shapes_scene import (
    BACKGROUNDS,
    COLORS,
    DEFAULT_WORDS,
    INK,
    REGIONS,
    SHAPES,
    SIZE_NAMES,
    Scene,
    SceneObject,
    SceneWord,
    box_fits,
    gap_px,
    glyph_mask,
    margin_px,
    region_centre,
    region_of,
    relation,
    render_scene,
    sample_centre,
    scene_boxes,
    snap,
)
from internvlu.synthesis.shapes_text import (
    COLOR_KNOWLEDGE,
    EDIT_OPS,
    GENEVAL_CATEGORIES,
    OPPOSITE,
    RELATION_TEXT,
    SHAPE_KNOWLEDGE,
    T2I_CATEGORIES,
    TASK_NAMES,
    THINK_KINDS,
    UNDERSTANDING_FAMILIES,
    cap,
    count_phrase,
    describe_scene,
    join_words,
    plural,
    with_article,
)

T2I_LAYOUTS: tuple[str, ...] = ("random", "canonical")
EDIT_LAYOUTS: tuple[str, ...] = ("random", "grid")
# Where an "add" edit puts its object in the grid edit layout: the first free 3x3 cell in this order (centre first,
# then the edges' middles, then the corners), so each add instruction has one right target.
ADD_CELL_ORDER: tuple[str, ...] = (
    "center", "middle left", "middle right", "top center", "bottom center",
    "top left", "top right", "bottom left", "bottom right",
)  # fmt: skip
# Colour of an object whose prompt names none, in the canonical t2i layout (distinct per shape, so a
# shape-only prompt still has one right image).
DEFAULT_SHAPE_COLORS: dict[str, str] = {
    "circle": "red",
    "square": "blue",
    "triangle": "green",
    "diamond": "purple",
    "star": "yellow",
}
# Canonical slots (centre x, y as fractions of the side) for n objects.
CANONICAL_SLOTS: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((0.5, 0.5),),
    2: ((0.25, 0.5), (0.75, 0.5)),
    3: ((0.25, 0.25), (0.75, 0.25), (0.5, 0.75)),
    4: ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)),
}

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ShapesConfig(GeneratorConfig):
    """Settings of the shapes world (all recorded in the synthesis manifest).

    Attributes:
        image_size: side of the square images in pixels (>= 32; 64 or 128 recommended).
        tasks: task kinds to generate; task_weights their relative frequency (empty = equal).
        shapes, colors, backgrounds: enabled vocabularies (subsets of the world's).
        size_fracs: half-extent of small / medium / large objects as a fraction of image_size.
        min_objects, max_objects: objects per scene (understanding / edit inputs; t2i follows its prompt).
        edit_max_objects: most objects in an edit's source scene (None: max_objects); fewer objects leave less for
            the edit to keep in place.
        edit_backgrounds: backgrounds of edit source scenes (empty: backgrounds). Edits keep their source's
            background, so this also fixes the target's.
        edit_layout: "random" (edit source objects anywhere) or "grid": every edit source object sits on the centre of
            a cell of the 3x3 grid that "move" edits name (`region_centre`), and "add" puts its object in the first
            free cell of `ADD_CELL_ORDER`, as large as fits. Every edit target is then one of few drawings the head
            can learn (as `t2i_layout="canonical"` does for t2i), and "add" has one right answer instead of any free
            place. Understanding scenes stay random.
        word_prob: chance that an understanding / edit scene also shows a word.
        words: the word vocabulary (upper-case, short); word_size_frac: font size / image_size.
        understanding_families, t2i_categories, edit_ops, think_kinds: enabled families.
        max_turns: most question/answer turns in one understanding sample.
        prompt_prefix: text before t2i descriptions (GenEval's prompts start with "a photo of ").
        t2i_layout: "random" (objects anywhere, any background, any size, any colour the prompt leaves open) or
            "canonical": the images drawn for t2i and think prompts fix every choice the prompt leaves open:
            background ``backgrounds[0]``, large objects on fixed slots (1: centre; 2: left/right in the order
            named, or the named relation; 3: two on top, one below; 4: a 2x2 grid) and a default colour per shape
            (`DEFAULT_SHAPE_COLORS`). A small generator learns one image per prompt far faster than a distribution
            over layouts. Understanding and edit scenes stay random.
    """

    image_size: int = 64
    tasks: tuple[str, ...] = TASK_NAMES
    task_weights: tuple[float, ...] = ()
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    size_fracs: tuple[float, ...] = (0.12, 0.15, 0.18)
    min_objects: int = 1
    max_objects: int = 4
    edit_max_objects: int | None = None
    edit_backgrounds: tuple[str, ...] = ()
    edit_layout: str = "random"
    word_prob: float = 0.3
    words: tuple[str, ...] = DEFAULT_WORDS
    word_size_frac: float = 0.25
    understanding_families: tuple[str, ...] = UNDERSTANDING_FAMILIES
    max_turns: int = 3
    t2i_categories: tuple[str, ...] = GENEVAL_CATEGORIES
    edit_ops: tuple[str, ...] = EDIT_OPS
    think_kinds: tuple[str, ...] = THINK_KINDS
    prompt_prefix: str = "a photo of "
    t2i_layout: str = "random"

    def validate(self) -> None:
        check_min_int("image_size", self.image_size, 32)
        check_subset("tasks", self.tasks, TASK_NAMES)
        check_subset("shapes", self.shapes, SHAPES, 2)
        check_subset("colors", self.colors, tuple(COLORS), 2)
        check_subset("backgrounds", self.backgrounds, tuple(BACKGROUNDS))
        if self.edit_backgrounds:
            check_subset("edit_backgrounds", self.edit_backgrounds, tuple(BACKGROUNDS))
        check_subset("understanding_families", self.understanding_families, UNDERSTANDING_FAMILIES)
        check_subset("t2i_categories", self.t2i_categories, T2I_CATEGORIES)
        check_subset("edit_ops", self.edit_ops, EDIT_OPS)
        check_subset("think_kinds", self.think_kinds, THINK_KINDS)
        check_weights("task_weights", self.task_weights, self.tasks)
        if (
            len(self.size_fracs) != 3
            or not 0.05 <= self.size_fracs[0] < self.size_fracs[1] < self.size_fracs[2] <= 0.25
        ):
            raise ValueError(f"size_fracs={self.size_fracs!r} must be 3 increasing fractions in [0.05, 0.25]")
        if self.size_fracs[0] * self.image_size < 4:
            raise ValueError(
                f"small objects would be {self.size_fracs[0] * self.image_size:.1f}px; raise image_size"
            )
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= 4, got {self.min_objects}, {self.max_objects}"
            )
        if self.edit_max_objects is not None and not self.min_objects <= self.edit_max_objects <= 4:
            raise ValueError(
                f"edit_max_objects={self.edit_max_objects} must be in [min_objects={self.min_objects}, 4] (or None)"
            )
        if not 0.0 <= self.word_prob <= 1.0:
            raise ValueError(f"word_prob must be in [0, 1], got {self.word_prob}")
        if not self.words or any(not w.isalpha() or not w.isupper() or len(w) > 5 for w in self.words):
            raise ValueError(f"words={self.words!r} must be upper-case letters, at most 5 each")
        if not 0.15 <= self.word_size_frac <= 0.4:
            raise ValueError(f"word_size_frac must be in [0.15, 0.4], got {self.word_size_frac}")
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if self.edit_layout not in EDIT_LAYOUTS:
            raise ValueError(f"edit_layout must be one of {EDIT_LAYOUTS}, got {self.edit_layout!r}")
        if self.t2i_layout not in T2I_LAYOUTS:
            raise ValueError(f"t2i_layout must be one of {T2I_LAYOUTS}, got {self.t2i_layout!r}")
        if self.t2i_layout == "canonical":
            missing = [s for s in self.shapes if DEFAULT_SHAPE_COLORS[s] not in self.colors]
            if missing:
                raise ValueError(
                    f"t2i_layout='canonical' draws {missing} in their default colours "
                    f"{[DEFAULT_SHAPE_COLORS[s] for s in missing]}, which colors={self.colors!r} leaves out"
                )


# --------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------

QA = tuple[str, str, dict[str, Any]]  # question, answer, ground-truth details


@register_generator("shapes")
class ShapesGenerator(Generator):
    """The procedural shapes world; see the module docstring for the task families."""

    config_class = ShapesConfig
    _TRIES = 200  # placement attempts per object before the candidate is rejected as "layout_failed"
    _EDIT_TRIES = 20  # grid-layout edits: scenes drawn for the chosen op before the candidate is rejected

    def __init__(self, config: ShapesConfig) -> None:
        super().__init__(config)
        self.cfg = config
        self.size = config.image_size
        self.radius = {name: frac * self.size for name, frac in zip(SIZE_NAMES, config.size_fracs)}
        self.font_size = max(8, round(config.word_size_frac * self.size))
        self.color_things = sorted(k for k, v in COLOR_KNOWLEDGE.items() if v in config.colors)
        self.shape_things = sorted(k for k, v in SHAPE_KNOWLEDGE.items() if v in config.shapes)
        if "shape_knowledge" in config.think_kinds and "think" in config.tasks and not self.shape_things:
            raise ValueError(
                f"think kind 'shape_knowledge' has no knowledge entry for shapes {config.shapes}"
            )
        self.task_p = probabilities(config.task_weights, len(config.tasks))
        for word in config.words:  # fail at construction if a word cannot fit the image
            if glyph_mask(word, self.font_size).shape[1] > self.size - 2 * margin_px(self.size):
                raise ValueError(
                    f"word {word!r} is wider than a {self.size}px image at font size {self.font_size}"
                )

    def sample(self, rng: np.random.Generator, sample_id: str) -> Sample:
        task = pick_weighted(rng, self.cfg.tasks, self.task_p)
        build: dict[str, Callable[[np.random.Generator, str], Sample]] = {
            "understanding": self._understanding,
            "t2i": self._t2i,
            "edit": self._edit,
            "think": self._think,
        }
        return build[task](rng, sample_id)

    # ---- scenes ----------------------------------------------------------------------------------

    def _pairs(
        self,
        rng: np.random.Generator,
        n: int,
        shapes: Sequence[str] | None = None,
        colors: Sequence[str] | None = None,
        exclude: Sequence[tuple[str, str]] = (),
    ) -> list[tuple[str, str]]:
        """`n` distinct (shape, colour) pairs, so "the red circle" always names one object."""
        pool = [
            (s, c)
            for s in (shapes or self.cfg.shapes)
            for c in (colors or self.cfg.colors)
            if (s, c) not in exclude
        ]
        if len(pool) < n:
            raise RejectSample("not_enough_pairs")
        return pick_distinct(rng, pool, n)

    def _new_scene(self, rng: np.random.Generator, backgrounds: Sequence[str] = ()) -> Scene:
        return Scene(self.size, pick(rng, backgrounds or self.cfg.backgrounds))

    @property
    def canonical(self) -> bool:
        return self.cfg.t2i_layout == "canonical"

    def _target_scene(self, rng: np.random.Generator) -> Scene:
        """The (empty) scene of a t2i / think target: a fixed background in the canonical layout."""
        return Scene(self.size, self.cfg.backgrounds[0]) if self.canonical else self._new_scene(rng)

    def _open_color(self, rng: np.random.Generator, shape: str) -> str:
        """Colour of an object whose prompt names none."""
        return DEFAULT_SHAPE_COLORS[shape] if self.canonical else pick(rng, self.cfg.colors)

    def _put_slots(
        self, scene: Scene, objects: Sequence[tuple[str, str]], slots: Sequence[tuple[float, float]]
    ) -> None:
        """Canonical layout: large (shape, colour) objects centred on `slots` (fractions of the side)."""
        r = self.radius[SIZE_NAMES[-1]]
        for (shape, color), (fx, fy) in zip(objects, slots, strict=True):
            obj = SceneObject(shape, color, SIZE_NAMES[-1], snap(fx * self.size), snap(fy * self.size), r)
            if not box_fits(obj.box, scene_boxes(scene), self.size):
                raise ValueError(
                    f"canonical slot {(fx, fy)} has no room for a large {shape} (half-extent {r:.1f}px) in a "
                    f"{self.size}px image; lower size_fracs[2]"
                )
            scene.objects.append(obj)

    def _draw_objects(self, rng: np.random.Generator, scene: Scene, objects: Sequence[tuple[str, str]]) -> None:
        """Objects whose shape and colour the prompt fixes: on the canonical slots, or each at a random place."""
        if self.canonical:
            self._put_slots(scene, objects, CANONICAL_SLOTS[len(objects)])
        else:
            for shape, color in objects:
                self._place(rng, scene, shape, color)

    def _place(
        self,
        rng: np.random.Generator,
        scene: Scene,
        shape: str,
        color: str,
        size: str | None = None,
        accept: Callable[[SceneObject], bool] | None = None,
        tries: int | None = None,
    ) -> SceneObject:
        size = size or pick(rng, SIZE_NAMES)
        r = self.radius[size]
        others = scene_boxes(scene)
        for _ in range(tries or self._TRIES):
            cx, cy = sample_centre(rng, r, self.size)
            obj = SceneObject(shape, color, size, cx, cy, r)
            if box_fits(obj.box, others, self.size) and (accept is None or accept(obj)):
                scene.objects.append(obj)
                return obj
        raise RejectSample("layout_failed")

    def _place_word(self, rng: np.random.Generator, scene: Scene, text: str | None = None) -> SceneWord:
        text = text or pick(rng, self.cfg.words)
        h, w = glyph_mask(text, self.font_size).shape
        m = int(margin_px(self.size))
        others = scene_boxes(scene)
        for _ in range(self._TRIES):
            word = SceneWord(
                text,
                INK[scene.background],
                self.font_size,
                int(rng.integers(m, self.size - m - w + 1)),
                int(rng.integers(m, self.size - m - h + 1)),
            )
            if box_fits(word.box, others, self.size):
                scene.words.append(word)
                return word
        raise RejectSample("layout_failed")

    def _random_scene(
        self,
        rng: np.random.Generator,
        n: int,
        with_word: bool = False,
        backgrounds: Sequence[str] = (),
        grid: bool = False,
    ) -> Scene:
        """`n` objects anywhere, or with `grid` each on the centre of a random free 3x3 cell (`region_centre`); a
        grid object that fits no free cell at its drawn size takes the next smaller size that does (fewer rejected
        scenes, so the edit ops keep their equal shares)."""
        scene = self._new_scene(rng, backgrounds)
        if with_word:
            self._place_word(rng, scene)  # first: the word is the widest item
        sizes = sorted((pick(rng, SIZE_NAMES) for _ in range(n)), key=SIZE_NAMES.index, reverse=True)
        for (shape, color), size in zip(self._pairs(rng, n), sizes):
            if not grid:
                self._place(rng, scene, shape, color, size)
                continue
            cells = [list(REGIONS)[int(k)] for k in rng.permutation(len(REGIONS))]
            smaller = SIZE_NAMES[: SIZE_NAMES.index(size) + 1][::-1]
            if not any(self._put_in_cell(scene, shape, color, [s], cells) for s in smaller):
                raise RejectSample("layout_failed")
        return scene

    def _put_in_cell(
        self, scene: Scene, shape: str, color: str, sizes: Sequence[str], cells: Sequence[str]
    ) -> SceneObject | None:
        """The object on the first cell (then the first size) where it fits; appended to `scene`. None if none."""
        others = scene_boxes(scene)
        for cell in cells:
            for size in sizes:
                cx, cy = region_centre(cell, self.radius[size], self.size)
                obj = SceneObject(shape, color, size, cx, cy, self.radius[size])
                if box_fits(obj.box, others, self.size):
                    scene.objects.append(obj)
                    return obj
        return None

    def _scene_n(
        self, rng: np.random.Generator, low: int | None = None, high: int | None = None
    ) -> tuple[int, bool]:
        """Object count and whether to add a word; scenes with a word keep at most 3 objects (room)."""
        with_word = bool(rng.random() < self.cfg.word_prob)
        low = self.cfg.min_objects if low is None else low
        high = self.cfg.max_objects if high is None else high
        if with_word:
            high = min(high, 3)
        return int(rng.integers(low, max(low, high) + 1)), with_word

    def random_scene(self, rng: np.random.Generator) -> Scene:
        """A scene drawn like an understanding sample's image (object count, word, layout); not yet rendered."""
        while True:
            n, with_word = self._scene_n(rng)
            try:
                scene = self._random_scene(rng, n, with_word)
            except RejectSample:
                continue
            return scene

    @staticmethod
    def _image(name: str, scene: Scene) -> ImageRef:
        return ImageRef.from_image(name, render_scene(scene))

    # ---- understanding ---------------------------------------------------------------------------

    def _understanding(self, rng: np.random.Generator, sid: str) -> Sample:
        families = self.cfg.understanding_families
        if "compare" in families and rng.random() < 1.0 / len(families):
            return self._compare(rng, sid)
        n, with_word = self._scene_n(rng)
        scene = self._random_scene(rng, n, with_word)
        image = self._image("image0", scene)
        turns = int(rng.integers(1, self.cfg.max_turns + 1))
        qa: list[dict[str, Any]] = []
        for index in rng.permutation(len(families)):
            family = families[int(index)]
            if family == "compare":
                continue
            result = getattr(self, f"_qa_{family}")(rng, scene)
            if result is not None:
                question, answer, info = result
                qa.append({"family": family, "question": question, "answer": answer, **info})
            if len(qa) == turns:
                break
        if not qa:
            raise RejectSample("no_applicable_question")
        messages: list[Message] = []
        for k, item in enumerate(qa):
            content = f"{IMAGE_PLACEHOLDER}\n{item['question']}" if k == 0 else item["question"]
            messages += [Message("user", content), Message("assistant", item["answer"])]
        meta = {
            "world": "shapes",
            "family": f"understanding/{qa[0]['family']}",
            "scenes": [scene.to_dict()],
            "qa": qa,
        }
        return Sample(id=sid, task="understanding", images=[image], messages=messages, meta=meta)

    def _compare(self, rng: np.random.Generator, sid: str) -> Sample:
        low, high = self.cfg.min_objects, self.cfg.max_objects
        if low == high:
            raise RejectSample("compare_needs_two_counts")
        n1, n2 = (int(v) + low for v in rng.choice(high - low + 1, size=2, replace=False))
        scenes = [self._random_scene(rng, n1), self._random_scene(rng, n2)]
        answer = "the first" if n1 > n2 else "the second"
        question = "Which image has more shapes, the first or the second?"
        messages = [
            Message("user", f"Image 1: {IMAGE_PLACEHOLDER}\nImage 2: {IMAGE_PLACEHOLDER}\n{question}"),
            Message("assistant", answer),
        ]
        qa = [{"family": "compare", "question": question, "answer": answer, "counts": [n1, n2]}]
        if self.cfg.max_turns >= 2 and rng.random() < 0.5:
            which = int(rng.integers(2))
            q2 = f"How many shapes are in the {('first', 'second')[which]} image?"
            a2 = str((n1, n2)[which])
            messages += [Message("user", q2), Message("assistant", a2)]
            qa.append({"family": "count_all", "question": q2, "answer": a2, "image": which})
        return Sample(
            id=sid,
            task="understanding",
            images=[self._image(f"image{i}", s) for i, s in enumerate(scenes)],
            messages=messages,
            meta={
                "world": "shapes",
                "family": "understanding/compare",
                "scenes": [s.to_dict() for s in scenes],
                "qa": qa,
            },
        )

    def _qa_count_all(self, rng: np.random.Generator, scene: Scene) -> QA:
        return "How many shapes are there?", str(len(scene.objects)), {}

    @staticmethod
    def _asked_value(rng: np.random.Generator, scene: Scene, attr: str, enabled: Sequence[str]) -> str:
        """A shape or colour to count: mostly one present in the scene, sometimes any enabled one, so
        that "0" is a possible answer."""
        present = [getattr(o, attr) for o in scene.objects]
        return pick(rng, present) if rng.random() < 0.8 else pick(rng, enabled)

    @staticmethod
    def _unique_object(rng: np.random.Generator, scene: Scene, attr: str) -> SceneObject | None:
        """An object that is the only one with its shape (or colour), so naming that value picks it out."""
        unique = [o for o in scene.objects if len(scene.find(**{attr: getattr(o, attr)})) == 1]
        return pick(rng, unique) if unique else None

    def _qa_count_shape(self, rng: np.random.Generator, scene: Scene) -> QA:
        shape = self._asked_value(rng, scene, "shape", self.cfg.shapes)
        return f"How many {plural(shape)} are there?", str(len(scene.find(shape=shape))), {"shape": shape}

    def _qa_count_color(self, rng: np.random.Generator, scene: Scene) -> QA:
        color = self._asked_value(rng, scene, "color", self.cfg.colors)
        return f"How many {color} shapes are there?", str(len(scene.find(color=color))), {"color": color}

    def _qa_color_of(self, rng: np.random.Generator, scene: Scene) -> QA | None:
        obj = self._unique_object(rng, scene, "shape")
        if obj is None:
            return None
        return f"What color is the {obj.shape}?", obj.color, {"object": scene.objects.index(obj)}

    def _qa_shape_of(self, rng: np.random.Generator, scene: Scene) -> QA | None:
        obj = self._unique_object(rng, scene, "color")
        if obj is None:
            return None
        return f"What shape is the {obj.color} one?", obj.shape, {"object": scene.objects.index(obj)}

    def _qa_position(self, rng: np.random.Generator, scene: Scene) -> QA | None:
        # Only ask along an axis where the centres differ clearly; otherwise the truth is ambiguous.
        min_offset = 0.15 * self.size
        options = [
            (i, j, rel)
            for i, a in enumerate(scene.objects)
            for j, b in enumerate(scene.objects)
            if i != j
            for rel, holds in relation(a, b, min_offset).items()
            if holds
        ]
        if not options:
            return None
        i, j, rel = pick(rng, options)
        asked = rel if rng.random() < 0.5 else OPPOSITE[rel]
        a, b = scene.objects[i], scene.objects[j]
        question = f"Is the {a.describe()} {RELATION_TEXT[asked]} the {b.describe()}?"
        return question, "yes" if asked == rel else "no", {"objects": [i, j], "relation": asked}

    def _qa_read_word(self, rng: np.random.Generator, scene: Scene) -> QA | None:
        if not scene.words:
            return None
        return "What word is written in the image?", scene.words[0].text, {}

    def _qa_background(self, rng: np.random.Generator, scene: Scene) -> QA:
        return "What color is the background?", scene.background, {}

    def _qa_describe(self, rng: np.random.Generator, scene: Scene) -> QA:
        return "Describe the image.", describe_scene(scene), {}

    # ---- text-to-image ---------------------------------------------------------------------------

    def _t2i(self, rng: np.random.Generator, sid: str) -> Sample:
        category = pick(rng, self.cfg.t2i_categories)
        scene = self._target_scene(rng)
        desc, geneval = getattr(self, f"_t2i_{category}")(rng, scene)
        prompt = self.cfg.prompt_prefix + desc
        target = self._image("target", scene)  # rendering measures bbox/centroid/area for the scene graph
        meta = {
            "world": "shapes",
            "family": f"t2i/{category}",
            "target_scene": scene.to_dict(),
            "geneval": {"tag": category, "prompt": prompt, **geneval},
        }
        return Sample(id=sid, task="t2i", prompt=prompt, target=target, meta=meta)

    def _t2i_single_object(self, rng: np.random.Generator, scene: Scene) -> tuple[str, dict[str, Any]]:
        ((shape, color),) = self._pairs(rng, 1)
        if self.canonical:
            self._put_slots(scene, [(shape, self._open_color(rng, shape))], CANONICAL_SLOTS[1])
        else:
            self._place(rng, scene, shape, color)
        return with_article(shape), {"include": [{"class": shape, "count": 1}]}

    def _t2i_two_object(self, rng: np.random.Generator, scene: Scene) -> tuple[str, dict[str, Any]]:
        s1, s2 = pick_distinct(rng, self.cfg.shapes, 2)
        if self.canonical:
            self._put_slots(scene, [(s, self._open_color(rng, s)) for s in (s1, s2)], CANONICAL_SLOTS[2])
        else:
            for shape in (s1, s2):
                self._place(rng, scene, shape, pick(rng, self.cfg.colors))
        return f"{with_article(s1)} and {with_article(s2)}", {
            "include": [{"class": s1, "count": 1}, {"class": s2, "count": 1}]
        }

    def _t2i_counting(self, rng: np.random.Generator, scene: Scene) -> tuple[str, dict[str, Any]]:
        shape = pick(rng, self.cfg.shapes)
        n = int(rng.integers(2, self.cfg.max_objects + 1)) if self.cfg.max_objects >= 2 else 1
        if self.canonical:
            self._put_slots(scene, [(shape, self._open_color(rng, shape))] * n, CANONICAL_SLOTS[n])
        else:
            for _, color in self._pairs(rng, n, shapes=[shape]):
                self._place(rng, scene, shape, color)
        return count_phrase(n, shape), {
            "include": [{"class": shape, "count": n}],
            "exclude": [{"class": shape, "count": n + 1}],
        }

    def _t2i_colors(self, rng: np.random.Generator, scene: Scene) -> tuple[str, dict[str, Any]]:
        ((shape, color),) = self._pairs(rng, 1)
        self._draw_objects(rng, scene, [(shape, color)])
        return with_article(f"{color} {shape}"), {"include": [{"class": shape, "count": 1, "color": color}]}

    def _t2i_position(self, rng: np.random.Generator, scene: Scene) -> tuple[str, dict[str, Any]]:
        s1, s2 = pick_distinct(rng, self.cfg.shapes, 2)
        rel = pick(rng, tuple(RELATION_TEXT))
        c1, c2 = pick(rng, self.cfg.colors), pick(rng, self.cfg.colors)
        desc = f"{with_article(s1)} {rel} {with_article(s2)}"
        geneval = {"include": [{"class": s2, "count": 1}, {"class": s1, "count": 1, "position": [rel, 0]}]}
        if self.canonical:  # s1 on the slot that makes "s1 rel s2" true, s2 (placed first) on the other
            near, far = ((0.5, 0.25), (0.5, 0.75)) if rel in ("above", "below") else CANONICAL_SLOTS[2]
            a, b = (near, far) if rel in ("left of", "above") else (far, near)
            self._put_slots(scene, [(s2, self._open_color(rng, s2)), (s1, self._open_color(rng, s1))], [b, a])
            return desc, geneval
        for _ in range(self._TRIES // 10):  # a badly placed reference leaves no room: start over
            scene.objects.clear()
            ref = self._place(rng, scene, s2, c2)
            try:
                self._place(
                    rng, scene, s1, c1, accept=lambda o, ref=ref: self._clearly(o, ref, rel), tries=20
                )
                break
            except RejectSample:
                continue
        else:
            raise RejectSample("layout_failed")
        return desc, geneval

    def _clearly(self, a: SceneObject, b: SceneObject, rel: str) -> bool:
        """`a rel b` along its axis by >= 25% of the side, and the other axis offset at most half of that."""
        dx, dy = a.cx - b.cx, a.cy - b.cy
        main, other = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[rel]
        return main >= 0.25 * self.size and abs(other) <= 0.5 * main

    def _t2i_color_attr(self, rng: np.random.Generator, scene: Scene) -> tuple[str, dict[str, Any]]:
        s1, s2 = pick_distinct(rng, self.cfg.shapes, 2)
        c1, c2 = pick_distinct(rng, self.cfg.colors, 2)
        self._draw_objects(rng, scene, [(s1, c1), (s2, c2)])
        return f"{with_article(f'{c1} {s1}')} and {with_article(f'{c2} {s2}')}", {
            "include": [{"class": s1, "count": 1, "color": c1}, {"class": s2, "count": 1, "color": c2}]
        }

    def _t2i_placed(self, rng: np.random.Generator, scene: Scene) -> tuple[str, dict[str, Any]]:
        # The nine places a "move" edit names, taught by cheap one-image samples: the object sits where a move
        # to that cell puts it (`region_centre`), and the prompt names its size, so the image is fixed.
        ((shape, color),) = self._pairs(rng, 1)
        size, region = pick(rng, SIZE_NAMES), pick(rng, tuple(REGIONS))
        cx, cy = region_centre(region, self.radius[size], self.size)
        scene.objects.append(SceneObject(shape, color, size, cx, cy, self.radius[size]))
        return f"{with_article(f'{size} {color} {shape}')} at the {region}", {
            "include": [{"class": shape, "count": 1, "color": color, "region": region}]
        }

    def _t2i_text(self, rng: np.random.Generator, scene: Scene) -> tuple[str, dict[str, Any]]:
        word = self._place_word(rng, scene)
        return f'the word "{word.text}"', {"include": [], "text": word.text}

    # ---- editing ---------------------------------------------------------------------------------

    def _edit(self, rng: np.random.Generator, sid: str) -> Sample:
        op = pick(rng, self.cfg.edit_ops)
        low = self.cfg.min_objects
        high = self.cfg.max_objects if self.cfg.edit_max_objects is None else self.cfg.edit_max_objects
        if op == "add":
            high = max(low, high - 1)
        # The grid layout rejects more scenes (fewer places), and more for some ops (a move needs a free cell): it
        # retries the same op, so every op keeps its share of the samples (and of the edit score).
        grid = self.cfg.edit_layout == "grid"
        tries = self._EDIT_TRIES if grid else 1
        for attempt in range(tries):
            try:
                n, with_word = self._scene_n(rng, low, high)
                scene = self._random_scene(rng, n, with_word or op == "replace_word", self.cfg.edit_backgrounds, grid)
                target = scene.copy()
                prompt, info = getattr(self, f"_edit_{op}")(rng, target)
                break
            except RejectSample:
                if attempt + 1 == tries:
                    raise
        images = [self._image("image0", scene)]  # render before reading the measured fields below
        target_ref = self._image("target", target)
        meta = {
            "world": "shapes",
            "family": f"edit/{op}",
            "scenes": [scene.to_dict()],
            "target_scene": target.to_dict(),
            "edit": {"op": op, **info},
        }
        return Sample(id=sid, task="edit", prompt=prompt, images=images, target=target_ref, meta=meta)

    def _free_color(
        self, rng: np.random.Generator, scene: Scene, obj: SceneObject, colors: Sequence[str] | None = None
    ) -> str:
        options = [c for c in (colors or self.cfg.colors) if c != obj.color and not scene.find(obj.shape, c)]
        if not options:
            raise RejectSample("edit_infeasible")
        return pick(rng, options)

    def _edit_recolor(self, rng: np.random.Generator, scene: Scene) -> tuple[str, dict[str, Any]]:
        obj = pick(rng, scene.objects)
        old, new = obj.color, self._free_color(rng, scene, obj)
        obj.color = new
        text = (
            f"Change the color of the {old} {obj.shape} to {new}."
            if rng.random() < 0.5
            else f"Make the {old} {obj.shape} {new}."
        )
        return text, {"object": scene.objects.index(obj), "from": old, "to": new}

    def _edit_add(self, rng: np.random.Generator, scene: Scene) -> tuple[str, dict[str, Any]]:
        ((shape, color),) = self._pairs(rng, 1, exclude=[(o.shape, o.color) for o in scene.objects])
        if self.cfg.edit_layout != "grid":
            obj = self._place(rng, scene, shape, color)
        elif (obj := self._put_in_cell(scene, shape, color, SIZE_NAMES[::-1], ADD_CELL_ORDER)) is None:
            raise RejectSample("edit_infeasible")
        return f"Add {with_article(f'{color} {shape}')}.", {
            "object": len(scene.objects) - 1,
            "shape": obj.shape,
            "color": obj.color,
        }

    def _edit_remove(self, rng: np.random.Generator, scene: Scene) -> tuple[str, dict[str, Any]]:
        index = int(rng.integers(len(scene.objects)))
        obj = scene.objects.pop(index)
        return f"Remove the {obj.describe()}.", {"object": index, "shape": obj.shape, "color": obj.color}

    def _edit_move(self, rng: np.random.Generator, scene: Scene) -> tuple[str, dict[str, Any]]:
        index = int(rng.integers(len(scene.objects)))
        obj = scene.objects[index]
        others = scene_boxes(scene, skip=obj)
        current = region_of(obj.cx, obj.cy, self.size)
        for k in rng.permutation(len(REGIONS)):
            region = list(REGIONS)[int(k)]
            cx, cy = region_centre(region, obj.r, self.size)
            moved = dataclasses.replace(obj, cx=cx, cy=cy)
            if (
                region != current
                and region_of(cx, cy, self.size) == region
                and box_fits(moved.box, others, self.size)
            ):
                scene.objects[index] = moved
                return f"Move the {obj.describe()} to the {region}.", {
                    "object": index,
                    "from": current,
                    "to": region,
                }
        raise RejectSample("edit_infeasible")

    def _edit_resize(self, rng: np.random.Generator, scene: Scene) -> tuple[str, dict[str, Any]]:
        index = int(rng.integers(len(scene.objects)))
        obj = scene.objects[index]
        level = SIZE_NAMES.index(obj.size)
        steps = [s for s in (1, -1) if 0 <= level + s < len(SIZE_NAMES)]
        step = pick(rng, steps)
        new_size = SIZE_NAMES[level + step]
        resized = dataclasses.replace(obj, size=new_size, r=self.radius[new_size])
        if self.cfg.edit_layout == "grid":  # stay on the cell's centre point for the new size (edge cells clamp)
            cx, cy = region_centre(region_of(obj.cx, obj.cy, self.size), resized.r, self.size)
            resized = dataclasses.replace(resized, cx=cx, cy=cy)
        if not box_fits(resized.box, scene_boxes(scene, skip=obj), self.size):
            raise RejectSample("edit_infeasible")
        scene.objects[index] = resized
        word = "bigger" if step > 0 else "smaller"
        return f"Make the {obj.describe()} {word}.", {"object": index, "from": obj.size, "to": new_size}

    def _edit_reshape(self, rng: np.random.Generator, scene: Scene) -> tuple[str, dict[str, Any]]:
        obj = pick(rng, scene.objects)
        options = [s for s in self.cfg.shapes if s != obj.shape and not scene.find(s, obj.color)]
        if not options:
            raise RejectSample("edit_infeasible")
        old, obj.shape = obj.shape, pick(rng, options)
        return (
            f"Turn the {obj.color} {old} into {with_article(obj.shape)}.",
            {"object": scene.objects.index(obj), "from": old, "to": obj.shape},
        )

    def _edit_replace_word(self, rng: np.random.Generator, scene: Scene) -> tuple[str, dict[str, Any]]:
        word = scene.words[0]
        others = scene_boxes(scene, skip=word)
        old_h, old_w = glyph_mask(word.text, word.font_size).shape
        centre = (word.x + old_w / 2, word.y + old_h / 2)
        for k in rng.permutation(len(self.cfg.words)):
            text = self.cfg.words[int(k)]
            h, w = glyph_mask(text, word.font_size).shape
            new = dataclasses.replace(word, text=text, x=round(centre[0] - w / 2), y=round(centre[1] - h / 2))
            if text != word.text and box_fits(new.box, others, self.size):
                scene.words[0] = new
                return f'Replace the word "{word.text}" with "{text}".', {"from": word.text, "to": text}
        raise RejectSample("edit_infeasible")

    # ---- think -----------------------------------------------------------------------------------

    def _think(self, rng: np.random.Generator, sid: str) -> Sample:
        kind = pick(rng, self.cfg.think_kinds)
        if kind == "edit_knowledge":
            return self._think_edit(rng, sid)
        scene = self._target_scene(rng)
        prompt, thought, reasoning = getattr(self, f"_think_{kind}")(rng, scene)
        thought = f"{thought} Plan: {describe_scene(scene)}"
        target = self._image("target", scene)
        meta = {
            "world": "shapes",
            "family": f"think/{kind}",
            "target_scene": scene.to_dict(),
            "reasoning": {"kind": kind, **reasoning},
        }
        return Sample(id=sid, task="think", prompt=prompt, thought=thought, target=target, meta=meta)

    def _think_arithmetic(self, rng: np.random.Generator, scene: Scene) -> tuple[str, str, dict[str, Any]]:
        n = int(rng.integers(1, self.cfg.max_objects + 1))
        options = [(f"{a} plus {n - a}", f"{a} + {n - a}") for a in range(1, n)]
        options += [(f"{n + b} minus {b}", f"{n + b} - {b}") for b in range(1, 4)]
        options += [(f"{a} times {n // a}", f"{a} * {n // a}") for a in range(2, n + 1) if n % a == 0]
        options += [(f"half of {2 * n}", f"{2 * n} / 2"), (f"one more than {n - 1}", f"{n - 1} + 1")]
        words, expression = pick(rng, options)
        shape, color = pick(rng, self.cfg.shapes), pick(rng, self.cfg.colors)
        self._draw_objects(rng, scene, [(shape, color)] * n)
        prompt = f"Draw as many {color} {plural(shape)} as {words}."
        thought = f"{cap(words)} is {n}, so the image needs {count_phrase(n, f'{color} {shape}')}."
        return prompt, thought, {"expression": expression, "answer": n, "shape": shape, "color": color}

    def _think_color_knowledge(
        self, rng: np.random.Generator, scene: Scene
    ) -> tuple[str, str, dict[str, Any]]:
        thing, shape = pick(rng, self.color_things), pick(rng, self.cfg.shapes)
        color = COLOR_KNOWLEDGE[thing]
        self._draw_objects(rng, scene, [(shape, color)])
        prompt = f"Draw {with_article(shape)} that has the color of {thing}."
        thought = f"{cap(thing)} is {color}, so the {shape} should be {color}."
        return prompt, thought, {"thing": thing, "answer": color, "shape": shape}

    def _think_shape_knowledge(
        self, rng: np.random.Generator, scene: Scene
    ) -> tuple[str, str, dict[str, Any]]:
        thing, color = pick(rng, self.shape_things), pick(rng, self.cfg.colors)
        shape = SHAPE_KNOWLEDGE[thing]
        self._draw_objects(rng, scene, [(shape, color)])
        prompt = f"Draw {with_article(color)} shape that looks like {thing}."
        thought = (
            f"{cap(thing)} looks like {with_article(shape)}, so I draw {with_article(f'{color} {shape}')}."
        )
        return prompt, thought, {"thing": thing, "answer": shape, "color": color}

    def _think_ordering(self, rng: np.random.Generator, scene: Scene) -> tuple[str, str, dict[str, Any]]:
        pairs = self._pairs(rng, 3)  # in order: left-to-right (or top-to-bottom)
        vertical = bool(rng.random() < 0.5)
        self._place_line(rng, scene, pairs, vertical)
        names = [f"{c} {s}" for s, c in pairs]
        before, after = ("above", "below") if vertical else ("left of", "right of")
        statements = []
        for first, second in ((names[0], names[1]), (names[1], names[2])):
            statements.append(
                f"the {first} is {RELATION_TEXT[before]} the {second}"
                if rng.random() < 0.5
                else f"the {second} is {RELATION_TEXT[after]} the {first}"
            )
        order = rng.permutation(2)
        listed = [with_article(names[int(i)]) for i in rng.permutation(3)]
        line = "column" if vertical else "row"
        prompt = (
            f"Draw {join_words(listed)} in a {line}: {statements[int(order[0])]}, "
            f"and {statements[int(order[1])]}."
        )
        direction = "From top to bottom" if vertical else "From left to right"
        thought = f"{direction} the order is: the {names[0]}, the {names[1]}, the {names[2]}."
        answer = [{"shape": s, "color": c} for s, c in pairs]
        return prompt, thought, {"axis": "vertical" if vertical else "horizontal", "answer": answer}

    def _place_line(
        self, rng: np.random.Generator, scene: Scene, pairs: list[tuple[str, str]], vertical: bool
    ) -> None:
        """Objects in a row (or column), in the given order, spread over the free length. Canonical layout: small
        objects, equal gaps, on the centre line."""
        sizes = [SIZE_NAMES[0] if self.canonical else pick(rng, SIZE_NAMES) for _ in pairs]
        m, g = margin_px(self.size), gap_px(self.size)
        step = g + 0.5  # half a pixel of spare per gap: centres are floored to the half-pixel grid below
        while sum(2 * self.radius[s] for s in sizes) + 2 * step > self.size - 2 * m - 1:
            largest = max(range(len(sizes)), key=lambda i: SIZE_NAMES.index(sizes[i]))
            if sizes[largest] == SIZE_NAMES[0]:
                raise RejectSample("layout_failed")
            sizes[largest] = SIZE_NAMES[SIZE_NAMES.index(sizes[largest]) - 1]
        radii = [self.radius[s] for s in sizes]
        slack = self.size - 2 * m - 1 - sum(2 * r for r in radii) - 2 * step
        if slack < 0:
            raise RejectSample("layout_failed")
        if self.canonical:
            extra = np.full(4, slack / 4)
        else:
            cuts = np.sort(rng.uniform(0, slack, size=3))  # split the slack into 4 random gaps
            extra = np.diff(np.concatenate([[0.0], cuts, [slack]]))
        pos = m + 0.5 + extra[0]
        r_max = max(radii)
        cross = self.size / 2 if self.canonical else rng.uniform(m + r_max, self.size - m - r_max)
        for k, ((shape, color), size, r) in enumerate(zip(pairs, sizes, radii)):
            along = pos + r
            jitter = 0.0 if self.canonical else rng.uniform(-0.5, 0.5) * (r_max - r)  # small objects need not sit exactly on the line
            along_px, cross_px = np.floor(along * 2) / 2, snap(cross + jitter)
            cx, cy = (cross_px, along_px) if vertical else (along_px, cross_px)
            obj = SceneObject(shape, color, size, float(cx), float(cy), r)
            if not box_fits(obj.box, scene_boxes(scene), self.size):
                raise RejectSample("layout_failed")
            scene.objects.append(obj)
            pos = along + r + step + extra[k + 1]

    def _think_edit(self, rng: np.random.Generator, sid: str) -> Sample:
        n, with_word = self._scene_n(rng)
        scene = self._random_scene(rng, n, with_word)
        target = scene.copy()
        obj = pick(rng, target.objects)
        options = [
            t
            for t in self.color_things
            if COLOR_KNOWLEDGE[t] != obj.color and not target.find(obj.shape, COLOR_KNOWLEDGE[t])
        ]
        if not options:
            raise RejectSample("edit_infeasible")
        thing = pick(rng, options)
        old, obj.color = obj.color, COLOR_KNOWLEDGE[thing]
        prompt = f"Paint the {old} {obj.shape} the color of {thing}."
        thought = (
            f"{cap(thing)} is {obj.color}. The {obj.shape} is {old} now, so it becomes {obj.color}, "
            f"and everything else stays the same. Plan: {describe_scene(target)}"
        )
        images = [self._image("image0", scene)]
        target_ref = self._image("target", target)
        meta = {
            "world": "shapes",
            "family": "think/edit_knowledge",
            "scenes": [scene.to_dict()],
            "target_scene": target.to_dict(),
            "reasoning": {
                "kind": "edit_knowledge",
                "thing": thing,
                "answer": obj.color,
                "object": target.objects.index(obj),
                "from": old,
            },
        }
        return Sample(
            id=sid, task="think", prompt=prompt, thought=thought, images=images, target=target_ref, meta=meta
        )
