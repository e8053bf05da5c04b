"""Where the default model lives when no `--model` is given.

Order: the INTERNVLU_MODEL environment variable, then the embedded model shipped inside the package
(`internvlu/assets/shapes-tiny`, trained by our own recipe on the shapes world).
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_ENV = "INTERNVLU_MODEL"
EMBEDDED_MODEL_DIR = Path(__file__).parent / "assets" / "shapes-tiny"


def embedded_model_path() -> Path | None:
    """The packaged model folder, or None if this install has none."""
    return EMBEDDED_MODEL_DIR if (EMBEDDED_MODEL_DIR / "model_index.json").is_file() else None


def default_model_path() -> Path:
    """The model to use when the user named none; a clear error if there is none."""
    env = os.environ.get(MODEL_ENV)
    if env:
        path = Path(env).expanduser()
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"{MODEL_ENV}={env!r} is not a checkpoint folder (no model_index.json)")
        return path
    embedded = embedded_model_path()
    if embedded is None:
        raise FileNotFoundError(
            f"no --model given, {MODEL_ENV} is not set, and this install has no embedded model at {EMBEDDED_MODEL_DIR}"
        )
    return embedded
