"""The README's examples run as written, on the tiny checkpoint instead of the released one.

Only the checkpoint path, the device/dtype (CPU, fp32) and the output sizes (the tiny checkpoint's
pixel range) are substituted; everything else is executed verbatim.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "tests" / "data" / "parity" / "tiny-ckpt"
INPUT = ROOT / "tests" / "data" / "parity" / "golden" / "inputs" / "img_a.png"
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _adapt(text: str) -> str:
    text = text.replace("/path/to/InternVL-U", str(CKPT))
    text = text.replace('device="cuda"', 'device="cpu"').replace("torch.bfloat16", "torch.float32")
    text = re.sub(r"(height|width)=\d+", r"\1=64", text)
    text = re.sub(r"--(height|width) \d+", r"--\1 64", text)
    return text


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    for name in ("photo.jpg", "a.jpg", "b.jpg", "sign.jpg"):
        shutil.copy(INPUT, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


PY_BLOCKS = [b for b in _blocks("python") if "InternVLUPipeline" in b or "pipe." in b]


@pytest.mark.parametrize("index", range(len(PY_BLOCKS)))
def test_python_examples_run(workdir, index):
    code = _adapt(PY_BLOCKS[index])
    exec(compile(code, f"README python block {index}", "exec"), {"__name__": "__readme__"})


CLI_LINES = [
    line.strip()
    for block in _blocks("bash")
    for line in block.splitlines()
    if line.strip().startswith("internvlu ") and "/path/to/InternVL-U" in line
]


@pytest.mark.parametrize("line", CLI_LINES)
def test_cli_examples_run(workdir, line):
    argv = shlex.split(_adapt(line))[1:]
    if argv[0] in ("generate", "edit"):
        argv += ["--steps", "2", "--no-progress"]
    proc = subprocess.run(
        [sys.executable, "-m", "internvlu", *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
