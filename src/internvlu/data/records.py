"""Typed training records and their validation.

One record is one training sample of one of four kinds (see docs/data-format.md):

* ``understanding``: multi-turn chat over zero or more images; loss on assistant turns only.
* ``t2i``: prompt -> target image.
* ``edit``: prompt + one or more input images -> target image.
* ``think``: prompt (+ optional input images) -> ``<think>thought</think>`` text + target image.

Every reader turns raw JSON into a :class:`Sample` through :func:`parse_record`, which raises
:class:`RecordError` naming the field and the location (``file:line`` or ``shard:member``). Readers do
not stop on one bad record: they hand it to a :class:`BadRecordTracker`, which counts it by reason,
logs it with its location, and raises :class:`TooManyBadRecordsError` once the bad fraction passes
``max_bad_fraction``. Nothing is skipped silently.

Images: readers decode them eagerly by default (``decode=True``), because validation has to decode an
image to know that it is readable, and decoding once and keeping the result avoids a second decode
in the training loop. ``decode=False`` only checks that the file or member exists; such images are
decoded on the first :meth:`ImageRef.load`.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

from PIL import Image

from internvlu.constants import IMAGE_PLACEHOLDER

logger = logging.getLogger("internvlu.data")

TaskKind = Literal["understanding", "t2i", "edit", "think"]
TASKS: tuple[str, ...] = get_args(TaskKind)
Role = Literal["user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)

# The JSON keys of the record format. Unknown top-level keys are kept in `Sample.extra` and written
# back, so a newer writer's additions survive a round trip through an older reader.
RECORD_KEYS = ("id", "task", "images", "messages", "prompt", "thought", "target", "meta")

# Reasons a record is rejected; the tracker counts by these names.
BAD_REASONS = (
    "invalid_json",  # the line / member is not JSON
    "not_an_object",  # JSON, but not an object
    "missing_field",  # a field the task needs is absent or null
    "wrong_type",  # a field has the wrong JSON type
    "bad_value",  # right type, value not allowed (unknown task, bad role order, empty text...)
    "unexpected_field",  # a field the task does not use is set (e.g. a target on an understanding record)
    "placeholder_mismatch",  # number of <image> placeholders != number of images
    "empty_target",  # generation record whose target is missing or ""
    "missing_image",  # image path / member not found
    "unreadable_image",  # image present but cannot be decoded
    "missing_json",  # tar shard: a sample key without KEY.json
    "corrupt_shard",  # tar shard could not be read past this point
)


class RecordError(ValueError):
    """One bad record. `field` names the offending field (dotted, e.g. ``messages[2].role``)."""

    def __init__(self, location: str, field: str, reason: str, message: str) -> None:
        assert reason in BAD_REASONS, reason
        self.location = location
        self.field = field
        self.reason = reason
        self.message = message
        super().__init__(f"{location}: field '{field}': {message} [{reason}]")


class TooManyBadRecordsError(ValueError):
    """Raised when the fraction of bad records passes the reader's `max_bad_fraction`."""


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def decode_image(data: bytes) -> Image.Image:
    """Decode encoded image bytes to an RGB image (alpha is dropped, palettes expanded)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.convert("RGB")


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of `image` with fixed settings, so the same pixels always give the same bytes."""
    buf = io.BytesIO()
    # No `optimize`: it searches filter strategies and is slow; a fixed level keeps bytes reproducible.
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


@dataclasses.dataclass
class ImageRef:
    """One image of a record: its name in the record plus where its pixels come from.

    Attributes:
        name: the string stored in the record: a path (JSONL) or a member name (tar shard).
        path: file to read when the image came from a JSONL record.
        data: encoded bytes (tar members, or bytes a generator produced).
    """

    name: str
    path: Path | None = None
    data: bytes | None = None
    _image: Image.Image | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def from_image(cls, name: str, image: Image.Image) -> ImageRef:
        """An in-memory image (what generators produce)."""
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"ImageRef.from_image expects a PIL image for {name!r}, got {type(image).__name__}"
            )
        return cls(name=name, _image=image.convert("RGB"))

    @property
    def is_loaded(self) -> bool:
        return self._image is not None

    def load(self) -> Image.Image:
        """Decoded RGB image, cached after the first call."""
        if self._image is None:
            if self.data is not None:
                self._image = decode_image(self.data)
            elif self.path is not None:
                self._image = decode_image(self.path.read_bytes())
            else:
                raise ValueError(f"image {self.name!r} has no pixels, bytes or path")
        return self._image

    def png_bytes(self) -> bytes:
        """PNG bytes to store; reuses stored PNG bytes unchanged so copies stay byte-identical."""
        if self.data is not None and self.data.startswith(_PNG_MAGIC):
            return self.data
        if self.path is not None and self._image is None:
            raw = self.path.read_bytes()
            if raw.startswith(_PNG_MAGIC):
                return raw
        return encode_png(self.load())


# --------------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Message:
    role: Role
    content: str


@dataclasses.dataclass
class Sample:
    """A validated training record.

    Attributes:
        id: record id (free-form string; tar keys are derived from it, see storage.py).
        task: one of ``TASKS``.
        images: input images (understanding, edit, think-edit).
        messages: chat turns (understanding only); ``<image>`` placeholders live in user turns.
        prompt: the instruction (t2i / edit / think).
        thought: reasoning text without ``<think>`` tags (think only).
        target: the image to generate (t2i / edit / think).
        meta: free-form metadata (the shapes world stores its scene graphs here).
        extra: unknown top-level JSON keys, kept and written back unchanged.
        location: where the record was read from (``file:line`` / ``shard:member``), for messages.
    """

    id: str
    task: TaskKind
    images: list[ImageRef] = dataclasses.field(default_factory=list)
    messages: list[Message] = dataclasses.field(default_factory=list)
    prompt: str | None = None
    thought: str | None = None
    target: ImageRef | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    location: str = "<memory>"

    def all_images(self) -> list[ImageRef]:
        """Inputs then target: every image the record references."""
        return [*self.images, *([self.target] if self.target is not None else [])]

    def to_json(self, image_names: list[str] | None = None, target_name: str | None = None) -> dict[str, Any]:
        """The JSON object of this record; pass the names the images are stored under."""
        images = image_names if image_names is not None else [ref.name for ref in self.images]
        obj: dict[str, Any] = dict(self.extra)
        obj.update({"id": self.id, "task": self.task, "meta": self.meta})
        if images:
            obj["images"] = list(images)
        if self.messages:
            obj["messages"] = [{"role": m.role, "content": m.content} for m in self.messages]
        for key in ("prompt", "thought"):
            if getattr(self, key) is not None:
                obj[key] = getattr(self, key)
        if self.target is not None:
            obj["target"] = target_name if target_name is not None else self.target.name
        return obj

    def validate(self) -> None:
        """Check an in-memory sample (as writers do); raises RecordError."""
        validate_sample(self)


# The rules per task: which fields are required / forbidden. Kept as data so docs and code agree.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "understanding": ("messages",),
    "t2i": ("prompt", "target"),
    "edit": ("prompt", "images", "target"),
    "think": ("prompt", "thought", "target"),
}
_FORBIDDEN: dict[str, tuple[str, ...]] = {
    "understanding": ("prompt", "thought", "target"),
    "t2i": ("images", "messages", "thought"),
    "edit": ("messages", "thought"),
    "think": ("messages",),
}


def _is_set(sample: Sample, name: str) -> bool:
    value = getattr(sample, name)
    return bool(value) if isinstance(value, list) else value is not None


def validate_sample(sample: Sample) -> None:
    """Semantic checks shared by readers and writers. Raises RecordError naming the field."""
    loc = sample.location
    if not isinstance(sample.id, str) or not sample.id.strip():
        raise RecordError(loc, "id", "bad_value", f"id must be a non-empty string, got {sample.id!r}")
    if sample.task not in TASKS:
        raise RecordError(loc, "task", "bad_value", f"unknown task {sample.task!r}; expected one of {TASKS}")
    if not isinstance(sample.meta, dict):
        raise RecordError(
            loc, "meta", "wrong_type", f"meta must be an object, got {type(sample.meta).__name__}"
        )
    for name in _FORBIDDEN[sample.task]:
        if _is_set(sample, name):
            raise RecordError(loc, name, "unexpected_field", f"task {sample.task!r} does not use '{name}'")
    for name in _REQUIRED[sample.task]:
        if name == "target" and (sample.target is None or not sample.target.name):
            raise RecordError(loc, "target", "empty_target", f"task {sample.task!r} needs a non-empty target")
        if not _is_set(sample, name):
            raise RecordError(loc, name, "missing_field", f"task {sample.task!r} needs '{name}'")
    for name in ("prompt", "thought"):
        value = getattr(sample, name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise RecordError(loc, name, "bad_value", f"'{name}' must be non-empty text, got {value!r}")
    if sample.task == "understanding":
        _validate_messages(sample)
    elif sample.prompt is not None:
        # Placeholders are optional in instructions: none means "images go before the prompt".
        n = sample.prompt.count(IMAGE_PLACEHOLDER)
        if n and n != len(sample.images):
            raise RecordError(
                loc,
                "prompt",
                "placeholder_mismatch",
                f"prompt has {n} {IMAGE_PLACEHOLDER} placeholders but the record has "
                f"{len(sample.images)} images",
            )
    if sample.thought is not None and ("<think>" in sample.thought or "</think>" in sample.thought):
        raise RecordError(
            loc, "thought", "bad_value", "thought must not contain <think> tags (added by the template)"
        )


def _validate_messages(sample: Sample) -> None:
    loc = sample.location
    placeholders = 0
    for i, msg in enumerate(sample.messages):
        expected = ROLES[i % 2]  # user, assistant, user, ...: the chat template assumes strict turns
        if msg.role != expected:
            raise RecordError(
                loc, f"messages[{i}].role", "bad_value", f"expected role {expected!r}, got {msg.role!r}"
            )
        if not isinstance(msg.content, str) or not msg.content.strip():
            raise RecordError(loc, f"messages[{i}].content", "bad_value", "content must be non-empty text")
        count = msg.content.count(IMAGE_PLACEHOLDER)
        if count and msg.role != "user":
            raise RecordError(
                loc, f"messages[{i}].content", "placeholder_mismatch", "assistant turns cannot hold images"
            )
        placeholders += count
    if sample.messages[-1].role != "assistant":
        raise RecordError(
            loc, "messages", "bad_value", "the last turn must be an assistant turn (it carries the loss)"
        )
    if placeholders != len(sample.images):
        raise RecordError(
            loc,
            "messages",
            "placeholder_mismatch",
            f"{placeholders} {IMAGE_PLACEHOLDER} placeholders in user turns but {len(sample.images)} images",
        )


# --------------------------------------------------------------------------------------------------
# Parsing raw JSON
# --------------------------------------------------------------------------------------------------

# (name in the record, field name for messages) -> ImageRef. Raises RecordError for missing/unreadable.
ImageResolver = Callable[[str, str], ImageRef]


def _opt_str(obj: dict[str, Any], key: str, loc: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise RecordError(loc, key, "wrong_type", f"'{key}' must be a string, got {type(value).__name__}")
    return value


def parse_record(obj: Any, location: str, resolve: ImageResolver) -> Sample:
    """Check the JSON types of one raw record, resolve its images and validate it.

    Args:
        obj: the decoded JSON value.
        location: ``file:line`` or ``shard:member``, used in every error.
        resolve: maps an image name to an :class:`ImageRef`; raises RecordError when the image is missing
            or unreadable.

    Returns:
        The validated :class:`Sample`.
    """
    loc = location
    if not isinstance(obj, dict):
        raise RecordError(
            loc, "<record>", "not_an_object", f"a record must be a JSON object, got {type(obj).__name__}"
        )
    for key in ("id", "task"):
        if obj.get(key) is None:
            raise RecordError(loc, key, "missing_field", f"every record needs '{key}'")
    sample_id = _opt_str(obj, "id", loc)
    task = _opt_str(obj, "task", loc)
    if task not in TASKS:
        raise RecordError(loc, "task", "bad_value", f"unknown task {task!r}; expected one of {TASKS}")

    images_raw = obj.get("images") or []
    if not isinstance(images_raw, list):
        raise RecordError(
            loc, "images", "wrong_type", f"'images' must be a list, got {type(images_raw).__name__}"
        )
    for i, name in enumerate(images_raw):
        if not isinstance(name, str) or not name:
            raise RecordError(
                loc, f"images[{i}]", "wrong_type", f"image names must be non-empty strings, got {name!r}"
            )

    messages_raw = obj.get("messages") or []
    if not isinstance(messages_raw, list):
        raise RecordError(
            loc, "messages", "wrong_type", f"'messages' must be a list, got {type(messages_raw).__name__}"
        )
    messages: list[Message] = []
    for i, m in enumerate(messages_raw):
        if not isinstance(m, dict):
            raise RecordError(
                loc, f"messages[{i}]", "wrong_type", f"a message must be an object, got {type(m).__name__}"
            )
        unknown = sorted(set(m) - {"role", "content"})
        if unknown:
            raise RecordError(loc, f"messages[{i}]", "unexpected_field", f"unknown message keys {unknown}")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise RecordError(loc, f"messages[{i}]", "wrong_type", "role and content must be strings")
        messages.append(Message(role=role, content=content))  # type: ignore[arg-type]  # checked in validate

    meta = obj.get("meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise RecordError(loc, "meta", "wrong_type", f"'meta' must be an object, got {type(meta).__name__}")

    target_name = _opt_str(obj, "target", loc)
    sample = Sample(
        id=sample_id or "",
        task=task,  # type: ignore[arg-type]
        messages=messages,
        prompt=_opt_str(obj, "prompt", loc),
        thought=_opt_str(obj, "thought", loc),
        target=ImageRef(name=target_name) if target_name is not None else None,
        meta=meta,
        extra={k: v for k, v in obj.items() if k not in RECORD_KEYS},
        location=loc,
    )
    sample.images = [ImageRef(name=n) for n in images_raw]  # names only: validate before touching files
    validate_sample(sample)
    # Images last: cheap structural errors are reported before any file is opened.
    sample.images = [resolve(n, f"images[{i}]") for i, n in enumerate(images_raw)]
    if sample.target is not None:
        sample.target = resolve(sample.target.name, "target")
    return sample


# --------------------------------------------------------------------------------------------------
# Bad-record accounting
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BadRecordTracker:
    """Counts good and bad records of one reader and enforces the bad-fraction limit.

    The limit is checked after every record once `min_records` have been seen (so one bad record
    among the first few does not end a run) and once more, unconditionally, by :meth:`finish`.

    Attributes:
        max_bad_fraction: largest tolerated bad / seen ratio (0.0 = no bad record allowed).
        min_records: records to see before the running check starts.
        keep_examples: how many (location, message) pairs to keep for the error message.
    """

    max_bad_fraction: float = 0.01
    min_records: int = 100
    keep_examples: int = 10
    seen: int = 0
    bad: int = 0
    by_reason: Counter[str] = dataclasses.field(default_factory=Counter)
    examples: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.min_records < 0:
            raise ValueError(f"min_records must be >= 0, got {self.min_records}")

    def add_good(self) -> None:
        self.seen += 1
        self._check(final=False)

    def add_bad(self, error: RecordError) -> None:
        self.seen += 1
        self.bad += 1
        self.by_reason[error.reason] += 1
        if len(self.examples) < self.keep_examples:
            self.examples.append(str(error))
        logger.warning("skipping bad record: %s", error)
        self._check(final=False)

    def finish(self) -> None:
        """Call at the end of the data: applies the limit even below `min_records`."""
        self._check(final=True)

    @property
    def bad_fraction(self) -> float:
        return self.bad / self.seen if self.seen else 0.0

    def summary(self) -> dict[str, Any]:
        return {"seen": self.seen, "bad": self.bad, "by_reason": dict(sorted(self.by_reason.items()))}

    def _check(self, final: bool) -> None:
        if self.bad == 0 or (not final and self.seen < self.min_records):
            return
        if self.bad_fraction > self.max_bad_fraction:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.by_reason.items()))
            shown = "\n  ".join(self.examples)
            raise TooManyBadRecordsError(
                f"{self.bad} of {self.seen} records ({100 * self.bad_fraction:.1f}%) were bad, above "
                f"max_bad_fraction={self.max_bad_fraction} ({reasons}). First problems:\n  {shown}"
            )
