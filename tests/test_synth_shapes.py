"""Synthesis: the runner (determinism, resume, manifest, dedup), the CLI wiring, the shapes world and
its independent detector."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from internvlu.data import ImageRef, Sample, SampleReader
from internvlu.synthesis import (
    FilterConfig,
    Generator,
    RejectSample,
    SampleFilter,
    ShapesConfig,
    ShapesGenerator,
    phash,
    register_generator,
    run_synthesis,
)
from internvlu.synthesis.cli import add_synth_parser
from internvlu.synthesis.detect import compare_scene, detect_scene, geneval_check
from internvlu.synthesis.shapes import ADD_CELL_ORDER
from internvlu.synthesis.shapes_scene import BACKGROUNDS, COLORS, Scene, region_centre, region_of, relation
from internvlu.synthesis.shapes_text import (
    COLOR_KNOWLEDGE,
    EDIT_OPS,
    SHAPE_KNOWLEDGE,
    T2I_CATEGORIES,
    THINK_KINDS,
    UNDERSTANDING_FAMILIES,
)
from internvlu.utils.config import ConfigBase

# --------------------------------------------------------------------------------------------------
# A pool of shapes-world samples, generated once (64 px, every family enabled, words often).
# --------------------------------------------------------------------------------------------------


def _accepted(generator: ShapesGenerator, seed: int, n: int, prefix: str = "s") -> list[Sample]:
    """The first `n` samples the generator accepts from `seed` (rejected candidates skipped)."""
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    while len(samples) < n:
        try:
            samples.append(generator.sample(rng, f"{prefix}{len(samples)}"))
        except RejectSample:
            continue
    return samples


@pytest.fixture(scope="module")
def pool() -> list[Sample]:
    generator = ShapesGenerator(ShapesConfig(image_size=64, t2i_categories=T2I_CATEGORIES, word_prob=0.4))
    return _accepted(generator, 1234, 420)


def _scenes_with_images(samples: list[Sample]) -> list[tuple[Image.Image, dict]]:
    pairs = []
    for sample in samples:
        pairs += [(ref.load(), scene) for ref, scene in zip(sample.images, sample.meta.get("scenes", []))]
        if sample.target is not None:
            pairs.append((sample.target.load(), sample.meta["target_scene"]))
    return pairs


def test_every_family_appears_with_scene_graphs(pool: list[Sample]) -> None:
    families = Counter(s.meta["family"] for s in pool)
    qa_families = {qa["family"] for s in pool if s.task == "understanding" for qa in s.meta["qa"]}
    assert qa_families == set(UNDERSTANDING_FAMILIES)
    assert {f"t2i/{c}" for c in T2I_CATEGORIES} <= set(families)
    assert {f"edit/{op}" for op in EDIT_OPS} <= set(families)
    assert {f"think/{k}" for k in THINK_KINDS} <= set(families)
    assert any(len(s.messages) >= 4 for s in pool) and any(
        len(s.images) == 2 for s in pool
    )  # multi-turn, multi-image
    for sample in pool:
        sample.validate()
        assert len(sample.meta.get("scenes", [])) == len(sample.images)
        assert (sample.target is None) == ("target_scene" not in sample.meta)
        for image, scene in _scenes_with_images([sample]):
            assert image.size == (64, 64) and scene["size"] == 64
            assert all(o["area"] > 0 and o["color"] in COLORS for o in scene["objects"])


def test_detector_agrees_with_scene_graphs(pool: list[Sample]) -> None:
    pairs = _scenes_with_images(pool)[:300]
    assert len(pairs) == 300
    failures = []
    for image, scene in pairs:
        result = compare_scene(detect_scene(image), scene)
        if not result.ok:
            failures.append(result.problems)
    assert len(failures) <= 3, failures[:3]  # >= 99% agreement


def test_detector_reports_differences() -> None:
    generator = ShapesGenerator(ShapesConfig(tasks=("t2i",), t2i_categories=("color_attr",)))
    sample = generator.sample(np.random.default_rng(0), "x")
    scene = Scene.from_dict(sample.meta["target_scene"])
    detected = detect_scene(sample.target.load())
    assert compare_scene(detected, scene).ok
    scene.objects[0].color = next(c for c in COLORS if c != scene.objects[0].color)
    scene.background = next(b for b in BACKGROUNDS if b != scene.background)
    problems = compare_scene(detected, scene).problems
    assert any("background" in p for p in problems) and any(p.startswith("missing") for p in problems)
    assert any(p.startswith("extra") for p in problems)


def test_t2i_ground_truth_passes_geneval_rules(pool: list[Sample]) -> None:
    t2i = [s for s in pool if s.task == "t2i"]
    results = [geneval_check(detect_scene(s.target.load()), s.meta["geneval"]) for s in t2i]
    assert all(ok for ok, _ in results), [r for r in results if not r[0]]
    position = next(s for s in t2i if s.meta["geneval"]["tag"] == "position")
    spec = json.loads(json.dumps(position.meta["geneval"]))
    rel = spec["include"][1]["position"][0]
    spec["include"][1]["position"][0] = {
        "left of": "right of",
        "right of": "left of",
        "above": "below",
        "below": "above",
    }[rel]
    assert not geneval_check(detect_scene(position.target.load()), spec)[0]


def _box_mask(bbox: list[int], size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    x0, y0, x1, y1 = bbox
    mask[y0:y1, x0:x1] = True
    return mask


def test_edit_targets_change_only_what_the_edit_says(pool: list[Sample]) -> None:
    edits = [s for s in pool if s.task == "edit"]
    for sample in edits:
        before, after = np.asarray(sample.images[0].load()), np.asarray(sample.target.load())
        changed = (before != after).any(-1)  # (H, W)
        assert changed.any(), sample.prompt
        src, dst = sample.meta["scenes"][0], sample.meta["target_scene"]
        edit = sample.meta["edit"]
        op = edit["op"]
        if op == "replace_word":
            allowed = _box_mask(src["words"][0]["bbox"]) | _box_mask(dst["words"][0]["bbox"])
            assert src["objects"] == dst["objects"]
        else:
            i = edit["object"]
            old = src["objects"][i] if op != "add" else None
            new = dst["objects"][i] if op != "remove" else None
            allowed = np.zeros_like(changed)
            for obj in (old, new):
                if obj is not None:
                    allowed |= _box_mask(obj["bbox"])
            # every other object is untouched, in the graph and hence in the pixels
            rest_src = [o for k, o in enumerate(src["objects"]) if k != i or op == "add"]
            rest_dst = [o for k, o in enumerate(dst["objects"]) if k != i or op == "remove"]
            assert rest_src == rest_dst, sample.prompt
            if op == "recolor":
                assert changed.sum() == old["area"] and (old["shape"], old["bbox"]) == (
                    new["shape"],
                    new["bbox"],
                )
                assert new["color"] == edit["to"] and edit["to"] in sample.prompt
            if op == "remove":
                assert changed.sum() == old["area"]
            if op == "add":
                assert changed.sum() == new["area"] and len(dst["objects"]) == len(src["objects"]) + 1
        assert not (changed & ~allowed).any(), f"{sample.prompt}: pixels changed outside the edited item"


def _eval_expression(expression: str) -> float:
    match = re.fullmatch(r"(\d+) ([-+*/]) (\d+)", expression)
    assert match, expression
    a, op, b = int(match[1]), match[2], int(match[3])
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]


def test_think_answers_match_their_scene_graphs(pool: list[Sample]) -> None:
    think = [s for s in pool if s.task == "think"]
    assert think
    for sample in think:
        reasoning, objects = sample.meta["reasoning"], sample.meta["target_scene"]["objects"]
        kind = reasoning["kind"]
        if kind == "arithmetic":
            n = reasoning["answer"]
            assert _eval_expression(reasoning["expression"]) == n == len(objects)
            assert all((o["shape"], o["color"]) == (reasoning["shape"], reasoning["color"]) for o in objects)
            assert f" is {n}" in sample.thought
        elif kind == "color_knowledge":
            assert COLOR_KNOWLEDGE[reasoning["thing"]] == reasoning["answer"] == objects[0]["color"]
        elif kind == "shape_knowledge":
            assert SHAPE_KNOWLEDGE[reasoning["thing"]] == reasoning["answer"] == objects[0]["shape"]
        elif kind == "ordering":
            axis = "cx" if reasoning["axis"] == "horizontal" else "cy"
            ordered = sorted(objects, key=lambda o: o[axis])
            assert [{"shape": o["shape"], "color": o["color"]} for o in ordered] == reasoning["answer"]
        else:
            assert kind == "edit_knowledge"
            i = reasoning["object"]
            assert COLOR_KNOWLEDGE[reasoning["thing"]] == reasoning["answer"] == objects[i]["color"]
            assert sample.meta["scenes"][0]["objects"][i]["color"] == reasoning["from"] != reasoning["answer"]
        assert "Plan:" in sample.thought and "<think>" not in sample.thought


def test_understanding_answers_match_their_scene_graphs(pool: list[Sample]) -> None:
    checked = Counter()
    for sample in (s for s in pool if s.task == "understanding"):
        scenes = sample.meta["scenes"]
        answers = [m.content for m in sample.messages if m.role == "assistant"]
        for qa, answer in zip(sample.meta["qa"], answers):
            assert qa["answer"] == answer
            family, objects = qa["family"], scenes[qa.get("image", 0)]["objects"]
            if family == "count_all" and len(scenes) == 1:
                assert answer == str(len(objects))
            elif family == "count_shape":
                assert answer == str(sum(o["shape"] == qa["shape"] for o in objects))
            elif family == "count_color":
                assert answer == str(sum(o["color"] == qa["color"] for o in objects))
            elif family == "color_of":
                assert answer == objects[qa["object"]]["color"]
            elif family == "shape_of":
                assert answer == objects[qa["object"]]["shape"]
            elif family == "position":
                scene = Scene.from_dict(scenes[0])
                a, b = (scene.objects[k] for k in qa["objects"])
                holds = relation(a, b, 0.15 * scene.size)[qa["relation"]]
                assert answer == ("yes" if holds else "no")
            elif family == "background":
                assert answer == scenes[0]["background"]
            elif family == "compare":
                n1, n2 = (len(s["objects"]) for s in scenes)
                assert qa["counts"] == [n1, n2] and answer == ("the first" if n1 > n2 else "the second")
            checked[family] += 1
    assert len(checked) >= 8


def test_canonical_layout_fixes_every_open_choice() -> None:
    """t2i_layout="canonical": one image per t2i prompt (fixed background, large objects on fixed slots,
    default colours for unnamed ones), every target still passes its GenEval rules and the think answers hold."""
    from internvlu.synthesis.shapes import CANONICAL_SLOTS, DEFAULT_SHAPE_COLORS

    generator = ShapesGenerator(ShapesConfig(t2i_layout="canonical", tasks=("t2i", "think")))
    images: dict[str, bytes] = {}
    samples = _accepted(generator, 5, 300, "c")
    repeats = 0
    for sample in samples:
        if sample.images:  # think/edit_knowledge edits a random scene
            continue
        scene = sample.meta["target_scene"]
        assert scene["background"] == "white"
        pixels = sample.target.load().tobytes()
        if sample.task == "t2i":
            ok, why = geneval_check(detect_scene(sample.target.load()), sample.meta["geneval"])
            assert ok, (sample.prompt, why)
            repeats += sample.prompt in images
            assert images.setdefault(sample.prompt, pixels) == pixels, sample.prompt  # same prompt, same image
            objects = scene["objects"]
            slots = {(o["cx"] / 64, o["cy"] / 64) for o in objects}
            if sample.meta["geneval"]["tag"] != "position":
                assert slots == set(CANONICAL_SLOTS[len(objects)]), sample.prompt
            assert all(o["size"] == "large" for o in objects)
            for obj in objects:
                if obj["color"] not in sample.prompt:
                    assert obj["color"] == DEFAULT_SHAPE_COLORS[obj["shape"]], sample.prompt
    assert repeats > 20  # the check above ran on repeated prompts
    with pytest.raises(ValueError, match="t2i_layout"):
        ShapesConfig(t2i_layout="grid")
    with pytest.raises(ValueError, match="default colours"):
        ShapesConfig(t2i_layout="canonical", colors=("blue", "green"))


def test_edit_world_limits_source_scenes() -> None:
    """edit_max_objects / edit_backgrounds shape edit sources only (and so their targets); understanding scenes
    keep the full world."""
    cfg = ShapesConfig(tasks=("edit", "understanding"), edit_max_objects=2, edit_backgrounds=("white",))
    counts: Counter[tuple[str, int]] = Counter()
    backgrounds: Counter[tuple[str, str]] = Counter()
    ops: set[str] = set()
    for sample in _accepted(ShapesGenerator(cfg), 11, 300, "e"):
        source = sample.meta["scenes"][0]
        counts[sample.task, len(source["objects"])] += 1
        backgrounds[sample.task, source["background"]] += 1
        if sample.task == "edit":
            ops.add(sample.meta["edit"]["op"])
            assert sample.meta["target_scene"]["background"] == "white"
            assert len(source["objects"]) <= (1 if sample.meta["edit"]["op"] == "add" else 2)
    assert ops == set(EDIT_OPS)
    assert {bg for task, bg in backgrounds if task == "edit"} == {"white"}
    assert len({bg for task, bg in backgrounds if task == "understanding"}) == len(BACKGROUNDS)
    assert max(n for task, n in counts if task == "understanding") == 4
    assert counts["edit", 2] > 0
    with pytest.raises(ValueError, match="edit_max_objects=5"):
        ShapesConfig(edit_max_objects=5)
    with pytest.raises(ValueError, match="edit_backgrounds"):
        ShapesConfig(edit_backgrounds=("purple",))


def test_grid_edit_layout_puts_objects_on_cell_centres_and_keeps_ops_balanced() -> None:
    """edit_layout="grid": every source and target object sits on its 3x3 cell's centre point for its size, an
    "add" fills the first free cell of ADD_CELL_ORDER as large as fits (one right answer), and retries keep each
    op's share of the samples."""
    cfg = ShapesConfig(tasks=("edit",), edit_max_objects=2, edit_backgrounds=("white",), edit_layout="grid")
    generator = ShapesGenerator(cfg)
    radius = generator.radius
    ops: Counter[str] = Counter()
    for sample in _accepted(generator, 5, 350, "g"):
        op = sample.meta["edit"]["op"]
        ops[op] += 1
        for scene in (sample.meta["scenes"][0], sample.meta["target_scene"]):
            for obj in scene["objects"]:
                cell = region_of(obj["cx"], obj["cy"], cfg.image_size)
                assert (obj["cx"], obj["cy"]) == region_centre(cell, radius[obj["size"]], cfg.image_size), sample.prompt
        if op == "add":
            source = Scene.from_dict(sample.meta["scenes"][0])
            added = sample.meta["target_scene"]["objects"][-1]
            expected = generator._put_in_cell(
                source, added["shape"], added["color"], ("large", "medium", "small"), ADD_CELL_ORDER
            )
            assert expected is not None and (expected.cx, expected.cy, expected.size) == (
                added["cx"], added["cy"], added["size"],
            )  # fmt: skip
    assert set(ops) == set(EDIT_OPS)
    assert min(ops.values()) >= 0.5 * max(ops.values()), ops
    with pytest.raises(ValueError, match="edit_layout"):
        ShapesConfig(edit_layout="diagonal")


def test_placed_t2i_draws_the_named_object_where_a_move_to_that_cell_puts_it() -> None:
    """t2i "placed": one object of the named size and colour on the named cell's move point, on the canonical
    background; the GenEval rule checks the cell, so the same image fails for any other cell."""
    cfg = ShapesConfig(tasks=("t2i",), t2i_categories=("placed",), t2i_layout="canonical")
    generator = ShapesGenerator(cfg)
    cells: Counter[str] = Counter()
    for sample in _accepted(generator, 7, 60, "p"):
        (obj,) = sample.meta["target_scene"]["objects"]
        region = sample.meta["geneval"]["include"][0]["region"]
        cells[region] += 1
        named = f"{obj['size']} {obj['color']} {obj['shape']}"  # sizes: small, medium, large (article "a")
        assert sample.prompt == f"a photo of a {named} at the {region}"
        assert (obj["cx"], obj["cy"]) == region_centre(region, generator.radius[obj["size"]], cfg.image_size)
        assert sample.meta["target_scene"]["background"] == cfg.backgrounds[0]
        detected = detect_scene(sample.target.load())
        assert geneval_check(detected, sample.meta["geneval"]) == (True, "ok")
        spec = json.loads(json.dumps(sample.meta["geneval"]))
        spec["include"][0]["region"] = "center" if region != "center" else "top left"
        ok, reason = geneval_check(detected, spec)
        assert not ok and spec["include"][0]["region"] in reason
    assert len(cells) == 9


def test_shapes_config_validation() -> None:
    with pytest.raises(ValueError, match="hexagon"):
        ShapesConfig(shapes=("circle", "hexagon"))
    with pytest.raises(ValueError, match="image_size"):
        ShapesConfig(image_size=16)
    assert ShapesConfig.from_dict({"tasks": ["t2i"]}).tasks == ("t2i",)  # JSON lists become tuples


# --------------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------------

SMALL = {"image_size": 48}  # 48 px keeps the runner tests fast


def _shas(manifest: dict) -> list[str]:
    return [s["sha256"] for s in manifest["shards"]]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "a"
    manifest = run_synthesis(
        "shapes", out, 50, seed=7, workers=1, shard_size=20, config=SMALL, contact_sheet_samples=8
    )
    return out, manifest


def test_manifest_counts_and_loading(built: tuple[Path, dict]) -> None:
    out, manifest = built
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["shards"] == manifest["shards"] and not (out / "manifest.partial.json").exists()
    assert [s["num_samples"] for s in manifest["shards"]] == [20, 20, 10]
    assert sum(manifest["counts_by_task"].values()) == 50
    assert manifest["config"]["image_size"] == 48 and manifest["filters"]["dedup"] is True
    assert manifest["attempts"] == 50 + sum(manifest["rejections"].values())
    assert manifest["samples_per_second"] > 0 and manifest["seconds"] > 0
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.size[0] > 48 * 4
    reader = SampleReader(out, max_bad_fraction=0.0)  # the training loader: every shard loads, nothing bad
    samples = list(reader)
    assert len(samples) == 50 and len({s.id for s in samples}) == 50 and reader.stats.bad == 0
    assert Counter(s.task for s in samples) == manifest["counts_by_task"]


def test_determinism_across_runs_and_workers(built: tuple[Path, dict], tmp_path: Path) -> None:
    _, manifest = built
    two = run_synthesis(
        "shapes", tmp_path / "b", 50, seed=7, workers=2, shard_size=20, config=SMALL, contact_sheet_samples=0
    )
    assert _shas(two) == _shas(manifest)
    other = run_synthesis(
        "shapes", tmp_path / "c", 20, seed=8, shard_size=20, config=SMALL, contact_sheet_samples=0
    )
    assert _shas(other)[0] != _shas(manifest)[0]


def test_resume_keeps_finished_shards(built: tuple[Path, dict], tmp_path: Path) -> None:
    src, manifest = built
    out = tmp_path / "resume"
    shutil.copytree(src, out)
    (out / "shard-000001.tar").unlink()
    resumed = run_synthesis("shapes", out, 50, seed=7, shard_size=20, config=SMALL, contact_sheet_samples=0)
    assert (resumed["generated_shards"], resumed["skipped_shards"]) == (1, 2)
    assert _shas(resumed) == _shas(manifest)
    # A damaged shard no longer matches its sha256 and is rebuilt.
    with open(out / "shard-000002.tar", "r+b") as fh:
        fh.seek(700)
        fh.write(b"XX")
    again = run_synthesis("shapes", out, 50, seed=7, shard_size=20, config=SMALL, contact_sheet_samples=0)
    assert (again["generated_shards"], _shas(again)) == (1, _shas(manifest))
    # Growing the dataset keeps the full shards and rebuilds the last one at its new size.
    grown = run_synthesis("shapes", out, 70, seed=7, shard_size=20, config=SMALL, contact_sheet_samples=0)
    assert (grown["generated_shards"], grown["skipped_shards"]) == (2, 2)
    assert _shas(grown)[:2] == _shas(manifest)[:2]
    with pytest.raises(ValueError, match="config"):
        run_synthesis("shapes", out, 70, seed=7, shard_size=20, config={"image_size": 64})
    changed = run_synthesis(
        "shapes",
        out,
        20,
        seed=7,
        shard_size=20,
        config={"image_size": 64},
        overwrite=True,
        contact_sheet_samples=0,
    )
    assert changed["num_shards"] == 1 and sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar"]


def test_overwrite_changed_resumes_same_settings_and_rebuilds_other_settings(tmp_path: Path) -> None:
    out = tmp_path / "stage-data"
    kw: dict[str, Any] = {"seed": 3, "config": SMALL, "contact_sheet_samples": 0, "overwrite": "changed"}
    first = run_synthesis("shapes", out, 30, shard_size=10, **kw)
    again = run_synthesis("shapes", out, 30, shard_size=10, **kw)
    assert (again["generated_shards"], again["skipped_shards"]) == (0, 3) and _shas(again) == _shas(first)
    # Another shard size (refused by the default, overwrite=False) starts the folder afresh: no shard of the
    # old layout is left behind for a folder glob to pick up.
    with pytest.raises(ValueError, match="shard_size"):
        run_synthesis("shapes", out, 30, seed=3, config=SMALL, contact_sheet_samples=0, shard_size=15)
    rebuilt = run_synthesis("shapes", out, 30, shard_size=15, **kw)
    assert (rebuilt["generated_shards"], rebuilt["skipped_shards"], rebuilt["shard_size"]) == (2, 0, 15)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-000000.tar", "shard-000001.tar"]
    assert json.loads((out / "manifest.json").read_text())["shard_size"] == 15
    with pytest.raises(ValueError, match="'sometimes'"):
        run_synthesis("shapes", out, 30, seed=3, config=SMALL, overwrite="sometimes")  # type: ignore[arg-type]


@dataclasses.dataclass
class _FlatConfig(ConfigBase):
    variants: int = 3


@register_generator("test-flat")
class _FlatGenerator(Generator):
    """Few distinct samples, so dedup must reject repeats."""

    config_class = _FlatConfig

    def sample(self, rng: np.random.Generator, sample_id: str) -> Sample:
        k = int(rng.integers(self.config.variants))
        image = Image.new("RGB", (32, 32), (80 * k, 0, 0))
        image.paste((255, 255, 255), (0, 0, 4 + 8 * k, 4 + 8 * k))
        return Sample(id=sample_id, task="t2i", prompt=f"pattern {k}", target=ImageRef.from_image("t", image))


def test_dedup_rejections_are_counted(tmp_path: Path) -> None:
    manifest = run_synthesis("test-flat", tmp_path / "d", 3, shard_size=3, contact_sheet_samples=0)
    assert manifest["rejections"].get("duplicate", 0) > 0
    assert manifest["attempts"] == 3 + manifest["rejections"]["duplicate"]
    with pytest.raises(RuntimeError, match="distinct samples"):
        run_synthesis("test-flat", tmp_path / "e", 4, shard_size=4, contact_sheet_samples=0)
    kept = run_synthesis(
        "test-flat",
        tmp_path / "f",
        4,
        shard_size=4,
        contact_sheet_samples=0,
        filters=FilterConfig(dedup=False),
    )
    assert "duplicate" not in kept["rejections"]


def test_filters_phash_and_size() -> None:
    a = Image.new("RGB", (64, 64), (255, 255, 255))
    a.paste((200, 0, 0), (10, 10, 30, 30))
    b = Image.new("RGB", (64, 64), (255, 255, 255))
    b.paste((0, 0, 200), (34, 30, 60, 60))
    assert phash(a) == phash(a.copy()) and (phash(a) ^ phash(b)).bit_count() > 8
    small = Sample(id="s", task="t2i", prompt="p", target=ImageRef.from_image("t", Image.new("RGB", (8, 8))))
    wide = Sample(id="w", task="t2i", prompt="p", target=ImageRef.from_image("t", Image.new("RGB", (90, 30))))
    sample_filter = SampleFilter(FilterConfig(min_side=16, max_aspect=2.0))
    assert (sample_filter.check(small), sample_filter.check(wide)) == ("too_small", "aspect_ratio")
    assert sample_filter.rejections == {"too_small": 1, "aspect_ratio": 1}


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="internvlu")
    add_synth_parser(parser.add_subparsers(dest="command"))
    return parser


def test_synth_parser_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(
        [
            "synth",
            "shapes",
            "--out",
            "x",
            "--num",
            "5",
            "--seed",
            "3",
            "--workers",
            "2",
            "--shard-size",
            "4",
            "--image-size",
            "64",
            "--tasks",
            "t2i,edit",
        ]
    )
    assert (args.generator, args.num, args.seed, args.workers, args.shard_size) == ("shapes", 5, 3, 2, 4)
    assert args.out == Path("x") and args.func.__name__ == "run_synth"
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["synth", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "GENERATOR" in text and "--shard-size" in text and "shapes" in text


def test_synth_cli_runs_and_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = _parser().parse_args(
        [
            "synth",
            "shapes",
            "--out",
            str(out),
            "--num",
            "6",
            "--shard-size",
            "3",
            "--image-size",
            "48",
            "--tasks",
            "t2i,think",
            "--set",
            "task_weights=1,3",
            "--contact-sheet",
            "0",
        ]
    )
    assert args.func(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["tasks"] == ["t2i", "think"] and manifest["config"]["task_weights"] == [1, 3]
    assert set(manifest["counts_by_task"]) <= {"t2i", "think"}
    same = ["synth", "shapes", "--out", str(out), "--num", "6", "--image-size", "48", "--tasks", "t2i,think",
            "--set", "task_weights=1,3", "--contact-sheet", "0"]  # fmt: skip
    args = _parser().parse_args([*same, "--shard-size", "2"])
    assert args.func(args) == 2 and "shard_size" in capsys.readouterr().err  # another layout: refused by default
    args = _parser().parse_args([*same, "--shard-size", "2", "--overwrite-changed"])
    assert args.func(args) == 0 and json.loads((out / "manifest.json").read_text())["num_shards"] == 3
    capsys.readouterr()
    for bad, message in ((["--set", "nope=1"], "nope"), (["--set", "shapes=circle,hexagon"], "hexagon")):
        args = _parser().parse_args(["synth", "shapes", "--out", str(tmp_path / "x"), "--num", "2", *bad])
        assert args.func(args) == 2
        assert message in capsys.readouterr().err
    args = _parser().parse_args(["synth", "nosuch", "--out", str(tmp_path / "y"), "--num", "2"])
    assert args.func(args) == 2 and "unknown generator" in capsys.readouterr().err
