"""Science generators: chemistry depictions (RDKit) and computer-science edits checked against independent
solvers, pixel alignment of input and target, determinism, and loading in the training loader."""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from synth_helpers import draw_samples

from internvlu.data import Sample, SampleReader
from internvlu.synthesis import run_synthesis

pytest.importorskip("matplotlib")
needs_rdkit = pytest.mark.skipif(importlib.util.find_spec("rdkit") is None, reason="RDKit not installed")

from internvlu.synthesis.science_chem import (
    BUILTIN_MOLECULES,
    ChemConfig,
    ChemGenerator,
    attach,
    describe_molecule,
    mol_from_smiles,
)
from internvlu.synthesis.science_cs import FAMILIES, CsConfig, CsGenerator

# --------------------------------------------------------------------------------------------------
# Chemistry
# --------------------------------------------------------------------------------------------------


@needs_rdkit
def test_builtin_molecules_parse_and_facts_are_exact() -> None:
    names = [name for name, _ in BUILTIN_MOLECULES]
    assert len(set(names)) == len(names)
    for _, smiles in BUILTIN_MOLECULES:
        mol_from_smiles(smiles)
    caffeine = describe_molecule(mol_from_smiles("CN1C=NC2=C1C(=O)N(C(=O)N2C)C"))
    assert (
        caffeine["formula"] == "C8H10N4O2" and caffeine["num_rings"] == 2 and caffeine["ring_sizes"] == [5, 6]
    )
    assert abs(caffeine["mol_weight"] - 194.19) < 0.01 and caffeine["element_counts"] == {
        "C": 8,
        "N": 4,
        "O": 2,
    }
    aspirin = describe_molecule(mol_from_smiles("CC(=O)Oc1ccccc1C(=O)O"))
    assert {"carboxylic acid", "ester"} <= set(aspirin["functional_groups"]) and aspirin[
        "aromatic_rings"
    ] == 1
    phenol = attach(mol_from_smiles("c1ccccc1"), 0, "*O")
    assert describe_molecule(phenol)["smiles"] == "Oc1ccccc1"
    with pytest.raises(ValueError, match="C1CC"):
        mol_from_smiles("C1CC")


@needs_rdkit
def test_chem_samples_carry_exact_ground_truth() -> None:
    samples = draw_samples(ChemGenerator(ChemConfig(image_size=192)), 30)
    assert {s.task for s in samples} == {"t2i", "think", "understanding"}
    assert {s.meta["source"] for s in samples} == {"builtin", "procedural"}
    for sample in samples:
        sample.validate()
        meta = sample.meta
        assert describe_molecule(mol_from_smiles(meta["smiles"]))["formula"] == meta["formula"]
        assert len(meta["atoms"]) == meta["heavy_atoms"]
        assert all(0 <= a["x"] <= 192 and 0 <= a["y"] <= 192 for a in meta["atoms"])
        image = np.asarray(sample.all_images()[0].load())
        assert image.shape == (192, 192, 3) and (image < 128).any()  # something is drawn
        if sample.task == "think":
            assert meta["formula"] in sample.thought and meta["smiles"] in sample.thought
        if sample.task == "understanding":
            qa = meta["qa"][0]
            expected = {"formula": meta["formula"], "rings": str(meta["num_rings"]), "name": meta["name"]}
            if qa["family"] in expected:
                assert sample.messages[-1].content == expected[qa["family"]]
        if sample.task != "understanding":
            assert (meta["name"] if meta["prompt_by"] == "name" else meta["smiles"]) in sample.prompt


@needs_rdkit
def test_chem_molecules_file_and_determinism(tmp_path: Path) -> None:
    good = tmp_path / "mols.tsv"
    good.write_text("# name<TAB>SMILES\nmy ester\tCCOC(=O)C\nc1ccncc1\n", encoding="utf-8")
    generator = ChemGenerator(ChemConfig(image_size=160, sources=("file",), molecules_file=str(good)))
    a, b = draw_samples(generator, 4, seed=3), draw_samples(generator, 4, seed=3)
    assert {s.meta["smiles"] for s in a} <= {"CCOC(C)=O", "c1ccncc1"}
    assert [s.all_images()[0].png_bytes() for s in a] == [s.all_images()[0].png_bytes() for s in b]
    bad = tmp_path / "bad.tsv"
    bad.write_text("fine\tCCO\nbroken\tC1CC\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.tsv:2"):
        ChemGenerator(ChemConfig(sources=("file",), molecules_file=str(bad)))


# --------------------------------------------------------------------------------------------------
# Computer science
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cs_pool() -> dict[str, list[Sample]]:
    pools: dict[str, list[Sample]] = {}
    for family in FAMILIES:
        pools[family] = draw_samples(CsGenerator(CsConfig(image_size=192, families=(family,))), 3, seed=1)
    return pools


def _changed(sample: Sample) -> np.ndarray:
    a = np.asarray(sample.images[0].load(), dtype=np.int16)
    b = np.asarray(sample.target.load(), dtype=np.int16)
    return (a != b).any(-1)  # (H, W)


def _discs(nodes: dict[str, dict], keys: list[str], size: int, pad: float = 2.0) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    mask = np.zeros((size, size), dtype=bool)
    for key in keys:
        n = nodes[key]
        mask |= (xs - n["cx"]) ** 2 + (ys - n["cy"]) ** 2 <= (n["r"] + pad) ** 2
    return mask


def _dist_all_pairs(edges: list[list]) -> dict[tuple[str, str], float]:
    nodes = sorted({e[0] for e in edges} | {e[1] for e in edges})
    dist = {(u, v): (0.0 if u == v else math.inf) for u in nodes for v in nodes}
    for u, v, w in edges:
        dist[(u, v)] = dist[(v, u)] = min(dist[(u, v)], w)
    for k, i, j in itertools.product(nodes, nodes, nodes):  # Floyd-Warshall, independent of the generator
        dist[(i, j)] = min(dist[(i, j)], dist[(i, k)] + dist[(k, j)])
    return dist


def _inorder(tree: dict[int, int], slot: int) -> list[int]:
    if slot not in tree:
        return []
    return _inorder(tree, 2 * slot) + [tree[slot]] + _inorder(tree, 2 * slot + 1)


def test_cs_solvers_agree_with_independent_checks(cs_pool: dict[str, list[Sample]]) -> None:
    for sample in itertools.chain.from_iterable(cs_pool.values()):
        sample.validate()
        truth = sample.meta["solver"]
        family = sample.meta["family"].split("/")[1]
        if family == "bst_insert":
            keys = _inorder({int(k): v for k, v in truth["after"].items()}, 1)
            assert keys == sorted(keys) and truth["key"] in keys and len(keys) == len(truth["before"]) + 1
        elif family in ("heap_insert", "heap_extract"):
            heap, better = truth["after"], (min if truth["kind"] == "min" else max)
            for i in range(1, len(heap)):
                assert better(heap[i], heap[(i - 1) // 2]) == heap[(i - 1) // 2]
            if family == "heap_insert":
                assert sorted(heap) == sorted(truth["before"] + [truth["value"]])
            else:
                assert truth["extracted"] == better(truth["before"]) and sorted(
                    heap + [truth["extracted"]]
                ) == sorted(truth["before"])
        elif family == "shortest_path":
            dist = _dist_all_pairs(truth["edges"])
            weights = {frozenset((u, v)): w for u, v, w in truth["edges"]}
            path = truth["path"]
            assert path[0] == truth["source"] and path[-1] == truth["target"]
            assert sum(weights[frozenset(p)] for p in itertools.pairwise(path)) == truth["distance"]
            assert dist[(truth["source"], truth["target"])] == truth["distance"]
        elif family == "khop":
            hops = _dist_all_pairs([[u, v, 1] for u, v, _ in truth["edges"]])
            nodes = {e[0] for e in truth["edges"]} | {e[1] for e in truth["edges"]}
            assert truth["within"] == sorted(n for n in nodes if hops[(truth["source"], n)] <= truth["k"])
        elif family == "traversal":
            if truth.get("order") == "inorder":
                assert truth["keys"] == sorted(truth["keys"])
            if "start" in truth:
                assert truth["order"][0] == truth["start"] and len(set(truth["order"])) == len(truth["order"])
        elif family == "fsm_trace":
            state = "q0"
            for ch in truth["word"]:
                state = truth["transitions"][f"{state},{ch}"]
            assert state == truth["final"] and truth["accepted"] == (state in truth["accepting"])


def test_cs_targets_align_with_inputs(cs_pool: dict[str, list[Sample]]) -> None:
    for sample in cs_pool["khop"]:
        changed = _changed(sample)
        allowed = _discs(sample.meta["nodes"], sample.meta["solver"]["within"], 192)
        assert changed.any() and not (changed & ~allowed).any()  # only the highlighted nodes' discs change
    for sample in cs_pool["bst_insert"]:
        truth = sample.meta["solver"]
        new_slot = next(k for k in truth["after"] if k not in truth["before"])
        node, parent = sample.meta["target_nodes"][new_slot], sample.meta["nodes"][str(int(new_slot) // 2)]
        x0, x1 = sorted((node["cx"], parent["cx"]))
        y0, y1 = sorted((node["cy"], parent["cy"]))
        ys, xs = np.mgrid[0:192, 0:192] + 0.5
        r = node["r"] + 3
        allowed = (xs >= x0 - r) & (xs <= x1 + r) & (ys >= y0 - r) & (ys <= y1 + r)
        changed = _changed(sample)
        assert changed.any() and not (changed & ~allowed).any()  # other nodes never move
    for sample in cs_pool["shortest_path"]:
        assert sample.meta["nodes"] == sample.meta["target_nodes"]


@needs_rdkit
def test_cs_determinism_thoughts_and_loader(tmp_path: Path) -> None:
    a = draw_samples(CsGenerator(CsConfig(image_size=192, tasks=("think",))), 4, seed=9)
    b = draw_samples(CsGenerator(CsConfig(image_size=192, tasks=("think",))), 4, seed=9)
    assert [s.thought for s in a] == [s.thought for s in b]
    assert [s.target.png_bytes() for s in a] == [s.target.png_bytes() for s in b]
    assert all(s.thought and "<think>" not in s.thought for s in a)
    for name, config in (("cs", {"image_size": 192}), ("chem", {"image_size": 160})):
        run_synthesis(name, tmp_path / name, 6, shard_size=3, config=config, contact_sheet_samples=0)
        assert len(list(SampleReader(tmp_path / name))) == 6
    from internvlu.training.dataset import load_index

    samples, tracker = load_index([str(tmp_path / "cs"), str(tmp_path / "chem")], max_bad_fraction=0.0)
    assert len(samples) == 12 and tracker.bad == 0
