"""The two storage forms of the record format: JSONL + image files, and WebDataset-style tar shards.

JSONL (for users): one record per line; image fields are paths, relative to the JSONL file's folder
(or absolute). Locations in errors are ``file.jsonl:LINE``.

Tar shards (for scale): uncompressed POSIX tar files, read as a stream (no seeking, no index), in the
layout WebDataset uses: the members of one sample are consecutive and share a key, ``KEY.json`` plus
``KEY.<name>.png`` per image, and the JSON names its images by member name. Locations in errors are
``shard.tar:KEY.json``. Why tar shards rather than Parquet: images stay plain PNG files that any tool can
list and extract (``tar tf``), shards are read front to back at disk/network speed, one shard maps to
one worker without a footer or row-group index, and the ``webdataset`` package reads the same files.
Only the standard library ``tarfile`` is used here.

Writers set every member's mtime/uid/gid/uname/mode to fixed values and write members in sorted order,
so the same samples always give byte-identical shards (the synthesis runner relies on this).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from internvlu.data.records import (
    BadRecordTracker,
    ImageRef,
    RecordError,
    Sample,
    decode_image,
    parse_record,
    validate_sample,
)

# Tar keys become file names and must not contain the '.' that separates key from member suffix.
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]{1,120}$")
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

PathLike = str | os.PathLike[str]


def is_valid_key(key: str) -> bool:
    """Whether `key` can name a sample's tar members (letters, digits, '_' and '-')."""
    return bool(_KEY_RE.match(key))


def sample_key(sample: Sample, index: int) -> str:
    """The member key of a sample: its id when that is a valid key, else the running index."""
    return sample.id if is_valid_key(sample.id) else f"{index:09d}"


def image_member_names(key: str, sample: Sample) -> tuple[list[str], str | None]:
    """Member (or file) names of a sample's inputs and target: ``KEY.image0.png`` ... ``KEY.target.png``."""
    inputs = [f"{key}.image{i}.png" for i in range(len(sample.images))]
    return inputs, (f"{key}.target.png" if sample.target is not None else None)


def dumps_record(obj: dict[str, Any]) -> str:
    """Canonical JSON text: sorted keys and fixed separators, so equal records give equal bytes."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def sha256_file(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Tar shards
# --------------------------------------------------------------------------------------------------


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    # Fixed metadata: a shard's bytes must depend on its samples only (determinism, sha256 checks).
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class ShardWriter:
    """Write samples into one tar shard, atomically: members go to ``PATH.tmp``, renamed on close.

    Use as a context manager; an exception inside the block removes the temp file and leaves no shard.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.tmp_path, "wb")
        self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.GNU_FORMAT)
        self._keys: set[str] = set()
        self.count = 0

    def write(self, sample: Sample, key: str | None = None) -> str:
        """Append one sample; returns its key. ValueError for a bad key, RecordError for a bad sample."""
        validate_sample(sample)
        key = key if key is not None else sample_key(sample, self.count)
        if not is_valid_key(key):
            raise ValueError(f"tar key {key!r} must match {_KEY_RE.pattern}")
        if key in self._keys:
            raise ValueError(f"duplicate key {key!r} in shard {self.path}")
        self._keys.add(key)
        input_names, target_name = image_member_names(key, sample)
        members: dict[str, bytes] = {
            f"{key}.json": dumps_record(sample.to_json(input_names, target_name)).encode("utf-8")
        }
        for name, ref in zip(input_names, sample.images):
            members[name] = ref.png_bytes()
        if target_name is not None and sample.target is not None:
            members[target_name] = sample.target.png_bytes()
        for name in sorted(members):  # sorted: deterministic order within a sample
            data = members[name]
            self._tar.addfile(_tar_member(name, len(data)), io.BytesIO(data))
        self.count += 1
        return key

    def close(self) -> None:
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.tmp_path, self.path)  # atomic: a shard file on disk is always complete

    def abort(self) -> None:
        self._tar.close()
        self._fh.close()
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _split_member(name: str) -> tuple[str, str]:
    """``dir/KEY.suffix.png`` -> (``dir/KEY``, ``suffix.png``): the key ends at the basename's first dot."""
    head, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (suffix if dot else "")


def _group_to_sample(shard: Path, key: str, members: dict[str, bytes], decode: bool) -> Sample:
    json_name = f"{key}.json"
    location = f"{shard}:{json_name}"
    if json_name not in members:
        raise RecordError(
            f"{shard}:{key}.*", "<record>", "missing_json", f"members {sorted(members)} have no {json_name}"
        )
    try:
        obj = json.loads(members[json_name].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(location, "<record>", "invalid_json", f"not valid JSON: {exc}") from exc

    def resolve(name: str, field: str) -> ImageRef:
        data = members.get(name)
        if data is None:
            raise RecordError(
                location, field, "missing_image", f"member {name!r} not found next to {json_name}"
            )
        ref = ImageRef(name=name, data=data)
        if decode:
            try:
                ref._image = decode_image(data)
            except _IMAGE_ERRORS as exc:
                raise RecordError(
                    location, field, "unreadable_image", f"member {name!r} cannot be decoded: {exc}"
                ) from exc
        return ref

    return parse_record(obj, location, resolve)


def iter_shard(path: PathLike, tracker: BadRecordTracker, decode: bool = True) -> Iterator[Sample]:
    """Stream the samples of one tar shard; bad records go to `tracker` (which may raise)."""
    shard = Path(path)
    key: str | None = None
    members: dict[str, bytes] = {}

    def flush() -> Sample | None:
        assert key is not None
        try:
            sample = _group_to_sample(shard, key, members, decode)
        except RecordError as err:
            tracker.add_bad(err)
            return None
        tracker.add_good()
        return sample

    last_member = "<start>"
    try:
        with tarfile.open(shard, mode="r|*") as tar:  # stream mode: one pass, no seeks
            for info in tar:
                if not info.isfile():
                    continue
                member_key, _ = _split_member(info.name)
                if member_key != key and key is not None:
                    sample = flush()
                    if sample is not None:
                        yield sample
                    members = {}
                key = member_key
                fh = tar.extractfile(info)
                assert fh is not None
                members[info.name] = fh.read()
                last_member = info.name
    except (tarfile.TarError, OSError, EOFError) as exc:
        # The rest of the shard is unreachable; the group being read is lost, count it once.
        tracker.add_bad(
            RecordError(f"{shard}:{last_member}", "<shard>", "corrupt_shard", f"tar read failed: {exc}")
        )
        return
    if key is not None:
        sample = flush()
        if sample is not None:
            yield sample


def write_shards(
    samples: Iterable[Sample], out_dir: PathLike, shard_size: int, prefix: str = "shard"
) -> list[Path]:
    """Write samples into ``OUT/PREFIX-000000.tar`` ... with `shard_size` samples each; returns the paths.

    Keys are the sample ids when valid (see :func:`sample_key`), else the global running index.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    paths: list[Path] = []
    writer: ShardWriter | None = None
    for index, sample in enumerate(samples):
        if index % shard_size == 0:
            if writer is not None:
                writer.close()
            paths.append(out / f"{prefix}-{len(paths):06d}.tar")
            writer = ShardWriter(paths[-1])
        assert writer is not None
        try:
            writer.write(sample, key=sample_key(sample, index))
        except BaseException:
            writer.abort()
            raise
    if writer is not None:
        writer.close()
    return paths


# --------------------------------------------------------------------------------------------------
# JSONL
# --------------------------------------------------------------------------------------------------


class JsonlWriter:
    """Write records to a JSONL file; images become PNG files under ``IMAGE_DIR`` next to it.

    Image paths in the file are relative to the JSONL file's folder, so the folder can be moved.
    """

    def __init__(self, path: PathLike, image_dir: str = "images") -> None:
        self.path = Path(path)
        self.root = self.path.parent
        self.image_dir = image_dir
        (self.root / image_dir).mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w", encoding="utf-8")
        self._keys: set[str] = set()
        self.count = 0

    def write(self, sample: Sample) -> None:
        """Append one sample. RecordError for a bad sample, ValueError for a repeated key."""
        validate_sample(sample)
        key = sample_key(sample, self.count)
        if key in self._keys:  # its image files would overwrite the earlier sample's
            raise ValueError(f"duplicate sample key {key!r} in {self.path}")
        self._keys.add(key)
        inputs, target = image_member_names(key, sample)
        names = [f"{self.image_dir}/{n}" for n in inputs]
        target_name = f"{self.image_dir}/{target}" if target is not None else None
        refs = [*zip(names, sample.images)]
        if target_name is not None and sample.target is not None:
            refs.append((target_name, sample.target))
        for name, ref in refs:
            (self.root / name).write_bytes(ref.png_bytes())
        self._fh.write(dumps_record(sample.to_json(names, target_name)) + "\n")
        self.count += 1

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()


def write_jsonl(samples: Iterable[Sample], path: PathLike, image_dir: str = "images") -> int:
    """Write samples to `path` (images under `image_dir` beside it); returns the count."""
    with JsonlWriter(path, image_dir) as writer:
        for sample in samples:
            writer.write(sample)
        return writer.count


def iter_jsonl(path: PathLike, tracker: BadRecordTracker, decode: bool = True) -> Iterator[Sample]:
    """Stream the records of a JSONL file; blank lines are skipped, bad records go to `tracker`."""
    jsonl = Path(path)
    root = jsonl.parent
    with open(jsonl, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            location = f"{jsonl}:{lineno}"

            def resolve(name: str, field: str, location: str = location) -> ImageRef:
                file = Path(name) if os.path.isabs(name) else root / name
                if not file.is_file():
                    raise RecordError(location, field, "missing_image", f"image file {str(file)!r} not found")
                ref = ImageRef(name=name, path=file)
                if decode:
                    try:
                        ref._image = decode_image(file.read_bytes())
                    except _IMAGE_ERRORS as exc:
                        raise RecordError(
                            location, field, "unreadable_image", f"{str(file)!r}: {exc}"
                        ) from exc
                return ref

            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RecordError(location, "<record>", "invalid_json", f"not valid JSON: {exc}") from exc
                sample = parse_record(obj, location, resolve)
            except RecordError as err:
                tracker.add_bad(err)
                continue
            tracker.add_good()
            yield sample


# --------------------------------------------------------------------------------------------------
# Reading any mix of sources
# --------------------------------------------------------------------------------------------------


def expand_sources(sources: PathLike | Sequence[PathLike]) -> list[Path]:
    """Resolve sources to data files, in a stable order.

    Each source is a ``.jsonl`` file, a ``.tar`` shard, a glob pattern, or a folder. A folder with a
    ``manifest.json`` (written by ``internvlu synth``) yields its shards in manifest order; any other
    folder yields its sorted ``*.tar`` then ``*.jsonl`` files.
    """
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not items:
        raise ValueError("no data sources given")
    files: list[Path] = []
    for item in items:
        text = os.fspath(item)
        path = Path(text)
        if any(ch in text for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(text))
            if not matches:
                raise ValueError(f"data source pattern {text!r} matches no file")
            files.extend(matches)
        elif path.is_dir():
            manifest = path / "manifest.json"
            if manifest.is_file():
                shards = json.loads(manifest.read_text(encoding="utf-8")).get("shards", [])
                files.extend(path / entry["name"] for entry in shards)
            else:
                found = sorted(path.glob("*.tar")) + sorted(path.glob("*.jsonl"))
                if not found:
                    raise ValueError(f"data folder {text!r} holds no .tar or .jsonl file")
                files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"data source {text!r} does not exist")
    for file in files:
        if file.suffix not in (".tar", ".jsonl"):
            raise ValueError(f"data file {str(file)!r} is neither .tar nor .jsonl")
    return files


class SampleReader:
    """Iterate validated samples from JSONL files and/or tar shards, with bad-record accounting.

    Args:
        sources: see :func:`expand_sources`.
        max_bad_fraction: raise :class:`TooManyBadRecordsError` above this bad / seen ratio.
        min_records: records seen before the running check starts (the final check always applies).
        decode: decode images while reading (validates them); False only checks they exist.
        rank, world_size: read this rank's share. Files are dealt round-robin when there are at least
            `world_size` of them; otherwise records are dealt round-robin.

    Each ``iter()`` is one pass with a fresh tracker; ``stats`` holds the latest pass's tracker.
    """

    def __init__(
        self,
        sources: PathLike | Sequence[PathLike],
        *,
        max_bad_fraction: float = 0.01,
        min_records: int = 100,
        decode: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.files = expand_sources(sources)
        self.decode = decode
        self.rank, self.world_size = rank, world_size
        self._policy = (max_bad_fraction, min_records)
        self.stats = BadRecordTracker(max_bad_fraction=max_bad_fraction, min_records=min_records)

    def __iter__(self) -> Iterator[Sample]:
        self.stats = BadRecordTracker(max_bad_fraction=self._policy[0], min_records=self._policy[1])
        by_file = len(self.files) >= self.world_size
        files = self.files[self.rank :: self.world_size] if by_file else self.files
        index = 0
        for file in files:
            reader = iter_shard if file.suffix == ".tar" else iter_jsonl
            for sample in reader(file, self.stats, self.decode):
                if by_file or index % self.world_size == self.rank:
                    yield sample
                index += 1
        self.stats.finish()


def read_samples(sources: PathLike | Sequence[PathLike], **kwargs: Any) -> list[Sample]:
    """Read everything into a list (small data, tests); same options as :class:`SampleReader`."""
    return list(SampleReader(sources, **kwargs))
