"""ImgEdit-Bench, basic suite: 737 single-turn edits in 9 types, judged 1-5 by GPT-4.1.

Data (``--data``): ImgEdit's edit metadata JSON (``Benchmark/Basic/basic_edit.json``; GenEditEvalKit
ships the same records as ``singleturn/singleturn.json``), a JSON object ``key -> {"id":
"<folder>/<file>.jpg", "prompt": ..., "edit_type": ...}``, or the folder holding it. The original
images are read from ``--option image_root=DIR`` (default: the JSON file's folder), at ``DIR/<id>``.
Edit types: add, alter (the paper's "Adjust"), extract, replace, remove, background, style, compose
("Hybrid"), action.

Official layout (ImgEdit ``basic_bench_readme.md``: "edited images ... with filenames prefixed by the
key"), under ``OUT/imgedit/``::

    <key>.png

Scoring (``basic_bench.py`` + ``step1_get_avgscore.py`` + ``step2_typescore.py``): the judge gets the
type's rubric from ImgEdit's prompts JSON (``edit_type -> text`` with ``<edit_prompt>`` replaced by the
instruction), the original and the edited image; every reply line ``Name: <digit>`` is a score; a
sample's score is the mean of its scores, a type's the mean over its samples, Overall the mean of
the 9 type means. As GenEditEvalKit does, an edited image whose aspect ratio differs from the
original's is resized to the original size before judging.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from internvlu.evaluation.judge import Judge, JudgeRequest, load_json_prompts
from internvlu.evaluation.runner import EvalItem, KeyPngBenchmark, load_rgb
from internvlu.evaluation.settings import EvalSettings

EDIT_TYPES: tuple[str, ...] = (
    "add",
    "alter",
    "extract",
    "replace",
    "remove",
    "background",
    "style",
    "compose",
    "action",
)
METADATA_NAMES: tuple[str, ...] = ("basic_edit.json", "singleturn.json")


def imgedit_sample_score(reply: str) -> float | None:
    """Mean of the ``Name: <integer>`` lines of a reply (step1_get_avgscore's rule), or None."""
    scores = []
    for line in reply.splitlines():
        parts = line.strip().split(": ")
        if len(parts) == 2 and parts[1].isdigit():
            scores.append(int(parts[1]))
    return round(sum(scores) / len(scores), 2) if scores else None


class ImgEdit(KeyPngBenchmark):
    name = "imgedit"
    kind = "edit"
    title = "ImgEdit-Bench (basic)"
    OPTIONS: ClassVar[dict[str, tuple[Any, str]]] = {
        "image_root": (None, "folder of the original images (the 'id' paths are relative to it)"),
        "judge_prompts": (None, "ImgEdit's judge prompts JSON (edit_type -> rubric with <edit_prompt>)"),
    }
    SCORING_OPTIONS = ("judge_prompts",)

    def metadata_file(self) -> Path:
        assert self.data is not None
        if self.data.is_file():
            return self.data
        for name in METADATA_NAMES:
            if (self.data / name).is_file():
                return self.data / name
        raise FileNotFoundError(f"no ImgEdit metadata ({' or '.join(METADATA_NAMES)}) in {self.data}")

    def image_root(self) -> Path:
        root = self.options.get("image_root")
        return Path(root) if root else self.metadata_file().parent

    def data_files(self) -> list[Path]:
        return [self.metadata_file()]

    def load_items(self) -> list[EvalItem]:
        data = json.loads(self.metadata_file().read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError(f"{self.metadata_file()}: expected a JSON object key -> edit record")
        items = []
        for index, (key, rec) in enumerate(data.items()):
            for field in ("id", "prompt", "edit_type"):
                if field not in rec:
                    raise ValueError(f"{self.metadata_file()}: record {key!r} lacks {field!r}")
            source = self.image_root() / rec["id"]
            items.append(
                EvalItem(
                    key=str(key),
                    index=index,
                    prompt=rec["prompt"],
                    images=[source],
                    meta={"edit_type": rec["edit_type"], "id": rec["id"]},
                )
            )
        return items

    def input_images(self, item: EvalItem) -> list[Image.Image]:
        if not Path(item.images[0]).is_file():
            raise FileNotFoundError(
                f"ImgEdit original image {item.images[0]} not found (set --option image_root=)"
            )
        return [load_rgb(item.images[0])]

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
        if not self.options.get("judge_prompts"):
            raise ValueError(
                "ImgEdit scoring needs its judge prompts: --option judge_prompts=PATH/TO/prompts.json"
            )
        prompts = load_json_prompts(self.options["judge_prompts"])
        items = self.items()
        requests = []
        for item in items:
            if item.meta["edit_type"] not in prompts:
                raise ValueError(f"judge prompts lack edit type {item.meta['edit_type']!r}")
            original = load_rgb(item.images[0])
            edited = load_rgb(self.outputs(item, out, settings)[0])
            if edited.width * original.height != original.width * edited.height:
                edited = edited.resize(original.size, Image.Resampling.LANCZOS)
            text = prompts[item.meta["edit_type"]].replace("<edit_prompt>", item.prompt)
            requests.append(JudgeRequest(text, [original, edited]))
        replies = judge.map(requests)
        per_type: dict[str, list[float]] = {}
        rows, failed = {}, 0
        for item, reply in zip(items, replies):
            rows[item.key] = reply
            value = imgedit_sample_score(reply)
            if value is None:
                failed += 1
                continue
            per_type.setdefault(item.meta["edit_type"], []).append(value)
        (out / "imgedit_result.json").write_text(
            json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8"
        )
        means = {t: round(sum(v) / len(v), 2) for t, v in per_type.items()}
        ordered = {t: means[t] for t in EDIT_TYPES if t in means}
        ordered.update({t: v for t, v in means.items() if t not in ordered})
        overall = sum(ordered.values()) / len(ordered) if ordered else 0.0
        return {**ordered, "overall": overall, "failed": failed, "judged": len(items)}
