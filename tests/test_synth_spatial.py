"""Spatial generator: every transform's target vertices follow from its matrix, the geometry is what the
family says (rigid motions, mirrors, projection hull, revolution ranges), images stay in frame, determinism,
and loading in the training loader."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from synth_helpers import draw_samples

from internvlu.data import Sample, SampleReader
from internvlu.synthesis import run_synthesis

pytest.importorskip("matplotlib")

from internvlu.synthesis.spatial import (
    FAMILIES,
    SpatialConfig,
    SpatialGenerator,
    convex_hull_2d,
    mapping_text,
    polygon_area,
    rotation,
)

SIZE = 192


def _samples(config: SpatialConfig, n: int, seed: int = 0) -> list[Sample]:
    return draw_samples(SpatialGenerator(config), n, seed)


@pytest.fixture(scope="module")
def pool() -> dict[str, list[Sample]]:
    return {f: _samples(SpatialConfig(image_size=SIZE, families=(f,)), 2, seed=2) for f in FAMILIES}


def _pairwise(v: np.ndarray) -> np.ndarray:
    return np.linalg.norm(v[:, None] - v[None], axis=-1)


def test_targets_follow_the_transform(pool: dict[str, list[Sample]]) -> None:
    for sample in itertools.chain.from_iterable(pool.values()):
        sample.validate()
        meta = sample.meta
        kind = meta["transform"]["kind"]
        assert sample.meta["family"].endswith(kind)
        if kind == "revolve":
            profile = np.asarray(meta["profile"])
            assert 3 <= len(profile) <= 6 and profile[:, 0].min() >= 0  # one side of the axis
            assert meta["radius_range"] == [profile[:, 0].min(), profile[:, 0].max()]
            continue
        before = np.asarray(meta["solid"]["vertices"])
        matrix = np.asarray(meta["matrix"])
        mapped = before @ matrix[:3, :3].T + matrix[:3, 3]
        if kind == "project":
            hull = convex_hull_2d(mapped[:, :2])
            assert np.allclose(np.asarray(meta["projection"])[:, :2], hull)
            assert np.isclose(meta["projection_area"], polygon_area(hull))
            continue
        after = np.asarray(meta["target_solid"]["vertices"])
        assert np.allclose(after, mapped)
        assert np.allclose(_pairwise(before), _pairwise(after))  # all five are isometries
        det = np.linalg.det(matrix[:3, :3])
        assert np.isclose(det, -1.0 if kind.startswith("reflect") else 1.0)
        if kind == "translate":
            shift = after - before
            assert np.allclose(shift, shift[0]) and 4 <= np.abs(shift[0]).max() <= 10
        if kind == "reflect_point":
            p = np.asarray(meta["transform"]["point"])
            assert np.allclose((before + after) / 2, p)
        assert np.allclose(after, np.round(after * 2) / 2)  # integers or halves: exact in the thought


def test_images_in_frame_and_thoughts_state_the_mapping(pool: dict[str, list[Sample]]) -> None:
    for sample in itertools.chain.from_iterable(pool.values()):
        for pixels in sample.meta["pixels"] + sample.meta["target_pixels"]:
            arr = np.asarray(pixels)
            assert arr.min() >= 0 and arr.max() <= SIZE
        assert sample.images[0].load().size == (SIZE, SIZE) == sample.target.load().size
        if sample.task == "think" and sample.meta["transform"]["kind"] in ("rotate", "reflect_point"):
            assert mapping_text(np.asarray(sample.meta["matrix"])) in sample.thought
    assert mapping_text(rotation("z", 90)) == "(x, y, z) -> (-y, x, z)"


def test_determinism_and_training_loader(tmp_path: Path) -> None:
    a = _samples(SpatialConfig(image_size=SIZE), 3, seed=4)
    b = _samples(SpatialConfig(image_size=SIZE), 3, seed=4)
    assert [s.to_json() for s in a] == [s.to_json() for s in b]
    assert [s.target.png_bytes() for s in a] == [s.target.png_bytes() for s in b]
    run_synthesis(
        "spatial", tmp_path / "sp", 4, shard_size=2, config={"image_size": SIZE}, contact_sheet_samples=0
    )
    assert len(list(SampleReader(tmp_path / "sp"))) == 4
    from internvlu.training.dataset import load_index

    samples, tracker = load_index([str(tmp_path / "sp")], max_bad_fraction=0.0)
    assert len(samples) == 4 and tracker.bad == 0
    with pytest.raises(ValueError, match="families"):
        SpatialConfig(families=("shear",))
