"""DPG-Bench (ELLA): 1,065 dense prompts, 4 images each tiled 2x2, scored by mPLUG-large VQA.

Data (``--data``): either ELLA's prompt folder ``dpg_bench/prompts/<item_id>.txt`` (one prompt per
file; pass the ``prompts`` folder or its parent) or a JSONL file with ``item_id`` and ``prompt`` per
line (the form in ``shared/benchmarks/dpg-bench/prompts.jsonl``).

Official layout (ELLA README: "generate 4 images per prompt and grid them to 2x2 format ... the
generated image's filename is the same with the prompt's filename"), under ``OUT/dpg/``::

    <item_id>.png      # 2R x 2R: tiles (0,0) (R,0) (0,R) (R,R) = images 0..3, each R x R

``compute_dpg_bench.py`` lists *every* file of that folder and crops tiles at multiples of
``--resolution R``, so the folder holds the PNGs only and every tile is square. The scorer is
``bash dpg_bench/dist_eval.sh OUT/dpg R`` (or scorers.run_dpg_official); Overall = mean over prompts of
the per-image fraction of questions answered "yes" (children zeroed when a parent fails), x 100.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from internvlu.evaluation.runner import EvalItem, Generated, KeyPngBenchmark, image_grid, save_image
from internvlu.evaluation.settings import EvalSettings

PAPER_CATEGORIES: tuple[str, ...] = ("global", "entity", "attribute", "relation", "other")


class DPGBench(KeyPngBenchmark):
    name = "dpg"
    kind = "t2i"
    title = "DPG-Bench"
    default_num_images = 4
    OPTIONS: ClassVar[dict[str, tuple[Any, str]]] = {
        "scorer_repo": (None, "path of an ELLA checkout (dpg_bench/compute_dpg_bench.py)"),
        "csv": (None, "DPG-Bench's dpg_bench.csv (default: <scorer_repo>/dpg_bench/dpg_bench.csv)"),
        "processes": (1, "accelerate processes (GPUs) for the scorer"),
        "accelerate": (None, "the accelerate executable of the scorer's environment"),
        "results": (None, "an existing result .txt of compute_dpg_bench.py to summarise"),
    }
    SCORING_OPTIONS = ("scorer_repo", "csv", "processes", "accelerate", "results")

    def load_items(self) -> list[EvalItem]:
        assert self.data is not None
        entries: list[tuple[str, str]] = []
        if self.data.is_file():
            for n, line in enumerate(self.data.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    if "item_id" not in row or "prompt" not in row:
                        raise ValueError(f"{self.data}:{n}: a DPG line needs 'item_id' and 'prompt'")
                    entries.append((str(row["item_id"]), row["prompt"]))
        else:
            folder = self.data / "prompts" if (self.data / "prompts").is_dir() else self.data
            files = sorted(folder.glob("*.txt"))
            if not files:
                raise FileNotFoundError(f"no DPG prompt files (*.txt) in {folder}")
            entries = [(p.stem, p.read_text(encoding="utf-8").strip()) for p in files]
        return [EvalItem(key=key, index=i, prompt=prompt) for i, (key, prompt) in enumerate(entries)]

    def _check_size(self, settings: EvalSettings) -> int:
        if settings.height != settings.width:
            raise ValueError(
                f"DPG-Bench tiles must be square (the scorer crops R x R), got {settings.height}x{settings.width}"
            )
        if settings.num_images not in (1, 4):
            raise ValueError(
                f"DPG-Bench takes 1 or 4 images per prompt (2x2 grid), got {settings.num_images}"
            )
        assert settings.height is not None  # resolved by build_settings
        return settings.height

    def write_item(self, item: EvalItem, result: Generated, out: Path, settings: EvalSettings) -> None:
        self._check_size(settings)
        grid = result.images[0] if len(result.images) == 1 else image_grid(result.images, columns=2)
        save_image(grid, self.outputs(item, out, settings)[0], settings, {"prompt": item.prompt})

    def check_layout(self, out: Path, settings: EvalSettings) -> list[str]:
        return check_dpg_layout(
            self.layout_dir(out),
            [it.key for it in self.items()],
            self._check_size(settings),
            settings.num_images,
        )

    def score(
        self, out: Path, settings: EvalSettings, records: dict[str, dict[str, Any]], **kw: Any
    ) -> dict[str, Any] | None:
        from internvlu.evaluation import scorers

        if self.options.get("results"):
            return scorers.parse_dpg_results(Path(self.options["results"]).read_text(encoding="utf-8"))
        if not self.options.get("scorer_repo"):
            return None
        return scorers.run_dpg_official(
            self.layout_dir(out).resolve(),
            (out / "dpg_results.txt").resolve(),
            repo=self.options["scorer_repo"],
            csv=self.options.get("csv"),
            resolution=self._check_size(settings),
            pic_num=settings.num_images,
            processes=int(self.options["processes"]),
            accelerate=self.options.get("accelerate"),
        )


def check_dpg_layout(root: Path, keys: list[str], resolution: int, num_images: int) -> list[str]:
    """Check against ELLA's README and ``compute_dpg_bench.py``'s reading rules: only ``<item_id>.png``
    files, one per prompt, each a 2x2 grid of R x R tiles (or one R x R image with --pic-num 1)."""
    if not root.is_dir():
        return [f"{root} does not exist"]
    problems: list[str] = []
    names = sorted(p.name for p in root.iterdir())
    expected = sorted(f"{k}.png" for k in keys)
    if names != expected:
        extra = sorted(set(names) - set(expected))[:5]
        missing = sorted(set(expected) - set(names))[:5]
        problems.append(
            f"{root} must hold exactly one <item_id>.png per prompt (missing {missing}, extra {extra})"
        )
    side = resolution * (2 if num_images == 4 else 1)
    for name in sorted(set(names) & set(expected)):
        try:
            with Image.open(root / name) as im:
                if im.size != (side, side):
                    problems.append(
                        f"{root / name}: size {im.size}, expected {(side, side)} for {num_images} tile(s) of {resolution}px"
                    )
        except OSError as exc:
            problems.append(f"{root / name}: unreadable ({exc})")
    return problems
