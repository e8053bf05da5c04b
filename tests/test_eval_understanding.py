"""Understanding suites on VLMEvalKit-format TSVs (3 items each, tiny checkpoint), exact-match scoring,
and the VLMEvalKit / lmms-eval adapters driven through stand-in packages with the toolkits' interfaces."""

from __future__ import annotations

import base64
import csv
import importlib
import io
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import CKPT, run_eval, tiny_pipeline
from PIL import Image

import internvlu.evaluation.cli as eval_cli
import internvlu.evaluation.understanding as und


@pytest.fixture(scope="module")
def pipe() -> Any:
    return tiny_pipeline()


@pytest.fixture()
def run(pipe: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setattr(eval_cli, "load_pipeline", lambda *a: pipe)
    monkeypatch.setattr(und, "_load_pipe", lambda *a: pipe)

    def call(argv: list[str]) -> str:
        assert run_eval(argv) == 0
        return capsys.readouterr().out

    return call


def b64(color: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_tsv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


def vlmevalkit_doc_check(path: Path, indexes: list[str]) -> None:
    """VLMEvalKit keeps predictions as <work_dir>/<model>/<model>_<dataset>.<fmt>: the benchmark's columns
    without the base64 'image', plus 'prediction', one row per index."""
    assert path.parent.name == path.name.split("_")[0] or path.name.startswith(path.parent.name + "_")
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert "image" not in rows[0] and {"index", "question", "answer", "prediction"} <= set(rows[0])
    assert [r["index"] for r in rows] == indexes


def test_mme_seed_chartqa_end_to_end(tmp_path: Path, run) -> None:
    mme = write_tsv(tmp_path / "MME.tsv", [
        {"index": "0", "image": b64((255, 0, 0)), "question": "Is the image red? Please answer yes or no.", "answer": "Yes", "category": "color", "image_path": "a.png"},
        {"index": "1", "image": "0", "question": "Is the image blue? Please answer yes or no.", "answer": "No", "category": "color", "image_path": "a.png"},
        {"index": "2", "image": b64((0, 0, 255)), "question": "Is there text? Please answer yes or no.", "answer": "No", "category": "OCR", "image_path": "b.png"},
    ])  # fmt: skip
    out = tmp_path / "mme"
    text = run(
        [
            "eval",
            "mme",
            "--model",
            str(CKPT),
            "--data",
            str(mme),
            "--out",
            str(out),
            "--max-new-tokens",
            "3",
            "--batch-size",
            "2",
        ]
    )
    pred = out / "mme" / "InternVL-U" / "InternVL-U_MME.tsv"
    vlmevalkit_doc_check(pred, ["0", "1", "2"])
    scores = json.loads((out / "summary.json").read_text())["scores"]
    assert set(scores) >= {"color", "OCR", "perception", "cognition"} and 0 <= scores["perception"] <= 400
    assert "| MME-P |" in text
    seed = write_tsv(tmp_path / "SEEDBench_IMG.tsv", [
        {"index": str(k), "image": b64((k * 80, 0, 0)), "question": f"What colour? {k}", "A": "red", "B": "blue", "C": "", "answer": "A", "category": "Scene"}
        for k in range(3)
    ])  # fmt: skip
    run(
        [
            "eval",
            "seedbench",
            "--model",
            str(CKPT),
            "--data",
            str(seed),
            "--out",
            str(tmp_path / "seed"),
            "--max-new-tokens",
            "2",
        ]
    )
    vlmevalkit_doc_check(
        tmp_path / "seed" / "seedbench" / "InternVL-U" / "InternVL-U_SEEDBench_IMG.tsv", ["0", "1", "2"]
    )
    records = [
        json.loads(line)
        for line in (tmp_path / "seed" / "records" / "shard-000-of-001.jsonl").read_text().splitlines()
    ]
    assert (
        records[0]["prompt"].startswith("<image>\nWhat colour? 0\nA. red\nB. blue\nAnswer with")
        and "C." not in records[0]["prompt"]
    )
    chart = write_tsv(tmp_path / "ChartQA_TEST.tsv", [
        {"index": str(k), "image": b64((0, k * 80, 0)), "question": f"Value of bar {k}?", "answer": str(10 * k), "category": "human"}
        for k in range(3)
    ])  # fmt: skip
    run(
        [
            "eval",
            "chartqa",
            "--model",
            str(CKPT),
            "--data",
            str(chart),
            "--out",
            str(tmp_path / "chart"),
            "--max-new-tokens",
            "2",
            "--limit",
            "2",
        ]
    )
    vlmevalkit_doc_check(
        tmp_path / "chart" / "chartqa" / "InternVL-U" / "InternVL-U_ChartQA_TEST.tsv", ["0", "1"]
    )


def test_exact_match_scoring() -> None:
    rows = [
        {"index": "0", "question": "q", "answer": "Yes", "category": "color", "image_path": "a"},
        {"index": "1", "question": "q", "answer": "No", "category": "color", "image_path": "a"},
        {"index": "2", "question": "q", "answer": "No", "category": "count", "image_path": "b"},
        {"index": "3", "question": "q", "answer": "Yes", "category": "count", "image_path": "b"},
    ]
    scores = und.score_rows(rows, {"0": "Yes, it is.", "1": "no", "2": "No.", "3": "no"}, "mme")
    assert (
        scores["color"] == 200.0 and scores["count"] == 50.0 and scores["perception"] == 250.0
    )  # acc + acc+
    mcq = [
        {"index": str(k), "question": "q", "A": "cat", "B": "dog", "answer": a, "category": "x"}
        for k, a in enumerate("ABB")
    ]
    assert und.score_rows(mcq, {"0": "A", "1": "The answer is (B).", "2": "a dog"}, "mcq")["overall"] == 100.0
    assert und.extract_letter("Apple", {"A": "x", "B": "y"}) is None
    assert (
        und.relaxed_match("10.4", "10")
        and not und.relaxed_match("11", "10")
        and und.relaxed_match("Yes.", "yes")
    )
    assert und.ocrbench_match("The text reads HELLO world", ["hello"], "Regular Text Recognition")
    assert und.ocrbench_match("x ^ { 2 }", ["x^{2}"], "Handwritten Mathematical Expression Recognition")
    assert und.score_rows(rows, {}, "judge") is None


# ------------------------------------------------------------------------------------------------
# Toolkit adapters (stand-in packages with the toolkits' interfaces; neither toolkit is installed)
# ------------------------------------------------------------------------------------------------

FAKE_VLMEVAL = {
    "vlmeval/__init__.py": "",
    "vlmeval/config.py": "supported_VLM = {}\n",
    "vlmeval/vlm/__init__.py": "from .base import BaseModel\n",
    "vlmeval/vlm/base.py": """
        class BaseModel:
            INTERLEAVE = False
            allowed_types = ["text", "image", "video"]

            def __init__(self):
                self.dump_image_func = None

            def generate(self, message, dataset=None):
                assert all(m["type"] in self.allowed_types for m in message)
                return self.generate_inner(message, dataset)
    """,
    "run.py": """
        import argparse, json
        import vlmeval.vlm
        from vlmeval.config import supported_VLM
        p = argparse.ArgumentParser(); p.add_argument("--data"); p.add_argument("--model"); p.add_argument("--config"); p.add_argument("--out")
        a = p.parse_args()
        if a.config:
            name, cfg = next(iter(json.load(open(a.config))["model"].items()))
            cfg = dict(cfg); model = getattr(vlmeval.vlm, cfg.pop("class"))(**cfg)
        else:
            model = supported_VLM[a.model]()
        msg = [{"type": "image", "value": a.data}, {"type": "text", "value": "What colour is this?"}]
        json.dump({"prediction": model.generate(msg, dataset="MME")}, open(a.out, "w"))
    """,
}
FAKE_LMMS = {
    "lmms_eval/__init__.py": "",
    "lmms_eval/api/__init__.py": "",
    "lmms_eval/api/model.py": """
        class lmms:
            is_simple = True

            def __init__(self):
                self.task_dict = {}
    """,
    "lmms_eval/models/__init__.py": "",
    "lmms_eval/models/registry_v2.py": """
        import dataclasses

        @dataclasses.dataclass(frozen=True)
        class ModelManifest:
            model_id: str
            simple_class_path: str = None
            chat_class_path: str = None
            aliases: tuple = ()
    """,
}


@pytest.fixture()
def fake_toolkits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "toolkits"
    for rel, body in {**FAKE_VLMEVAL, **FAKE_LMMS}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [m for m in sys.modules if m.split(".")[0] in ("vlmeval", "lmms_eval")]:
        del sys.modules[name]
    und._lmms_eval_class.cache_clear()


def test_vlmevalkit_run_uses_our_model(tmp_path: Path, run, fake_toolkits: Path) -> None:
    image = tmp_path / "red.png"
    Image.new("RGB", (48, 48), (255, 0, 0)).save(image)
    out = tmp_path / "pred.json"
    run(["eval", "vlmevalkit", "--model", str(CKPT), "--max-new-tokens", "3", "--run-script", str(fake_toolkits / "run.py"),
         "--", "--data", str(image), "--model", "InternVL-U", "--out", str(out)])  # fmt: skip
    assert isinstance(json.loads(out.read_text())["prediction"], str)
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"model": {"mine": {"class": "InternVLU", "model_path": str(CKPT), "max_new_tokens": 2}}})
    )
    run(["eval", "vlmevalkit", "--model", str(CKPT), "--run-script", str(fake_toolkits / "run.py"), "--",
         "--data", str(image), "--config", str(config), "--out", str(out)])  # fmt: skip
    assert isinstance(json.loads(out.read_text())["prediction"], str)
    assert und.interleaved_to_prompt(
        [{"type": "text", "value": "A"}, {"type": "image", "value": "x.png"}]
    ) == ("A\n<image>", ["x.png"])


def test_lmms_eval_manifest_and_model(
    pipe: Any, fake_toolkits: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(und, "_load_pipe", lambda *a: pipe)
    manifest = und.lmms_eval_manifest()
    assert manifest.model_id == "internvlu"
    module, name = manifest.simple_class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)  # how lmms-eval's registry imports it
    from lmms_eval.api.model import lmms

    assert issubclass(cls, lmms) and cls.is_simple
    model = cls(pretrained=str(CKPT), device="cpu", max_new_tokens="3")
    docs = [
        {"image": Image.new("RGB", (48, 48), (0, 255, 0))},
        {"image": Image.new("RGB", (48, 48), (0, 0, 255))},
    ]
    model.task_dict = {"mme": {"test": docs}}

    class Instance:
        def __init__(self, doc_id: int) -> None:
            self.args = (
                f"Question {doc_id}?",
                {"until": ["\n\n"], "max_new_tokens": 3},
                lambda d: [d["image"]],
                doc_id,
                "mme",
                "test",
            )

    answers = model.generate_until([Instance(0), Instance(1)])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    with pytest.raises(NotImplementedError, match="generation-based"):
        model.loglikelihood([])
