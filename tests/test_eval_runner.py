"""Evaluation runner: settings record, resume, sharding, pinned-settings refusal, summary (fake model: fast)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from eval_helpers import CKPT, parse_eval
from PIL import Image

from internvlu.evaluation.cli import add_eval_parser, build_settings, parse_options
from internvlu.evaluation.geneval import GenEval
from internvlu.evaluation.runner import image_grid, parse_shard, read_records, run_benchmark, score_benchmark
from internvlu.evaluation.settings import EvalSettings, load_settings, model_fingerprint, store_settings
from internvlu.pipeline.outputs import ChatResult, ImageResult


class FakePipe:
    """The typed pipeline interface; each image's colour comes from its own generator (seed)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def generate(
        self,
        prompt,
        *,
        think=False,
        images=None,
        height=None,
        width=None,
        num_images_per_prompt=1,
        generator=None,
        **kw,
    ):
        prompts = [prompt] if isinstance(prompt, str) else prompt
        self.calls += prompts
        gens = (
            generator if isinstance(generator, list) else [generator] * (len(prompts) * num_images_per_prompt)
        )
        out = []
        for k in range(len(prompts) * num_images_per_prompt):
            color = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=gens[k]))
            out.append(Image.new("RGB", (width or 32, height or 32), color))
        return ImageResult(
            images=out, thoughts=["t"] * len(prompts) if think else None, size=(height, width), settings={}
        )

    def edit(self, prompt, images, **kw):
        return self.generate(prompt, images=images, **kw)

    def chat(self, prompt, images=None, **kw):
        prompts = [prompt] if isinstance(prompt, str) else prompt
        return ChatResult(texts=[f"answer {p[-3:]}" for p in prompts], token_ids=[[] for _ in prompts])


def _settings(out: Path, **changes) -> EvalSettings:
    args = parse_eval(
        [
            "eval",
            "geneval",
            "--model",
            str(CKPT),
            "--out",
            str(out),
            "--height",
            "32",
            "--width",
            "32",
            "--steps",
            "1",
        ]
    )
    for key, value in changes.items():
        setattr(args, key, value)
    return build_settings(args, GenEval(None, limit=5))


def test_settings_record_everything(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    data = settings.to_dict()
    assert (
        data["model_sha256"] == model_fingerprint(CKPT)["sha256"]
        and data["model_fingerprint"]["weights"] == "full"
    )
    assert data["seed"] == 0 and data["num_images"] == 4 and data["num_inference_steps"] == 1
    # The checkpoint's own default guidance (the embedded model ships 3.0 / 1.5; the release 4.5 / 2.0).
    assert (data["all_cfg_scale"], data["part_cfg_scale"], data["think"]) == (3.0, 1.5, False)
    assert (data["height"], data["width"], data["prompt_rewriting"]) == (32, 32, "none")
    assert {"python", "torch", "transformers", "diffusers", "internvlu"} <= set(data["libraries"])
    assert next(iter(data["data"].values())) == settings.data[str(GenEval(None).metadata_file())]
    assert data["options"]["limit"] == 5
    think = _settings(tmp_path, think=True).to_dict()
    assert (think["all_cfg_scale"], think["part_cfg_scale"]) == (3.0, 1.5)
    # The fingerprint changes with any byte of the folder.
    copy = tmp_path / "ckpt"
    import shutil

    shutil.copytree(CKPT, copy)
    cfg = copy / "vae" / "config.json"
    cfg.write_text(cfg.read_text() + " ")
    assert model_fingerprint(copy)["sha256"] != data["model_sha256"]


def test_resume_shards_and_records(tmp_path: Path) -> None:
    out = tmp_path / "run"
    settings = _settings(out)
    pipe = FakePipe()
    report = run_benchmark(GenEval(None, limit=5), pipe, out, settings, shard=(1, 2))
    assert (report.assigned, report.generated, report.complete) == (2, 2, False)  # items 1 and 3
    assert sorted(read_records(out)) == ["00001", "00003"]
    report = run_benchmark(GenEval(None, limit=5), pipe, out, settings, shard=(0, 2))
    assert (report.generated, report.complete) == (3, True)
    # Resume: nothing left to do, the model is never even built.
    report = run_benchmark(
        GenEval(None, limit=5), lambda: pytest.fail("model loaded for finished items"), out, settings
    )
    assert (report.generated, report.skipped) == (0, 5)
    # A deleted image is regenerated identically (per-image seeds, independent of shard / batch).
    sample = out / "geneval" / "00003" / "samples" / "0002.png"
    before = Image.open(sample).tobytes()
    sample.unlink()
    report = run_benchmark(GenEval(None, limit=5), FakePipe(), out, settings)
    assert report.generated == 1 and Image.open(sample).tobytes() == before
    record = read_records(out)["00003"]
    assert (
        record["settings"] == settings.to_dict()
        and record["prompt"] == json.loads(record["meta"]["raw"])["prompt"]
    )
    assert json.loads(Image.open(sample).text["internvlu:settings"])["model_sha256"] == settings.model_sha256
    summary = score_benchmark(GenEval(None, limit=5), out, settings)
    assert summary["layout_problems"] == [] and summary["scores"] is None
    assert json.loads((out / "summary.json").read_text())["settings"]["seed"] == 0


def test_changed_settings_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    store_settings(out, _settings(out))
    with pytest.raises(ValueError, match="seed"):
        store_settings(out, _settings(out, seed=3))
    with pytest.raises(ValueError, match="num_inference_steps"):
        run_benchmark(GenEval(None, limit=5), FakePipe(), out, _settings(out, steps=7))
    assert load_settings(out).seed == 0


def test_layout_checker_catches_problems(tmp_path: Path) -> None:
    out = tmp_path / "run"
    settings = _settings(out)
    bench = GenEval(None, limit=5)
    run_benchmark(bench, FakePipe(), out, settings)
    assert bench.check_layout(out, settings) == []
    (out / "geneval" / "00002" / "metadata.jsonl").write_text('{"tag": "x"}\n')
    (out / "geneval" / "00004" / "samples" / "0003.png").unlink()
    problems = bench.check_layout(out, settings)
    assert any("00002" in p and "differs" in p for p in problems) and any("00004" in p for p in problems)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("3")
    with pytest.raises(ValueError, match="0 <= i < n"):
        parse_shard("2/2")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["nokey"])
    with pytest.raises(ValueError, match="unknown option"):
        GenEval(None, {"bogus": 1})
    with pytest.raises(ValueError, match="needs --data"):
        from internvlu.evaluation.dpg import DPGBench

        DPGBench(None)
    with pytest.raises(ValueError, match="limit"):
        GenEval(None, limit=0)
    with pytest.raises(ValueError, match="num_images"):
        EvalSettings(num_images=0)
    with pytest.raises(ValueError, match="same size|share one size"):
        image_grid([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 4))], 2)


def test_every_eval_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="internvlu")
    add_eval_parser(parser.add_subparsers(dest="command"))
    eval_parser = parser._subparsers._group_actions[0].choices["eval"]
    names = set(eval_parser._subparsers._group_actions[0].choices)
    expected = {
        "geneval",
        "dpg",
        "wise",
        "imgedit",
        "gedit",
        "textedit",
        "mme",
        "mmmu",
        "shapes",
        "vlmevalkit",
        "summary",
    }
    assert expected <= names
    for name in sorted(names):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["eval", name, "--help"])
        assert info.value.code == 0 and "usage:" in capsys.readouterr().out


def test_scoring_options_are_not_pinned(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = parse_eval(
        ["eval", "geneval", "--model", str(CKPT), "--out", str(out), "--height", "32", "--width", "32"]
    )
    store_settings(out, build_settings(args, GenEval(None, limit=2)))
    # Adding the official scorer's paths later does not count as different generation settings.
    store_settings(out, build_settings(args, GenEval(None, {"scorer_repo": "/x", "results": "/y"}, limit=2)))
    assert "scorer_repo" not in load_settings(out).options
