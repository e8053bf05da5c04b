"""Progress bar, JSONL metrics (+ TensorBoard when installed) and the loss-curve PNG."""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

PLOT_KEYS = ("loss", "loss_ntp", "loss_flow")
PLOT_COLORS = {"loss": (40, 40, 40), "loss_ntp": (30, 110, 220), "loss_flow": (220, 70, 30)}


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory (CUDA) or peak resident memory of this process (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20  # Linux reports KiB, macOS bytes


class MetricsLogger:
    """Appends one JSON line per logged step to OUTPUT/metrics.jsonl (rank 0), mirrored to TensorBoard."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool, resume_step: int = 0) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            # Drop lines of steps after the checkpoint we resume from: they are about to be redone.
            kept = [
                ln
                for ln in self.path.read_text(encoding="utf-8").splitlines()
                if ln.strip() and _step(ln) <= resume_step
            ]
            self.path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                logger.info("tensorboard is not installed; metrics go to %s only", self.path)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError):
        return 0


class Progress:
    """tqdm bar with loss, learning rate and throughput; tqdm shows elapsed time and ETA."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self, record: dict[str, Any]) -> None:
        if self.bar is None:
            return
        post = {"loss": f"{record['loss']:.4f}"}
        if record.get("loss_ntp") is not None:
            post["ntp"] = f"{record['loss_ntp']:.3f}"
        if record.get("loss_flow") is not None:
            post["flow"] = f"{record['loss_flow']:.3f}"
        post["lr"] = f"{record['lr']:.2e}"
        post["samples/s"] = f"{record['samples_per_s']:.1f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def plot_losses(metrics_path: Path, png_path: Path) -> Path | None:
    """Loss curves (total, next-token, flow) vs step; matplotlib when installed, else drawn with PIL."""
    records = read_metrics(metrics_path)
    series = {
        k: [(r["step"], r[k]) for r in records if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        for k in PLOT_KEYS
    }
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    tmp = png_path.with_name(png_path.name + ".tmp.png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        for key, pts in series.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log" if all(p[1] > 0 for pts in series.values() for p in pts) else "linear")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(tmp, format="png")
        plt.close(fig)
    except ImportError:
        _plot_with_pil(series).save(tmp, format="PNG")
    os.replace(tmp, png_path)
    return png_path


def _plot_with_pil(series: dict[str, list[tuple[int, float]]], width: int = 800, height: int = 450):
    """A minimal line chart: axes, 5 y ticks, one coloured polyline per series and a legend."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 70, width - 20, 20, height - 45
    xs = [p[0] for pts in series.values() for p in pts]
    ys = [p[1] for pts in series.values() for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def to_px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        _, py = to_px(x0, y)
        draw.line([(left - 4, py), (left, py)], fill="black")
        draw.text((5, py - 6), f"{y:.3g}", fill="black")
    for x in (x0, (x0 + x1) / 2, x1):
        px, _ = to_px(x, y0)
        draw.text((px - 10, bottom + 6), f"{int(x)}", fill="black")
    draw.text(((left + right) // 2 - 12, height - 20), "step", fill="black")
    for i, (key, pts) in enumerate(series.items()):
        color = PLOT_COLORS.get(key, (0, 0, 0))
        coords = [to_px(x, y) for x, y in pts]
        if len(coords) == 1:
            cx, cy = coords[0]
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=color)
        else:
            draw.line(coords, fill=color, width=2)
        draw.line([(right - 150, top + 10 + 16 * i), (right - 130, top + 10 + 16 * i)], fill=color, width=3)
        draw.text((right - 125, top + 4 + 16 * i), key, fill="black")
    return img
