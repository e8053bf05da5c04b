"""GenEval (Ghosh et al. 2023): 553 object-centric prompts in 6 tasks; the prompts ship with internvlu.

Official layout (GenEval README, "Image generation"), under ``OUT/geneval/``::

    00000/
        metadata.jsonl      # the prompt's line of evaluation_metadata.jsonl, unchanged (one JSON object)
        grid.png            # optional in the official layout; written here (2 columns)
        samples/
            0000.png ... 0003.png

The official scorer (``evaluation/evaluate_images.py``: Mask2Former + CLIP colour classifier, a CUDA
GPU and the legacy mmdet 2.x environment) reads this folder unchanged; scorers.py runs it when the
user has installed it and summarises its ``results.jsonl`` the way ``summary_scores.py`` does: mean
correctness per task over images, Overall = unweighted mean of the 6 task means.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from internvlu.evaluation.runner import (
    Benchmark,
    EvalItem,
    Generated,
    image_grid,
    save_image,
    write_text_atomic,
)
from internvlu.evaluation.settings import EvalSettings

DATA_DIR = Path(__file__).parent / "data"
SHIPPED_METADATA = DATA_DIR / "geneval_evaluation_metadata.jsonl"
TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


class GenEval(Benchmark):
    name = "geneval"
    kind = "t2i"
    title = "GenEval"
    default_num_images = 4
    needs_data = False
    OPTIONS: ClassVar[dict[str, tuple[Any, str]]] = {
        "scorer_python": (None, "python of the environment where GenEval's scorer is installed"),
        "scorer_repo": (None, "path of a GenEval checkout (evaluation/evaluate_images.py)"),
        "detector_path": (
            None,
            "folder holding the Mask2Former checkpoint (evaluate_images.py --model-path)",
        ),
        "results": (None, "an existing results.jsonl of the official scorer to summarise"),
    }
    SCORING_OPTIONS = ("scorer_python", "scorer_repo", "detector_path", "results")

    def metadata_file(self) -> Path:
        if self.data is None:
            return SHIPPED_METADATA
        return self.data / "evaluation_metadata.jsonl" if self.data.is_dir() else self.data

    def data_files(self) -> list[Path]:
        return [self.metadata_file()]

    def load_items(self) -> list[EvalItem]:
        path = self.metadata_file()
        if not path.is_file():
            raise FileNotFoundError(
                f"GenEval metadata {str(path)!r} not found (expected evaluation_metadata.jsonl)"
            )
        items = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            meta = json.loads(line)
            if "prompt" not in meta or "tag" not in meta:
                raise ValueError(f"{path}: line {len(items) + 1} lacks 'prompt' or 'tag'")
            index = len(items)
            items.append(
                EvalItem(
                    key=f"{index:05d}",
                    index=index,
                    prompt=meta["prompt"],
                    meta={"raw": line, "tag": meta["tag"]},
                )
            )
        return items

    def outputs(self, item: EvalItem, out: Path, settings: EvalSettings) -> list[Path]:
        folder = self.layout_dir(out) / item.key
        return [
            folder / "metadata.jsonl",
            *(folder / "samples" / f"{k:04d}.png" for k in range(settings.num_images)),
        ]

    def write_item(self, item: EvalItem, result: Generated, out: Path, settings: EvalSettings) -> None:
        folder = self.layout_dir(out) / item.key
        for k, image in enumerate(result.images):
            save_image(
                image,
                folder / "samples" / f"{k:04d}.png",
                settings,
                {"prompt": item.prompt, "seed": settings.seed + k},
            )
        save_image(image_grid(result.images, columns=min(2, len(result.images))), folder / "grid.png")
        # Written last: the scorer treats a folder with metadata.jsonl as complete.
        write_text_atomic(folder / "metadata.jsonl", item.meta["raw"].rstrip("\n") + "\n")

    def check_layout(self, out: Path, settings: EvalSettings) -> list[str]:
        return check_geneval_layout(
            self.layout_dir(out), [json.loads(it.meta["raw"]) for it in self.items()], settings.num_images
        )

    def score(
        self, out: Path, settings: EvalSettings, records: dict[str, dict[str, Any]], **kw: Any
    ) -> dict[str, Any] | None:
        from internvlu.evaluation import scorers

        results = self.options.get("results")
        if results is None and self.options.get("scorer_repo"):
            results = scorers.run_geneval_official(
                self.layout_dir(out),
                out / "geneval_results.jsonl",
                repo=self.options["scorer_repo"],
                detector_path=self.options.get("detector_path"),
                python=self.options.get("scorer_python"),
            )
        if results is None:
            return None
        return scorers.summarize_geneval_results(Path(results))


def check_geneval_layout(root: Path, metadata: list[dict[str, Any]], num_images: int) -> list[str]:
    """Check a folder against GenEval's documented layout (README "Image generation" + the scorer's
    reading rules: digit-named folders, ``metadata.jsonl`` parsed with ``json.load``, ``samples/*.png``
    named by digits)."""
    problems: list[str] = []
    if not root.is_dir():
        return [f"{root} does not exist"]
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    names = [p.name for p in folders]
    expected = [f"{i:05d}" for i in range(len(metadata))]
    if names != expected:
        missing = sorted(set(expected) - set(names))[:5]
        extra = sorted(set(names) - set(expected))[:5]
        problems.append(
            f"prompt folders differ from 00000..{len(metadata) - 1:05d} (missing {missing}, extra {extra})"
        )
    for folder, meta in zip(folders, metadata):
        meta_file = folder / "metadata.jsonl"
        try:
            with open(meta_file, encoding="utf-8") as fh:
                stored = json.load(fh)  # the scorer reads it this way: one JSON object
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"{meta_file}: unreadable as one JSON object ({exc})")
            continue
        if stored != meta:
            problems.append(f"{meta_file}: differs from the prompt's metadata line")
        samples = folder / "samples"
        pngs = sorted(p.name for p in samples.glob("*")) if samples.is_dir() else []
        if pngs != [f"{k:04d}.png" for k in range(num_images)]:
            problems.append(f"{samples}: expected {num_images} images 0000.png.., found {pngs[:6]}")
            continue
        for name in pngs:
            if not re.fullmatch(r"\d+\.png", name):
                problems.append(f"{samples / name}: not a digit-named PNG")
            try:
                with Image.open(samples / name) as im:
                    if im.format != "PNG":
                        problems.append(f"{samples / name}: not PNG data")
            except OSError as exc:
                problems.append(f"{samples / name}: unreadable ({exc})")
    return problems
