"""The `internvlu` command line: help for every subcommand, PNG metadata, no overwrites, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from internvlu.cli import EXIT_CHECKPOINT, EXIT_USAGE, build_parser, main

CKPT = Path(__file__).parent / "data" / "parity" / "tiny-ckpt"
IMG = Path(__file__).parent / "data" / "parity" / "golden" / "inputs" / "img_a.png"


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here
    assert {"info", "chat", "generate", "edit", "synth"} <= set(commands)
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
            "--out", str(tmp_path), "--no-progress"]  # fmt: skip
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
