"""Small helpers shared by the generators (config checks, choices, edit-pair samples, matplotlib)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from internvlu.data.records import ImageRef, Sample
from internvlu.utils.config import ConfigBase

T = TypeVar("T")


@dataclasses.dataclass
class GeneratorConfig(ConfigBase):
    """Config base for generators: JSON lists become tuples (hashable, what the defaults are)."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if isinstance(getattr(self, field.name), list):
                setattr(self, field.name, tuple(getattr(self, field.name)))
        super().__post_init__()


def check_subset(name: str, value: Sequence[str], allowed: Sequence[str], min_len: int = 1) -> None:
    """ValueError unless `value` holds >= `min_len` distinct items of `allowed`."""
    bad = [v for v in value if v not in allowed]
    if bad or len(value) < min_len or len(set(value)) != len(value):
        raise ValueError(f"{name}={tuple(value)!r}: need >= {min_len} distinct values from {tuple(allowed)}")


def check_weights(name: str, weights: Sequence[float], items: Sequence[str]) -> None:
    """Empty (= equal) or one non-negative weight per item with a positive sum."""
    if weights and (len(weights) != len(items) or min(weights) < 0 or sum(weights) <= 0):
        raise ValueError(f"{name}={tuple(weights)!r} must be {len(items)} non-negative weights (or empty)")


def check_min_int(name: str, value: Any, low: int) -> None:
    """ValueError unless `value` is an integer >= `low` (image sizes, counts, seeds)."""
    if not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_range(name: str, value: float, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")


def probabilities(weights: Sequence[float], n: int) -> np.ndarray:
    w = np.asarray(weights or [1.0] * n, dtype=np.float64)
    return w / w.sum()


def pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    """One item, uniformly (index drawn from `rng`, so the choice is reproducible)."""
    return items[int(rng.integers(len(items)))]


def pick_weighted(rng: np.random.Generator, items: Sequence[T], p: np.ndarray) -> T:
    return items[int(rng.choice(len(items), p=p))]


def pick_distinct(rng: np.random.Generator, items: Sequence[T], k: int) -> list[T]:
    """`k` different items (by position), in the order drawn."""
    return [items[int(i)] for i in rng.choice(len(items), size=k, replace=False)]


def fmt_num(value: float, digits: int = 2) -> str:
    """Short decimal text: 2.0 -> "2", 1.50 -> "1.5", -0.0 -> "0"."""
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def edit_pair_sample(
    task: str,
    sample_id: str,
    prompt: str,
    thought: str,
    image_in: Image.Image,
    image_out: Image.Image,
    meta: dict[str, Any],
) -> Sample:
    """The sample of an input/target image pair: an "edit", or a "think" edit that carries `thought`."""
    common = {
        "id": sample_id,
        "prompt": prompt,
        "images": [ImageRef.from_image("image0", image_in)],
        "target": ImageRef.from_image("target", image_out),
        "meta": meta,
    }
    if task == "think":
        return Sample(task="think", thought=thought, **common)
    return Sample(task="edit", **common)


# --------------------------------------------------------------------------------------------------
# matplotlib (optional dependency: imported only by the generators that draw with it)
# --------------------------------------------------------------------------------------------------


def require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this generator draws with matplotlib; install it with `pip install 'internvlu[synth]'`"
        ) from exc
    return matplotlib


def new_figure(width: int, height: int, dpi: int = 100) -> tuple[Any, Any]:
    """A figure of exactly `width` x `height` pixels on the Agg canvas (no pyplot: no global state)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    return fig, fig.canvas


def figure_image(fig: Any) -> Image.Image:
    """Render a figure made by :func:`new_figure` to an RGB image."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())  # (H, W, 4) uint8
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]), "RGB")
