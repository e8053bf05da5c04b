"""The "Fine-tune on your data" example of the README runs as written (shortened to a few steps)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from internvlu.cli import main

DOC = Path(__file__).resolve().parents[1] / "README.md"
# Appended to the documented commands so the test takes seconds; everything else runs exactly as documented.
SHORTER = {"train": ["train.steps=3", "logging.progress=false", "train.num_threads=1"], "generate": ["--steps", "2"],
           "chat": ["--max-new-tokens", "4"]}  # fmt: skip


def _example_block() -> str:
    section = DOC.read_text(encoding="utf-8").split("## Fine-tune on your data", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert match, "the section has no bash example"
    return match.group(1)


def test_the_fine_tuning_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    block = _example_block()
    python = re.search(r"python - <<'EOF'\n(.*?)\nEOF\n", block, re.DOTALL)
    assert python, "the example writes its data with a python heredoc"
    commands = [line for line in block.replace(python.group(0), "").splitlines() if line.strip()]
    assert commands[0] == "mkdir -p my_data/images"
    (tmp_path / "my_data" / "images").mkdir(parents=True)
    exec(compile(python.group(1), "README.md", "exec"), {})  # noqa: S102 - our own documentation
    try:
        for line in commands[1:]:
            argv = shlex.split(line)
            assert argv[0] == "internvlu", line
            assert main(argv[1:] + SHORTER[argv[1]]) == 0, line
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert (tmp_path / "runs" / "my-first" / "export" / "model_index.json").is_file()
    assert (tmp_path / "runs" / "my-first" / "loss_curve.png").is_file()
    assert '"step": 3' in out
