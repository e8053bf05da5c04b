"""The README's examples run as written, on the tiny checkpoint instead of the released one.

Only the checkpoint path, the device/dtype (CPU, fp32) and the output sizes (the tiny checkpoint's
pixel range) are substituted; everything else is executed verbatim.
"""

from __future__ import annotations

import re
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


SKIP_MARKERS = ("python - <<",  # the fine-tuning example: tests/test_training_docs.py
                "pip install", "internvlu serve", "make ", "python benchmarks", "huggingface-cli", "python -m pytest")
SHELL_BLOCKS = [b for b in _blocks("bash") if "internvlu " in b and not any(m in b for m in SKIP_MARKERS)]


@pytest.mark.parametrize("index", range(len(SHELL_BLOCKS)))
def test_shell_examples_run(workdir, index):
    script = _adapt(SHELL_BLOCKS[index])
    # Smaller workloads, same commands: a few synthesis samples, one eval task per kind, 2 denoising steps, the
    # shapes-tiny recipe's smoke variant (same code path, toy sizes; the full recipe takes an hour).
    script = script.replace("--recipe shapes-tiny ", "--recipe shapes-tiny-smoke ")
    # `eval shapes` on the random parity checkpoint is slow (the detector on noise); on the default model it runs.
    script = re.sub(r"(?m)^internvlu eval shapes +--model .*$", "", script)
    script = re.sub(r"--num \d{2,}", "--num 8", script)
    script = re.sub(r"(?m)^(internvlu (?:generate|edit) (?:(?!--steps).)*[^\\\n])$", r"\1 --steps 2 --no-progress", script)
    prelude = f'internvlu() {{ "{sys.executable}" -m internvlu "$@"; }}\nset -euo pipefail\n'
    proc = subprocess.run(["bash", "-c", prelude + script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script}\n--- stderr ---\n{proc.stderr[-3000:]}"
