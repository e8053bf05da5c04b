"""Training data access: an in-memory index of validated records, and a deterministic task-mixture sampler.

The index keeps record metadata only: JSONL images stay file paths and tar-shard images are (shard, offset, size)
triples read on demand, so memory does not grow with image bytes. Records are validated by the data package's
`parse_record` and counted by its `BadRecordTracker` (bad records are logged with their location and skipped; the
run stops when the bad fraction passes `max_bad_fraction`).

Sampling is a pure function of (seed, global sample index) plus per-task counters: the task of sample i is drawn
from the task weights with a generator seeded by (seed, i), and each task walks through a fresh permutation of its
records every epoch. Every process computes the same global sequence and takes its share, so one process and N
processes see the same global batches, and resuming needs only the counters (`state_dict`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from internvlu.data.records import BadRecordTracker, ImageRef, RecordError, Sample, decode_image, parse_record
from internvlu.data.storage import expand_sources, iter_jsonl
from internvlu.training.config import TASK_NAMES
from internvlu.training.toy_data import is_toy_source, parse_toy_source, toy_samples

logger = logging.getLogger(__name__)

_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


# --------------------------------------------------------------------------------------------------
# Image access without caching
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TarImageRef(ImageRef):
    """A tar member image read by offset on every use (nothing cached)."""

    shard: Path | None = None
    offset: int = 0
    size: int = 0

    def read_bytes(self) -> bytes:
        assert self.shard is not None
        with open(self.shard, "rb") as fh:
            fh.seek(self.offset)
            return fh.read(self.size)

    def load(self) -> Image.Image:
        return decode_image(self.read_bytes())

    def png_bytes(self) -> bytes:
        return self.read_bytes()


def load_uncached(ref: ImageRef) -> Image.Image:
    """Decode an image for one use without keeping it in the record (in-memory images are returned as is)."""
    if ref.is_loaded:
        return ref.load()
    if isinstance(ref, TarImageRef):
        return ref.load()
    if ref.data is not None:
        return decode_image(ref.data)
    if ref.path is not None:
        return decode_image(ref.path.read_bytes())
    raise ValueError(f"image {ref.name!r} has no pixels, bytes or path")


# --------------------------------------------------------------------------------------------------
# Indexing
# --------------------------------------------------------------------------------------------------


def _tar_groups(path: Path) -> Iterable[tuple[str, dict[str, tarfile.TarInfo]]]:
    """(key, {member name: TarInfo}) per sample, in file order (members of a sample are consecutive)."""
    key: str | None = None
    group: dict[str, tarfile.TarInfo] = {}
    with tarfile.open(path, mode="r:") as tar:  # seekable mode: reads headers, skips data
        for info in tar:
            if not info.isfile():
                continue
            head, _, base = info.name.rpartition("/")
            stem = base.partition(".")[0]
            member_key = f"{head}/{stem}" if head else stem
            if key is not None and member_key != key:
                yield key, group
                group = {}
            key = member_key
            group[info.name] = info
    if key is not None:
        yield key, group


def index_tar(path: Path, tracker: BadRecordTracker, check_images: bool) -> Iterable[Sample]:
    """Validated samples of one tar shard whose images are read by offset later."""
    try:
        with open(path, "rb") as fh:
            for key, members in _tar_groups(path):
                json_name = f"{key}.json"
                location = f"{path}:{json_name}"
                try:
                    if json_name not in members:
                        raise RecordError(
                            f"{path}:{key}.*",
                            "<record>",
                            "missing_json",
                            f"no {json_name} among {sorted(members)}",
                        )
                    info = members[json_name]
                    fh.seek(info.offset_data)
                    try:
                        obj = json.loads(fh.read(info.size).decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                        raise RecordError(
                            location, "<record>", "invalid_json", f"not valid JSON: {exc}"
                        ) from exc

                    def resolve(name: str, field: str, members=members, location=location) -> ImageRef:
                        member = members.get(name)
                        if member is None:
                            raise RecordError(location, field, "missing_image", f"member {name!r} not found")
                        ref = TarImageRef(name=name, shard=path, offset=member.offset_data, size=member.size)
                        if check_images:
                            try:
                                ref.load()
                            except _IMAGE_ERRORS as exc:
                                raise RecordError(
                                    location, field, "unreadable_image", f"{name!r}: {exc}"
                                ) from exc
                        return ref

                    sample = parse_record(obj, location, resolve)
                except RecordError as err:
                    tracker.add_bad(err)
                    continue
                tracker.add_good()
                yield sample
    except (tarfile.TarError, OSError, EOFError) as exc:
        tracker.add_bad(RecordError(str(path), "<shard>", "corrupt_shard", f"tar read failed: {exc}"))


def load_index(
    sources: Sequence[str], *, max_bad_fraction: float = 0.01, check_images: bool = True
) -> tuple[list[Sample], BadRecordTracker]:
    """Read and validate every record of `sources` (see DataConfig.sources); returns (samples, tracker).

    Raises TooManyBadRecordsError (from the tracker) when too many records are bad.
    """
    tracker = BadRecordTracker(max_bad_fraction=max_bad_fraction)
    samples: list[Sample] = []
    files: list[str] = []
    for source in sources:
        if is_toy_source(source):
            count, anyres = parse_toy_source(source)
            for s in toy_samples(count, anyres):
                tracker.add_good()
                samples.append(s)
        else:
            files.append(source)
    for path in expand_sources(files) if files else []:
        if path.suffix == ".tar":
            samples.extend(index_tar(path, tracker, check_images))
        else:
            for sample in iter_jsonl(path, tracker, decode=check_images):
                for ref in sample.all_images():
                    ref._image = None  # validated; drop the pixels, the path stays
                samples.append(sample)
    tracker.finish()
    if not samples:
        raise ValueError(f"no usable training records in {list(sources)} ({tracker.summary()})")
    return samples, tracker


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PlannedSample:
    """One global sample: its index in the run's sample stream, task and record (index into the task's list)."""

    index: int
    task: str
    record: int


class TaskIndex:
    """Records grouped by task kind."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.by_task: dict[str, list[Sample]] = {t: [] for t in TASK_NAMES}
        for s in samples:
            self.by_task[s.task].append(s)

    def counts(self) -> dict[str, int]:
        return {t: len(v) for t, v in self.by_task.items()}

    def get(self, task: str, record: int) -> Sample:
        return self.by_task[task][record]


def _stable_id(text: str) -> int:
    return int.from_bytes(text.encode("utf-8")[:8].ljust(8, b"\0"), "little")


class MixtureSampler:
    """Deterministic weighted task mixture with per-task epoch permutations.

    Args:
        counts: records per task.
        weights: sampling weight per task; tasks with weight 0 or no records are excluded (a warning names
            weighted tasks without records).
    """

    def __init__(self, counts: dict[str, int], weights: dict[str, float], seed: int) -> None:
        missing = sorted(t for t, w in weights.items() if w > 0 and counts.get(t, 0) == 0)
        if missing:
            logger.warning(
                "data.task_weights names tasks without records, left out of the mixture: %s", missing
            )
        self.tasks = [t for t in TASK_NAMES if weights.get(t, 0) > 0 and counts.get(t, 0) > 0]
        if not self.tasks:
            raise ValueError(
                f"no task has both a positive weight and records (weights {weights}, records {counts})"
            )
        w = np.array([weights[t] for t in self.tasks], dtype=np.float64)
        self.probs = w / w.sum()
        self.counts = {t: counts[t] for t in self.tasks}
        self.seed = seed
        self.next_index = 0
        self.taken = {t: 0 for t in self.tasks}
        self._perm_cache: dict[tuple[str, int], np.ndarray] = {}

    def _permutation(self, task: str, epoch: int) -> np.ndarray:
        key = (task, epoch)
        if key not in self._perm_cache:
            self._perm_cache = {
                k: v for k, v in self._perm_cache.items() if k[0] != task
            }  # keep one per task
            rng = np.random.default_rng([self.seed, _stable_id(task), epoch])
            self._perm_cache[key] = rng.permutation(self.counts[task])
        return self._perm_cache[key]

    def next(self) -> PlannedSample:
        i = self.next_index
        rng = np.random.default_rng([self.seed, 0x7A5C, i])
        task = (
            self.tasks[int(rng.choice(len(self.tasks), p=self.probs))]
            if len(self.tasks) > 1
            else self.tasks[0]
        )
        k = self.taken[task]
        n = self.counts[task]
        record = int(self._permutation(task, k // n)[k % n])
        self.taken[task] = k + 1
        self.next_index = i + 1
        return PlannedSample(index=i, task=task, record=record)

    def take(self, n: int) -> list[PlannedSample]:
        return [self.next() for _ in range(n)]

    def state_dict(self) -> dict[str, Any]:
        return {"next_index": self.next_index, "taken": dict(self.taken), "tasks": list(self.tasks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "group" in state:
            raise ValueError(
                f"the checkpoint was saved inside a group of {state['group']['size']} batches; resume with "
                f"data.group_by_length={state['group']['size']}"
            )
        if list(state["tasks"]) != self.tasks:
            raise ValueError(
                f"the checkpoint's data mixture has tasks {state['tasks']} but this run has {self.tasks}; "
                "resume with the same data and task_weights"
            )
        self.next_index = int(state["next_index"])
        self.taken = {t: int(v) for t, v in state["taken"].items()}


class LengthGroupedSampler:
    """Plans `group` global batches at once and cuts them by row length, so that a batch's rows are padded less.

    Rows are right-padded to the longest row of their batch; with VQA rows of ~116-199 tokens and think rows of
    81-175 mixed at random, ~40% of the understanding stage's LLM tokens were padding (measured on the shapes
    data). The `group * batch` samples the mixture sampler draws next are sorted by `length(plan)` (ties by sample
    index), cut into `group` batches of `batch` and handed out in a seeded random order: the same samples in the
    same number of steps, only their grouping into steps changes (long rows train together, and a batch's task mix
    follows its lengths). Deterministic, and every process plans the same groups, as with MixtureSampler.
    A trade, not a free speed-up: on that stage G=8 made steps 1.5x faster but learnt less per step (docs/training.md).

    The state records the mixture sampler's state at the group's start plus how many of its batches were used, so a
    resumed run replans the group and continues with the next batch of it.
    """

    def __init__(self, sampler: MixtureSampler, group: int, length: Callable[[PlannedSample], int]) -> None:
        if group < 1:
            raise ValueError(f"data.group_by_length must be >= 1, got {group}")
        self.sampler = sampler
        self.group = group
        self.length = length
        self._queue: list[list[PlannedSample]] = []
        self._start: dict[str, Any] = sampler.state_dict()
        self._batch = 0
        self._consumed = 0
        self._taken = dict(sampler.taken)

    # The mixture's description, for logs and epoch counts.
    @property
    def tasks(self) -> list[str]:
        return self.sampler.tasks

    @property
    def probs(self) -> np.ndarray:
        return self.sampler.probs

    @property
    def counts(self) -> dict[str, int]:
        return self.sampler.counts

    def _plan_group(self, batch: int) -> None:
        self._start = self.sampler.state_dict()
        plans = self.sampler.take(batch * self.group)
        plans.sort(key=lambda p: (self.length(p), p.index))
        chunks = [plans[i : i + batch] for i in range(0, len(plans), batch)]
        order = np.random.default_rng([self.sampler.seed, 0x6B0C, self._start["next_index"]]).permutation(
            len(chunks)
        )
        self._queue = [chunks[int(i)] for i in order]
        self._batch = batch
        self._consumed = 0
        self._taken = dict(self._start["taken"])

    def take(self, n: int) -> list[PlannedSample]:
        if self._queue and n != self._batch:
            raise ValueError(f"LengthGroupedSampler plans batches of {self._batch}, asked for {n}")
        if not self._queue:
            self._plan_group(n)
        chunk = self._queue.pop(0)
        self._consumed += 1
        for p in chunk:
            self._taken[p.task] += 1
        return chunk

    def state_dict(self) -> dict[str, Any]:
        if not self._queue:  # at a group boundary: the plain mixture state
            return self.sampler.state_dict()
        return {
            "next_index": self._start["next_index"] + self._consumed * self._batch,
            "taken": dict(self._taken),  # samples used so far (for epoch counts); `group.start` restores
            "tasks": list(self.sampler.tasks),
            "group": {"size": self.group, "batch": self._batch, "consumed": self._consumed, "start": self._start},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        group = state.get("group")
        if group is None:
            self.sampler.load_state_dict(state)
            self._queue = []
            self._taken = dict(self.sampler.taken)
            return
        if int(group["size"]) != self.group:
            raise ValueError(
                f"the checkpoint was saved inside a group of {group['size']} batches (data.group_by_length) but "
                f"this run groups {self.group}; resume with data.group_by_length={group['size']}"
            )
        self.sampler.load_state_dict(group["start"])
        self._plan_group(int(group["batch"]))
        for _ in range(int(group["consumed"])):
            self.take(self._batch)
