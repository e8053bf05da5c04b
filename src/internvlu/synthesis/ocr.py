"""Optional OCR check of rendered text: read the picture back and compare with the text we drew.

Engines (both offline, both optional):

* ``rapidocr``: PyPI ``rapidocr-onnxruntime`` (bundles PP-OCR ONNX models; reads English and Chinese);
* ``tesseract``: the ``tesseract`` binary (Debian ``tesseract-ocr`` + ``tesseract-ocr-eng``, and
  ``tesseract-ocr-chi-sim`` for Chinese), called through a subprocess, so no Python wrapper is needed.

:func:`load_ocr_engine` ("auto") returns the first installed engine or None, so callers skip the
check cleanly where no engine exists. Comparison is on normalised text (case-folded, whitespace and
punctuation removed, full-width forms folded) with a character error rate threshold.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import unicodedata
from typing import Protocol

import numpy as np
from PIL import Image

OCR_ENGINES: tuple[str, ...] = ("rapidocr", "tesseract")


class OcrEngine(Protocol):
    """Reads all text of an image, lines top to bottom joined by newlines."""

    name: str

    def read(self, image: Image.Image) -> str: ...


class RapidOcrEngine:
    name = "rapidocr"

    def __init__(self) -> None:
        from rapidocr_onnxruntime import RapidOCR  # optional dependency

        self._engine = RapidOCR()

    def read(self, image: Image.Image) -> str:
        result, _ = self._engine(np.asarray(image.convert("RGB"))[..., ::-1])  # the engine expects BGR
        if not result:
            return ""
        # Each item: [4 corner points, text, score]; order by the box's top, then left edge.
        items = sorted(result, key=lambda r: (round(min(p[1] for p in r[0]) / 8), min(p[0] for p in r[0])))
        return "\n".join(str(r[1]) for r in items)


class TesseractEngine:
    name = "tesseract"

    def __init__(self, languages: str = "") -> None:
        binary = shutil.which("tesseract")
        if binary is None:
            raise ImportError("the tesseract binary is not on PATH (Debian: tesseract-ocr)")
        self.binary = binary
        available = self._languages()
        wanted = [lang for lang in ("eng", "chi_sim") if lang in available]
        self.languages = languages or "+".join(wanted) or "eng"

    def _languages(self) -> set[str]:
        out = subprocess.run([self.binary, "--list-langs"], capture_output=True, text=True, check=False)
        return {line.strip() for line in out.stdout.splitlines()[1:] if line.strip()}

    def read(self, image: Image.Image) -> str:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        out = subprocess.run(
            [self.binary, "stdin", "stdout", "-l", self.languages, "--psm", "6"],
            input=buf.getvalue(),
            capture_output=True,
            check=False,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"tesseract failed: {out.stderr.decode('utf-8', 'replace')[-300:]}")
        return out.stdout.decode("utf-8", "replace").strip()


def _try_load(name: str) -> OcrEngine | None:
    try:
        return RapidOcrEngine() if name == "rapidocr" else TesseractEngine()
    except ImportError:
        return None


@functools.lru_cache(maxsize=4)
def load_ocr_engine(name: str = "auto") -> OcrEngine | None:
    """An OCR engine: "auto" = the first installed of OCR_ENGINES (None if none is), or a named one.

    Raises ValueError for an unknown name and ImportError when a named engine is not installed.
    """
    if name == "auto":
        for candidate in OCR_ENGINES:
            engine = _try_load(candidate)
            if engine is not None:
                return engine
        return None
    if name not in OCR_ENGINES:
        raise ValueError(f"unknown OCR engine {name!r}; choose 'auto' or one of {OCR_ENGINES}")
    engine = _try_load(name)
    if engine is None:
        raise ImportError(
            f"OCR engine {name!r} is not installed "
            "(pip install rapidocr-onnxruntime, or apt-get install tesseract-ocr tesseract-ocr-eng)"
        )
    return engine


def normalize_text(text: str) -> str:
    """Case-folded, NFKC (full-width -> ASCII), without whitespace and punctuation."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if ch.isalnum())


def char_error_rate(expected: str, read: str) -> float:
    """Levenshtein distance between the normalised strings over the expected length (0 = exact)."""
    a, b = normalize_text(expected), normalize_text(read)
    if not a:
        return 0.0 if not b else 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        prev = cur
    return prev[-1] / len(a)


def check_text(
    engine: OcrEngine, image: Image.Image, expected: str, max_cer: float = 0.0
) -> tuple[bool, str, float]:
    """(ok, what the engine read, character error rate) for one image."""
    read = engine.read(image)
    cer = char_error_rate(expected, read)
    return cer <= max_cer, read, cer
