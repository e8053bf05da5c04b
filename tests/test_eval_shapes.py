"""`internvlu eval shapes`: ground truth scores >= 0.99 on every key, wrong answers score ~0, CLI + report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from internvlu.defaults import default_model_path
from internvlu.embedded.card import card_world
from internvlu.evaluation.cli import add_eval_parser
from internvlu.evaluation.shapes import (
    OraclePipeline,
    build_shapes_tasks,
    check_task,
    evaluate_shapes,
    normalize_answer,
    scene_matches,
)
from internvlu.pipeline.outputs import ChatResult, ImageResult
from internvlu.synthesis.detect import detect_scene
from internvlu.synthesis.shapes import ShapesConfig
from internvlu.synthesis.shapes_scene import Scene, box_fits, scene_boxes
from internvlu.synthesis.shapes_text import GENEVAL_CATEGORIES

KEYS = ("geneval", "vqa", "edit", "think", "think_off")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_ground_truth_scores_at_least_099(tmp_path: Path) -> None:
    num, seed = 25, 11
    tasks = build_shapes_tasks(num, seed)
    assert all(len(tasks.t2i[c]) == num for c in GENEVAL_CATEGORIES)
    assert len(tasks.vqa) == len(tasks.edit) == len(tasks.think) == num
    # Fresh and deterministic: same (num, seed) -> same prompts; another seed -> other prompts.
    assert [t.prompt for t in build_shapes_tasks(num, seed).all()] == [t.prompt for t in tasks.all()]
    assert [t.prompt for t in build_shapes_tasks(num, seed + 1).all()] != [t.prompt for t in tasks.all()]
    results = evaluate_shapes(OraclePipeline(tasks), num, seed, report_dir=tmp_path, batch_size=8)
    for category in (*GENEVAL_CATEGORIES, "overall"):
        assert results["geneval"][category] >= 0.99, (category, results["geneval"])
    for key in ("vqa", "edit", "think", "think_off"):
        assert results[key] >= 0.99, (key, results)
    assert (
        len(results["edit_by_op"]) >= 5
        and len(results["think_by_kind"]) >= 4
        and len(results["vqa_by_family"]) >= 6
    )
    grid = Image.open(results["report"]["grid"])
    assert grid.width > 256 and grid.height > 256
    html = Path(results["report"]["html"]).read_text()
    assert "Shapes-world evaluation" in html and html.count("<img") >= 20 and "pass" in html


class WrongPipe:
    """Blank images, unchanged edits and useless answers: every key must score ~0."""

    def generate(self, prompt, *, images=None, height=64, width=64, think=False, **kw):
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if images is not None:  # an "edit" that changes nothing
            return ImageResult(images=[ims[0].copy() for ims in images], size=(height, width))
        return ImageResult(
            images=[Image.new("RGB", (width, height), (255, 255, 255)) for _ in prompts], size=(height, width)
        )

    def edit(self, prompt, images, **kw):
        return self.generate(prompt, images=images, **kw)

    def chat(self, prompt, images=None, **kw):
        return ChatResult(texts=["I am not sure."] * len(prompt), token_ids=[[] for _ in prompt])


def test_wrong_answers_score_near_zero() -> None:
    results = evaluate_shapes(WrongPipe(), 6, 3, think_off=False)
    assert results["geneval"]["overall"] == 0.0
    assert results["vqa"] == 0.0 and results["edit"] == 0.0 and results["think"] <= 1 / 6
    assert results["think_off"] is None


def test_checks_are_specific() -> None:
    tasks = build_shapes_tasks(4, 5)
    edit = tasks.edit[0]
    detected = detect_scene(edit.target)
    assert scene_matches(detected, edit.meta["target_scene"])
    assert not scene_matches(
        detect_scene(edit.images[0]), edit.meta["target_scene"]
    )  # the asked change is missing
    assert normalize_answer("Three.") == ["3"] and normalize_answer("the  Second") == ["the", "second"]
    with pytest.raises(ValueError, match="num"):
        build_shapes_tasks(0, 0)
    with pytest.raises(ValueError, match="seed"):
        build_shapes_tasks(1, -1)


def test_cli_oracle_json_and_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(
        ["eval", "shapes", "--oracle", "--num", "3", "--seed", "2", "--json", "--out", str(tmp_path / "o")],
        capsys,
    )
    data = json.loads(out)
    assert set(KEYS) <= set(data) and data["geneval"]["overall"] >= 0.99 and data["model"] == "oracle"
    # The default model (the embedded one) runs every path; 1 step and 2 tokens: scores in [0, 1].
    argv = ["eval", "shapes", "--num", "1", "--steps", "1", "--max-thought-tokens", "2",
            "--max-new-tokens", "2",
            "--json", "--out", str(tmp_path / "m"), "--device", "cpu"]  # fmt: skip
    data = json.loads(_run(argv, capsys))
    # Tasks come from the world in the model's card (word_prob, layout), not the generator's defaults.
    card = json.loads((default_model_path() / "card.json").read_text())["data"]["world"]
    assert data["world"] == {k: card[k] for k in ("image_size", "word_prob", "t2i_layout")}
    assert data["world"] != json.loads(out)["world"]  # the oracle without --model: the default world
    assert all(0.0 <= data["geneval"][c] <= 1.0 for c in (*GENEVAL_CATEGORIES, "overall"))
    assert all(0.0 <= data[k] <= 1.0 for k in ("vqa", "edit", "think", "think_off"))
    assert (tmp_path / "m" / "shapes_report.html").is_file() and (
        tmp_path / "m" / "shapes_samples.png"
    ).is_file()
    table = _run(["eval", "shapes", "--oracle", "--num", "1", "--out", str(tmp_path / "t")], capsys)
    assert "| GenEval |" in table and "shapes_report.html" in table


def test_api_accepts_a_config() -> None:
    config = ShapesConfig(
        image_size=96, colors=("red", "blue", "green"), shapes=("circle", "square", "triangle")
    )
    tasks = build_shapes_tasks(2, 0, config)
    assert tasks.t2i["colors"][0].target.size == (96, 96)
    results = evaluate_shapes(OraclePipeline(tasks), 2, 0, config=config)
    assert results["image_size"] == 96 and results["geneval"]["overall"] == 1.0


def test_card_world_reads_the_training_world_and_names_a_bad_card(tmp_path: Path) -> None:
    assert card_world(tmp_path) is None  # no card: the caller falls back to the default world
    (tmp_path / "card.json").write_text(json.dumps({"data": {"world": {"image_size": 96, "word_prob": 0.2}}}))
    world = card_world(tmp_path)
    assert world is not None and (world.image_size, world.word_prob) == (96, 0.2)
    # a card from before the edit-scene fields: its edits were drawn from the whole world
    assert (world.edit_max_objects, len(world.edit_backgrounds)) == (4, 4)
    edit_world = {"image_size": 64, "edit_max_objects": 2, "edit_backgrounds": ["white"]}
    (tmp_path / "card.json").write_text(json.dumps({"data": {"world": edit_world}}))
    world = card_world(tmp_path)
    assert world is not None and (world.edit_max_objects, world.edit_backgrounds) == (2, ("white",))
    assert world.edit_layout == "random"  # a card from before session 9: edit objects anywhere
    (tmp_path / "card.json").write_text(json.dumps({"data": {"world": {**edit_world, "edit_layout": "grid"}}}))
    world = card_world(tmp_path)
    assert world is not None and world.edit_layout == "grid"
    (tmp_path / "card.json").write_text(json.dumps({"data": {"world": {"image_size": 8}}}))
    with pytest.raises(ValueError, match=r"card\.json.*image_size"):
        card_world(tmp_path)


def _free_spot(task: Any) -> Any:
    """The added object of an "add" task moved (and shrunk) to another free place, or None if there is none."""
    target = Scene.from_dict(task.meta["target_scene"])
    new = target.objects[task.meta["edit"]["object"]]
    others = scene_boxes(target, skip=new)
    for cx in range(8, 57, 2):
        for cy in range(8, 57, 2):
            cand = dataclasses.replace(new, cx=float(cx), cy=float(cy), r=new.r * 0.8)
            if math.dist((cx, cy), (new.cx, new.cy)) > 12 and box_fits(cand.box, others, 64):
                return cand
    return None


def test_an_added_object_counts_anywhere_but_the_rest_must_stay() -> None:
    """ "Add a red circle." names no place or size: any one new object of that shape and colour is the asked change."""
    from internvlu.synthesis.shapes_scene import render_scene

    tasks = build_shapes_tasks(40, 1)
    add, cand = next((t, c) for t in tasks.edit if t.meta["edit"]["op"] == "add" and (c := _free_spot(t)))
    config = ShapesConfig()
    index = add.meta["edit"]["object"]
    assert check_task(add, add.target, config)
    # The same object in another free place (and at another size) still satisfies the request ...
    moved = Scene.from_dict(add.meta["target_scene"])
    moved.objects[index] = cand
    image = render_scene(moved)
    assert check_task(add, image, config)
    assert not scene_matches(
        detect_scene(image), add.meta["target_scene"]
    )  # ... which strict placement fails
    # Nothing added, or the wrong colour added, fails.
    assert not check_task(add, add.images[0], config)
    wrong = moved.copy()
    color = next(c for c in config.colors if c != cand.color and not wrong.find(cand.shape, c))
    wrong.objects[index] = dataclasses.replace(cand, color=color)
    assert not check_task(add, render_scene(wrong), config)
