"""Load test of `internvlu serve`: N concurrent clients on loopback for a bounded time.

    python benchmarks/loadtest.py --clients 8 --duration 20            # starts its own server (default model)
    python benchmarks/loadtest.py --url http://127.0.0.1:8000 --api-key K --clients 8 --duration 20

Each client sends chat and image requests (mix set by --mix) back to back until the time is up
(and at most --max-requests each). Prints throughput, p50/p99 latency per kind, errors by status,
the server's mean batch size, and checks that every accepted request got exactly one response:
each request carries a unique X-Request-Id that the response must echo, no id may be answered twice,
and the server's /metrics must show as many finished jobs as accepted ones, and as many accepted
as the clients saw accepted. Exit status 0 only if every check passes. Only loopback URLs are allowed.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse


@dataclass
class Record:
    kind: str
    request_id: str
    status: int
    latency: float
    echoed_id: str | None
    error: str | None = None


@dataclass
class Results:
    records: list[Record] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: Record) -> None:
        with self.lock:
            self.records.append(record)


def loopback_only(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError
        except ValueError:
            raise SystemExit(f"loadtest: refusing non-loopback target {url!r} (use 127.0.0.1/localhost/[::1])") from None
    return host, parsed.port or 80


def request_body(kind: str, i: int, args: argparse.Namespace) -> tuple[str, dict]:
    if kind == "chat":
        return "/v1/chat/completions", {"model": args.model_name, "max_tokens": args.tokens,
                                        "messages": [{"role": "user", "content": f"Describe a red cube ({i})."}]}  # fmt: skip
    return "/v1/images/generations", {"model": args.model_name, "prompt": f"a red cube, variant {i}",
                                      "size": args.size, "num_inference_steps": args.steps, "seed": i}  # fmt: skip


def client_loop(cid: int, host: str, port: int, args: argparse.Namespace, deadline: float, results: Results) -> None:
    plan = [kind for kind, weight in args.mix for _ in range(weight)]
    conn = http.client.HTTPConnection(host, port, timeout=args.request_timeout)
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    sent = 0
    while time.monotonic() < deadline and sent < args.max_requests:
        kind = plan[(cid + sent) % len(plan)]
        path, body = request_body(kind, cid * 100_000 + sent, args)
        rid = uuid.uuid4().hex
        start = time.monotonic()
        try:
            conn.request("POST", path, json.dumps(body), {**headers, "X-Request-Id": rid})
            response = conn.getresponse()
            payload = response.read()
            record = Record(kind, rid, response.status, time.monotonic() - start, response.getheader("x-request-id"))
            if response.status == 200:
                data = json.loads(payload)
                ok = bool(data.get("choices")) if kind == "chat" else len(data.get("data", [])) == 1
                if not ok:
                    record.error = "malformed 200 body"
            else:
                record.error = payload[:200].decode("utf-8", "replace")
            if response.getheader("connection", "").lower() == "close":
                conn.close()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            record = Record(kind, rid, 0, time.monotonic() - start, None, f"{type(exc).__name__}: {exc}")
        results.add(record)
        sent += 1
        if record.status == 429:
            time.sleep(0.05)  # back off a little, as a client honouring Retry-After would
    conn.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def scrape(host: str, port: int, api_key: str | None) -> dict[str, float]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    text = conn.getresponse().read().decode()
    conn.close()
    totals: dict[str, float] = Counter()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name_labels, value = line.rsplit(" ", 1)
            totals[name_labels.split("{")[0]] += float(value)
    return totals


def start_own_server(args: argparse.Namespace):
    """An in-process server on a free loopback port with the default (embedded) model."""
    import socket

    import uvicorn

    from internvlu.defaults import default_model_path
    from internvlu.pipeline import InternVLUPipeline
    from internvlu.serving import ServerSettings, create_app

    model = Path(args.model) if args.model else default_model_path()
    pipe = InternVLUPipeline.from_pretrained(model)
    settings = ServerSettings(max_batch_size=args.server_batch, max_queue=args.server_queue, api_keys=())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(pipe, settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread, str(model)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (loopback only); default: start one in-process")
    p.add_argument("--model", help="model folder for the in-process server (default: $INTERNVLU_MODEL, then embedded)")
    p.add_argument("--api-key", default=os.environ.get("INTERNVLU_API_KEY"))
    p.add_argument("--model-name", default="internvlu")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=20.0, help="seconds during which new requests are sent")
    p.add_argument("--max-requests", type=int, default=1000, help="per client")
    p.add_argument("--mix", default="chat:1,image:1", help="kind:weight list (kinds: chat, image)")
    p.add_argument("--tokens", type=int, default=16, help="max_tokens of chat requests")
    p.add_argument("--steps", type=int, default=4, help="denoising steps of image requests")
    p.add_argument("--size", default="64x64", help="image size WIDTHxHEIGHT")
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--server-batch", type=int, default=8, help="max_batch_size of the in-process server")
    p.add_argument("--server-queue", type=int, default=64, help="max_queue of the in-process server")
    args = p.parse_args(argv)
    args.mix = [(k, int(w)) for k, w in (item.split(":") for item in args.mix.split(","))]
    if any(k not in ("chat", "image") or w < 0 for k, w in args.mix) or not sum(w for _, w in args.mix):
        p.error(f"--mix must be kind:weight pairs of chat/image with a positive total, got {args.mix}")

    own = None
    model = "(remote)"
    if args.url:
        url = args.url.rstrip("/")
    else:
        url, server, thread, model = start_own_server(args)
        own = (server, thread)
    host, port = loopback_only(url)
    before = scrape(host, port, args.api_key)
    results = Results()
    deadline = time.monotonic() + args.duration
    start = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(i, host, port, args, deadline, results))
               for i in range(args.clients)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.duration + args.request_timeout + 30)
    elapsed = time.monotonic() - start
    time.sleep(0.2)  # let the worker record its last finished job
    after = scrape(host, port, args.api_key)
    if own is not None:
        own[0].should_exit = True
        own[1].join(60)

    records = results.records
    statuses = Counter(r.status for r in records)
    ok = [r for r in records if r.status == 200 and r.error is None]
    accepted = [r for r in records if r.status not in (0, 429, 503)]
    problems = []
    ids = Counter(r.request_id for r in records)
    if any(n != 1 for n in ids.values()):
        problems.append("a request id was recorded more than once")
    if any(r.echoed_id != r.request_id for r in records if r.status):
        problems.append("a response did not echo its own X-Request-Id")
    if any(t.is_alive() for t in threads):
        problems.append("a client is still waiting for a response")
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in ("internvlu_jobs_accepted_total",
                                                              "internvlu_jobs_finished_total",
                                                              "internvlu_batch_size_sum", "internvlu_batch_size_count")}  # fmt: skip
    if delta["internvlu_jobs_accepted_total"] != delta["internvlu_jobs_finished_total"]:
        problems.append(f"server accepted {delta['internvlu_jobs_accepted_total']:.0f} jobs but finished "
                        f"{delta['internvlu_jobs_finished_total']:.0f}")  # fmt: skip
    jobs_seen = sum(1 for r in accepted if r.status in (200, 504) or (r.status == 500))
    if jobs_seen != delta["internvlu_jobs_accepted_total"]:
        problems.append(f"clients saw {jobs_seen} accepted requests, the server counted "
                        f"{delta['internvlu_jobs_accepted_total']:.0f}")  # fmt: skip

    report = {
        "target": url, "model": model, "clients": args.clients, "duration_s": round(elapsed, 1),
        "mix": dict(args.mix), "requests": len(records), "ok": len(ok),
        "throughput_rps": round(len(ok) / elapsed, 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "mean_batch_size": round(delta["internvlu_batch_size_sum"] / max(delta["internvlu_batch_size_count"], 1), 2),
        "latency_s": {},
        "errors": sorted({r.error for r in records if r.error and r.status != 429})[:5],
        "checks": "every accepted request got exactly one response" if not problems else problems,
    }  # fmt: skip
    for kind in ("chat", "image", "all"):
        lat = [r.latency for r in ok if kind in ("all", r.kind)]
        if lat:
            report["latency_s"][kind] = {"n": len(lat), "p50": round(percentile(lat, 50), 3),
                                         "p99": round(percentile(lat, 99), 3)}  # fmt: skip
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
