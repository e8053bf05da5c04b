"""GEdit-Bench (Step1X-Edit): 606 real-world edits x {EN, CN} instructions in 11 task types, VIEScore.

Data (``--data``): a local copy of the Hugging Face dataset ``stepfun-ai/GEdit-Bench``, either

* its parquet files (any ``*.parquet`` under the folder; needs ``pyarrow``), columns ``key``,
  ``task_type``, ``instruction``, ``instruction_language``, ``input_image`` (image struct with
  ``bytes``), ``Intersection_exist``; or
* a ``metadata.jsonl`` with the same fields, ``input_image`` being a path relative to the folder.

``--option language=en|cn|all`` picks the instruction split (default ``en``, the paper's).

Official layout (GEdit-Bench ``EVAL.md`` and ``generate_image_example.py``), under ``OUT/gedit/``::

    <model_name>/fullset/<task_type>/<language>/<key>.png          # the edited image
    <model_name>/fullset/<task_type>/<language>/<key>_SRCIMG.png   # the source image, as the example saves

Scoring (VIEScore, ``tie`` task): the source and edited images are resized to about 512 x 512 pixels of
area (aspect kept); the SC prompt (VIEScore context + two-image edit rule + TIE SC rule, ``<instruction>``
filled in) goes with [source, edited], the PQ prompt (context + PQ rule) with [edited]; each reply is a
JSON object whose ``score`` list is reduced with ``min``; O = sqrt(SC * PQ). Categories are averaged
over their samples and the paper's Avg is the mean of the 11 category O scores; the ``intersection``
subset (``Intersection_exist``) is reported too. Prompts come from VIEScore's ``vie_prompts.py``
(``--option judge_prompts=PATH``) or a JSON file ``{"SC": ..., "PQ": ...}``.
"""

from __future__ import annotations

import io
import json
import math
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
from internvlu.evaluation.runner import Benchmark, EvalItem, Generated, generated_text, load_rgb, save_image
from internvlu.evaluation.settings import EvalSettings

TASK_TYPES: tuple[str, ...] = (
    "background_change",
    "color_alter",
    "material_alter",
    "motion_change",
    "ps_human",
    "style_change",
    "subject-add",
    "subject-remove",
    "subject-replace",
    "text_change",
    "tone_transfer",
)
VIESCORE_SC_PARTS = (
    "_context_no_delimit",
    "_prompts_0shot_two_image_edit_rule",
    "_prompts_0shot_tie_rule_SC",
)
VIESCORE_PQ_PARTS = ("_context_no_delimit", "_prompts_0shot_rule_PQ")
JUDGE_AREA = 512 * 512


def judge_size(width: int, height: int, area: int = JUDGE_AREA) -> tuple[int, int]:
    """Size with about `area` pixels and the same aspect ratio (as the GEdit scoring scripts resize)."""
    ratio = width / height
    new_w = math.sqrt(area * ratio)
    return int(new_w), int(new_w / ratio)


def _decode_image(value: Any, root: Path) -> Image.Image | Path:
    if isinstance(value, dict) and value.get("bytes"):
        with Image.open(io.BytesIO(value["bytes"])) as im:
            return im.convert("RGB")
    if isinstance(value, dict) and value.get("path"):
        return root / value["path"]
    if isinstance(value, str):
        return root / value
    raise ValueError(f"cannot read a GEdit input image from {type(value).__name__}")


class GEditBench(Benchmark):
    name = "gedit"
    kind = "edit"
    title = "GEdit-Bench"
    OPTIONS: ClassVar[dict[str, tuple[Any, str]]] = {
        "language": ("en", "instruction split: en, cn or all"),
        "model_name": ("internvlu", "method folder name in the layout (results/<model_name>/fullset/...)"),
        "judge_prompts": (None, "VIEScore's vie_prompts.py, or a JSON {SC, PQ}"),
    }
    SCORING_OPTIONS = ("judge_prompts",)

    def _rows(self) -> list[dict[str, Any]]:
        assert self.data is not None
        folder = self.data if self.data.is_dir() else self.data.parent
        if (self.data.is_file() and self.data.suffix == ".jsonl") or (self.data / "metadata.jsonl").is_file():
            path = self.data if self.data.is_file() else self.data / "metadata.jsonl"
            return [
                json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
            ]
        files = sorted(folder.rglob("*.parquet")) if self.data.is_dir() else [self.data]
        if not files:
            raise FileNotFoundError(f"no GEdit-Bench metadata.jsonl or *.parquet in {self.data}")
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError(
                "reading GEdit-Bench parquet files needs pyarrow (pip install pyarrow)"
            ) from exc
        rows: list[dict[str, Any]] = []
        for path in files:
            rows += pq.read_table(path).to_pylist()
        return rows

    def load_items(self) -> list[EvalItem]:
        language = self.options["language"]
        if language not in ("en", "cn", "all"):
            raise ValueError(f"--option language must be en, cn or all, got {language!r}")
        root = self.data if self.data is not None and self.data.is_dir() else self.data.parent  # type: ignore[union-attr]
        items: list[EvalItem] = []
        for row in self._rows():
            lang = row["instruction_language"]
            if language != "all" and lang != language:
                continue
            meta = {
                "task_type": row["task_type"],
                "language": lang,
                "intersection": bool(row.get("Intersection_exist", False)),
                "gedit_key": str(row["key"]),
            }
            image = _decode_image(row["input_image"], root)
            items.append(
                EvalItem(
                    key=f"{lang}/{row['key']}",
                    index=len(items),
                    prompt=row["instruction"],
                    images=[image],
                    meta=meta,
                )
            )
        return items

    def _folder(self, item: EvalItem, out: Path) -> Path:
        return (
            self.layout_dir(out)
            / self.options["model_name"]
            / "fullset"
            / item.meta["task_type"]
            / item.meta["language"]
        )

    def outputs(self, item: EvalItem, out: Path, settings: EvalSettings) -> list[Path]:
        folder = self._folder(item, out)
        return [folder / f"{item.meta['gedit_key']}.png", folder / f"{item.meta['gedit_key']}_SRCIMG.png"]

    def write_item(self, item: EvalItem, result: Generated, out: Path, settings: EvalSettings) -> None:
        edited, source = self.outputs(item, out, settings)
        save_image(load_rgb(item.images[0]), source)
        save_image(result.images[0], edited, settings, generated_text(item, result))

    def check_layout(self, out: Path, settings: EvalSettings) -> list[str]:
        problems = []
        for item in self.items():
            edited, _ = self.outputs(item, out, settings)
            if not edited.is_file():
                problems.append(f"missing {edited.relative_to(out)}")
        if self.layout_dir(out).is_dir():
            fullset = self.layout_dir(out) / self.options["model_name"] / "fullset"
            for task_dir in fullset.iterdir() if fullset.is_dir() else []:
                if task_dir.name not in TASK_TYPES:
                    problems.append(f"{task_dir}: not a GEdit-Bench task type")
                for lang_dir in task_dir.iterdir():
                    if lang_dir.name not in ("en", "cn"):
                        problems.append(f"{lang_dir}: language folder must be en or cn")
        return problems[:20]

    def judge_templates(self) -> tuple[str, str]:
        path = self.options.get("judge_prompts")
        if not path:
            raise ValueError(
                "GEdit scoring needs VIEScore's prompts: --option judge_prompts=PATH/TO/viescore/vie_prompts.py"
            )
        path = Path(path)
        if path.suffix == ".json":
            data = load_json_prompts(path)
            return data["SC"], data["PQ"]
        constants = python_string_constants(path)
        missing = [n for n in (*VIESCORE_SC_PARTS, *VIESCORE_PQ_PARTS) if n not in constants]
        if missing:
            raise ValueError(f"{path} lacks VIEScore prompt constants {missing}")
        return "\n".join(constants[n] for n in VIESCORE_SC_PARTS), "\n".join(
            constants[n] for n in VIESCORE_PQ_PARTS
        )

    def score(
        self,
        out: Path,
        settings: EvalSettings,
        records: dict[str, dict[str, Any]],
        judge: Judge | None = None,
        **kw: Any,
    ) -> dict[str, Any] | None:
        if judge is None:
            return None
        sc_template, pq_template = self.judge_templates()
        items = self.items()
        requests: list[JudgeRequest] = []
        for item in items:
            edited_path, source_path = self.outputs(item, out, settings)
            source, edited = load_rgb(source_path), load_rgb(edited_path)
            source = source.resize(judge_size(*source.size))
            edited = edited.resize(judge_size(*edited.size))
            requests.append(JudgeRequest(sc_template.replace("<instruction>", item.prompt), [source, edited]))
            requests.append(JudgeRequest(pq_template, [edited]))
        replies = judge.map(requests)
        rows, failed = [], 0
        per: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        inter: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for k, item in enumerate(items):
            sc_reply, pq_reply = replies[2 * k], replies[2 * k + 1]
            sc, pq = _min_score(sc_reply), _min_score(pq_reply)
            rows.append(
                {
                    "key": item.key,
                    "task_type": item.meta["task_type"],
                    "SC": sc,
                    "PQ": pq,
                    "sc_reply": sc_reply,
                    "pq_reply": pq_reply,
                }
            )
            if sc is None or pq is None:
                failed += 1
                continue
            triple = (sc, pq, math.sqrt(sc * pq))
            group = (item.meta["language"], item.meta["task_type"])
            per.setdefault(group, []).append(triple)
            if item.meta["intersection"]:
                inter.setdefault(group, []).append(triple)
        write_judgements(out / "gedit_judgements.jsonl", rows)
        result: dict[str, Any] = {"failed": failed, "judged": len(items)}
        for lang in sorted({g[0] for g in per}):
            full = _category_means({t: v for (lg, t), v in per.items() if lg == lang})
            part = _category_means({t: v for (lg, t), v in inter.items() if lg == lang})
            prefix = f"{lang}_" if self.options["language"] == "all" else ""
            result.update({f"{prefix}{t}": full["O"][t] for t in TASK_TYPES if t in full["O"]})
            result[f"{prefix}overall"] = full["avg"]["O"]
            result[f"{prefix}semantics"] = full["avg"]["SC"]
            result[f"{prefix}quality"] = full["avg"]["PQ"]
            if part["O"]:
                result[f"{prefix}intersection_overall"] = part["avg"]["O"]
        return result


def _min_score(reply: str) -> float | None:
    parsed = parse_json_reply(reply)
    if not isinstance(parsed, dict) or not isinstance(parsed.get("score"), list) or not parsed["score"]:
        return None
    try:
        return float(min(float(s) for s in parsed["score"]))
    except (TypeError, ValueError):
        return None


def _category_means(groups: dict[str, list[tuple[float, float, float]]]) -> dict[str, dict[str, float]]:
    """Per-category means of SC / PQ / O and their unweighted average over categories."""
    means: dict[str, dict[str, float]] = {"SC": {}, "PQ": {}, "O": {}}
    for task, triples in groups.items():
        for j, name in enumerate(("SC", "PQ", "O")):
            means[name][task] = sum(t[j] for t in triples) / len(triples)
    avg = {name: (sum(v.values()) / len(v) if v else 0.0) for name, v in means.items()}
    return {**means, "avg": avg}
