"""The HTTP server against a live uvicorn on 127.0.0.1, driven by the official `openai` client.

Covers: models/health/metrics, chat (text + data-URL images, streaming, think extension), image
generation and edits (b64_json, PNG metadata, streaming progress), micro-batching, every limit and
error code (400/401/404/413/429/504), remote-URL policy, graceful shutdown, and `internvlu serve`
as a subprocess stopped by SIGTERM. The worker is held busy deterministically by holding the
pipeline's own lock from the test thread.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from serving_helpers import CKPT, LiveServer, free_socket, png_data_url, png_file

from internvlu.serving import ServerSettings, create_app
from internvlu.serving.codec import read_png_metadata
from internvlu.serving.thinking import ThinkSplitter, split_thought

KEY = "test-key"
LIMITS = {"max_n": 2, "max_steps": 8, "max_tokens": 64, "max_body_bytes": 200_000, "max_image_pixels": 128 * 128,
          "default_thought_tokens": 4, "max_images_per_request": 3}


@pytest.fixture(scope="module")
def pipe():
    from internvlu import InternVLUPipeline

    return InternVLUPipeline.from_pretrained(CKPT)


@pytest.fixture(scope="module")
def server(pipe):
    settings = ServerSettings(api_keys=(KEY,), max_batch_size=4, batch_wait_ms=30, **LIMITS)
    with LiveServer(create_app(pipe, settings)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def raw(method: str, url: str, body: bytes | dict | None = None, headers: dict | None = None):
    """(status, headers, body bytes) with urllib; never raises on HTTP errors."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    h = {"Authorization": f"Bearer {KEY}", **({"Content-Type": "application/json"} if isinstance(body, dict) else {}),
         **(headers or {})}  # fmt: skip
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def sse_events(payload: bytes) -> list:
    events = []
    for block in payload.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[6:]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def decode_png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, value = line.rsplit(" ", 1)
            if head.split("{")[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


@contextmanager
def worker_held(pipe):
    """Hold the pipeline's lock: the worker blocks inside its next pipeline call until release."""
    pipe._lock.acquire()
    try:
        yield
    finally:
        pipe._lock.release()


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def health(url: str) -> dict:
    return json.loads(raw("GET", url + "/health")[2])


# ---------------------------------------------------------------------- basics
def test_models_health_metrics_and_auth(server, client):
    assert [m.id for m in client.models.list().data] == ["internvlu"]
    assert client.models.retrieve("internvlu").owned_by == "internvlu"
    assert health(server.url)["status"] == "ok"  # no key needed
    status, headers, body = raw("GET", server.url + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert "# TYPE internvlu_requests_total counter" in body.decode()
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    status, headers, _ = raw("GET", server.url + "/metrics", headers={"Authorization": ""})
    assert status == 401 and headers.get("www-authenticate") == "Bearer"
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["code"] == "model_not_found"


def test_chat_with_image_and_usage(client):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What colour is this?"},
                                             {"type": "image_url", "image_url": {"url": png_data_url()}}]}]  # fmt: skip
    r = client.chat.completions.create(model="internvlu", messages=messages, max_tokens=4)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert 1 <= r.usage.completion_tokens <= 4 and r.usage.prompt_tokens > 10
    assert r.choices[0].finish_reason in ("stop", "length")
    # Multi-turn history is accepted (flattened into one turn).
    r2 = client.chat.completions.create(model="internvlu", max_tokens=2, messages=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "?"}])
    assert r2.usage.completion_tokens <= 2


def test_chat_streaming_matches_non_streaming_and_think(client):
    kwargs = {"model": "internvlu", "messages": [{"role": "user", "content": "Count to three."}], "max_tokens": 6}
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 6
    # think is an extension field; the reply carries reasoning_content (None when the model wrote no thought)
    r = client.chat.completions.create(**kwargs, extra_body={"think": True})
    assert "reasoning_content" in r.choices[0].message.model_extra


def test_think_splitter():
    text = "  <think>first, look.\nthen answer</think> The answer is 4."
    assert split_thought(text) == ("first, look.\nthen answer", "The answer is 4.")
    assert split_thought("plain answer") == (None, "plain answer")
    splitter, thought, reply = ThinkSplitter(), "", ""
    for piece in ["<th", "ink>a b", "</th", "ink>c", "d"]:  # tags split across pieces
        t, r = splitter.feed(piece)
        thought, reply = thought + t, reply + r
    t, r = splitter.close()
    assert (thought + t, reply + r) == ("a b", "cd")


# ---------------------------------------------------------------------- images
def test_generations_b64_metadata_seeds_and_think(client):
    args = {"model": "internvlu", "prompt": "a red cube", "size": "64x64", "n": 2,
            "extra_body": {"num_inference_steps": 2, "seed": 7}}
    r = client.images.generate(**args)
    assert len(r.data) == 2 and r.size == "64x64" and r.output_format == "png"
    first = decode_png(r.data[0].b64_json)
    assert first.size == (64, 64)
    meta = read_png_metadata(first)
    assert meta["prompt"] == "a red cube" and json.loads(meta["seed"]) == 7
    assert json.loads(meta["num_inference_steps"]) == 2
    assert [d.model_extra["seed"] for d in r.data] == [7, 8]
    again = client.images.generate(**args)
    assert again.data[0].b64_json == r.data[0].b64_json  # same seed, same image (and metadata)
    assert r.data[0].b64_json != r.data[1].b64_json
    thought = client.images.generate(model="internvlu", prompt="draw the sky", size="64x64",
                                      extra_body={"num_inference_steps": 2, "think": True, "seed": 1})  # fmt: skip
    assert thought.data[0].revised_prompt and "thought" in read_png_metadata(decode_png(thought.data[0].b64_json))


def test_edits_multipart_one_and_two_images(client, tmp_path):
    a = png_file(tmp_path / "a.png", (64, 64))
    b = png_file(tmp_path / "b.png", (80, 64), (0, 200, 0))
    with a.open("rb") as fa:
        r = client.images.edit(model="internvlu", image=fa, prompt="make it red",
                               extra_body={"num_inference_steps": 2, "seed": 3})  # fmt: skip
    assert r.size == "64x64" and decode_png(r.data[0].b64_json).size == (64, 64)
    assert read_png_metadata(decode_png(r.data[0].b64_json))["mode"] == "image_edit"
    # preserve_unedited: the parity checkpoint (the release's config) redraws everything unless asked.
    assert read_png_metadata(decode_png(r.data[0].b64_json))["preserve_unedited"] == "false"
    with a.open("rb") as fa:
        kept = client.images.edit(model="internvlu", image=fa, prompt="make it red",
                                  extra_body={"num_inference_steps": 2, "seed": 3, "preserve_unedited": True})  # fmt: skip
    assert read_png_metadata(decode_png(kept.data[0].b64_json))["preserve_unedited"] == "true"
    assert kept.data[0].b64_json != r.data[0].b64_json
    with pytest.raises(openai.BadRequestError, match="preserve_unedited=true applies to edits"):
        client.images.generate(model="internvlu", prompt="a cube", size="64x64",
                               extra_body={"num_inference_steps": 2, "preserve_unedited": True})  # fmt: skip
    with a.open("rb") as fa, b.open("rb") as fb:
        r = client.images.edit(model="internvlu", image=[fa, fb], prompt="combine them", size="96x96",
                               extra_body={"num_inference_steps": 2})  # fmt: skip
    assert decode_png(r.data[0].b64_json).size == (96, 96)


def test_streaming_images_report_progress(server, client):
    status, _, body = raw("POST", server.url + "/v1/images/generations",
                          {"prompt": "a cube", "size": "64x64", "num_inference_steps": 3, "stream": True, "seed": 0})  # fmt: skip
    assert status == 200
    events = sse_events(body)
    progress = [e["step"] for e in events if isinstance(e, dict) and e.get("type") == "internvlu.progress"]
    assert progress == [1, 2, 3]
    done = [e for e in events if isinstance(e, dict) and e.get("type") == "image_generation.completed"]
    assert len(done) == 1 and decode_png(done[0]["b64_json"]).size == (64, 64) and events[-1] == "[DONE]"
    # the openai client reads the same stream
    stream = client.images.generate(model="internvlu", prompt="a cube", size="64x64", stream=True,
                                    extra_body={"num_inference_steps": 2})  # fmt: skip
    kinds = [getattr(e, "type", None) for e in stream]
    assert kinds[-1] == "image_generation.completed" and kinds.count("internvlu.progress") == 2


# ---------------------------------------------------------------------- limits and errors
def test_every_limit_has_an_openai_error(server, client):
    def bad(call, status, code=None, param=None):
        with pytest.raises(openai.APIStatusError) as info:
            call()
        assert info.value.status_code == status, info.value
        body = info.value.body
        assert isinstance(body, dict) and body.get("message") and body.get("type"), body
        if code:
            assert body["code"] == code, body
        if param:
            assert body["param"] == param, body

    gen = client.images.generate
    bad(lambda: gen(model="internvlu", prompt="x", size="64x64", n=3), 400, "limit_exceeded", "n")
    bad(lambda: gen(model="internvlu", prompt="x", size="64x64", extra_body={"num_inference_steps": 9}), 400,
        "limit_exceeded", "num_inference_steps")
    bad(lambda: gen(model="internvlu", prompt="x", size="256x256"), 400, "image_too_large", "size")
    bad(lambda: gen(model="internvlu", prompt="x", size="64by64"), 400, None, "size")
    bad(lambda: gen(model="internvlu", prompt="x", response_format="url"), 400, "unsupported")
    chat = client.chat.completions.create
    hi = [{"role": "user", "content": "hi"}]
    bad(lambda: chat(model="internvlu", messages=hi, max_tokens=65), 400, "limit_exceeded", "max_tokens")
    bad(lambda: chat(model="internvlu", messages=hi, n=2), 400, "unsupported", "n")
    bad(lambda: chat(model="internvlu", messages=hi, temperature=5), 400, "invalid_value", "temperature")
    bad(lambda: chat(model="internvlu", messages=[{"role": "assistant", "content": "x"}]), 400)
    big_image = png_data_url((200, 200))  # 40,000 pixels > 128 * 128
    bad(lambda: chat(model="internvlu", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": big_image}}]}]), 413, "image_too_large")
    bad(lambda: chat(model="internvlu", messages=[{"role": "user", "content": "x" * 250_000}]), 413,
        "request_too_large")
    bad(lambda: chat(model="internvlu", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}]}]), 400, "remote_images_disabled")
    bad(lambda: chat(model="internvlu", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}]}]), 400)
    status, _, body = raw("POST", server.url + "/v1/chat/completions", b"{not json",
                          {"Content-Type": "application/json"})  # fmt: skip
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    status, _, body = raw("POST", server.url + "/v1/images/edits", {"prompt": "x"})
    assert status == 400 and "multipart" in json.loads(body)["error"]["message"]
    status, _, body = raw("GET", server.url + "/v1/nothing")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


def test_micro_batching_and_queue_full(pipe):
    """Compatible jobs queued behind a busy worker run as one pipeline call; a full queue gives 429."""
    settings = ServerSettings(max_batch_size=3, max_queue=4, batch_wait_ms=5)
    app = create_app(pipe, settings)
    with LiveServer(app) as srv, concurrent.futures.ThreadPoolExecutor(8) as pool:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
        worker = app.state.worker

        def image(prompt: str, size: str = "64x64"):
            return c.images.generate(model="internvlu", prompt=prompt, size=size,
                                     extra_body={"num_inference_steps": 2, "seed": 5})  # fmt: skip

        with worker_held(pipe):
            blocker = pool.submit(c.chat.completions.create, model="internvlu", max_tokens=2,
                                  messages=[{"role": "user", "content": "hi"}])  # fmt: skip
            wait_for(lambda: worker.running == 1)
            batch_before = worker.batches_run
            same = [pool.submit(image, p) for p in ("a red cube", "a blue ball", "two green cones")]
            other = pool.submit(image, "a big cube", "96x96")
            wait_for(lambda: len(worker.queue) == 4)
            with pytest.raises(openai.RateLimitError) as info:
                image("one too many")
            assert info.value.status_code == 429 and info.value.body["code"] == "queue_full"
            assert info.value.response.headers["retry-after"] == "1"
        assert blocker.result().choices[0].message.role == "assistant"
        results = [f.result() for f in same]
        assert other.result().size == "96x96"
        assert worker.batches_run - batch_before == 2  # the three compatible jobs in one call, then the other
        for prompt, r in zip(("a red cube", "a blue ball", "two green cones"), results, strict=True):
            assert read_png_metadata(decode_png(r.data[0].b64_json))["prompt"] == prompt  # no mix-ups
        # a batched image equals the same request run alone (up to batched-matmul rounding)
        alone = decode_png(image("a blue ball").data[0].b64_json)
        batched = decode_png(results[1].data[0].b64_json)
        diff = max(abs(a - b) for a, b in zip(alone.tobytes(), batched.tobytes(), strict=True))
        assert diff <= 2
        metrics = raw("GET", srv.url + "/metrics")[2].decode()
        assert metric(metrics, "internvlu_rejected_total", reason="queue_full") == 1
        assert metric(metrics, "internvlu_jobs_accepted_total") == metric(metrics, "internvlu_jobs_finished_total")


def test_timeout_gives_504_and_abandons_the_work(pipe):
    app = create_app(pipe, ServerSettings(request_timeout_s=0.5))
    with LiveServer(app) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
        with worker_held(pipe):
            start = time.monotonic()
            with pytest.raises(openai.APIStatusError) as info:
                c.images.generate(model="internvlu", prompt="slow", size="64x64", extra_body={"num_inference_steps": 2})
            assert info.value.status_code == 504 and info.value.body["code"] == "timeout"
            assert time.monotonic() - start < 5
        wait_for(lambda: app.state.worker.running == 0 and len(app.state.worker.queue) == 0)
        metrics = raw("GET", srv.url + "/metrics")[2].decode()
        assert metric(metrics, "internvlu_jobs_finished_total", outcome="cancelled") == 1


def test_remote_urls_when_enabled(pipe, tmp_path):
    png_file(tmp_path / "cat.png", (64, 64))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path), **k)

        def log_message(self, *args):
            pass

    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        app = create_app(pipe, ServerSettings(allow_remote_images=True))
        with LiveServer(app) as srv:
            c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
            url = f"http://127.0.0.1:{files.server_address[1]}/cat.png"
            r = c.chat.completions.create(model="internvlu", max_tokens=2, messages=[{"role": "user", "content": [
                {"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": url}}]}])
            assert r.usage.prompt_tokens > 10
            with pytest.raises(openai.BadRequestError) as info:
                c.chat.completions.create(model="internvlu", messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url + ".missing"}}]}])
            assert info.value.body["code"] == "image_fetch_failed"
    finally:
        files.shutdown()


def test_graceful_shutdown_finishes_accepted_work(pipe):
    app = create_app(pipe, ServerSettings(max_batch_size=1))
    srv = LiveServer(app).__enter__()
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
    worker = app.state.worker
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        with worker_held(pipe):
            futures = [pool.submit(c.chat.completions.create, model="internvlu", max_tokens=2,
                                   messages=[{"role": "user", "content": f"q{i}"}]) for i in range(3)]  # fmt: skip
            wait_for(lambda: worker.running + len(worker.queue) == 3)
            srv.shutdown(wait=False)  # what SIGTERM does: stop accepting, finish what was accepted
            time.sleep(0.3)
            assert srv.thread.is_alive()
        assert all(f.result().choices[0].message.role == "assistant" for f in futures)
    srv.thread.join(30)
    assert not srv.thread.is_alive() and not worker.alive
    srv.sock.close()


def test_cli_serve_subprocess_sigterm(tmp_path):
    """`internvlu serve` end to end: starts, answers, exits 0 on SIGTERM."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "INTERNVLU_MODEL": str(CKPT), "INTERNVLU_API_KEY": "k1"}
    proc = subprocess.Popen([sys.executable, "-m", "internvlu", "serve", "--port", str(port), "--device", "cpu",
                             "--log-level", "warning"], env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if health(url)["status"] == "ok":
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)
        c = openai.OpenAI(base_url=url + "/v1", api_key="k1", max_retries=0, timeout=60)
        assert c.chat.completions.create(model="internvlu", max_tokens=2,
                                         messages=[{"role": "user", "content": "hi"}]).usage.completion_tokens <= 2
        assert raw("GET", url + "/ui/")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "serving 'internvlu'" in proc.stderr.read()


def test_loadtest_script_checks_every_response(server, capsys):
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import loadtest

    code = loadtest.main(["--url", server.url, "--api-key", KEY, "--clients", "3", "--duration", "1.5",
                          "--steps", "2", "--tokens", "3"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["checks"] == "every accepted request got exactly one response"
    assert report["ok"] == report["requests"] > 0 and report["latency_s"]["all"]["p99"] >= report["latency_s"]["all"]["p50"]
    with pytest.raises(SystemExit):
        loadtest.main(["--url", "http://192.0.2.1:8000", "--duration", "1"])  # loopback only


def test_ui_is_served(server):
    status, _, body = raw("GET", server.url + "/ui/")
    assert status == 200 and b"InternVL-U" in body and b"app.js" in body
    assert raw("GET", server.url + "/ui/app.js")[0] == 200
    status, _, _ = raw("GET", server.url + "/", headers={})
    assert status == 200  # urllib follows the redirect to /ui/


def test_app_resolves_lazy_imports_before_serving(server):
    # anyio >= 4.16 imports lazily on first attribute use; static files would otherwise import
    # `anyio._core._fileio` on a server thread mid-request (which failed once under pytest, 3.11).
    import anyio

    resolved = vars(anyio)
    assert {"open_file", "Path", "to_thread", "create_task_group"} <= set(resolved)
