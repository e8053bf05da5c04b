"""WISE (world-knowledge T2I): 1,000 prompts, one image each, judged by a GPT-4o-class model.

Data (``--data``): WISE's ``data/`` folder (or the repository root holding it) with
``cultural_common_sense.json``, ``spatio-temporal_reasoning.json`` and ``natural_science.json``; each
is a JSON list of objects with ``prompt_id`` (1..1000), ``Prompt``, ``Explanation``, ``Subcategory``.

Official layout (WISE README: "image names should be in the format 1-1000.png"), under ``OUT/wise/``::

    <prompt_id>.png

Scoring (``gpt_eval.py`` + ``Calculate.py``): the judge sees WISE's system and user prompt (PROMPT and
EXPLANATION filled in) and the image, and answers three lines ``Consistency: c``, ``Realism: r``,
``Aesthetic Quality: a`` (0-2 each). WiScore = (0.7 c + 0.2 r + 0.1 a) / 2 per image; a category score
is the mean over its images; Overall = 0.4 Cultural + 0.167 Time + 0.133 Space + 0.1 Biology + 0.1
Physics + 0.1 Chemistry (the weights are the categories' prompt counts / 1000, so prompt_id ranges
1-400, 401-567, 568-700, 701-800, 801-900, 901-1000 give the six categories). Replies without all
three scores count as failed and are left out of the means (reported as ``failed``).

Judge prompts come from the user's WISE checkout (``--option judge_prompts=WISE/gpt_eval.py``; found
automatically when ``--data`` is the repository root) or a JSON file ``{"system": ..., "user": ...}``
with ``{Prompt}`` and ``{Explanation}`` fields.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

from internvlu.evaluation.judge import (
    Judge,
    JudgeRequest,
    function_message_texts,
    load_json_prompts,
    write_judgements,
)
from internvlu.evaluation.runner import EvalItem, KeyPngBenchmark
from internvlu.evaluation.settings import EvalSettings

FILES: tuple[str, ...] = (
    "cultural_common_sense.json",
    "spatio-temporal_reasoning.json",
    "natural_science.json",
)
CATEGORY_RANGES: tuple[tuple[str, int, int], ...] = (
    ("cultural", 1, 400),
    ("time", 401, 567),
    ("space", 568, 700),
    ("biology", 701, 800),
    ("physics", 801, 900),
    ("chemistry", 901, 1000),
)
CATEGORY_WEIGHTS: dict[str, float] = {
    "cultural": 0.4,
    "time": 0.167,
    "space": 0.133,
    "biology": 0.1,
    "physics": 0.1,
    "chemistry": 0.1,
}
SCORE_RE = re.compile(r"\*{0,2}(Consistency|Realism|Aesthetic Quality)\*{0,2}\s*[:：]?\s*(\d)", re.IGNORECASE)


def category_of(prompt_id: int) -> str:
    for name, low, high in CATEGORY_RANGES:
        if low <= prompt_id <= high:
            return name
    raise ValueError(f"WISE prompt_id {prompt_id} is outside 1..1000")


def parse_wise_reply(text: str) -> dict[str, float] | None:
    """The three 0-2 scores of a judge reply, or None when one is missing."""
    found: dict[str, float] = {}
    for name, digit in SCORE_RE.findall(text):
        found[name.lower().replace(" ", "_")] = float(digit)
    if set(found) != {"consistency", "realism", "aesthetic_quality"}:
        return None
    return found


def wiscore(scores: dict[str, float]) -> float:
    return (0.7 * scores["consistency"] + 0.2 * scores["realism"] + 0.1 * scores["aesthetic_quality"]) / 2


class WISE(KeyPngBenchmark):
    name = "wise"
    kind = "t2i"
    title = "WISE"
    OPTIONS: ClassVar[dict[str, tuple[Any, str]]] = {
        "judge_prompts": (
            None,
            "WISE's gpt_eval.py (or a JSON {system, user}); default: <data>/../gpt_eval.py",
        ),
    }
    SCORING_OPTIONS = ("judge_prompts",)
    KEY_FILE = "<prompt_id>.png"
    KEY_NAMES = "prompt ids"

    def data_dir(self) -> Path:
        assert self.data is not None
        return self.data / "data" if (self.data / "data" / FILES[0]).is_file() else self.data

    def data_files(self) -> list[Path]:
        return [self.data_dir() / f for f in FILES if (self.data_dir() / f).is_file()]

    def load_items(self) -> list[EvalItem]:
        entries = []
        for path in self.data_files():
            entries += json.loads(path.read_text(encoding="utf-8"))
        if not entries:
            raise FileNotFoundError(f"no WISE data files ({', '.join(FILES)}) in {self.data_dir()}")
        entries.sort(key=lambda e: int(e["prompt_id"]))
        items = []
        for index, entry in enumerate(entries):
            pid = int(entry["prompt_id"])
            meta = {
                "prompt_id": pid,
                "explanation": entry.get("Explanation", ""),
                "subcategory": entry.get("Subcategory", ""),
                "category": category_of(pid),
            }
            items.append(EvalItem(key=str(pid), index=index, prompt=entry["Prompt"], meta=meta))
        return items

    def judge_templates(self) -> tuple[str, str]:
        path = self.options.get("judge_prompts")
        if path is None:
            guess = self.data_dir().parent / "gpt_eval.py"
            if not guess.is_file():
                raise ValueError(
                    "WISE scoring needs its judge prompt: --option judge_prompts=PATH/TO/WISE/gpt_eval.py"
                )
            path = guess
        path = Path(path)
        if path.suffix == ".json":
            data = load_json_prompts(path)
            return data["system"], data["user"]
        texts = function_message_texts(path, "build_evaluation_messages")
        if len(texts) != 2:
            raise ValueError(
                f"{path}: expected a system and a user text in build_evaluation_messages, found {len(texts)}"
            )
        return texts[0].replace("{{", "{").replace("}}", "}"), texts[1]

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
        system, user = self.judge_templates()
        items = self.items()
        requests = [
            JudgeRequest(
                user.format_map({"Prompt": it.prompt, "Explanation": it.meta["explanation"]}),
                [self.outputs(it, out, settings)[0]],
                system,
            )
            for it in items
        ]
        replies = judge.map(requests)
        per_category: dict[str, list[float]] = {}
        rows, failed = [], 0
        for item, reply in zip(items, replies):
            parsed = parse_wise_reply(reply)
            rows.append(
                {
                    "prompt_id": item.meta["prompt_id"],
                    "category": item.meta["category"],
                    "scores": parsed,
                    "reply": reply,
                }
            )
            if parsed is None:
                failed += 1
                continue
            per_category.setdefault(item.meta["category"], []).append(wiscore(parsed))
        write_judgements(out / "wise_judgements.jsonl", rows)
        means = {name: sum(v) / len(v) for name, v in per_category.items()}
        weight = sum(CATEGORY_WEIGHTS[c] for c in means)
        overall = sum(CATEGORY_WEIGHTS[c] * m for c, m in means.items()) / weight if weight else 0.0
        return {
            **{c: means[c] for c in CATEGORY_WEIGHTS if c in means},
            "overall": overall,
            "failed": failed,
            "judged": len(items),
        }
