"""Benchmark name -> runner class (``internvlu eval NAME``)."""

from __future__ import annotations

from internvlu.evaluation.dpg import DPGBench
from internvlu.evaluation.gedit import GEditBench
from internvlu.evaluation.geneval import GenEval
from internvlu.evaluation.imgedit import ImgEdit
from internvlu.evaluation.runner import Benchmark
from internvlu.evaluation.textedit import TextEdit
from internvlu.evaluation.understanding import SUITES
from internvlu.evaluation.wise import WISE

BENCHMARKS: dict[str, type[Benchmark]] = {
    "geneval": GenEval,
    "dpg": DPGBench,
    "wise": WISE,
    "imgedit": ImgEdit,
    "gedit": GEditBench,
    "textedit": TextEdit,
    **SUITES,
}
GENERATION = ("geneval", "dpg", "wise")
EDITING = ("imgedit", "gedit", "textedit")
UNDERSTANDING = tuple(SUITES)


def available_benchmarks() -> list[str]:
    return list(BENCHMARKS)


def get_benchmark(name: str) -> type[Benchmark]:
    """The runner class of a benchmark; ValueError naming the known ones otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}") from None
