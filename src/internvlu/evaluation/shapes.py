"""``internvlu eval shapes``: score a model on fresh shapes-world tasks, from pixels, with no network.

Prompts come from the shapes generator itself (:class:`internvlu.synthesis.ShapesGenerator`, the same
wording as the training data) under seeds of their own, so they are fresh samples, and every answer is
checked by the classical detector (:mod:`internvlu.synthesis.detect`: colour segmentation, shape
classification from the component masks, positions from centroids):

* ``geneval``: text-to-image in GenEval's six categories, each image checked with GenEval's rules
  (:func:`~internvlu.synthesis.detect.geneval_check`); ``overall`` is the mean of the six.
* ``vqa``: understanding accuracy: the first question of each fresh understanding sample, asked with
  the sample's own wording and images; the answer is compared after normalisation (case,
  punctuation, number words -> digits).
* ``edit``: the edited image's detected scene must equal the target scene: same background, every
  target object found with its shape and colour near its target centroid and at its target size (so
  the asked change happened), no extra object, same words (so the rest of the scene is preserved). "Add a red
  circle." names no place or size: the added object counts wherever it is, at any size, if it is the only new one.
* ``think``: think-mode prompts (arithmetic, colour / shape knowledge, ordering, knowledge-driven
  recolour edits); the image must show what the reasoning requires (the right count of the right
  object, the right colour / shape, the right left-to-right or top-to-bottom order, the right edit).
  ``think_off`` scores the same prompts drawn with think off, to show what reasoning adds.

Python API for training curves: ``evaluate_shapes(pipe, num=32, seed=0)`` -> the same dict
``--json`` prints. :class:`OraclePipeline` answers every task with the generator's own target, the
scorer's ground-truth check (it must score >= 0.99 on every key).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from internvlu.synthesis.detect import DetectedScene, detect_scene, geneval_check
from internvlu.synthesis.runner import RejectSample
from internvlu.synthesis.shapes import ShapesConfig, ShapesGenerator
from internvlu.synthesis.shapes_scene import Scene
from internvlu.synthesis.shapes_text import GENEVAL_CATEGORIES, NUMBER_WORDS

# Second element of every eval seed sequence's spawn key: synthesis shards use one-element keys
# (SeedSequence(seed, spawn_key=(shard,))), so no evaluation stream can coincide with training data.
EVAL_STREAM = 0x5EA1
TASK_STREAMS = {"understanding": 100, "edit": 200, "think": 300}  # t2i categories use 0..5
MAX_TRIES_PER_SAMPLE = 50
POSITION_TOL_FRAC = 0.08  # centroid tolerance (fraction of the side) for edit / think checks
AREA_RATIO = (0.75, 1.33)  # detected / target area; one size step is >= 1.44x, so resizes are caught


@dataclasses.dataclass
class ShapesTask:
    """One evaluation prompt with everything needed to score the answer."""

    kind: str  # "t2i" | "vqa" | "edit" | "think"
    family: str  # generator family: "t2i/position", "understanding/count_all", "edit/recolor", ...
    prompt: str
    images: list[Image.Image]
    answer: str | None = None  # vqa
    target: Image.Image | None = None  # t2i / edit / think
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ShapesTasks:
    config: ShapesConfig
    t2i: dict[str, list[ShapesTask]]
    vqa: list[ShapesTask]
    edit: list[ShapesTask]
    think: list[ShapesTask]

    def all(self) -> list[ShapesTask]:
        return [t for tasks in self.t2i.values() for t in tasks] + self.vqa + self.edit + self.think


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, EVAL_STREAM)))


def _draw(generator: ShapesGenerator, rng: np.random.Generator, num: int, tag: str) -> list[Any]:
    samples: list[Any] = []
    tries = 0
    while len(samples) < num:
        tries += 1
        if tries > MAX_TRIES_PER_SAMPLE * max(num, 1):
            raise RuntimeError(f"the shapes generator rejected too many {tag} samples; check the config")
        try:
            samples.append(generator.sample(rng, f"eval-{tag}-{len(samples)}"))
        except RejectSample:
            continue
    return samples


def build_shapes_tasks(num: int, seed: int, config: ShapesConfig | None = None) -> ShapesTasks:
    """`num` fresh tasks per GenEval category and per task kind, deterministic for (num, seed, config)."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive int, got {num!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    config = config or ShapesConfig()

    def generator(**changes: Any) -> ShapesGenerator:
        return ShapesGenerator(dataclasses.replace(config, task_weights=(), **changes))

    def image_tasks(kind: str) -> list[ShapesTask]:
        """Edit or think tasks: input images in, a target image out."""
        return [
            ShapesTask(
                kind,
                s.meta["family"],
                s.prompt,
                [r.load() for r in s.images],
                target=s.target.load(),
                meta=s.meta,
            )
            for s in _draw(generator(tasks=(kind,)), _rng(seed, TASK_STREAMS[kind]), num, kind)
        ]

    t2i: dict[str, list[ShapesTask]] = {}
    for k, category in enumerate(GENEVAL_CATEGORIES):
        gen = generator(tasks=("t2i",), t2i_categories=(category,))
        t2i[category] = [
            ShapesTask("t2i", s.meta["family"], s.prompt, [], target=s.target.load(), meta=s.meta)
            for s in _draw(gen, _rng(seed, k), num, category)
        ]
    vqa = []
    for s in _draw(
        generator(tasks=("understanding",)), _rng(seed, TASK_STREAMS["understanding"]), num, "vqa"
    ):
        # The first turn, worded exactly as in training: "<image>\nQ" (or "Image 1: <image>\n...").
        question, answer = s.messages[0].content, s.messages[1].content
        vqa.append(
            ShapesTask(
                "vqa",
                f"understanding/{s.meta['qa'][0]['family']}",
                question,
                [r.load() for r in s.images],
                answer=answer,
                meta=s.meta,
            )
        )
    return ShapesTasks(config, t2i, vqa, image_tasks("edit"), image_tasks("think"))


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> list[str]:
    """Lower-case words without punctuation; number words become digits ("Three." -> ["3"])."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return [str(NUMBER_WORDS.index(w)) if w in NUMBER_WORDS else w for w in words]


def vqa_correct(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


def scene_matches(
    detected: DetectedScene,
    target: Scene | dict[str, Any],
    *,
    check_background: bool = True,
    free: int | None = None,
) -> bool:
    """Detected scene equals the target up to model-level tolerances (see the module docstring).

    free: index of a target object whose place and size the request left open ("Add a red circle."): it only has
    to be there once, with its shape and colour, anywhere; every other object keeps its place and size.
    """
    truth = target if isinstance(target, Scene) else Scene.from_dict(target)
    if check_background and detected.background != truth.background:
        return False
    tol = max(2.0, POSITION_TOL_FRAC * truth.size)
    unmatched = list(detected.objects)
    for i, obj in enumerate(truth.objects):
        if i == free:
            continue
        candidates = [
            d
            for d in unmatched
            if d.shape == obj.shape
            and d.color == obj.color
            and math.dist(d.centroid, obj.centroid) <= tol
            and AREA_RATIO[0] <= d.area / max(obj.area, 1) <= AREA_RATIO[1]
        ]
        if not candidates:
            return False
        unmatched.remove(min(candidates, key=lambda d: math.dist(d.centroid, obj.centroid)))
    if free is not None:
        placed = truth.objects[free]
        if [(d.shape, d.color) for d in unmatched] != [(placed.shape, placed.color)]:
            return False
    elif unmatched:
        return False
    return sorted(str(w.text) for w in detected.words) == sorted(w.text for w in truth.words)


def think_correct(detected: DetectedScene, task: ShapesTask) -> bool:
    """Whether the image shows what the reasoning requires (kind-specific; see the module docstring)."""
    reasoning = task.meta["reasoning"]
    kind = reasoning["kind"]
    objects = detected.objects
    if kind == "arithmetic":
        return (
            len(objects) == reasoning["answer"]
            and detected.count(reasoning["shape"], reasoning["color"]) == reasoning["answer"]
        )
    if kind == "color_knowledge":
        return len(objects) == 1 and (objects[0].shape, objects[0].color) == (
            reasoning["shape"],
            reasoning["answer"],
        )
    if kind == "shape_knowledge":
        return len(objects) == 1 and (objects[0].shape, objects[0].color) == (
            reasoning["answer"],
            reasoning["color"],
        )
    if kind == "ordering":
        axis = 1 if reasoning["axis"] == "vertical" else 0
        ordered = sorted(objects, key=lambda o: o.centroid[axis])
        return [(o.shape, o.color) for o in ordered] == [
            (a["shape"], a["color"]) for a in reasoning["answer"]
        ]
    if kind == "edit_knowledge":
        return scene_matches(detected, task.meta["target_scene"])
    raise ValueError(f"unknown think kind {kind!r}")


def check_task(task: ShapesTask, output: Image.Image | str, config: ShapesConfig) -> bool:
    """Score one model output (an image, or the answer text for vqa)."""
    if task.kind == "vqa":
        assert isinstance(output, str) and task.answer is not None
        return vqa_correct(output, task.answer)
    assert isinstance(output, Image.Image)
    if output.size != (config.image_size, config.image_size):
        output = output.resize((config.image_size, config.image_size), Image.Resampling.BILINEAR)
    detected = detect_scene(output, vocabulary=config.words)
    if task.kind == "t2i":
        return geneval_check(detected, task.meta["geneval"])[0]
    if task.kind == "edit":
        edit = task.meta["edit"]
        return scene_matches(
            detected, task.meta["target_scene"], free=edit["object"] if edit["op"] == "add" else None
        )
    return think_correct(detected, task)


# --------------------------------------------------------------------------------------------------
# Running a pipeline
# --------------------------------------------------------------------------------------------------


def _batches(tasks: Sequence[ShapesTask], size: int) -> list[Sequence[ShapesTask]]:
    return [tasks[i : i + size] for i in range(0, len(tasks), size)]


def _draw_images(
    pipe: Any,
    tasks: Sequence[ShapesTask],
    *,
    think: bool,
    seed: int,
    batch_size: int,
    draw_kw: dict[str, Any],
) -> list[Image.Image]:
    """Images for t2i / edit / think tasks, batched; tasks with input images go through ``edit``."""
    outputs: dict[int, Image.Image] = {}
    plain = [(i, t) for i, t in enumerate(tasks) if not t.images]
    edits = [(i, t) for i, t in enumerate(tasks) if t.images]
    for group, method in ((plain, "generate"), (edits, "edit")):
        for b, batch in enumerate(_batches(group, batch_size)):
            prompts = [t.prompt for _, t in batch]
            kw = dict(draw_kw, think=think, seed=seed + b)
            if method == "edit":
                result = pipe.edit(prompts, images=[list(t.images) for _, t in batch], **kw)
            else:
                result = pipe.generate(prompts, **kw)
            for (i, _), image in zip(batch, result.images):
                outputs[i] = image
    return [outputs[i] for i in range(len(tasks))]


def evaluate_shapes(
    pipe: Any,
    num: int = 32,
    seed: int = 0,
    *,
    config: ShapesConfig | None = None,
    batch_size: int = 16,
    num_inference_steps: int = 20,
    all_cfg_scale: float | None = None,
    part_cfg_scale: float | None = None,
    max_thought_tokens: int = 200,
    max_new_tokens: int = 64,
    think_off: bool = True,
    report_dir: str | Path | None = None,
    report_examples: int = 4,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score `pipe` on `num` fresh shapes-world tasks per GenEval category and per task kind.

    Args:
        pipe: an ``InternVLUPipeline`` or anything with its typed ``chat`` / ``generate`` / ``edit``.
        num: tasks per GenEval category (6 x num images) and per kind (vqa, edit, think).
        seed: picks the fresh tasks (separate streams from synthesis) and the sampling noise.
        config: the shapes world the model was trained on (default ``ShapesConfig()``, 64 px).
        think_off: also draw the think prompts with think off (``think_off`` key).
        report_dir: when given, write ``shapes_samples.png`` and ``shapes_report.html`` there.

    Returns:
        ``{"geneval": {six categories..., "overall"}, "vqa", "edit", "think", "think_off",
        "vqa_by_family", "edit_by_op", "think_by_kind", "num", "seed", "image_size"}``
        (``think_off`` is None when `think_off` is False).
    """
    tasks = build_shapes_tasks(num, seed, config)
    cfg = tasks.config
    size = cfg.image_size
    draw_kw = {
        "height": size, "width": size, "num_inference_steps": num_inference_steps, "all_cfg_scale": all_cfg_scale,
        "part_cfg_scale": part_cfg_scale, "max_thought_tokens": max_thought_tokens, "progress": False,
    }  # fmt: skip
    say = progress or (lambda _msg: None)
    examples: list[dict[str, Any]] = []

    def scored(task_list: Sequence[ShapesTask], outputs: Sequence[Any], label: str) -> list[bool]:
        oks = [check_task(t, o, cfg) for t, o in zip(task_list, outputs)]
        for t, o, ok in list(zip(task_list, outputs, oks))[:report_examples]:
            examples.append({"label": label, "task": t, "output": o, "ok": ok})
        return oks

    say("text-to-image (GenEval categories)")
    geneval: dict[str, float] = {}
    for k, (category, cat_tasks) in enumerate(tasks.t2i.items()):
        images = _draw_images(
            pipe, cat_tasks, think=False, seed=seed + 1000 * k, batch_size=batch_size, draw_kw=draw_kw
        )
        oks = scored(cat_tasks, images, f"t2i/{category}")
        geneval[category] = sum(oks) / len(oks)
    geneval["overall"] = sum(geneval[c] for c in GENEVAL_CATEGORIES) / len(GENEVAL_CATEGORIES)

    say("understanding")
    answers: list[str] = []
    for batch in _batches(tasks.vqa, batch_size):
        answers += pipe.chat(
            [t.prompt for t in batch], images=[list(t.images) for t in batch], max_new_tokens=max_new_tokens
        ).texts
    vqa_oks = scored(tasks.vqa, answers, "vqa")

    say("editing")
    edit_oks = scored(
        tasks.edit,
        _draw_images(pipe, tasks.edit, think=False, seed=seed + 7000, batch_size=batch_size, draw_kw=draw_kw),
        "edit",
    )

    say("think mode")
    think_oks = scored(
        tasks.think,
        _draw_images(pipe, tasks.think, think=True, seed=seed + 8000, batch_size=batch_size, draw_kw=draw_kw),
        "think",
    )
    off_oks = None
    if think_off:
        say("think prompts with think off")
        off_oks = scored(
            tasks.think,
            _draw_images(
                pipe, tasks.think, think=False, seed=seed + 8000, batch_size=batch_size, draw_kw=draw_kw
            ),
            "think_off",
        )

    def by(task_list: Sequence[ShapesTask], oks: Sequence[bool]) -> dict[str, float]:
        groups: dict[str, list[bool]] = {}
        for t, ok in zip(task_list, oks):
            groups.setdefault(t.family.split("/", 1)[1], []).append(ok)
        return {k: sum(v) / len(v) for k, v in sorted(groups.items())}

    results: dict[str, Any] = {
        "geneval": geneval,
        "vqa": sum(vqa_oks) / len(vqa_oks),
        "edit": sum(edit_oks) / len(edit_oks),
        "think": sum(think_oks) / len(think_oks),
        "think_off": None if off_oks is None else sum(off_oks) / len(off_oks),
        "vqa_by_family": by(tasks.vqa, vqa_oks),
        "edit_by_op": by(tasks.edit, edit_oks),
        "think_by_kind": by(tasks.think, think_oks),
        "num": num,
        "seed": seed,
        "image_size": size,
        "settings": {
            "num_inference_steps": num_inference_steps,
            "all_cfg_scale": all_cfg_scale,
            "part_cfg_scale": part_cfg_scale,
            "max_thought_tokens": max_thought_tokens,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "shapes_config": cfg.to_dict(),
            **_preserve_record(pipe),
        },
    }
    if report_dir is not None:
        from internvlu.evaluation.report import write_shapes_report

        results["report"] = write_shapes_report(Path(report_dir), results, examples)
    return results


def _preserve_record(pipe: Any) -> dict[str, Any]:
    """The edits' `preserve_unedited` default and its mask settings (the evaluation passes neither), for
    pipelines that have them."""
    if not hasattr(pipe, "default_preserve_unedited"):
        return {}
    on = pipe.default_preserve_unedited()
    return {"preserve_unedited": on, **({"preserve_settings": dataclasses.asdict(pipe.preserve_settings())} if on else {})}


# --------------------------------------------------------------------------------------------------
# Oracle: the generator's own answers through the pipeline interface (the scorer's ground truth)
# --------------------------------------------------------------------------------------------------


def _image_digest(image: Any) -> str:
    image = image if isinstance(image, Image.Image) else Image.open(image)
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()[:16]


class OraclePipeline:
    """Answers like a perfect model: the target image / correct answer of each task it was built from.

    It has the typed methods of ``InternVLUPipeline`` (``chat``, ``generate``, ``edit``) and returns the
    same result types, so ``evaluate_shapes(OraclePipeline(tasks), ...)`` runs the real scoring path.
    """

    def __init__(self, tasks: ShapesTasks) -> None:
        self._targets: dict[tuple[str, tuple[str, ...]], Image.Image] = {}
        self._answers: dict[tuple[str, tuple[str, ...]], str] = {}
        for task in tasks.all():
            key = (task.prompt, tuple(_image_digest(im) for im in task.images))
            if task.kind == "vqa":
                assert task.answer is not None
                self._answers.setdefault(key, task.answer)
            else:
                assert task.target is not None
                self._targets.setdefault(key, task.target)

    @staticmethod
    def _as_lists(prompt: str | list[str], images: Any) -> tuple[list[str], list[list[Any]]]:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if images is None:
            per = [[] for _ in prompts]
        elif isinstance(prompt, str):
            per = [list(images) if isinstance(images, (list, tuple)) else [images]]
        else:
            per = [[] if im is None else list(im) if isinstance(im, (list, tuple)) else [im] for im in images]
        return prompts, per

    def chat(self, prompt: str | list[str], images: Any = None, **kwargs: Any) -> Any:
        from internvlu.pipeline.outputs import ChatResult

        prompts, per = self._as_lists(prompt, images)
        texts = [self._answers[(p, tuple(_image_digest(im) for im in ims))] for p, ims in zip(prompts, per)]
        return ChatResult(texts=texts, token_ids=[[] for _ in texts])

    def generate(
        self, prompt: str | list[str], *, think: bool = False, images: Any = None, **kwargs: Any
    ) -> Any:
        from internvlu.pipeline.outputs import ImageResult

        prompts, per = self._as_lists(prompt, images)
        outs = [
            self._targets[(p, tuple(_image_digest(im) for im in ims))].copy() for p, ims in zip(prompts, per)
        ]
        thoughts = ["(oracle)"] * len(outs) if think else None
        return ImageResult(
            images=outs,
            thoughts=thoughts,
            size=(outs[0].height, outs[0].width),
            settings={"oracle": True, "think": think},
        )

    def edit(self, prompt: str | list[str], images: Any, **kwargs: Any) -> Any:
        return self.generate(prompt, images=images, **kwargs)
