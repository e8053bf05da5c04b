"""Ray backend: the same synthesis job on a local Ray cluster gives byte-identical shards and manifest
entries; the CLI passes --ray through. Skips cleanly when Ray is not installed (CI installs it)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from internvlu.data import SampleReader
from internvlu.synthesis import run_synthesis
from internvlu.synthesis.cli import add_synth_parser

ray = pytest.importorskip("ray")


def test_ray_local_cluster_matches_local_workers(tmp_path: Path) -> None:
    config = {"image_size": 64, "tasks": ["t2i", "edit"]}
    local = run_synthesis(
        "shapes", tmp_path / "local", 9, seed=7, shard_size=3, config=config, contact_sheet_samples=0
    )
    remote = run_synthesis(
        "shapes",
        tmp_path / "ray",
        9,
        seed=7,
        shard_size=3,
        workers=2,
        config=config,
        contact_sheet_samples=0,
        ray_address="local",
    )
    assert not ray.is_initialized()  # the private local cluster is shut down again
    assert [s["sha256"] for s in remote["shards"]] == [s["sha256"] for s in local["shards"]]
    for a, b in zip(local["shards"], remote["shards"]):
        assert (tmp_path / "local" / a["name"]).read_bytes() == (tmp_path / "ray" / b["name"]).read_bytes()
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }
    assert len(list(SampleReader(tmp_path / "ray"))) == 9
    assert not list((tmp_path / "ray").glob("*.tmp"))
    # Resume works across backends: a local rerun keeps every shard the Ray run wrote.
    again = run_synthesis(
        "shapes", tmp_path / "ray", 9, seed=7, shard_size=3, config=config, contact_sheet_samples=0
    )
    assert again["skipped_shards"] == 3 and again["generated_shards"] == 0


def test_cli_accepts_ray_address(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="internvlu")
    add_synth_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", "text", "--out", str(tmp_path / "t"), "--num", "2", "--ray", "local"])
    assert args.ray == "local"
    with pytest.raises(ValueError, match="address"):
        from internvlu.synthesis.raydist import run_jobs_ray

        list(run_jobs_ray([], "", 1))
