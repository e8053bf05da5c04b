"""Quality filters applied to every synthesised sample before it is written: size, aspect, p-hash dedup.

Each filter returns a rejection reason (a short name) or None; the runner counts reasons per shard and
in the manifest, so no sample disappears without a count.

Deduplication follows the paper's p-hash dedup (§4.2), with one change for instruction data: two
samples are duplicates only when their *text* (task, prompt, thought, messages) is identical **and**
every image pair is within ``phash_max_distance`` bits. Image-only dedup would drop e.g. two different
questions about one scene, or a "left of" and a "right of" prompt whose pictures look alike at 32x32.
Dedup runs within one shard, so that a shard's content depends only on (seed, shard index, config)
and shards can be built in any order, in parallel, and resumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter

import numpy as np
from PIL import Image

from internvlu.data.records import Sample
from internvlu.utils.config import ConfigBase

_HASH_GRID = 32  # image is shrunk to 32x32 before the DCT (standard p-hash)
_HASH_BITS = 8  # keep the 8x8 lowest frequencies -> 64-bit hash


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * i + 1) * k / (2 * n))  # (n, n) DCT-II basis (unnormalised: ranks only)


_DCT = _dct_matrix(_HASH_GRID)


def phash(image: Image.Image) -> int:
    """64-bit perceptual hash: sign of the 8x8 low-frequency DCT of the 32x32 gray image vs its median."""
    gray = image.convert("L").resize((_HASH_GRID, _HASH_GRID), Image.Resampling.BOX)
    pixels = np.asarray(gray, dtype=np.float64)
    coeffs = (_DCT @ pixels @ _DCT.T)[:_HASH_BITS, :_HASH_BITS]  # (8, 8) lowest frequencies
    bits = (coeffs > np.median(coeffs)).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


@dataclasses.dataclass
class FilterConfig(ConfigBase):
    """Filter settings (recorded in the manifest).

    Attributes:
        dedup: drop near-duplicates (same text, all images within `phash_max_distance`).
        phash_max_distance: largest Hamming distance (of 64 bits) counted as "the same image".
        min_side / max_side: allowed range of each image's shorter / longer side, in pixels.
        max_aspect: largest long/short side ratio (the paper keeps [0.5, 2.0]).
    """

    dedup: bool = True
    phash_max_distance: int = 2
    min_side: int = 16
    max_side: int = 4096
    max_aspect: float = 2.0

    def validate(self) -> None:
        if not 0 <= self.phash_max_distance <= 64:
            raise ValueError(f"phash_max_distance must be in [0, 64], got {self.phash_max_distance}")
        if not 1 <= self.min_side <= self.max_side:
            raise ValueError(f"need 1 <= min_side <= max_side, got {self.min_side}, {self.max_side}")
        if self.max_aspect < 1.0:
            raise ValueError(f"max_aspect must be >= 1, got {self.max_aspect}")


def text_fingerprint(sample: Sample) -> str:
    text = json.dumps(
        [sample.task, sample.prompt, sample.thought, [(m.role, m.content) for m in sample.messages]],
        ensure_ascii=False,
    )
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class SampleFilter:
    """Stateful filter for one shard: remembers accepted samples for dedup and counts rejections."""

    def __init__(self, config: FilterConfig) -> None:
        self.config = config
        self.rejections: Counter[str] = Counter()
        self._seen: dict[str, list[tuple[int, ...]]] = {}

    def reject_reason(self, sample: Sample) -> str | None:
        """The first failing check's reason, or None; does not record anything."""
        return self._evaluate(sample)[0]

    def check(self, sample: Sample) -> str | None:
        """Reject (count and return the reason) or accept (remember for dedup and return None)."""
        reason, hashes = self._evaluate(sample)
        if reason is not None:
            self.rejections[reason] += 1
            return reason
        if hashes is not None:
            self._seen.setdefault(text_fingerprint(sample), []).append(hashes)
        return None

    def _evaluate(self, sample: Sample) -> tuple[str | None, tuple[int, ...] | None]:
        cfg = self.config
        for ref in sample.all_images():
            w, h = ref.load().size
            if min(w, h) < cfg.min_side:
                return "too_small", None
            if max(w, h) > cfg.max_side:
                return "too_large", None
            if max(w, h) / min(w, h) > cfg.max_aspect:
                return "aspect_ratio", None
        if not cfg.dedup:
            return None, None
        hashes = tuple(phash(ref.load()) for ref in sample.all_images())
        for other in self._seen.get(text_fingerprint(sample), []):
            if len(other) == len(hashes) and all(
                hamming(a, b) <= cfg.phash_max_distance for a, b in zip(hashes, other)
            ):
                return "duplicate", hashes
        return None, hashes
