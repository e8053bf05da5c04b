"""A small thread-safe Prometheus registry (text exposition format 0.0.4); no client library needed."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)

_HELP = {
    "internvlu_requests_total": ("counter", "HTTP requests by route and status code"),
    "internvlu_request_seconds": ("histogram", "HTTP request latency by route (until the last byte)"),
    "internvlu_jobs_accepted_total": ("counter", "jobs admitted to the queue"),
    "internvlu_jobs_finished_total": ("counter", "admitted jobs finished, by outcome"),
    "internvlu_rejected_total": ("counter", "requests refused before queueing, by reason"),
    "internvlu_queue_depth": ("gauge", "jobs waiting"),
    "internvlu_jobs_running": ("gauge", "jobs in the pipeline call now running"),
    "internvlu_batch_size": ("histogram", "jobs per pipeline call"),
    "internvlu_queue_wait_seconds": ("histogram", "time from admission to the start of the pipeline call"),
    "internvlu_prompt_tokens_total": ("counter", "prompt tokens of chat jobs"),
    "internvlu_completion_tokens_total": ("counter", "generated text tokens"),
    "internvlu_images_generated_total": ("counter", "images returned"),
}

Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hist: dict[str, dict[Labels, list[float]]] = defaultdict(dict)  # bucket counts + [sum, count]
        self._buckets: dict[str, tuple[float, ...]] = {
            "internvlu_request_seconds": LATENCY_BUCKETS,
            "internvlu_queue_wait_seconds": LATENCY_BUCKETS,
            "internvlu_batch_size": BATCH_BUCKETS,
        }

    @staticmethod
    def _labels(labels: dict[str, str] | None) -> Labels:
        return tuple(sorted((labels or {}).items()))

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = self._labels(labels)
        with self._lock:
            self._values[name][key] = self._values[name].get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[name][self._labels(labels)] = float(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        buckets = self._buckets[name]
        key = self._labels(labels)
        with self._lock:
            row = self._hist[name].setdefault(key, [0.0] * (len(buckets) + 2))
            for i, bound in enumerate(buckets):
                if value <= bound:
                    row[i] += 1
            row[-2] += value
            row[-1] += 1

    def value(self, name: str, **labels: str) -> float:
        """Current value (sum over label sets that contain `labels`)."""
        want = set(self._labels(labels))
        with self._lock:
            return sum(v for k, v in self._values.get(name, {}).items() if want <= set(k))

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name in sorted(set(self._values) | set(self._hist)):
                kind, text = _HELP.get(name, ("untyped", name))
                lines.append(f"# HELP {name} {text}")
                lines.append(f"# TYPE {name} {kind}")
                for labels, value in sorted(self._values.get(name, {}).items()):
                    lines.append(f"{name}{_fmt(labels)} {_num(value)}")
                for labels, row in sorted(self._hist.get(name, {}).items()):
                    for bound, count in zip(self._buckets[name], row, strict=False):
                        lines.append(f"{name}_bucket{_fmt(labels + (('le', _num(bound)),))} {_num(count)}")
                    lines.append(f"{name}_bucket{_fmt(labels + (('le', '+Inf'),))} {_num(row[-1])}")
                    lines.append(f"{name}_sum{_fmt(labels)} {_num(row[-2])}")
                    lines.append(f"{name}_count{_fmt(labels)} {_num(row[-1])}")
        return "\n".join(lines) + "\n"


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                    for k, v in labels)  # fmt: skip
    return "{" + body + "}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
