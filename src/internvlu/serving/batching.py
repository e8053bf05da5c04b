"""Jobs and the bounded queue that hands the worker micro-batches of compatible jobs.

A job's `key` says what it may share one pipeline call with (same mode, size, steps, guidance,
token budget...). The worker takes the oldest job, waits up to `wait_s` for more jobs with the same
key, and gets at most `max_batch` of them; jobs with other keys keep their place in the queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

_ids = itertools.count()


class QueueFull(Exception):
    """The queue holds `max_queue` jobs already (HTTP 429)."""


class QueueClosed(Exception):
    """The server is shutting down and accepts no new work (HTTP 503)."""


class JobCancelled(Exception):
    """Every job of the running batch was cancelled (timed out or the client left); work stops."""


@dataclass(eq=False)
class Job:
    """One request's work. `task` is a `workers.ChatTask` or `workers.ImageTask`.

    `future` (thread-safe) gets the result or the exception; `emit` passes stream events
    (tuples) to the request's event loop while the job runs.
    """

    kind: str
    task: Any
    key: Hashable
    deadline: float = float("inf")  # time.monotonic() after which the result is no longer wanted
    stream: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    id: int = field(default_factory=lambda: next(_ids))
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set() or time.monotonic() > self.deadline

    def cancel(self) -> None:
        self._cancelled.set()

    def emit(self, *event: Any) -> None:
        """Send an event to the waiting request (no-op for non-streaming jobs)."""
        if self.stream and self.loop is not None and self.events is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.events.put_nowait, event)
            except RuntimeError:  # the loop closed in between: nobody is listening any more
                pass

    def resolve(self, result: Any = None, error: BaseException | None = None) -> bool:
        """Set the outcome once; returns False if it was already set."""
        if self.future.done():
            return False
        try:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)
        except concurrent.futures.InvalidStateError:
            return False
        return True


class MicroBatchQueue:
    """Thread-safe FIFO with a length bound and compatible-job batching."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._jobs)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise QueueClosed("the server is shutting down")
            if len(self._jobs) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
            self._jobs.append(job)
            self._cond.notify_all()

    def close(self) -> None:
        """Refuse new jobs; `take` keeps returning the queued ones, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self, max_batch: int, wait_s: float, on_drop: Callable[[Job], None] | None = None) -> list[Job] | None:
        """Block for the next batch (oldest job first); None once closed and empty.

        Jobs already cancelled while waiting are removed and passed to `on_drop` instead.
        """
        with self._cond:
            while True:
                self._drop_cancelled(on_drop)
                if self._jobs:
                    break
                if self._closed:
                    return None
                self._cond.wait(timeout=0.5)
            first = self._jobs[0]
            until = time.monotonic() + wait_s
            while True:
                batch = [j for j in self._jobs if j.key == first.key and not j.cancelled][:max_batch]
                remaining = until - time.monotonic()
                if len(batch) >= max_batch or self._closed or remaining <= 0 or first.cancelled:
                    break
                self._cond.wait(timeout=remaining)
            for job in batch:
                self._jobs.remove(job)
            return batch

    def _drop_cancelled(self, on_drop: Callable[[Job], None] | None) -> None:
        for job in [j for j in self._jobs if j.cancelled]:
            self._jobs.remove(job)
            if on_drop is not None:
                on_drop(job)
