"""Ray backend for the synthesis runner: the same shard jobs as Ray tasks (``internvlu synth ... --ray ADDR``).

Each task runs :func:`internvlu.synthesis.runner.build_shard` unchanged into a temporary folder on its
node and returns the manifest entry plus the shard's bytes; the driver writes the file (``NAME.tmp``
then rename, as the local path does) and checks its sha256. So the cluster needs no shared file system,
and since a shard depends only on (seed, index, configs), the output is byte-identical to a local run.

Worker nodes import the generator's module by name (jobs carry the class by reference), so the
``internvlu`` package (and any plugin generator) must be installed on every node.

Addresses: ``"local"`` starts a private local cluster with ``workers`` CPUs and shuts it down at the
end; ``"auto"`` or ``"ray://host:10001"`` connect to a running cluster (left running). If Ray is already
initialised in this process, that connection is used as is.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from internvlu.data.storage import sha256_file
from internvlu.synthesis.runner import ShardJob, build_shard

logger = logging.getLogger("internvlu.synthesis")


def require_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ValueError("--ray needs the ray package: pip install 'internvlu[synth]' (or ray)") from exc
    return ray


def build_shard_bytes(job: ShardJob) -> tuple[dict[str, Any], bytes]:
    """Build one shard in a private temporary folder; return (manifest entry, shard bytes)."""
    tmp = tempfile.mkdtemp(prefix="internvlu-shard-")
    try:
        local = dataclasses.replace(job, path=os.path.join(tmp, Path(job.path).name))
        entry = build_shard(local)
        return entry, Path(local.path).read_bytes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def run_jobs_ray(jobs: list[ShardJob], address: str, workers: int) -> Iterator[dict[str, Any]]:
    """Run shard jobs on Ray, yielding each manifest entry as its shard lands in the output folder.

    Args:
        jobs: the runner's shard jobs (their `path` is where the driver writes the shard).
        address: "local", "auto" or a Ray client address ("ray://host:port").
        workers: CPUs of the local cluster when address is "local" (ignored otherwise).
    """
    if not isinstance(address, str) or not address:
        raise ValueError(f"ray address must be a non-empty string, got {address!r}")
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {
            "address": address,
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
        }
        if address == "local":
            options["num_cpus"] = max(1, workers)
        ray.init(**options)
        started = True
    remote = ray.remote(num_cpus=1, max_retries=2)(build_shard_bytes)
    pending = {remote.remote(job): job for job in jobs}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            entry, data = ray.get(done[0])
            path = Path(job.path)
            _write_atomic(path, data)
            if sha256_file(path) != entry["sha256"]:
                raise RuntimeError(f"shard {path.name} arrived corrupted (sha256 mismatch)")
            yield entry
    finally:
        for ref in pending:
            ray.cancel(ref)
        if started:
            ray.shutdown()
