"""Every generation / editing benchmark end to end on a 3-item sample with the tiny checkpoint, through
`internvlu eval`: the official layout is checked by checkers written here from each benchmark's docs;
judge-based scores come from a fake OpenAI-compatible judge served on 127.0.0.1; official scorers are
stand-in scripts with the real command lines. Also the judge client: retries, caching, concurrency."""

from __future__ import annotations

import http.server
import io
import json
import re
import stat
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import CKPT, run_eval, tiny_pipeline
from PIL import Image

import internvlu.evaluation.cli as eval_cli
from internvlu.evaluation.judge import Judge, JudgeConfig, JudgeError, JudgeRequest, parse_json_reply

GENEVAL_LINES = (
    (Path(eval_cli.__file__).parent / "data" / "geneval_evaluation_metadata.jsonl").read_text().splitlines()
)

# ------------------------------------------------------------------------------------------------
# Fake judge: answers in each benchmark's reply format, keyed on markers of the fixture prompts.
# ------------------------------------------------------------------------------------------------

REPLIES = {
    "WISE-JUDGE": (1, "Consistency: 2\nRealism: 1\nAesthetic Quality: 0"),
    "IMGEDIT-JUDGE": (
        2,
        "Brief reasoning: fine.\nPrompt Compliance: 4\nVisual Naturalness: 3\nPhysical & Detail Coherence: 5",
    ),
    "SC-RULE": (2, '{"score": [7, 9], "reasoning": "ok"}'),
    "PQ-RULE": (1, '```json\n{"score": [8, 6], "reasoning": "ok"}\n```'),
    "TEXTEDIT-JUDGE": (
        3,
        'Here: {"score": {"Q1": 5, "Q2": 4, "Q3": 3, "Q4": 2, "Q5": 1}, "reason": {"Q1": "a {brace}"}}',
    ),
}


class FakeJudge:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_next = 0  # answer HTTP 500 to this many requests first
        self.status = 200
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        judge = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    judge.requests.append(
                        {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
                    )
                    judge.in_flight += 1
                    judge.max_in_flight = max(judge.max_in_flight, judge.in_flight)
                    failing = judge.fail_next > 0
                    judge.fail_next -= failing
                time.sleep(judge.delay)
                with judge.lock:
                    judge.in_flight -= 1
                if failing or judge.status != 200:
                    self.send_response(500 if failing else judge.status)
                    self.end_headers()
                    self.wfile.write(b"busy")
                    return
                content = body["messages"][-1]["content"]
                text = content[0]["text"]
                images = [c for c in content if c["type"] == "image_url"]
                reply = next(
                    (r for marker, (n, r) in REPLIES.items() if marker in text and len(images) == n),
                    "unparseable",
                )
                payload = json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": reply}}]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self, marker: str) -> list[str]:
        return [
            r["body"]["messages"][-1]["content"][0]["text"]
            for r in self.requests
            if marker in r["body"]["messages"][-1]["content"][0]["text"]
        ]


@pytest.fixture(scope="module")
def judge() -> Iterator[FakeJudge]:
    fake = FakeJudge()
    yield fake
    fake.server.shutdown()


@pytest.fixture(scope="module")
def pipe() -> Any:
    return tiny_pipeline()


@pytest.fixture()
def run(pipe: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """`internvlu eval ...` in-process, with the module's loaded tiny pipeline (one load per file)."""
    monkeypatch.setattr(eval_cli, "load_pipeline", lambda *a: pipe)

    def call(argv: list[str], expect: int = 0) -> str:
        assert run_eval(argv) == expect
        return capsys.readouterr().out

    return call


def common(out: Path, *extra: str) -> list[str]:
    return [
        "--model",
        str(CKPT),
        "--out",
        str(out),
        "--steps",
        "1",
        "--device",
        "cpu",
        "--max-thought-tokens",
        "2",
        *extra,
    ]


def judge_args(fake: FakeJudge) -> list[str]:
    return ["--judge-model", "fake-judge", "--judge-base-url", fake.url, "--judge-backoff", "0.01"]


def shape_image(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    image = Image.new("RGB", size, (255, 255, 255))
    image.paste(color, (16, 16, 40, 40))
    return image


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


# ------------------------------------------------------------------------------------------------
# GenEval
# ------------------------------------------------------------------------------------------------


def geneval_doc_check(root: Path, lines: list[str], n: int) -> None:
    """GenEval README: <IMAGE_FOLDER>/<5-digit index>/{metadata.jsonl (the N-th line), samples/<4-digit>.png}."""
    assert sorted(p.name for p in root.iterdir()) == [f"{i:05d}" for i in range(len(lines))]
    for i, line in enumerate(lines):
        folder = root / f"{i:05d}"
        with open(folder / "metadata.jsonl") as fh:
            assert json.load(fh) == json.loads(line)
        assert sorted(p.name for p in (folder / "samples").iterdir()) == [f"{k:04d}.png" for k in range(n)]
        assert all(re.fullmatch(r"\d+\.png", p.name) for p in (folder / "samples").iterdir())


def test_geneval(tmp_path: Path, run) -> None:
    repo = tmp_path / "geneval-repo"
    script(
        repo / "evaluation" / "evaluate_images.py",
        """
        import argparse, json, os, re
        p = argparse.ArgumentParser(); p.add_argument("imagedir"); p.add_argument("--outfile"); p.add_argument("--model-path")
        a = p.parse_args()
        rows = []
        for sub in sorted(os.listdir(a.imagedir)):
            if not sub.isdigit():
                continue
            meta = json.load(open(os.path.join(a.imagedir, sub, "metadata.jsonl")))
            for k, name in enumerate(sorted(os.listdir(os.path.join(a.imagedir, sub, "samples")))):
                assert re.match(r"\\d+\\.png", name)
                rows.append({"filename": name, "tag": meta["tag"], "prompt": meta["prompt"], "correct": k % 2 == 0,
                             "reason": "", "metadata": json.dumps(meta)})
        open(a.outfile, "w").write("".join(json.dumps(r) + "\\n" for r in rows))
    """,
    )
    out = tmp_path / "run"
    argv = ["eval", "geneval", *common(out, "--height", "64", "--width", "64", "--limit", "3")]
    text = run([*argv, "--option", f"scorer_repo={repo}", "--option", f"detector_path={repo}"])
    geneval_doc_check(out / "geneval", GENEVAL_LINES[:3], 4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scores"]["single_object"] == 0.5 and summary["scores"]["overall"] == 0.5
    assert summary["scores"]["images"] == 12 and summary["settings"]["num_images"] == 4
    assert "| Single |" in text and "0.50" in text


# ------------------------------------------------------------------------------------------------
# DPG-Bench
# ------------------------------------------------------------------------------------------------


def test_dpg(tmp_path: Path, run) -> None:
    data = tmp_path / "dpg_bench" / "prompts"
    ids = ["0", "partiprompts12", "vrd3"]
    for i, item in enumerate(ids):
        (
            data.mkdir(parents=True, exist_ok=True),
            (data / f"{item}.txt").write_text(f"A dense prompt number {i} with a red cube."),
        )
    repo = tmp_path / "ELLA"
    script(
        repo / "dpg_bench" / "compute_dpg_bench.py",
        """
        import argparse, os
        from PIL import Image
        p = argparse.ArgumentParser()
        for f in ("--image-root-path", "--resolution", "--csv", "--res-path", "--pic-num", "--vqa-model"): p.add_argument(f)
        a = p.parse_args(); r = int(a.resolution)
        names = os.listdir(a.image_root_path)
        assert all(Image.open(os.path.join(a.image_root_path, n)).size == (2 * r, 2 * r) for n in names)
        with open(a.res_path, "w") as f:
            f.write("x.png, 1.0, 0.5, 0.5\\nModel: dpg\\nL1 category scores:\\n\\tentity: 75.0\\n\\tattribute: 50.0\\n"
                    "L2 category scores:\\n\\tentity - whole: 75.0\\nImage path: x\\nSave results to: y\\nDPG-Bench score: %.1f\\n" % (10.0 * len(names)))
    """,
    )
    (repo / "dpg_bench" / "dpg_bench.csv").write_text("item_id,text\n")
    accelerate = script(
        tmp_path / "bin" / "accelerate",
        """
        import subprocess, sys
        args = sys.argv[1:]
        assert args[0] == "launch"
        args = args[1:]
        while not args[0].endswith(".py"):
            args = args[1:] if args[0] == "--multi_gpu" else args[2:]
        sys.exit(subprocess.call([sys.executable, *args]))
    """,
    )
    out = tmp_path / "run"
    run(["eval", "dpg", *common(out, "--height", "64", "--width", "64", "--data", str(data.parent)),
         "--option", f"scorer_repo={repo}", "--option", f"accelerate={accelerate}"])  # fmt: skip
    # ELLA README: one <item_id>.png per prompt (same name as the prompt file), a 2x2 grid; nothing else.
    root = out / "dpg"
    assert sorted(p.name for p in root.iterdir()) == sorted(f"{i}.png" for i in ids)
    assert all(Image.open(root / f"{i}.png").size == (128, 128) for i in ids)
    scores = json.loads((out / "summary.json").read_text())["scores"]
    assert scores == {"entity": 75.0, "attribute": 50.0, "overall": 30.0}


# ------------------------------------------------------------------------------------------------
# WISE
# ------------------------------------------------------------------------------------------------

WISE_GPT_EVAL = '''
def build_evaluation_messages(prompt_data, image_base64):
    return [
        {"role": "system", "content": [{"type": "text", "text": "SYSTEM: strict {auditor}"}]},
        {"role": "user", "content": [
            {"type": "text", "text": f"""WISE-JUDGE scores {{0-2}}.
PROMPT: "{prompt_data['Prompt']}"
EXPLANATION: "{prompt_data['Explanation']}"
Answer Consistency, Realism, Aesthetic Quality."""},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_base64}"}},
        ]},
    ]
'''


def test_wise(tmp_path: Path, run, judge: FakeJudge) -> None:
    repo = tmp_path / "WISE"
    entries = {
        "cultural_common_sense.json": [
            {
                "prompt_id": 1,
                "Prompt": "A flower for Mother's Day",
                "Explanation": "carnation",
                "Subcategory": "Festival",
            }
        ],
        "spatio-temporal_reasoning.json": [
            {"prompt_id": 401, "Prompt": "A clock at noon", "Explanation": "hands up", "Subcategory": "Time"}
        ],
        "natural_science.json": [
            {
                "prompt_id": 901,
                "Prompt": "Rust on iron",
                "Explanation": "oxidation",
                "Subcategory": "Chemistry",
            }
        ],
    }
    (repo / "data").mkdir(parents=True)
    for name, rows in entries.items():
        (repo / "data" / name).write_text(json.dumps(rows))
    (repo / "gpt_eval.py").write_text(WISE_GPT_EVAL)
    out = tmp_path / "run"
    text = run(
        [
            "eval",
            "wise",
            *common(out, "--height", "64", "--width", "64", "--data", str(repo), "--think"),
            *judge_args(judge),
        ]
    )
    # WISE README: images named <prompt_id>.png in one folder.
    assert sorted(p.name for p in (out / "wise").iterdir()) == ["1.png", "401.png", "901.png"]
    scores = json.loads((out / "summary.json").read_text())["scores"]
    assert (
        scores["cultural"] == scores["time"] == scores["chemistry"] == pytest.approx(0.8)
    )  # (0.7*2 + 0.2*1) / 2
    assert scores["overall"] == pytest.approx(0.8) and scores["failed"] == 0
    sent = judge.texts("WISE-JUDGE")
    assert any(
        'PROMPT: "A clock at noon"' in t and 'EXPLANATION: "hands up"' in t and "{0-2}" in t for t in sent
    )
    assert any(
        r["body"]["messages"][0]["content"][0]["text"] == "SYSTEM: strict {auditor}" for r in judge.requests
    )
    assert json.loads((out / "settings.json").read_text())["think"] is True
    assert "| Cultural |" in text
    assert Image.open(out / "wise" / "1.png").text["internvlu:thought"] is not None


# ------------------------------------------------------------------------------------------------
# ImgEdit
# ------------------------------------------------------------------------------------------------


def test_imgedit(tmp_path: Path, run, judge: FakeJudge) -> None:
    data = tmp_path / "ImgEdit"
    meta = {
        "97": {"id": "for_add/000001.jpg", "prompt": "Add a blue square.", "edit_type": "add"},
        "1082": {"id": "animal/000002.jpg", "prompt": "Make the square green.", "edit_type": "alter"},
        "673": {"id": "style/000003.jpg", "prompt": "Turn it into a sketch.", "edit_type": "style"},
    }
    for k, rec in enumerate(meta.values()):
        (data / "singleturn" / rec["id"]).parent.mkdir(parents=True, exist_ok=True)
        shape_image((200, 30 * k, 30), (80, 64)).save(data / "singleturn" / rec["id"])
    (data / "basic_edit.json").write_text(json.dumps(meta))
    prompts = {
        t: f"IMGEDIT-JUDGE rubric for {t}. Instruction: <edit_prompt>" for t in ("add", "alter", "style")
    }
    (data / "prompts.json").write_text(json.dumps(prompts))
    out = tmp_path / "run"
    run(["eval", "imgedit", *common(out, "--data", str(data / "basic_edit.json")), *judge_args(judge),
         "--option", f"image_root={data / 'singleturn'}", "--option", f"judge_prompts={data / 'prompts.json'}"])  # fmt: skip
    # ImgEdit basic_bench_readme: edited images in one folder, named <key>.png.
    assert sorted(p.name for p in (out / "imgedit").iterdir()) == ["1082.png", "673.png", "97.png"]
    # Edits follow the input's shape, fitted into the checkpoint's pixel budget (the embedded model: 64 x 64 px).
    width, height = Image.open(out / "imgedit" / "97.png").size
    assert width * height <= 64 * 64 and width > height and abs(width / height - 80 / 64) < 0.15
    scores = json.loads((out / "summary.json").read_text())["scores"]
    assert scores["add"] == scores["alter"] == scores["style"] == 4.0 and scores["overall"] == 4.0
    assert any("Instruction: Make the square green." in t for t in judge.texts("IMGEDIT-JUDGE"))


# ------------------------------------------------------------------------------------------------
# GEdit-Bench
# ------------------------------------------------------------------------------------------------

VIE_PROMPTS = '''
_context_no_delimit = """VIESCORE context: reply as JSON {"score": [...], "reasoning": "..."}"""
_prompts_0shot_two_image_edit_rule = "Two images: the source and the edited one."
_prompts_0shot_tie_rule_SC = "SC-RULE. Editing instruction: <instruction>"
_prompts_0shot_rule_PQ = "PQ-RULE. Rate naturalness and artifacts."
'''


def test_gedit(tmp_path: Path, run, judge: FakeJudge) -> None:
    data = tmp_path / "GEdit-Bench"
    (data / "images").mkdir(parents=True)
    rows = []
    for k, (task, lang, inter) in enumerate(
        [
            ("color_alter", "en", True),
            ("subject-add", "en", False),
            ("color_alter", "en", False),
            ("subject-add", "cn", True),
        ]
    ):
        shape_image((30, 30 + 50 * k, 200), (64, 80)).save(data / "images" / f"{k}.png")
        rows.append({"key": f"k{k}", "task_type": task, "instruction": f"edit number {k}", "instruction_language": lang,
                     "Intersection_exist": inter, "input_image": f"images/{k}.png"})  # fmt: skip
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "vie_prompts.py").write_text(VIE_PROMPTS)
    out = tmp_path / "run"
    run(
        [
            "eval",
            "gedit",
            *common(out, "--data", str(data)),
            *judge_args(judge),
            "--option",
            f"judge_prompts={tmp_path / 'vie_prompts.py'}",
        ]
    )
    # GEdit-Bench EVAL.md: results/<method>/fullset/<edit_task>/<en|cn>/<key>.png (+ <key>_SRCIMG.png as the example saves).
    root = out / "gedit" / "internvlu" / "fullset"
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert found == ["color_alter/en/k0.png", "color_alter/en/k0_SRCIMG.png", "color_alter/en/k2.png", "color_alter/en/k2_SRCIMG.png",
                     "subject-add/en/k1.png", "subject-add/en/k1_SRCIMG.png"]  # fmt: skip
    scores = json.loads((out / "summary.json").read_text())["scores"]
    o = (7 * 6) ** 0.5  # SC = min(7, 9), PQ = min(8, 6)
    assert scores["color_alter"] == pytest.approx(o) and scores["overall"] == pytest.approx(o)
    assert (
        scores["semantics"] == 7
        and scores["quality"] == 6
        and scores["intersection_overall"] == pytest.approx(o)
    )
    assert any("Editing instruction: edit number 2" in t for t in judge.texts("SC-RULE"))


# ------------------------------------------------------------------------------------------------
# TextEdit
# ------------------------------------------------------------------------------------------------

TEXTEDIT_STEP1 = '''
import os
PROMPT_MAIN_EVAL = """
TEXTEDIT-JUDGE. Text to remove: "{raw_text}". Text to add: "{target_text}".
Output JSON like {{"score": {{"Q1": 5}}}}.
"""
'''


def test_textedit(tmp_path: Path, run, judge: FakeJudge) -> None:
    repo = tmp_path / "TextEdit"
    rows = {
        "1.1.1": [("11", "1.1.1/image/original/100.0.jpg", "SALE", "OPEN")],
        "2.1": [
            ("21", "2.1/image/original/200.0.webp", "TEA", "COFFEE"),
            ("22", "2.1/image/original/201.0.png", "5", "10"),
        ],
    }
    for category, items in rows.items():
        lines = []
        for ident, original, src, tgt in items:
            gt = original.replace("/original/", "/gt/")
            for rel in (original, gt):
                (repo / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
                shape_image((10, 10, 10)).save(repo / "data" / rel)
            lines.append({"id": int(ident), "prompt": f"Replace the text '{src}' with '{tgt}'.", "original_image": original,
                          "gt_image": gt, "source_text": src, "target_text": tgt, "gt_caption": "a sign"})  # fmt: skip
        (repo / "eval_prompts" / "fullset").mkdir(parents=True, exist_ok=True)
        (repo / "eval_prompts" / "fullset" / f"{category}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in lines)
        )
    (repo / "eval_pipeline").mkdir()
    (repo / "eval_pipeline" / "vlm_metrics_eval_step1.py").write_text(TEXTEDIT_STEP1)
    script(
        repo / "eval_pipeline" / "classic_metrics_eval.py",
        """
        import argparse, json, os
        p = argparse.ArgumentParser()
        for f in ("--benchmark_dir", "--gt_root_dir", "--model_output_root", "--output_dir", "--cache_dir", "--models"): p.add_argument(f)
        a = p.parse_args()
        n = 0
        for name in os.listdir(a.benchmark_dir):
            for line in open(os.path.join(a.benchmark_dir, name)):
                row = json.loads(line)
                parts = row["original_image"].split("/")
                assert os.path.isfile(os.path.join(a.model_output_root, a.models, parts[0], parts[-1]))
                n += 1
        json.dump({"Real": {"OA": 0.5}, "Virtual": {"OA": 0.25}, "count": n}, open(os.path.join(a.output_dir, a.models + ".json"), "w"))
    """,
    )
    out = tmp_path / "run"
    run(
        [
            "eval",
            "textedit",
            *common(out, "--data", str(repo)),
            *judge_args(judge),
            "--option",
            f"classic_cache_dir={tmp_path}",
        ]
    )
    # TextEdit README: output/<model>/<category>/<original file name> (same extension).
    root = out / "textedit" / "internvlu"
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert found == ["1.1.1/100.0.jpg", "2.1/200.0.webp", "2.1/201.0.png"]
    assert (
        Image.open(root / "2.1" / "200.0.webp").format == "WEBP"
        and Image.open(root / "1.1.1" / "100.0.jpg").format == "JPEG"
    )
    scores = json.loads((out / "summary.json").read_text())["scores"]
    assert scores["classic"]["count"] == 3
    assert scores["R_avg"] == pytest.approx(0.72) and scores["V_avg"] == pytest.approx(
        0.72
    )  # 0.4+0.3*0.8+0.1*(0.6+0.2+0)
    assert scores["R_TA"] == 1.0 and scores["R_TP"] == pytest.approx(0.8)
    assert any('Text to remove: "TEA". Text to add: "COFFEE"' in t for t in judge.texts("TEXTEDIT-JUDGE"))


# ------------------------------------------------------------------------------------------------
# Cross-cutting: resume through the CLI, summary command, missing judge, judge client
# ------------------------------------------------------------------------------------------------


def test_resume_and_summary_through_cli(tmp_path: Path, run) -> None:
    out = tmp_path / "run"
    argv = [
        "eval",
        "geneval",
        *common(out, "--height", "64", "--width", "64", "--limit", "2", "--num-images", "1"),
    ]
    run([*argv, "--shard", "1/2"])
    assert (
        not (out / "summary.json").exists()
        and (out / "geneval" / "00001").is_dir()
        and not (out / "geneval" / "00000").exists()
    )
    run([*argv, "--shard", "0/2"])
    assert json.loads((out / "summary.json").read_text())["layout_problems"] == []
    before = (out / "records" / "shard-000-of-002.jsonl").read_text()
    run([*argv, "--shard", "0/2"])  # finished: nothing regenerated
    assert (out / "records" / "shard-000-of-002.jsonl").read_text() == before
    text = run(["eval", "summary", str(out)])
    assert "GenEval (w/o CoT)" in text and "seed 0, 1 steps" in text
    with pytest.raises(ValueError, match="seed"):
        run([*argv, "--seed", "5"])


def test_judge_client_retries_caches_and_bounds_concurrency(
    tmp_path: Path, judge: FakeJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INTERNVLU_JUDGE_API_KEY", "sk-test")
    config = JudgeConfig.from_env(
        model="m", base_url=judge.url, backoff=0.01, retries=3, concurrency=2, cache_dir=tmp_path / "cache"
    )
    client = Judge(config)
    judge.requests.clear()
    judge.fail_next = 2
    reply = client.ask(JudgeRequest("WISE-JUDGE q", [shape_image((1, 2, 3))]))
    assert (
        reply.startswith("Consistency")
        and client.requests_sent == 3
        and judge.requests[-1]["auth"] == "Bearer sk-test"
    )
    assert (
        judge.requests[-1]["path"] == "/v1/chat/completions"
        and judge.requests[-1]["body"]["temperature"] == 0.0
    )
    assert (
        Judge(config).ask(JudgeRequest("WISE-JUDGE q", [shape_image((1, 2, 3))])) == reply
    )  # from the disk cache
    assert len(judge.requests) == 3
    judge.delay, judge.max_in_flight = 0.05, 0
    replies = client.map([JudgeRequest(f"PQ-RULE {k}", [shape_image((k, 0, 0))]) for k in range(6)])
    judge.delay = 0.0
    assert len(replies) == 6 and judge.max_in_flight <= 2
    judge.status = 401
    try:
        with pytest.raises(JudgeError, match="HTTP 401"):
            client.ask(JudgeRequest("new question"))
    finally:
        judge.status = 200
    judge.fail_next = 10
    with pytest.raises(JudgeError, match="after 4 attempts"):
        client.ask(JudgeRequest("another question"))
    judge.fail_next = 0
    with pytest.raises(ValueError, match="model name"):
        JudgeConfig(model="")
    assert parse_json_reply('noise ```json\n{"score": [1, 2],}\n``` tail') == {"score": [1, 2]}
    assert parse_json_reply("no json") is None


def test_gedit_reads_parquet_style_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows as pyarrow returns them from the HF parquet files: images are {bytes, path} structs."""
    from internvlu.evaluation.gedit import GEditBench, judge_size

    buf = io.BytesIO()
    shape_image((0, 200, 0), (96, 64)).save(buf, format="PNG")
    rows = [
        {"key": "a", "task_type": "tone_transfer", "instruction": "warmer", "instruction_language": "en",
         "Intersection_exist": True, "input_image": {"bytes": buf.getvalue(), "path": None}},
        {"key": "a", "task_type": "tone_transfer", "instruction": "暖色", "instruction_language": "cn",
         "Intersection_exist": True, "input_image": {"bytes": buf.getvalue(), "path": None}},
    ]  # fmt: skip
    monkeypatch.setattr(GEditBench, "_rows", lambda self: rows)
    items = GEditBench(tmp_path, {"language": "all"}).items()
    assert [it.key for it in items] == ["en/a", "cn/a"] and items[0].images[0].size == (96, 64)
    assert judge_size(96, 64) == (627, 418)  # ~512^2 pixels, aspect kept
    with pytest.raises(ValueError, match="language"):
        GEditBench(tmp_path, {"language": "de"}).items()
