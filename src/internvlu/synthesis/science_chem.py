"""Chemistry (paper §4.4, App. B.2): the ``chem`` generator, molecule depictions from SMILES or names.

The paper turns cleaned PubChem entries (name, formula, SMILES, 2D depiction) into instruction pairs for
drawing structures, with a chain of thought for concept analysis and layout planning. Here molecules come
from three sources, all depicted with RDKit (``rdMolDraw2D``, Cairo backend):

* a built-in table of named molecules (``BUILTIN_MOLECULES``, every SMILES checked by RDKit);
* procedurally built molecules: a scaffold (benzene, pyridine, naphthalene, cyclohexane, a chain, ...)
  with 1-3 substituents attached at random positions (prompts give the SMILES, as these have no name);
* ``molecules_file``: the user's own table, one ``name<TAB>SMILES`` (or bare SMILES) per line.

Families: ``t2i/structure`` (draw the structure of NAME / of SMILES), ``think/structure`` (the same, with
a thought that identifies the molecule, derives formula, atom counts, rings and functional groups, and
plans the layout from the real 2-D coordinates) and ``understanding/{formula,rings,name,groups}``.

Ground truth in ``meta``: canonical SMILES, name, formula, molecular weight, heavy-atom counts, rings,
functional groups, and every atom's symbol and pixel position and every bond in the drawn picture, plus
the drawing options (rotation, palette, line width) and the RDKit version.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from internvlu.constants import IMAGE_PLACEHOLDER
from internvlu.data.records import ImageRef, Message, Sample, decode_image
from internvlu.synthesis.gen_common import (
    GeneratorConfig,
    check_min_int,
    check_range,
    check_subset,
    check_weights,
    pick,
    pick_weighted,
    probabilities,
)
from internvlu.synthesis.runner import Generator, RejectSample, register_generator

TASKS: tuple[str, ...] = ("t2i", "think", "understanding")
TASK_SHARE = {"t2i": 2.0, "think": 2.0, "understanding": 1.0}  # default mix when task_weights is empty
SOURCES: tuple[str, ...] = ("builtin", "procedural", "file")
QUESTIONS: tuple[str, ...] = ("formula", "rings", "name", "groups")

# (name, SMILES). Common, unambiguous molecules; tests check that RDKit parses each one.
BUILTIN_MOLECULES: tuple[tuple[str, str], ...] = (
    ("ethanol", "CCO"),
    ("acetic acid", "CC(=O)O"),
    ("acetone", "CC(C)=O"),
    ("propanoic acid", "CCC(=O)O"),
    ("1-butanol", "CCCCO"),
    ("hexane", "CCCCCC"),
    ("ethyl acetate", "CCOC(C)=O"),
    ("diethyl ether", "CCOCC"),
    ("chloroform", "ClC(Cl)Cl"),
    ("glycerol", "OCC(O)CO"),
    ("ethylene glycol", "OCCO"),
    ("urea", "NC(N)=O"),
    ("lactic acid", "CC(O)C(=O)O"),
    ("pyruvic acid", "CC(=O)C(=O)O"),
    ("oxalic acid", "OC(=O)C(=O)O"),
    ("succinic acid", "OC(=O)CCC(=O)O"),
    ("citric acid", "OC(=O)CC(O)(CC(=O)O)C(=O)O"),
    ("benzene", "c1ccccc1"),
    ("toluene", "Cc1ccccc1"),
    ("phenol", "Oc1ccccc1"),
    ("aniline", "Nc1ccccc1"),
    ("benzoic acid", "OC(=O)c1ccccc1"),
    ("benzaldehyde", "O=Cc1ccccc1"),
    ("nitrobenzene", "[O-][N+](=O)c1ccccc1"),
    ("chlorobenzene", "Clc1ccccc1"),
    ("anisole", "COc1ccccc1"),
    ("acetophenone", "CC(=O)c1ccccc1"),
    ("benzonitrile", "N#Cc1ccccc1"),
    ("styrene", "C=Cc1ccccc1"),
    ("benzyl alcohol", "OCc1ccccc1"),
    ("p-xylene", "Cc1ccc(C)cc1"),
    ("hydroquinone", "Oc1ccc(O)cc1"),
    ("catechol", "Oc1ccccc1O"),
    ("resorcinol", "Oc1cccc(O)c1"),
    ("biphenyl", "c1ccc(cc1)-c1ccccc1"),
    ("naphthalene", "c1ccc2ccccc2c1"),
    ("anthracene", "c1ccc2cc3ccccc3cc2c1"),
    ("pyridine", "c1ccncc1"),
    ("pyrimidine", "c1cncnc1"),
    ("pyrrole", "c1cc[nH]c1"),
    ("furan", "c1ccoc1"),
    ("thiophene", "c1ccsc1"),
    ("imidazole", "c1cnc[nH]1"),
    ("indole", "c1ccc2[nH]ccc2c1"),
    ("quinoline", "c1ccc2ncccc2c1"),
    ("cyclohexane", "C1CCCCC1"),
    ("cyclohexene", "C1=CCCCC1"),
    ("cyclohexanol", "OC1CCCCC1"),
    ("cyclopentane", "C1CCCC1"),
    ("piperidine", "C1CCNCC1"),
    ("morpholine", "C1COCCN1"),
    ("glycine", "NCC(=O)O"),
    ("L-alanine", "C[C@H](N)C(=O)O"),
    ("L-serine", "N[C@@H](CO)C(=O)O"),
    ("L-cysteine", "N[C@@H](CS)C(=O)O"),
    ("L-phenylalanine", "N[C@@H](Cc1ccccc1)C(=O)O"),
    ("L-tyrosine", "N[C@@H](Cc1ccc(O)cc1)C(=O)O"),
    ("L-tryptophan", "N[C@@H](Cc1c[nH]c2ccccc12)C(=O)O"),
    ("L-glutamic acid", "N[C@@H](CCC(=O)O)C(=O)O"),
    ("beta-D-glucose", "OC[C@H]1O[C@@H](O)[C@H](O)[C@@H](O)[C@@H]1O"),
    ("caffeine", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C"),
    ("theobromine", "Cn1cnc2c1c(=O)[nH]c(=O)n2C"),
    ("aspirin", "CC(=O)Oc1ccccc1C(=O)O"),
    ("paracetamol", "CC(=O)Nc1ccc(O)cc1"),
    ("ibuprofen", "CC(C)Cc1ccc(cc1)C(C)C(=O)O"),
    ("nicotine", "CN1CCC[C@H]1c1cccnc1"),
    ("vanillin", "COc1cc(C=O)ccc1O"),
    ("salicylic acid", "OC(=O)c1ccccc1O"),
    ("methyl salicylate", "COC(=O)c1ccccc1O"),
    ("dopamine", "NCCc1ccc(O)c(O)c1"),
    ("serotonin", "NCCc1c[nH]c2ccc(O)cc12"),
    ("adrenaline", "CNC[C@H](O)c1ccc(O)c(O)c1"),
    ("histamine", "NCCc1c[nH]cn1"),
    ("menthol", "CC(C)[C@@H]1CC[C@@H](C)C[C@H]1O"),
    ("camphor", "CC1(C)C2CCC1(C)C(=O)C2"),
    ("limonene", "CC1=CCC(CC1)C(C)=C"),
    ("benzocaine", "CCOC(=O)c1ccc(N)cc1"),
    ("lidocaine", "CCN(CC)CC(=O)Nc1c(C)cccc1C"),
    ("capsaicin", "COc1cc(CNC(=O)CCCC/C=C/C(C)C)ccc1O"),
    ("uracil", "O=c1cc[nH]c(=O)[nH]1"),
    ("thymine", "Cc1c[nH]c(=O)[nH]c1=O"),
    ("cytosine", "Nc1cc[nH]c(=O)n1"),
    ("adenine", "Nc1ncnc2[nH]cnc12"),
    ("guanine", "Nc1nc2[nH]cnc2c(=O)[nH]1"),
    ("ascorbic acid", "OC[C@H](O)[C@H]1OC(=O)C(O)=C1O"),
    ("sulfanilamide", "Nc1ccc(cc1)S(N)(=O)=O"),
    ("nicotinamide", "NC(=O)c1cccnc1"),
    ("2,4,6-trinitrotoluene", "Cc1c(cc(cc1[N+](=O)[O-])[N+](=O)[O-])[N+](=O)[O-]"),
    ("phenolphthalein", "O=C1OC(c2ccccc12)(c1ccc(O)cc1)c1ccc(O)cc1"),
)

# Procedural molecules: scaffolds with open valences, and substituents whose "*" marks the attachment.
SCAFFOLDS: dict[str, str] = {
    "benzene ring": "c1ccccc1",
    "pyridine ring": "c1ccncc1",
    "naphthalene core": "c1ccc2ccccc2c1",
    "thiophene ring": "c1ccsc1",
    "furan ring": "c1ccoc1",
    "cyclohexane ring": "C1CCCCC1",
    "cyclopentane ring": "C1CCCC1",
    "piperidine ring": "C1CCNCC1",
    "propyl chain": "CCC",
    "pentyl chain": "CCCCC",
}
SUBSTITUENTS: dict[str, str] = {
    "hydroxyl": "*O",
    "amino": "*N",
    "methyl": "*C",
    "ethyl": "*CC",
    "methoxy": "*OC",
    "fluoro": "*F",
    "chloro": "*Cl",
    "bromo": "*Br",
    "carboxyl": "*C(=O)O",
    "formyl": "*C=O",
    "acetyl": "*C(C)=O",
    "cyano": "*C#N",
    "nitro": "*[N+](=O)[O-]",
    "trifluoromethyl": "*C(F)(F)F",
    "methyl ester": "*C(=O)OC",
    "amide": "*C(N)=O",
}
# Functional groups reported in the thought and meta (SMARTS; matches counted without overlap).
FUNCTIONAL_GROUPS: tuple[tuple[str, str], ...] = (
    ("carboxylic acid", "[CX3](=O)[OX2H1]"),
    ("ester", "[#6][CX3](=O)[OX2H0][#6]"),
    ("amide", "[NX3][CX3](=[OX1])"),
    ("aldehyde", "[CX3H1](=O)[#6]"),
    ("ketone", "[#6][CX3](=O)[#6]"),
    ("alcohol", "[OX2H][CX4]"),
    ("phenol", "[OX2H]c"),
    ("ether", "[OD2;!$(OC=O)]([#6])[#6]"),
    ("primary amine", "[NX3H2;!$(NC=[O,S]);!$(NS=O)]"),
    ("nitrile", "[CX2]#[NX1]"),
    ("nitro", "[N+](=O)[O-]"),
    ("halogen", "[F,Cl,Br,I]"),
    ("thiol", "[SX2H]"),
    ("sulfonamide", "S(=O)(=O)[NX3]"),
    ("alkene", "[CX3]=[CX3]"),
    ("alkyne", "[CX2]#[CX2]"),
)
REGION_WORDS = (
    ("upper left", "top", "upper right"),
    ("left", "centre", "right"),
    ("lower left", "bottom", "lower right"),
)
ELEMENT_NAMES = {
    "C": "carbon",
    "N": "nitrogen",
    "O": "oxygen",
    "S": "sulfur",
    "F": "fluorine",
    "Cl": "chlorine",
    "Br": "bromine",
    "I": "iodine",
    "P": "phosphorus",
}


def require_rdkit() -> Any:
    try:
        from rdkit import Chem
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the chem generator needs RDKit: pip install 'internvlu[synth]' (or rdkit)"
        ) from exc
    return Chem


@functools.lru_cache(maxsize=1)
def _group_patterns() -> tuple[tuple[str, Any], ...]:
    chem = require_rdkit()
    return tuple((name, chem.MolFromSmarts(smarts)) for name, smarts in FUNCTIONAL_GROUPS)


def mol_from_smiles(smiles: str) -> Any:
    """An RDKit molecule; ValueError naming the SMILES when RDKit cannot parse or sanitise it."""
    chem = require_rdkit()
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")  # parse failures are reported through the ValueError below
    mol = chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    return mol


def attach(mol: Any, atom: int, substituent: str) -> Any:
    """`mol` with the substituent SMILES (its "*" = attachment point) bonded to atom index `atom`."""
    chem = require_rdkit()
    frag = chem.MolFromSmiles(substituent)
    star = next(a.GetIdx() for a in frag.GetAtoms() if a.GetAtomicNum() == 0)
    anchor = frag.GetAtomWithIdx(star).GetNeighbors()[0].GetIdx()
    combined = chem.RWMol(chem.CombineMols(mol, frag))
    offset = mol.GetNumAtoms()
    combined.AddBond(atom, offset + anchor, chem.BondType.SINGLE)
    combined.RemoveAtom(offset + star)
    out = combined.GetMol()
    chem.SanitizeMol(out)
    return out


def describe_molecule(mol: Any) -> dict[str, Any]:
    """Exact facts about a molecule: formula, weight, heavy-atom counts, rings, functional groups."""
    chem = require_rdkit()
    from rdkit.Chem import Descriptors, rdMolDescriptors

    ring_info = mol.GetRingInfo()
    rings = [sorted(r) for r in ring_info.AtomRings()]
    aromatic = sum(all(mol.GetAtomWithIdx(i).GetIsAromatic() for i in r) for r in rings)
    groups: dict[str, int] = {}
    for name, pattern in _group_patterns():
        n = len(mol.GetSubstructMatches(pattern))
        if n:
            groups[name] = n
    counts = Counter(a.GetSymbol() for a in mol.GetAtoms())
    return {
        "smiles": chem.MolToSmiles(mol),
        "formula": rdMolDescriptors.CalcMolFormula(mol),
        "mol_weight": round(Descriptors.MolWt(mol), 3),
        "heavy_atoms": mol.GetNumHeavyAtoms(),
        "element_counts": dict(sorted(counts.items())),
        "num_rings": len(rings),
        "ring_sizes": sorted(len(r) for r in rings),
        "aromatic_rings": aromatic,
        "functional_groups": groups,
        "stereocentres": len(chem.FindMolChiralCenters(mol, includeUnassigned=True)),
    }


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ChemConfig(GeneratorConfig):
    """Settings of the ``chem`` generator.

    Attributes:
        image_size: side of the square depictions (>= 128).
        tasks / task_weights: task kinds and their relative frequency (empty = t2i 2 : think 2 : understanding 1).
        sources / source_weights: where molecules come from ("builtin", "procedural", "file").
        molecules_file: TSV/CSV of ``name<TAB>SMILES`` or bare SMILES, one per line (source "file").
        max_substituents: most substituents on a procedural scaffold (1..3).
        min_heavy_atoms, max_heavy_atoms: size window of accepted molecules.
        name_prompt_prob: chance that a named molecule is asked for by name (else by SMILES).
        rotate: allow random rotations of the depiction; bw_prob: chance of a black-and-white palette.
        questions: understanding questions.
    """

    image_size: int = 384
    tasks: tuple[str, ...] = TASKS
    task_weights: tuple[float, ...] = ()
    sources: tuple[str, ...] = ("builtin", "procedural")
    source_weights: tuple[float, ...] = ()
    molecules_file: str = ""
    max_substituents: int = 3
    min_heavy_atoms: int = 3
    max_heavy_atoms: int = 40
    name_prompt_prob: float = 0.7
    rotate: bool = True
    bw_prob: float = 0.3
    questions: tuple[str, ...] = QUESTIONS

    def validate(self) -> None:
        check_min_int("image_size", self.image_size, 128)
        check_subset("tasks", self.tasks, TASKS)
        check_weights("task_weights", self.task_weights, self.tasks)
        check_subset("sources", self.sources, SOURCES)
        check_weights("source_weights", self.source_weights, self.sources)
        if "file" in self.sources and not self.molecules_file:
            raise ValueError("source 'file' needs molecules_file")
        if self.molecules_file and not Path(self.molecules_file).is_file():
            raise ValueError(f"molecules_file {self.molecules_file!r} does not exist")
        if not 1 <= self.max_substituents <= 3:
            raise ValueError(f"max_substituents must be in [1, 3], got {self.max_substituents}")
        if not 1 <= self.min_heavy_atoms <= self.max_heavy_atoms:
            raise ValueError(
                f"need 1 <= min_heavy_atoms <= max_heavy_atoms, got {self.min_heavy_atoms}, {self.max_heavy_atoms}"
            )
        check_range("name_prompt_prob", self.name_prompt_prob, 0.0, 1.0)
        check_range("bw_prob", self.bw_prob, 0.0, 1.0)
        check_subset("questions", self.questions, QUESTIONS)


def read_molecules_file(path: str) -> list[tuple[str, str]]:
    """(name, SMILES) rows; a line is ``name<TAB>SMILES``, ``name,SMILES`` or a bare SMILES ("" name)."""
    rows: list[tuple[str, str]] = []
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        sep = "\t" if "\t" in line else ("," if "," in line else None)
        name, smiles = line.rsplit(sep, 1) if sep else ("", line)
        try:
            mol_from_smiles(smiles.strip())
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from exc
        rows.append((name.strip(), smiles.strip()))
    if not rows:
        raise ValueError(f"molecules_file {path!r} holds no molecules")
    return rows


# --------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Molecule:
    name: str
    mol: Any
    source: str
    recipe: dict[str, Any]


@register_generator("chem")
class ChemGenerator(Generator):
    """Molecule depictions with exact chemistry facts; see the module docstring."""

    config_class = ChemConfig

    def __init__(self, config: ChemConfig) -> None:
        super().__init__(config)
        require_rdkit()
        self.cfg = config
        default = [TASK_SHARE[t] for t in config.tasks]
        self.task_p = probabilities(config.task_weights or default, len(config.tasks))
        self.source_p = probabilities(config.source_weights, len(config.sources))
        self.file_rows = read_molecules_file(config.molecules_file) if config.molecules_file else []

    # ---- molecules -------------------------------------------------------------------------------

    def _molecule(self, rng: np.random.Generator) -> _Molecule:
        source = pick_weighted(rng, self.cfg.sources, self.source_p)
        if source == "procedural":
            return self._procedural(rng)
        name, smiles = pick(rng, BUILTIN_MOLECULES if source == "builtin" else self.file_rows)
        return _Molecule(name, mol_from_smiles(smiles), source, {"smiles": smiles})

    def _procedural(self, rng: np.random.Generator) -> _Molecule:
        scaffold = pick(rng, list(SCAFFOLDS))
        mol = mol_from_smiles(SCAFFOLDS[scaffold])
        core = mol.GetNumAtoms()  # substituents go on the scaffold only (attached atoms come after it)
        added: list[tuple[str, int]] = []
        for _ in range(int(rng.integers(1, self.cfg.max_substituents + 1))):
            # Only carbons with a hydrogen take substituents (keeps valences and aromaticity intact).
            sites = [
                a.GetIdx()
                for a in mol.GetAtoms()
                if a.GetIdx() < core and a.GetSymbol() == "C" and a.GetTotalNumHs() > 0
            ]
            if not sites:
                break
            site = pick(rng, sites)
            group = pick(rng, list(SUBSTITUENTS))
            try:
                mol = attach(mol, site, SUBSTITUENTS[group])
            except Exception as exc:  # RDKit raises its own sanitisation errors
                raise RejectSample("procedural_invalid") from exc
            added.append((group, site))
        recipe = {"scaffold": scaffold, "substituents": [{"group": g, "atom": s} for g, s in added]}
        return _Molecule("", mol, "procedural", recipe)

    # ---- drawing ---------------------------------------------------------------------------------

    def _draw(
        self, rng: np.random.Generator, mol: Any
    ) -> tuple[Image.Image, dict[str, Any], list[dict[str, Any]]]:
        from rdkit import rdBase
        from rdkit.Chem import rdDepictor
        from rdkit.Chem.Draw import rdMolDraw2D

        chem = require_rdkit()
        mol = chem.Mol(mol)
        rdDepictor.Compute2DCoords(mol, canonOrient=True)
        size = self.cfg.image_size
        drawer = rdMolDraw2D.MolDraw2DCairo(size, size)
        opts = drawer.drawOptions()
        rotate = float(rng.integers(0, 12) * 30) if self.cfg.rotate else 0.0
        bw = bool(rng.random() < self.cfg.bw_prob)
        width = int(rng.integers(1, 4))
        opts.rotate = rotate
        opts.bondLineWidth = width
        opts.padding = 0.08
        opts.fixedBondLength = 0.11 * size  # an upper bound: small molecules keep a natural scale
        if bw:
            opts.useBWAtomPalette()
        drawer.DrawMolecule(mol)
        drawer.FinishDrawing()
        image = decode_image(drawer.GetDrawingText())
        atoms = []
        for atom in mol.GetAtoms():
            point = drawer.GetDrawCoords(atom.GetIdx())
            atoms.append({"symbol": atom.GetSymbol(), "x": round(point.x, 2), "y": round(point.y, 2)})
        drawing = {
            "rotate": rotate,
            "palette": "bw" if bw else "default",
            "bond_line_width": width,
            "rdkit_version": rdBase.rdkitVersion,
        }
        return image, drawing, atoms

    # ---- text ------------------------------------------------------------------------------------

    @staticmethod
    def _element_text(counts: dict[str, int]) -> str:
        order = sorted(counts, key=lambda s: (s != "C", s != "H", s))
        return ", ".join(f"{counts[s]} {ELEMENT_NAMES.get(s, s)}" for s in order)

    def _layout_text(self, atoms: list[dict[str, Any]], facts: dict[str, Any]) -> str:
        xs = np.array([a["x"] for a in atoms])
        ys = np.array([a["y"] for a in atoms])
        size = self.cfg.image_size
        width, height = xs.max() - xs.min(), ys.max() - ys.min()
        shape = (
            "wider than tall"
            if width > 1.25 * height
            else ("taller than wide" if height > 1.25 * width else "roughly square")
        )
        hetero = [a for a in atoms if a["symbol"] not in ("C", "H")]
        places: dict[str, list[str]] = {}
        for a in hetero:
            col = min(2, int(3 * a["x"] / size))
            row = min(2, int(3 * a["y"] / size))
            places.setdefault(REGION_WORDS[row][col], []).append(a["symbol"])
        spots = "; ".join(f"{'/'.join(sorted(set(v)))} at the {k}" for k, v in sorted(places.items()))
        text = f"The skeleton is {shape}, so I centre it and scale it to fill the canvas with a small margin."
        if spots:
            text += f" Heteroatom labels go at: {spots}."
        if facts["aromatic_rings"]:
            text += " Rings are regular polygons, and aromatic rings are drawn with alternating double bonds."
        elif facts["num_rings"]:
            text += " Rings are drawn as regular polygons."
        return text

    def _thought(
        self, molecule: _Molecule, facts: dict[str, Any], atoms: list[dict[str, Any]], by_name: bool
    ) -> str:
        parts = []
        if by_name:
            parts.append(f"{molecule.name[:1].upper() + molecule.name[1:]} has the SMILES {facts['smiles']}.")
        else:
            parts.append(f"The SMILES {facts['smiles']} describes the molecule to draw.")
        parts.append(
            f"Its molecular formula is {facts['formula']} (molecular weight {facts['mol_weight']:.2f}), with "
            f"{facts['heavy_atoms']} heavy atoms: {self._element_text(facts['element_counts'])}."
        )
        n_rings, n_arom = facts["num_rings"], facts["aromatic_rings"]
        if n_rings == 1:
            kind = "an aromatic" if n_arom else "a non-aromatic"
            parts.append(f"It has one ring: {kind} {facts['ring_sizes'][0]}-membered ring.")
        elif n_rings:
            sizes = ", ".join(str(s) for s in facts["ring_sizes"])
            parts.append(f"It has {n_rings} rings (sizes {sizes}), {n_arom} of them aromatic.")
        else:
            parts.append("It is acyclic.")
        groups = facts["functional_groups"]
        if groups:
            listed = ", ".join(f"{g} x{n}" if n > 1 else g for g, n in groups.items())
            parts.append(f"Functional groups: {listed}.")
        if molecule.source == "procedural":
            subs = [s["group"] for s in molecule.recipe["substituents"]]
            noun = "substituent" if len(subs) == 1 else "substituents"
            parts.append(f"It is a {molecule.recipe['scaffold']} carrying {', '.join(subs)} {noun}.")
        parts.append(self._layout_text(atoms, facts))
        return " ".join(parts)

    def _prompt(
        self, rng: np.random.Generator, molecule: _Molecule, facts: dict[str, Any]
    ) -> tuple[str, bool]:
        by_name = bool(molecule.name) and rng.random() < self.cfg.name_prompt_prob
        if by_name:
            template = pick(
                rng,
                (
                    "Draw the chemical structure of {name}.",
                    "Draw the skeletal formula of {name}.",
                    "Show the 2D structure of the {name} molecule.",
                    "Depict {name} ({formula}) as a structural formula.",
                ),
            )
        else:
            template = pick(
                rng,
                (
                    "Draw the molecule with SMILES {smiles}.",
                    "Draw the 2D structure for the SMILES string {smiles}.",
                    "Depict the compound {smiles} as a skeletal formula.",
                ),
            )
        return template.format(name=molecule.name, formula=facts["formula"], smiles=facts["smiles"]), by_name

    # ---- samples ---------------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator, sample_id: str) -> Sample:
        task = pick_weighted(rng, self.cfg.tasks, self.task_p)
        molecule = self._molecule(rng)
        facts = describe_molecule(molecule.mol)
        if not self.cfg.min_heavy_atoms <= facts["heavy_atoms"] <= self.cfg.max_heavy_atoms:
            raise RejectSample("molecule_size")
        image, drawing, atoms = self._draw(rng, molecule.mol)
        chem = require_rdkit()
        bonds = [
            [b.GetBeginAtomIdx(), b.GetEndAtomIdx(), str(b.GetBondType()).lower()]
            for b in molecule.mol.GetBonds()
        ]
        meta: dict[str, Any] = {
            "world": "chem",
            "name": molecule.name,
            "source": molecule.source,
            "recipe": molecule.recipe,
            **facts,
            "inchi": chem.MolToInchi(molecule.mol) if hasattr(chem, "MolToInchi") else "",
            "atoms": atoms,
            "bonds": bonds,
            "drawing": drawing,
        }
        if task == "understanding":
            return self._understanding(rng, sample_id, molecule, facts, image, meta)
        prompt, by_name = self._prompt(rng, molecule, facts)
        target = ImageRef.from_image("target", image)
        meta["prompt_by"] = "name" if by_name else "smiles"
        if task == "t2i":
            meta["family"] = "t2i/structure"
            return Sample(id=sample_id, task="t2i", prompt=prompt, target=target, meta=meta)
        meta["family"] = "think/structure"
        thought = self._thought(molecule, facts, atoms, by_name)
        return Sample(id=sample_id, task="think", prompt=prompt, thought=thought, target=target, meta=meta)

    def _understanding(
        self,
        rng: np.random.Generator,
        sid: str,
        molecule: _Molecule,
        facts: dict[str, Any],
        image: Image.Image,
        meta: dict[str, Any],
    ) -> Sample:
        options = [q for q in self.cfg.questions if q != "name" or molecule.name]
        if not options:
            raise RejectSample("no_applicable_question")
        question_kind = pick(rng, options)
        groups = facts["functional_groups"]
        qa = {
            "formula": ("What is the molecular formula of the compound shown?", facts["formula"]),
            "rings": ("How many rings does this molecule contain?", str(facts["num_rings"])),
            "name": ("What is the name of this compound?", molecule.name),
            "groups": (
                "Which functional groups does this molecule have?",
                ", ".join(sorted(groups)) if groups else "none of the common functional groups",
            ),
        }
        question, answer = qa[question_kind]
        meta["family"] = f"understanding/{question_kind}"
        meta["qa"] = [{"family": question_kind, "question": question, "answer": answer}]
        return Sample(
            id=sid,
            task="understanding",
            images=[ImageRef.from_image("image0", image)],
            messages=[Message("user", f"{IMAGE_PLACEHOLDER}\n{question}"), Message("assistant", answer)],
            meta=meta,
        )
