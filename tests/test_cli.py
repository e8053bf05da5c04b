"""The `internvlu` command line: help for every subcommand, PNG metadata, no overwrites, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from internvlu.cli import EXIT_CHECKPOINT, EXIT_PARTIAL, EXIT_USAGE, build_parser, main

CKPT = Path(__file__).parent / "data" / "parity" / "tiny-ckpt"
IMG = Path(__file__).parent / "data" / "parity" / "golden" / "inputs" / "img_a.png"


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"info", "chat", "generate", "edit", "serve", "convert", "synth"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_generate_writes_png_with_metadata_and_never_overwrites(tmp_path, capsys):
    args = ["generate", "--model", str(CKPT), "a red cube", "--height", "64", "--width", "64", "--steps", "2",
            "--seed", "3", "--out", str(tmp_path), "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    assert main(args) == 0
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in files] == ["generate-0000.png", "generate-0001.png"]
    meta = Image.open(files[0]).text
    assert meta["internvlu:prompt"] == "a red cube" and json.loads(meta["internvlu:seed"]) == 3
    assert json.loads(meta["internvlu:num_inference_steps"]) == 2
    assert Image.open(files[0]).tobytes() == Image.open(files[1]).tobytes()  # same seed


def test_edit_and_think(tmp_path, capsys):
    args = ["edit", "--model", str(CKPT), "make it red", "--image", str(IMG), "--steps", "2", "--think",
            "--max-thought-tokens", "8", "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "thought:" in out and "edit-0000.png" in out
    assert "internvlu:thought" in Image.open(tmp_path / "edit-0000.png").text


def test_chat_and_info(capsys):
    assert main(["chat", "--model", str(CKPT), "What is this?", "--image", str(IMG), "--max-new-tokens", "4"]) == 0
    assert main(["info", "--model", str(CKPT)]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["generation_decoder_params"] == 361408


def test_exit_codes(tmp_path, capsys):
    assert main(["info", "--model", str(tmp_path / "nope")]) == EXIT_USAGE
    (tmp_path / "bad").mkdir()
    assert main(["info", "--model", str(tmp_path / "bad")]) == EXIT_CHECKPOINT
    assert main(["generate", "--model", str(CKPT), "x", "--height", "-5", "--width", "64"]) == EXIT_USAGE
    assert "height" in capsys.readouterr().err
    assert main([]) == EXIT_USAGE


def test_help_comes_from_typed_signatures(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    assert "--num-images NUM_IMAGES" in text and "images per prompt (default: 1)" in text
    assert "--dtype {float32,bfloat16,float16}" in text and "--batch BATCH" in text
    with pytest.raises(SystemExit) as info:
        main(["generate", "x", "--steps", "many"])
    assert info.value.code == EXIT_USAGE and "invalid int value" in capsys.readouterr().err


def test_default_model_from_env_and_missing_model(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("INTERNVLU_MODEL", str(CKPT))
    assert main(["info"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(CKPT)
    monkeypatch.setenv("INTERNVLU_MODEL", str(tmp_path / "none"))
    assert main(["info"]) == EXIT_USAGE and "INTERNVLU_MODEL" in capsys.readouterr().err


def test_chat_think_streams_answer(monkeypatch, capsys):
    monkeypatch.setenv("INTERNVLU_MODEL", str(CKPT))
    assert main(["chat", "Why is the sky blue?", "--think", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()  # greedy on fixed random weights: no <think>, so all of it is the answer
    assert main(["chat", "x", "--batch", "y.jsonl"]) == EXIT_USAGE  # a prompt and --batch together


def test_batch_generate_resumes_and_never_overwrites(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("INTERNVLU_MODEL", str(CKPT))
    requests = tmp_path / "jobs.jsonl"
    requests.write_text("\n".join([
        json.dumps({"id": "cube", "prompt": "a red cube", "seed": 1}),
        "",
        json.dumps({"prompt": "two balls", "seed": 2, "steps": 1, "num_images": 2}),
        json.dumps({"prompt": "bad", "colour": "red"}),
        "{not json",
    ]) + "\n")
    out = tmp_path / "png"
    args = ["generate", "--batch", str(requests), "--height", "64", "--width", "64", "--steps", "2",
            "--out", str(out), "--no-progress"]
    assert main(args) == EXIT_PARTIAL
    results = tmp_path / "jobs.results.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["line"], r["ok"]) for r in records] == [(1, True), (3, True), (4, False), (5, False)]
    assert records[0]["id"] == "cube" and records[1]["id"] == 3 and "colour" in records[2]["error"]
    assert len(records[1]["paths"]) == 2 and json.loads(Image.open(records[1]["paths"][0]).text["internvlu:seed"]) == 2
    files = sorted(out.glob("*.png"))
    assert len(files) == 3
    # a rerun resumes: nothing runs again, nothing is overwritten, still one result line per input
    assert main(args) == EXIT_PARTIAL
    assert results.read_text().count("\n") == 4 and sorted(out.glob("*.png")) == files
    # fixing the bad line and retrying failed lines replaces just their records
    lines = requests.read_text().splitlines()
    lines[3] = json.dumps({"prompt": "fixed", "steps": 1})
    requests.write_text("\n".join(lines) + "\n")
    assert main([*args, "--retry-failed"]) == EXIT_PARTIAL  # line 5 is still not JSON
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted((r["line"], r["ok"]) for r in records) == [(1, True), (3, True), (4, True), (5, False)]
    assert len(list(out.glob("*.png"))) == 4


def test_batch_chat_and_edit(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("INTERNVLU_MODEL", str(CKPT))
    (tmp_path / "in.png").write_bytes(IMG.read_bytes())
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"prompt": "What is this?", "image": "in.png", "max_new_tokens": 3}) + "\n"
                    + json.dumps({"prompt": "Think.", "think": True, "max_new_tokens": 3}) + "\n")
    assert main(["chat", "--batch", str(chat), "--results", str(tmp_path / "chat-out.jsonl"), "--no-progress"]) == 0
    records = [json.loads(x) for x in (tmp_path / "chat-out.jsonl").read_text().splitlines()]
    assert all(r["ok"] and isinstance(r["text"], str) for r in records) and "thought" in records[1]
    edits = tmp_path / "edits.jsonl"
    edits.write_text(json.dumps({"prompt": "make it red", "images": ["in.png"], "steps": 1}) + "\n"
                     + json.dumps({"prompt": "make it red", "image": "in.png", "steps": 1, "preserve": "on"}) + "\n"
                     + json.dumps({"prompt": "make it red", "image": "in.png", "steps": 1, "preserve": "yes"}) + "\n")
    assert main(["edit", "--batch", str(edits), "--out", str(tmp_path / "e"), "--no-progress"]) == EXIT_PARTIAL
    records = [json.loads(x) for x in (tmp_path / "edits.results.jsonl").read_text().splitlines()]
    assert records[0]["ok"] and Image.open(records[0]["paths"][0]).text["internvlu:mode"] == "edit"
    # The parity checkpoint (the release's config) redraws everything unless asked; "on" keeps the unedited part.
    assert Image.open(records[0]["paths"][0]).text["internvlu:preserve_unedited"] == "false"
    assert Image.open(records[1]["paths"][0]).text["internvlu:preserve_unedited"] == "true"
    assert not records[2]["ok"] and "preserve must be one of ['auto', 'off', 'on'], got 'yes'" in records[2]["error"]


def test_convert_dtype_and_shards(tmp_path, capsys):
    out = tmp_path / "bf16"
    assert main(["convert", str(CKPT), "--out", str(out), "--dtype", "bfloat16", "--max-shard-size", "200KB"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dtype"] == "bfloat16"
    assert len([f for f in report["files"] if f.startswith("vlm/") and f.endswith(".safetensors")]) > 1
    assert main(["info", "--model", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stored_dtype"] == "bfloat16" and info["dtype"] == "float32"  # stored bf16, loaded as asked
    assert main(["convert", str(out), "--out", str(out)]) == EXIT_USAGE  # never into a non-empty folder
    assert "not an empty folder" in capsys.readouterr().err
