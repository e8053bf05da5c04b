"""TextEdit (open-compass, InternVL-U report appendix A): 2,148 text edits with human-made targets.

Data (``--data``): a TextEdit checkout holding ``eval_prompts/<subset>/<category>.jsonl`` (subset
``fullset`` or ``miniset``, 18 categories ``1.x.x`` Virtual and ``2.x`` Real) and the images under
``data/`` (or ``--option data_root=DIR``). Each JSONL row has ``id``, ``prompt`` ("Replace the text 'X'
with 'Y'."), ``original_image`` and ``gt_image`` (paths relative to the data root, first component
= category), ``source_text``, ``target_text``, ``gt_caption``.

Official layout (TextEdit README "Model Output Preparation" and the scorers' path rule
``<model_output_root>/<model>/<category>/<basename of original_image>``), under ``OUT/textedit/``::

    <model_name>/<category>/<original file name>      # same name and extension as the source image

Scoring:

* classic metrics (OCR accuracy/precision/recall/F1, ROI-NED, CLIPScore, aesthetics) need PaddleOCR,
  CLIP and the aesthetic head: scorers.run_textedit_classic runs TextEdit's own script when
  ``--option classic_cache_dir=DIR`` (its checkpoint folder) is given;
* MLLM metrics run through the judge with TextEdit's own prompt (``PROMPT_MAIN_EVAL`` of
  ``eval_pipeline/vlm_metrics_eval_step1.py``) on [original, ground truth, edited resized to the
  original size]; the reply's JSON ``score`` holds Q1..Q5 (1-5), mapped 5->1.0, 4->0.8, 3->0.6,
  2->0.2, 1->0.0; when Q1 < 4 the other four count 0 (the cutoff); weighted 0.4/0.3/0.1/0.1/0.1 and
  averaged separately over Real (2.x) and Virtual (1.x) samples, as ``vlm_metrics_eval_step2.py`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from internvlu.evaluation.judge import (
    Judge,
    JudgeRequest,
    load_json_prompts,
    parse_json_reply,
    python_string_constants,
    write_judgements,
)
from internvlu.evaluation.runner import Benchmark, EvalItem, Generated, load_rgb, save_image
from internvlu.evaluation.settings import EvalSettings

NORMALIZE: dict[int, float] = {5: 1.0, 4: 0.8, 3: 0.6, 2: 0.2, 1: 0.0}
WEIGHTS: tuple[float, ...] = (0.4, 0.3, 0.1, 0.1, 0.1)
DIMENSIONS: tuple[str, ...] = ("TA", "TP", "SI", "LR", "VC")  # Q1..Q5


def textedit_weighted(scores: dict[str, Any]) -> tuple[float, list[float]] | None:
    """(weighted score, normalised Q1..Q5 after the cutoff) of a judge's score dict, or None."""
    try:
        raw = [int(scores[f"Q{i}"]) for i in range(1, 6)]
    except (KeyError, TypeError, ValueError):
        return None
    if any(r not in NORMALIZE for r in raw):
        return None
    normed = [NORMALIZE[raw[0]]] + [0.0 if raw[0] < 4 else NORMALIZE[r] for r in raw[1:]]
    return sum(w * s for w, s in zip(WEIGHTS, normed)), normed


class TextEdit(Benchmark):
    name = "textedit"
    kind = "edit"
    title = "TextEdit"
    OPTIONS: ClassVar[dict[str, tuple[Any, str]]] = {
        "subset": ("fullset", "fullset (2,148) or miniset (500)"),
        "data_root": (None, "root of the images (default: <data>/data)"),
        "model_name": ("internvlu", "model folder name in the layout"),
        "judge_prompts": (None, "TextEdit's eval_pipeline/vlm_metrics_eval_step1.py, or a JSON {main}"),
        "classic_cache_dir": (None, "TextEdit checkpoint folder: runs its classic-metrics script"),
        "scorer_python": (None, "python of the environment with TextEdit's classic-metrics dependencies"),
    }
    SCORING_OPTIONS = ("judge_prompts", "classic_cache_dir", "scorer_python")

    def prompt_dir(self) -> Path:
        assert self.data is not None
        subset = self.options["subset"]
        if subset not in ("fullset", "miniset"):
            raise ValueError(f"--option subset must be fullset or miniset, got {subset!r}")
        folder = self.data / "eval_prompts" / subset
        return folder if folder.is_dir() else self.data

    def data_root(self) -> Path:
        assert self.data is not None
        return Path(self.options["data_root"]) if self.options.get("data_root") else self.data / "data"

    def data_files(self) -> list[Path]:
        return sorted(self.prompt_dir().glob("*.jsonl"))

    def load_items(self) -> list[EvalItem]:
        files = self.data_files()
        if not files:
            raise FileNotFoundError(f"no TextEdit prompt files (*.jsonl) in {self.prompt_dir()}")
        items: list[EvalItem] = []
        for path in files:
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                category = row["original_image"].split("/")[0]
                meta = {
                    "category": category,
                    "file": row["original_image"].split("/")[-1],
                    "gt_image": row["gt_image"],
                    "source_text": row.get("source_text", ""),
                    "target_text": row.get("target_text", ""),
                }
                source = self.data_root() / row["original_image"]
                items.append(
                    EvalItem(
                        key=str(row["id"]), index=len(items), prompt=row["prompt"], images=[source], meta=meta
                    )
                )
        return items

    def outputs(self, item: EvalItem, out: Path, settings: EvalSettings) -> list[Path]:
        return [self.layout_dir(out) / self.options["model_name"] / item.meta["category"] / item.meta["file"]]

    def write_item(self, item: EvalItem, result: Generated, out: Path, settings: EvalSettings) -> None:
        save_image(result.images[0], self.outputs(item, out, settings)[0], settings, {"prompt": item.prompt})

    def check_layout(self, out: Path, settings: EvalSettings) -> list[str]:
        problems = []
        for item in self.items():
            path = self.outputs(item, out, settings)[0]
            if not path.is_file():
                problems.append(f"missing {path.relative_to(out)}")
                continue
            try:
                with Image.open(path) as im:
                    im.verify()
            except OSError as exc:
                problems.append(f"{path}: unreadable ({exc})")
        return problems[:20]

    def judge_template(self) -> str:
        path = self.options.get("judge_prompts")
        if path is None and self.data is not None:
            guess = self.data / "eval_pipeline" / "vlm_metrics_eval_step1.py"
            path = guess if guess.is_file() else None
        if path is None:
            raise ValueError(
                "TextEdit MLLM scoring needs --option judge_prompts=PATH/TO/vlm_metrics_eval_step1.py"
            )
        path = Path(path)
        if path.suffix == ".json":
            return load_json_prompts(path)["main"]
        constants = python_string_constants(path)
        if "PROMPT_MAIN_EVAL" not in constants:
            raise ValueError(f"{path} has no PROMPT_MAIN_EVAL string")
        return constants["PROMPT_MAIN_EVAL"]

    def score(
        self,
        out: Path,
        settings: EvalSettings,
        records: dict[str, dict[str, Any]],
        judge: Judge | None = None,
        **kw: Any,
    ) -> dict[str, Any] | None:
        from internvlu.evaluation import scorers

        result: dict[str, Any] = {}
        if self.options.get("classic_cache_dir"):
            assert self.data is not None
            result["classic"] = scorers.run_textedit_classic(
                repo=self.data,
                benchmark_dir=self.prompt_dir(),
                gt_root=self.data_root(),
                output_root=self.layout_dir(out),
                model_name=self.options["model_name"],
                result_dir=out / "textedit_classic",
                cache_dir=self.options["classic_cache_dir"],
                python=self.options.get("scorer_python"),
            )
        if judge is not None:
            result.update(self._mllm(out, settings, judge))
        return result or None

    def _mllm(self, out: Path, settings: EvalSettings, judge: Judge) -> dict[str, Any]:
        template = self.judge_template()
        items = self.items()
        requests = []
        for item in items:
            original = load_rgb(item.images[0])
            edited = load_rgb(self.outputs(item, out, settings)[0])
            if edited.size != original.size:
                edited = edited.resize(original.size, Image.Resampling.LANCZOS)
            text = template.format(raw_text=item.meta["source_text"], target_text=item.meta["target_text"])
            requests.append(
                JudgeRequest(text, [original, load_rgb(self.data_root() / item.meta["gt_image"]), edited])
            )
        replies = judge.map(requests)
        groups: dict[str, dict[str, list[Any]]] = {g: {"weighted": [], "q": []} for g in ("real", "virtual")}
        rows, failed = [], 0
        for item, reply in zip(items, replies):
            parsed = parse_json_reply(reply)
            scored = textedit_weighted(parsed.get("score", {})) if isinstance(parsed, dict) else None
            rows.append(
                {
                    "id": item.key,
                    "category": item.meta["category"],
                    "reply": reply,
                    "weighted": None if scored is None else scored[0],
                }
            )
            if scored is None:
                failed += 1
                continue
            group = "virtual" if item.meta["category"].startswith("1.") else "real"
            groups[group]["weighted"].append(scored[0])
            groups[group]["q"].append(scored[1])
        write_judgements(out / "textedit_judgements.jsonl", rows)
        result: dict[str, Any] = {"failed": failed, "judged": len(items)}
        for group, data in groups.items():
            if not data["weighted"]:
                continue
            tag = "R" if group == "real" else "V"
            for j, dim in enumerate(DIMENSIONS):
                result[f"{tag}_{dim}"] = sum(q[j] for q in data["q"]) / len(data["q"])
            result[f"{tag}_avg"] = sum(data["weighted"]) / len(data["weighted"])
        return result
