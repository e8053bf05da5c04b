"""Training data: the record format (records.py) and its two storage forms (storage.py).

See docs/data-format.md for the format itself.
"""

from __future__ import annotations

from internvlu.data.records import (
    BAD_REASONS,
    TASKS,
    BadRecordTracker,
    ImageRef,
    Message,
    RecordError,
    Sample,
    TaskKind,
    TooManyBadRecordsError,
    parse_record,
    validate_sample,
)
from internvlu.data.storage import (
    JsonlWriter,
    SampleReader,
    ShardWriter,
    expand_sources,
    iter_jsonl,
    iter_shard,
    read_samples,
    sha256_file,
    write_jsonl,
    write_shards,
)

__all__ = [
    "BAD_REASONS",
    "TASKS",
    "BadRecordTracker",
    "ImageRef",
    "JsonlWriter",
    "Message",
    "RecordError",
    "Sample",
    "SampleReader",
    "ShardWriter",
    "TaskKind",
    "TooManyBadRecordsError",
    "expand_sources",
    "iter_jsonl",
    "iter_shard",
    "parse_record",
    "read_samples",
    "sha256_file",
    "validate_sample",
    "write_jsonl",
    "write_shards",
]
