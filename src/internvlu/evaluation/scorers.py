"""Adapters that run a benchmark's *official* scorer on our output, when the user has installed it.

Official scorers live in their own (often legacy, GPU-only) environments, so each adapter runs the
scorer's own script as a subprocess with the user's interpreter (``python=`` / ``--option
scorer_python=...``), on the layout folder we wrote, then reads the scorer's own result file:

* GenEval: ``<repo>/evaluation/evaluate_images.py IMAGEDIR --outfile F --model-path DET`` (mmdet 2.x +
  open_clip; asserts CUDA). :func:`summarize_geneval_results` reproduces ``summary_scores.py``.
* DPG-Bench: ``accelerate launch <repo>/dpg_bench/compute_dpg_bench.py --image-root-path DIR
  --resolution R --pic-num 4 --vqa-model mplug --csv dpg_bench.csv --res-path F`` (ModelScope mPLUG).
  :func:`parse_dpg_results` reads the L1 category lines and the final score from F.
* TextEdit classic metrics: ``<repo>/eval_pipeline/classic_metrics_eval.py --benchmark_dir ...
  --gt_root_dir ... --model_output_root ... --output_dir ... --cache_dir ... --models NAME``
  (PaddleOCR, CLIP, aesthetic head); its ``OUTPUT_DIR/NAME.json`` is returned as is.

Judge-based benchmarks (WISE, ImgEdit, GEdit-Bench, TextEdit's MLLM metrics) are scored in-process
through judge.py with the benchmark's own prompts, read from the user's checkout.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

logger = logging.getLogger("internvlu.evaluation")


class ScorerError(RuntimeError):
    """An official scorer failed; the message holds its command and the tail of its output."""


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    logger.info("running official scorer: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ScorerError(f"cannot start {cmd[0]!r}: {exc}") from exc
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise ScorerError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{output[-4000:]}")
    return output


def _require(path: str | os.PathLike[str] | None, what: str) -> Path:
    if path is None:
        raise ValueError(f"{what} is needed to run the official scorer")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist")
    return p


# --------------------------------------------------------------------------------------------------
# GenEval
# --------------------------------------------------------------------------------------------------


def run_geneval_official(
    image_dir: Path,
    outfile: Path,
    *,
    repo: str | os.PathLike[str],
    detector_path: str | None,
    python: str | None,
) -> Path:
    """Run GenEval's ``evaluate_images.py`` on `image_dir`; returns its results.jsonl."""
    script = _require(
        Path(repo) / "evaluation" / "evaluate_images.py", "GenEval's evaluation/evaluate_images.py"
    )
    cmd = [python or sys.executable, str(script), str(image_dir), "--outfile", str(outfile)]
    if detector_path is not None:
        cmd += ["--model-path", str(_require(detector_path, "the Mask2Former detector folder"))]
    _run(cmd, cwd=Path(repo))
    if not outfile.is_file():
        raise ScorerError(f"GenEval's scorer finished without writing {outfile}")
    return outfile


def summarize_geneval_results(path: Path) -> dict[str, Any]:
    """GenEval's summary: per-task mean correctness over images; overall = mean of the task means.

    Reads the scorer's JSONL (one line per image with ``tag`` and ``correct``). Task keys follow
    GenEval's tags; ``overall`` averages the tasks present, as ``summary_scores.py`` does.
    """
    per_tag: OrderedDict[str, list[bool]] = OrderedDict()
    prompts: dict[str, list[bool]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        per_tag.setdefault(row["tag"], []).append(bool(row["correct"]))
        prompts.setdefault(str(row.get("metadata", row.get("prompt"))), []).append(bool(row["correct"]))
    if not per_tag:
        raise ValueError(f"{path} holds no results")
    tasks = {tag: sum(v) / len(v) for tag, v in per_tag.items()}
    return {
        **tasks,
        "overall": sum(tasks.values()) / len(tasks),
        "images": sum(len(v) for v in per_tag.values()),
        "prompts": len(prompts),
        "correct_images": sum(sum(v) for v in per_tag.values()) / sum(len(v) for v in per_tag.values()),
        "correct_prompts": sum(any(v) for v in prompts.values()) / len(prompts),
    }


# --------------------------------------------------------------------------------------------------
# DPG-Bench
# --------------------------------------------------------------------------------------------------


def run_dpg_official(
    image_dir: Path,
    res_path: Path,
    *,
    repo: str | os.PathLike[str],
    csv: str | os.PathLike[str] | None,
    resolution: int,
    pic_num: int,
    processes: int = 1,
    accelerate: str | None = None,
) -> dict[str, Any]:
    """Run ELLA's ``compute_dpg_bench.py`` through ``accelerate launch``; returns parsed scores."""
    script = _require(
        Path(repo) / "dpg_bench" / "compute_dpg_bench.py", "ELLA's dpg_bench/compute_dpg_bench.py"
    )
    csv_path = _require(csv or Path(repo) / "dpg_bench" / "dpg_bench.csv", "DPG-Bench's dpg_bench.csv")
    cmd = [accelerate or "accelerate", "launch", "--num_machines", "1", "--num_processes", str(processes)]
    if processes > 1:
        cmd.append("--multi_gpu")
    cmd += [
        "--mixed_precision",
        "fp16",
        str(script),
        "--image-root-path",
        str(image_dir),
        "--resolution",
        str(resolution),
    ]
    cmd += [
        "--pic-num",
        str(pic_num),
        "--vqa-model",
        "mplug",
        "--csv",
        str(csv_path),
        "--res-path",
        str(res_path),
    ]
    _run(cmd, cwd=Path(repo))
    return parse_dpg_results(res_path.read_text(encoding="utf-8"))


def parse_dpg_results(text: str) -> dict[str, Any]:
    """Read the L1 category scores and the final ``DPG-Bench score`` from the scorer's result file."""
    scores: dict[str, Any] = {}
    in_l1 = False
    for line in text.splitlines():
        if line.startswith("L1 category scores"):
            in_l1 = True
            continue
        if line.startswith("L2 category scores"):
            in_l1 = False
            continue
        match = re.match(r"^\t([^:]+):\s*([-\d.eE]+)\s*$", line)
        if in_l1 and match:
            scores[match.group(1).strip().lower()] = float(match.group(2))
        final = re.match(r"^DPG-Bench score:\s*([-\d.eE]+)", line)
        if final:
            scores["overall"] = float(final.group(1))
    if "overall" not in scores:
        raise ValueError("no 'DPG-Bench score:' line in the DPG scorer's output")
    return scores


# --------------------------------------------------------------------------------------------------
# TextEdit classic metrics
# --------------------------------------------------------------------------------------------------


def run_textedit_classic(
    *,
    repo: str | os.PathLike[str],
    benchmark_dir: Path,
    gt_root: Path,
    output_root: Path,
    model_name: str,
    result_dir: Path,
    cache_dir: str | os.PathLike[str],
    python: str | None = None,
) -> dict[str, Any]:
    """Run TextEdit's ``classic_metrics_eval.py`` (OCR/NED/CLIP/AES); returns its per-model JSON."""
    script = _require(
        Path(repo) / "eval_pipeline" / "classic_metrics_eval.py",
        "TextEdit's eval_pipeline/classic_metrics_eval.py",
    )
    result_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        python or sys.executable,
        str(script),
        "--benchmark_dir",
        str(benchmark_dir),
        "--gt_root_dir",
        str(gt_root),
    ]
    cmd += [
        "--model_output_root",
        str(output_root),
        "--output_dir",
        str(result_dir),
        "--cache_dir",
        str(cache_dir),
    ]
    cmd += ["--models", model_name]
    env = dict(os.environ, PADDLE_OCR_BASE_DIR=str(Path(cache_dir) / ".paddleocr"))
    _run(cmd, cwd=Path(repo), env=env)
    result = result_dir / f"{model_name}.json"
    if not result.is_file():
        raise ScorerError(f"TextEdit's classic scorer finished without writing {result}")
    return json.loads(result.read_text(encoding="utf-8"))
