"""Understanding suites: a native runner on VLMEvalKit's data files, and adapters for VLMEvalKit and
lmms-eval so that *their* ``run`` commands evaluate our model.

Native runner (``internvlu eval mme|seedbench|chartqa|ocrbench|mmmu|mathverse|logicvista --data
FILE.tsv``): reads a benchmark TSV in VLMEvalKit's format (the files VLMEvalKit keeps in ``$LMUData``:
``index``, ``image`` (base64; a short value refers to another row's ``index`` with the same image; a
list literal for several images) or ``image_path``, ``question``, optional ``hint``, option columns
``A``..``Z``, ``answer``, ``category``), asks the model, and writes the predictions where VLMEvalKit
keeps them, ``OUT/<suite>/<model_name>/<model_name>_<DATASET>.tsv`` (every input column but
``image``, plus ``prediction``). Offline scores use exact matching, as VLMEvalKit does without a judge
key: MCQ letter accuracy (SEED, MMMU, LogicVista), MME's acc + acc+ per category summed over the 10
perception categories (MME-P), ChartQA relaxed accuracy (5% numeric tolerance), OCRBench substring
matching (x100 / 1000 items). MathVerse needs VLMEvalKit's LLM judge: only predictions are written.

Adapters (optional extras; neither toolkit is a dependency):

* VLMEvalKit has no entry-point plugins: models are looked up in ``vlmeval.config.supported_VLM`` and,
  for ``--config`` JSON files, by class name in ``vlmeval.vlm``. :func:`register_vlmevalkit` puts our
  class in both, and :func:`run_vlmevalkit` (``internvlu eval vlmevalkit --run-script
  VLMEvalKit/run.py -- --data MMMU_DEV_VAL --model InternVL-U``) registers it, then runs VLMEvalKit's
  own ``run.py`` in-process.
* lmms-eval loads external models from the ``lmms_eval.models`` entry-point group: internvlu's
  pyproject declares ``internvlu = "internvlu.evaluation.understanding:lmms_eval_manifest"``, so after
  ``pip install lmms-eval`` the command ``python -m lmms_eval --model internvlu --model_args
  pretrained=/path/to/InternVL-U --tasks mme`` uses :class:`InternVLULmmsEval`.
"""

from __future__ import annotations

import ast
import base64
import csv
import functools
import io
import re
import runpy
import string
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from internvlu.evaluation.runner import Benchmark, EvalItem, Generated, write_text_atomic
from internvlu.evaluation.settings import EvalSettings

MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
SHORT_SUFFIX = "Answer the question using a single word or phrase."
DEFAULT_MODEL_NAME = "InternVL-U"


# --------------------------------------------------------------------------------------------------
# VLMEvalKit TSV data
# --------------------------------------------------------------------------------------------------


def read_tsv(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _decode_b64(value: str) -> Image.Image:
    with Image.open(io.BytesIO(base64.b64decode(value))) as im:
        return im.convert("RGB")


def row_images(row: dict[str, str], by_index: dict[str, dict[str, str]], root: Path) -> list[Image.Image]:
    """The images of one TSV row (base64, a reference to another row, a list of either, or paths)."""
    value = (row.get("image") or "").strip()
    if value:
        if value.startswith("["):
            values = [str(v) for v in ast.literal_eval(value)]
        else:
            values = [value]
        images = []
        for v in values:
            if len(v) <= 64 and v in by_index:  # VLMEvalKit stores repeated images once
                images += row_images(by_index[v], by_index, root)
            else:
                images.append(_decode_b64(v))
        return images
    path_value = (row.get("image_path") or "").strip()
    if path_value:
        paths = [str(v) for v in ast.literal_eval(path_value)] if path_value.startswith("[") else [path_value]
        out = []
        for p in paths:
            with Image.open(root / p) as im:
                out.append(im.convert("RGB"))
        return out
    return []


def _present(row: dict[str, str], key: str) -> bool:
    value = row.get(key)
    return value is not None and value.strip() not in ("", "nan", "NaN", "None")


def row_options(row: dict[str, str]) -> dict[str, str]:
    return {c: row[c] for c in string.ascii_uppercase if _present(row, c)}


def build_prompt(row: dict[str, str], metric: str, n_images: int) -> str:
    """InternVL-style prompt for one row: images first, then hint, question, options and the suffix."""
    question = row.get("question", "")
    options = row_options(row)
    lines = []
    if _present(row, "hint"):
        lines.append(f"Hint: {row['hint']}")
    lines.append(question)
    if options and metric in ("mcq", "mmmu"):
        lines += [f"{k}. {v}" for k, v in options.items()]
        lines.append(MCQ_SUFFIX)
    elif metric in ("relaxed", "ocrbench") or (metric == "mmmu" and not options):
        lines.append(SHORT_SUFFIX)
    return "<image>\n" * n_images + "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Answer matching (exact-match mode)
# --------------------------------------------------------------------------------------------------


def extract_letter(prediction: str, options: dict[str, str]) -> str | None:
    """The option a free-form answer picks: a standalone letter, "(B)", "B." or the option's text."""
    text = prediction.strip()
    for pattern in (
        r"^\(?([A-Z])\)?(?:[.:)\s]|$)",
        r"\b(?:answer|option)\s*(?:is|:)?\s*\(?([A-Z])\b",
        r"\(([A-Z])\)",
        r"\b([A-Z])\b",
    ):
        for match in re.finditer(pattern, text, flags=re.IGNORECASE if "answer" in pattern else 0):
            letter = match.group(1).upper()
            if letter in options:
                return letter
    lowered = text.lower()
    hits = [k for k, v in options.items() if v.strip() and v.strip().lower() in lowered]
    return hits[0] if len(hits) == 1 else None


def yes_no(prediction: str) -> str | None:
    words = re.findall(r"[a-z]+", prediction.lower())
    if words and words[0] in ("yes", "no"):
        return words[0]
    has_yes, has_no = "yes" in words, "no" in words
    return "yes" if has_yes and not has_no else "no" if has_no and not has_yes else None


def relaxed_match(prediction: str, answer: str, tolerance: float = 0.05) -> bool:
    """ChartQA's relaxed accuracy: numbers within 5% relative error, other answers exact (case-free)."""

    def number(text: str) -> float | None:
        cleaned = text.strip().rstrip(".").replace(",", "").rstrip("%")
        try:
            return float(cleaned)
        except ValueError:
            return None

    pred, gold = prediction.strip().rstrip("."), answer.strip()
    p, g = number(pred), number(gold)
    if p is not None and g is not None:
        return p == g if g == 0 else abs(p - g) / abs(g) <= tolerance
    return pred.lower() == gold.lower()


def ocrbench_match(prediction: str, answers: Sequence[str], category: str) -> bool:
    pred = prediction.strip().lower()
    if category == "Handwritten Mathematical Expression Recognition":
        pred = re.sub(r"\s+", "", pred)
        return any(re.sub(r"\s+", "", a.strip().lower()) in pred for a in answers)
    return any(a.strip().lower() in pred for a in answers)


def _answers(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        try:
            return [str(v) for v in ast.literal_eval(value)]
        except (ValueError, SyntaxError):
            pass
    return [value]


def score_rows(rows: list[dict[str, str]], predictions: dict[str, str], metric: str) -> dict[str, Any] | None:
    """Exact-match scores of a suite (see module docstring); None for judge-only suites."""
    if metric == "judge":
        return None
    by_cat: dict[str, list[bool]] = {}
    mme_pairs: dict[tuple[str, str], list[bool]] = {}
    for row in rows:
        pred = predictions.get(row["index"], "")
        category = row.get("category", "") or "all"
        gold = row.get("answer", "")
        if metric in ("mcq", "mmmu"):
            options = row_options(row)
            ok = (
                extract_letter(pred, options) == gold.strip().upper()
                if options
                else pred.strip().lower() == gold.strip().lower()
            )
        elif metric == "mme":
            ok = yes_no(pred) == gold.strip().lower()
            key = (category, row.get("image_path") or row.get("image", "")[:64] or row["index"])
            mme_pairs.setdefault(key, []).append(ok)
        elif metric == "relaxed":
            ok = any(relaxed_match(pred, a) for a in _answers(gold))
        elif metric == "ocrbench":
            ok = ocrbench_match(pred, _answers(gold), category)
        else:
            raise ValueError(f"unknown understanding metric {metric!r}")
        by_cat.setdefault(category, []).append(ok)
    accuracy = {c: sum(v) / len(v) for c, v in by_cat.items()}
    total = sum(len(v) for v in by_cat.values())
    correct = sum(sum(v) for v in by_cat.values())
    if metric == "mme":
        per_cat = {}
        for category, oks in by_cat.items():
            pairs = [all(v) for (c, _), v in mme_pairs.items() if c == category]
            per_cat[category] = 100 * (sum(oks) / len(oks) + (sum(pairs) / len(pairs) if pairs else 0.0))
        return {
            **per_cat,
            "perception": sum(v for c, v in per_cat.items() if c in MME_PERCEPTION),
            "cognition": sum(v for c, v in per_cat.items() if c in MME_COGNITION),
            "overall": sum(v for c, v in per_cat.items() if c in MME_PERCEPTION),
            "exact_match": True,
        }
    return {
        **{f"acc_{c}": v for c, v in accuracy.items()},
        "overall": 100 * correct / total if total else 0.0,
        "exact_match": True,
    }


# --------------------------------------------------------------------------------------------------
# Native runner
# --------------------------------------------------------------------------------------------------


class UnderstandingSuite(Benchmark):
    """One VLMEvalKit-format suite; subclasses set ``name``, ``metric`` and ``dataset``."""

    kind = "understanding"
    metric = "mcq"
    dataset = ""
    OPTIONS: ClassVar[dict[str, tuple[Any, str]]] = {
        "dataset": (None, "dataset name in the prediction file name (default: the TSV's stem)"),
        "model_name": (DEFAULT_MODEL_NAME, "model name in the VLMEvalKit layout"),
    }

    def tsv(self) -> Path:
        assert self.data is not None
        if self.data.is_file():
            return self.data
        candidates = sorted(self.data.glob(f"{self.dataset}*.tsv")) if self.dataset else []
        if not candidates:
            raise FileNotFoundError(
                f"no {self.dataset or 'benchmark'} TSV in {self.data}; pass the .tsv file as --data"
            )
        return candidates[0]

    def dataset_name(self) -> str:
        return self.options.get("dataset") or self.tsv().stem

    def load_items(self) -> list[EvalItem]:
        rows = read_tsv(self.tsv())
        if rows and ("index" not in rows[0] or "question" not in rows[0]):
            raise ValueError(f"{self.tsv()}: a VLMEvalKit TSV needs 'index' and 'question' columns")
        self._rows = rows
        by_index = {r["index"]: r for r in rows}
        items = []
        for k, row in enumerate(rows):
            images = row_images(row, by_index, self.tsv().parent)
            items.append(
                EvalItem(
                    key=row["index"],
                    index=k,
                    prompt=build_prompt(row, self.metric, len(images)),
                    images=images,
                )
            )
        return items

    def input_images(self, item: EvalItem) -> list[Image.Image]:
        return list(item.images)

    def rows(self) -> list[dict[str, str]]:
        """The TSV rows of the items in use (all, or the first --limit)."""
        keys = {it.key for it in self.items()}
        return [r for r in self._rows if r["index"] in keys]

    def prediction_file(self, out: Path) -> Path:
        name = self.options["model_name"]
        return self.layout_dir(out) / name / f"{name}_{self.dataset_name()}.tsv"

    def outputs(self, item: EvalItem, out: Path, settings: EvalSettings) -> list[Path]:
        return []  # per-item answers live in the records; the TSV is assembled by finalize()

    def write_item(self, item: EvalItem, result: Generated, out: Path, settings: EvalSettings) -> None:
        return None

    def finalize(self, out: Path, settings: EvalSettings, records: dict[str, dict[str, Any]]) -> None:
        rows = self.rows()
        columns = [c for c in rows[0] if c != "image"] + ["prediction"] if rows else ["index", "prediction"]
        buf = io.StringIO()
        writer = csv.DictWriter(
            buf, fieldnames=columns, delimiter="\t", extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "prediction": records[row["index"]]["text"] or ""})
        write_text_atomic(self.prediction_file(out), buf.getvalue())

    def check_layout(self, out: Path, settings: EvalSettings) -> list[str]:
        path = self.prediction_file(out)
        if not path.is_file():
            return [f"{path} missing"]
        rows = read_tsv(path)
        problems = []
        if not rows or "prediction" not in rows[0] or "index" not in rows[0]:
            problems.append(f"{path}: needs 'index' and 'prediction' columns")
        if rows and "image" in rows[0]:
            problems.append(f"{path}: prediction files drop the base64 'image' column")
        if sorted(r.get("index", "") for r in rows) != sorted(it.key for it in self.items()):
            problems.append(f"{path}: rows differ from the benchmark's indexes")
        return problems

    def score(
        self, out: Path, settings: EvalSettings, records: dict[str, dict[str, Any]], **kw: Any
    ) -> dict[str, Any] | None:
        return score_rows(self.rows(), {k: r.get("text") or "" for k, r in records.items()}, self.metric)


def _suite(name: str, title: str, metric: str, dataset: str) -> type[UnderstandingSuite]:
    return type(
        f"Suite_{name}",
        (UnderstandingSuite,),
        {"name": name, "title": title, "metric": metric, "dataset": dataset},
    )


SUITES: dict[str, type[UnderstandingSuite]] = {
    "mme": _suite("mme", "MME (perception: MME-P)", "mme", "MME"),
    "seedbench": _suite("seedbench", "SEED-Bench (image)", "mcq", "SEEDBench_IMG"),
    "chartqa": _suite("chartqa", "ChartQA (test, relaxed accuracy)", "relaxed", "ChartQA_TEST"),
    "ocrbench": _suite("ocrbench", "OCRBench", "ocrbench", "OCRBench"),
    "mmmu": _suite("mmmu", "MMMU (val)", "mmmu", "MMMU_DEV_VAL"),
    "mathverse": _suite(
        "mathverse", "MathVerse (mini, vision-only; judge in VLMEvalKit)", "judge", "MathVerse_MINI"
    ),
    "logicvista": _suite("logicvista", "LogicVista", "mcq", "LogicVista"),
}


# --------------------------------------------------------------------------------------------------
# Model loading shared by the adapters
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _load_pipe(model_path: str | None, device: str | None, dtype: str | None) -> Any:
    import torch

    from internvlu.defaults import default_model_path
    from internvlu.pipeline import InternVLUPipeline

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = dtype or ("float32" if device == "cpu" else "bfloat16")
    path = model_path or str(default_model_path())
    return InternVLUPipeline.from_pretrained(path, torch_dtype=getattr(torch, dtype), device=device)


def interleaved_to_prompt(message: Sequence[dict[str, Any]]) -> tuple[str, list[Any]]:
    """VLMEvalKit's interleaved message ``[{"type": "image"|"text", "value": ...}]`` -> (prompt with
    ``<image>`` where each image was, images)."""
    parts: list[str] = []
    images: list[Any] = []
    for part in message:
        if part["type"] == "image":
            images.append(part["value"])
            parts.append("<image>")
        elif part["type"] == "text":
            parts.append(str(part["value"]))
        else:
            raise ValueError(f"InternVL-U takes text and image parts, got {part['type']!r}")
    return "\n".join(parts), images


# --------------------------------------------------------------------------------------------------
# VLMEvalKit
# --------------------------------------------------------------------------------------------------


def vlmevalkit_model_class() -> type:
    """Our VLMEvalKit model class (subclass of ``vlmeval.vlm.base.BaseModel``), built on demand."""
    from vlmeval.vlm.base import BaseModel

    class InternVLUVLMEvalKit(BaseModel):  # type: ignore[misc, valid-type]
        INSTALL_REQ = False
        INTERLEAVE = True

        def __init__(
            self,
            model_path: str | None = None,
            device: str | None = None,
            dtype: str | None = None,
            max_new_tokens: int = 1024,
            **kwargs: Any,
        ) -> None:
            super().__init__()
            self.pipe = _load_pipe(model_path, device, dtype)
            self.max_new_tokens = int(max_new_tokens)

        def generate_inner(self, message: list[dict[str, Any]], dataset: str | None = None) -> str:
            prompt, images = interleaved_to_prompt(message)
            return self.pipe.chat(prompt, images=images or None, max_new_tokens=self.max_new_tokens).text

    return InternVLUVLMEvalKit


def register_vlmevalkit(name: str = DEFAULT_MODEL_NAME, **model_kwargs: Any) -> type:
    """Make ``--model NAME`` and ``{"class": "InternVLU"}`` configs resolve to our model in VLMEvalKit."""
    import vlmeval.config
    import vlmeval.vlm

    cls = vlmevalkit_model_class()
    vlmeval.vlm.InternVLU = cls
    vlmeval.config.supported_VLM[name] = functools.partial(cls, **model_kwargs)
    return cls


def run_vlmevalkit(
    run_script: str | Path, argv: Sequence[str], *, name: str = DEFAULT_MODEL_NAME, **model_kwargs: Any
) -> int:
    """Register our model, then run VLMEvalKit's own ``run.py`` with `argv` in this process."""
    script = Path(run_script)
    if not script.is_file():
        raise FileNotFoundError(
            f"VLMEvalKit run script {str(script)!r} not found (pass --run-script VLMEvalKit/run.py)"
        )
    register_vlmevalkit(name, **model_kwargs)
    saved = sys.argv
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = saved
    return 0


# --------------------------------------------------------------------------------------------------
# lmms-eval
# --------------------------------------------------------------------------------------------------


def lmms_eval_manifest() -> Any:
    """Entry point of the ``lmms_eval.models`` group: registers ``--model internvlu``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id="internvlu",
        simple_class_path="internvlu.evaluation.understanding.InternVLULmmsEval",
        aliases=("internvl_u",),
    )


def _flatten(values: Any) -> list[Any]:
    if isinstance(values, (list, tuple)):
        return [v for item in values for v in _flatten(item)]
    return [values]


@functools.lru_cache(maxsize=1)
def _lmms_eval_class() -> type:
    from lmms_eval.api.model import lmms

    class InternVLULmmsEval(lmms):  # type: ignore[misc, valid-type]
        """lmms-eval "simple" model: ``generate_until`` on (context, images) requests."""

        is_simple = True

        def __init__(
            self,
            pretrained: str | None = None,
            device: str | None = None,
            dtype: str | None = None,
            max_new_tokens: int | str = 1024,
            batch_size: int | str = 1,
            **kwargs: Any,
        ) -> None:
            super().__init__()
            self.pipe = _load_pipe(pretrained, device, dtype)
            self.max_new_tokens = int(max_new_tokens)
            self.batch_size_per_gpu = int(batch_size)

        def generate_until(self, requests: list[Any]) -> list[str]:
            answers = []
            for request in requests:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
                visuals = [
                    v
                    for v in _flatten(doc_to_visual(self.task_dict[task][split][doc_id]))
                    if isinstance(v, Image.Image)
                ]
                prompt = context if "<image>" in context else "<image>\n" * len(visuals) + context
                kwargs = dict(gen_kwargs or {})
                max_new = int(kwargs.get("max_new_tokens", self.max_new_tokens))
                temperature = float(kwargs.get("temperature", 0) or 0)
                sample = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}
                text = self.pipe.chat(prompt, images=visuals or None, max_new_tokens=max_new, **sample).text
                for stop in kwargs.get("until") or []:
                    if isinstance(stop, str) and stop:
                        text = text.split(stop)[0]
                answers.append(text)
            return answers

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            raise NotImplementedError(
                "InternVL-U is evaluated generation-based; use tasks with output_type generate_until"
            )

        def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
            raise NotImplementedError(
                "multi-round lmms-eval tasks are not supported by the InternVL-U adapter"
            )

    return InternVLULmmsEval


def __getattr__(name: str) -> Any:
    # lmms-eval imports "internvlu.evaluation.understanding.InternVLULmmsEval" by path; the class
    # subclasses lmms-eval's base, so it is built only when asked for (lmms-eval is optional).
    if name == "InternVLULmmsEval":
        return _lmms_eval_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
