"""Chain-of-thought augmentation: template mode, an OpenAI-compatible endpoint (a local fake server on
127.0.0.1: retries, bounded concurrency, API key, on-disk cache so a rerun sends nothing), counted
rejections, the CLI, and loading the output in the training loader. No network beyond loopback."""

from __future__ import annotations

import argparse
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from internvlu.data import ImageRef, Message, Sample, SampleReader, write_jsonl
from internvlu.synthesis.cli import add_synth_parser
from internvlu.synthesis.cot import CotConfig, clean_thought, run_cot


def _image(color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (32, 32), color)


@pytest.fixture
def instructions(tmp_path: Path) -> Path:
    samples = [
        Sample(
            id="a",
            task="t2i",
            prompt='A red sign that says "OPEN" on the left of two blue cups.',
            target=ImageRef.from_image("target", _image((200, 0, 0))),
        ),
        Sample(
            id="b",
            task="edit",
            prompt="Make the car green.",
            images=[ImageRef.from_image("image0", _image((0, 0, 200)))],
            target=ImageRef.from_image("target", _image((0, 200, 0))),
            meta={"keep": 1},
        ),
        Sample(
            id="c",
            task="understanding",
            images=[ImageRef.from_image("image0", _image((9, 9, 9)))],
            messages=[Message("user", "<image>\nWhat is this?"), Message("assistant", "A square.")],
        ),
        Sample(
            id="d",
            task="think",
            prompt="Draw a cat.",
            thought="A cat sits.",
            target=ImageRef.from_image("target", _image((1, 2, 3))),
        ),
        Sample(
            id="e",
            task="t2i",
            prompt="Three yellow stars above a house.",
            target=ImageRef.from_image("target", _image((250, 250, 0))),
        ),
    ]
    path = tmp_path / "in" / "train.jsonl"
    write_jsonl(samples, path)
    return path


def test_template_mode_converts_counts_and_is_deterministic(instructions: Path, tmp_path: Path) -> None:
    m1 = run_cot(instructions, tmp_path / "o1", shard_size=2, seed=3, contact_sheet_samples=0)
    m2 = run_cot(instructions, tmp_path / "o2", shard_size=2, seed=3, contact_sheet_samples=0)
    assert m1["num_samples"] == 3 and m1["num_shards"] == 2 and m1["counts_by_task"] == {"think": 3}
    assert m1["rejections"] == {"already_think": 1, "unsupported_task": 1}
    assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]
    out = list(SampleReader(tmp_path / "o1"))
    assert [s.meta["cot"]["source_id"] for s in out] == ["a", "b", "e"] and {s.task for s in out} == {"think"}
    by_source = {s.meta["cot"]["source_id"]: s for s in out}
    assert (
        '"OPEN"' in by_source["a"].thought
        and "red" in by_source["a"].thought
        and "two" in by_source["a"].thought
    )
    assert by_source["b"].meta["keep"] == 1 and len(by_source["b"].images) == 1
    assert by_source["b"].target.load().getpixel((0, 0)) == (0, 200, 0)
    assert run_cot(instructions, tmp_path / "o3", num=1, contact_sheet_samples=0)["num_samples"] == 1
    from internvlu.training.dataset import load_index

    samples, tracker = load_index([str(tmp_path / "o1")], max_bad_fraction=0.0)
    assert len(samples) == 3 and tracker.bad == 0


class _FakeChat(http.server.BaseHTTPRequestHandler):
    """OpenAI-compatible /v1/chat/completions; behaviour set on the server object."""

    def do_POST(self) -> None:
        server: Any = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append(
                {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
            )
            server.inflight += 1
            server.max_inflight = max(server.max_inflight, server.inflight)
            fail = server.fail_first > 0
            server.fail_first -= 1 if fail else 0
        try:
            time.sleep(0.05)  # long enough for concurrent requests to overlap
            prompt = body["messages"][-1]["content"]
            if "FORBIDDEN" in str(prompt):
                self._reply(400, {"error": "bad request"})
            elif fail:
                self._reply(503, {"error": "busy"})
            else:
                text = f"<think>Plan for: {prompt}. Keep the rest unchanged.</think>"
                self._reply(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})
        finally:
            with server.lock:
                server.inflight -= 1

    def _reply(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_server() -> Iterator[Any]:
    server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeChat)
    server.lock, server.requests, server.inflight, server.max_inflight, server.fail_first = (
        threading.Lock(),
        [],
        0,
        0,
        1,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_endpoint_mode_retries_bounds_concurrency_and_caches(
    instructions: Path, tmp_path: Path, fake_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_COT_KEY", "sk-test")
    config = CotConfig(
        mode="endpoint",
        endpoint_url=f"http://127.0.0.1:{fake_server.server_port}/v1",
        model="fake-model",
        api_key_env="TEST_COT_KEY",
        concurrency=2,
        backoff_s=0.01,
        max_retries=3,
        cache_dir=str(tmp_path / "cache"),
    )
    first = run_cot(instructions, tmp_path / "e1", config=config, contact_sheet_samples=0)
    assert first["num_samples"] == 3 and first["requests"]["retries"] == 1  # one 503, retried
    assert first["requests"]["sent"] == 4 and first["requests"]["cached"] == 0
    assert 1 <= fake_server.max_inflight <= 2
    request = fake_server.requests[-1]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"]["model"] == "fake-model" and request["body"]["messages"][0]["role"] == "system"
    out = list(SampleReader(tmp_path / "e1"))
    assert all(s.thought.startswith("Plan for: Instruction") and "<think>" not in s.thought for s in out)
    assert all(
        s.meta["cot"]
        == {
            "source_id": s.meta["cot"]["source_id"],
            "source_task": s.meta["cot"]["source_task"],
            "mode": "endpoint",
            "model": "fake-model",
        }
        for s in out
    )
    assert "sk-test" not in json.dumps(first)  # the key is never recorded

    sent_before = len(fake_server.requests)
    again = run_cot(instructions, tmp_path / "e2", config=config, contact_sheet_samples=0)
    assert (
        len(fake_server.requests) == sent_before and again["requests"]["cached"] == 3
    )  # a rerun costs nothing
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in first["shards"]]


def test_endpoint_errors_are_counted_not_fatal(tmp_path: Path, fake_server: Any) -> None:
    fake_server.fail_first = 0
    samples = [
        Sample(id="ok", task="t2i", prompt="a dog", target=ImageRef.from_image("target", _image((5, 5, 5)))),
        Sample(
            id="no", task="t2i", prompt="FORBIDDEN", target=ImageRef.from_image("target", _image((6, 6, 6)))
        ),
    ]
    write_jsonl(samples, tmp_path / "x" / "d.jsonl")
    config = CotConfig(
        mode="endpoint",
        endpoint_url=f"http://127.0.0.1:{fake_server.server_port}/v1",
        model="m",
        api_key_env="",
        backoff_s=0.0,
        cache_dir=str(tmp_path / "c"),
    )
    manifest = run_cot(tmp_path / "x" / "d.jsonl", tmp_path / "y", config=config, contact_sheet_samples=0)
    assert manifest["num_samples"] == 1 and manifest["rejections"] == {"endpoint_error": 1}
    assert fake_server.requests[-1]["auth"] is None
    dead = CotConfig(
        mode="endpoint",
        endpoint_url="http://127.0.0.1:9/v1",
        model="m",
        max_retries=1,
        backoff_s=0.0,
        timeout_s=2,
        cache_dir=str(tmp_path / "c2"),
    )
    manifest = run_cot(tmp_path / "x" / "d.jsonl", tmp_path / "z", config=dead, contact_sheet_samples=0)
    assert manifest["num_samples"] == 0 and manifest["rejections"] == {"endpoint_error": 2}
    assert manifest["requests"]["failed"] == 2
    with pytest.raises(ValueError, match="endpoint_url"):
        CotConfig(mode="endpoint", model="m")
    assert clean_thought("<think> a plan </think>") == "a plan"


def test_cli_runs_cot(instructions: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="internvlu")
    add_synth_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "synth",
            "cot",
            "--input",
            str(instructions),
            "--out",
            str(tmp_path / "cli"),
            "--num",
            "2",
            "--shard-size",
            "1",
            "--set",
            "tasks=t2i",
            "--contact-sheet",
            "0",
        ]
    )
    assert args.func(args) == 0
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert (
        manifest["num_samples"] == 2
        and manifest["num_shards"] == 2
        and manifest["config"]["tasks"] == ["t2i"]
    )
    assert "wrote 2 think samples" in capsys.readouterr().out
    bad = parser.parse_args(["synth", "cot", "--out", str(tmp_path / "bad")])
    assert bad.func(bad) == 2 and "--input" in capsys.readouterr().err
    bad = parser.parse_args(
        ["synth", "cot", "--input", str(instructions), "--out", str(tmp_path / "b2"), "--set", "nope=1"]
    )
    assert bad.func(bad) == 2 and "nope" in capsys.readouterr().err
