"""The one thread that owns the pipeline: takes micro-batches from the queue and runs each as one call.

Per-step progress and cancellation come from forward hooks (the pipeline has no callback API):
a pre-hook on the MMDiT head counts denoising steps, a pre-hook on the LLM records prompt lengths
and stops a batch whose jobs were all cancelled; a batch-aware streamer turns generated token ids
into per-request text deltas.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..constants import IM_END_TOKEN, IMG_START_TOKEN
from ..pipeline.pipeline import MAX_AREA_FACTOR
from .batching import Job, JobCancelled, MicroBatchQueue
from .errors import APIError, bad_request
from .metrics import Metrics
from .settings import ServerSettings
from .thinking import think_system_prompt

logger = logging.getLogger(__name__)


@dataclass
class ChatTask:
    prompt: str  # one user turn; `<image>` marks where each image goes
    images: list[Image.Image] = field(default_factory=list)
    system_prompt: str | None = None
    max_new_tokens: int = 512
    temperature: float | None = None  # None or 0: greedy
    top_p: float | None = None
    seed: int | None = None
    think: bool = False

    @property
    def sampling(self) -> bool:
        return bool(self.temperature)

    def key(self) -> tuple:
        sampled = (self.temperature, self.top_p, self.seed) if self.sampling else None
        return ("chat", self.system_prompt, self.think, self.max_new_tokens, sampled)


@dataclass
class ChatOutput:
    text: str  # raw answer (think mode: still holds the <think> section; the API splits it)
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


@dataclass
class ImageTask:
    prompt: str
    images: list[Image.Image]  # inputs of an edit; empty for text-to-image
    height: int
    width: int
    steps: int
    n: int
    seed: int  # image i of the request uses seed + i
    guidance: float | None = None  # all_cfg_scale (None: the model's default)
    image_guidance: float | None = None  # part_cfg_scale
    think: bool = False
    max_thought_tokens: int = 200
    preserve: bool | None = None  # preserve_unedited (None: the model's default)

    def key(self) -> tuple:
        return ("image", bool(self.images), self.height, self.width, self.steps, self.n, self.guidance,
                self.image_guidance, self.think, self.max_thought_tokens, self.preserve)  # fmt: skip


@dataclass
class ImageOutput:
    images: list[Image.Image]
    seeds: list[int]
    thought: str | None
    settings: dict[str, Any]


class PipelineWorker:
    """Owns `pipeline`; every model call happens on its thread."""

    def __init__(self, pipeline: Any, settings: ServerSettings, metrics: Metrics) -> None:
        self.pipe = pipeline
        self.settings = settings
        self.metrics = metrics
        self.queue = MicroBatchQueue(settings.max_queue)
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None
        self._current: list[Job] = []
        self._hooks: list[Any] = []
        self._step = 0
        self._steps_total = 0
        self._prompt_lengths: list[int] | None = None
        self.batches_run = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        llm = getattr(self.pipe.vlm, "language_model", self.pipe.vlm)
        self._hooks = [
            llm.register_forward_pre_hook(self._llm_hook, with_kwargs=True),
            self.pipe.generation_decoder.register_forward_pre_hook(self._decoder_hook),
        ]
        self._thread = threading.Thread(target=self._loop, name="internvlu-pipeline-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Refuse new jobs, finish the accepted ones, stop the thread; True if it stopped in time."""
        self.queue.close()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
            self._thread = None
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        return True

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def running(self) -> int:
        return len(self._current)

    def submit(self, job: Job) -> None:
        """Queue a job (raises QueueFull / QueueClosed)."""
        self.queue.put(job)
        self.metrics.inc("internvlu_jobs_accepted_total", kind=job.kind)
        self.metrics.set("internvlu_queue_depth", len(self.queue))

    # ------------------------------------------------------------------ model facts the API needs
    def default_size(self) -> tuple[int, int]:
        cfg = self.pipe.generation_decoder.config
        return int(cfg.gen_image_height), int(cfg.gen_image_width)

    def edit_size(self, image: Image.Image) -> tuple[int, int]:
        """Output size of an edit whose first input is `image` (as the pipeline would pick it)."""
        return tuple(self.pipe.processor.generation_processor.target_size(image.height, image.width))

    def check_size(self, height: int, width: int) -> None:
        limit = self.pipe.processor.generation_processor.max_pixels * MAX_AREA_FACTOR
        if height * width > limit:
            raise bad_request(
                f"size {width}x{height} is over this model's limit of {limit} pixels", "size", "image_too_large"
            )

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        self._thread_id = threading.get_ident()
        wait_s = self.settings.batch_wait_ms / 1000
        while True:
            batch = self.queue.take(self.settings.max_batch_size, wait_s, on_drop=self._drop)
            self.metrics.set("internvlu_queue_depth", len(self.queue))
            if batch is None:
                return
            if batch:
                self._run(batch)

    def _drop(self, job: Job) -> None:
        job.resolve(error=JobCancelled("cancelled before it ran"))
        self.metrics.inc("internvlu_jobs_finished_total", kind=job.kind, outcome="cancelled")

    def _run(self, batch: list[Job]) -> None:
        now = time.monotonic()
        for job in batch:
            job.started_at = now
            self.metrics.observe("internvlu_queue_wait_seconds", now - job.enqueued_at)
        self.metrics.observe("internvlu_batch_size", len(batch))
        self._current = batch
        self.metrics.set("internvlu_jobs_running", len(batch))
        self.batches_run += 1
        try:
            outputs = self._chat(batch) if batch[0].kind == "chat" else self._images(batch)
        except JobCancelled as exc:
            self._finish(batch, error=exc, outcome="cancelled")
        except (ValueError, TypeError) as exc:
            if len(batch) > 1:
                # One bad job must not fail its batch-mates: run each alone to find out whose it is.
                self._current = []
                for job in batch:
                    self._run([job])
                return
            self._finish(batch, error=bad_request(str(exc)), outcome="error")
        except Exception as exc:  # a model/runtime failure: report it, keep serving
            logger.exception("pipeline call failed")
            error = APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")
            self._finish(batch, error=error, outcome="error")
        else:
            for job, out in zip(batch, outputs, strict=True):
                job.resolve(out)
                self.metrics.inc("internvlu_jobs_finished_total", kind=job.kind, outcome="ok")
        finally:
            self._current = []
            self.metrics.set("internvlu_jobs_running", 0)

    def _finish(self, batch: list[Job], error: BaseException, outcome: str) -> None:
        for job in batch:
            job.resolve(error=error)
            self.metrics.inc("internvlu_jobs_finished_total", kind=job.kind, outcome=outcome)

    def _should_abort(self) -> bool:
        return bool(self._current) and all(job.cancelled for job in self._current)

    # ------------------------------------------------------------------ hooks (run on the worker thread)
    def _llm_hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        if threading.get_ident() != self._thread_id:
            return  # another user of the same pipeline object (tests share one)
        if self._should_abort():
            raise JobCancelled("every request of this batch was cancelled")
        if self._prompt_lengths is None:  # the first call holds the prompts
            mask = kwargs.get("attention_mask")
            embeds = kwargs.get("inputs_embeds")
            if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                self._prompt_lengths = [int(n) for n in mask.sum(-1).tolist()]
            elif isinstance(embeds, torch.Tensor):  # no padding: transformers drops an all-ones mask
                self._prompt_lengths = [int(embeds.shape[1])] * int(embeds.shape[0])

    def _decoder_hook(self, module: Any, args: tuple) -> None:
        if threading.get_ident() != self._thread_id:
            return
        if self._should_abort():
            raise JobCancelled("every request of this batch was cancelled")
        self._step = min(self._step + 1, self._steps_total)
        for job in self._current:
            job.emit("progress", self._step, self._steps_total)

    # ------------------------------------------------------------------ tasks
    def _chat(self, jobs: list[Job]) -> list[ChatOutput]:
        task: ChatTask = jobs[0].task
        ids = self.pipe.token_ids
        streamer = BatchTextStreamer(self.pipe.processor.tokenizer, jobs, (ids[IM_END_TOKEN], ids[IMG_START_TOKEN]),
                                     self._should_abort)  # fmt: skip
        images = [list(job.task.images) or None for job in jobs]
        self._prompt_lengths = None
        self.pipe.chat(
            [job.task.prompt for job in jobs],
            images if any(i is not None for i in images) else None,
            system_prompt=think_system_prompt(task.system_prompt) if task.think else task.system_prompt,
            max_new_tokens=task.max_new_tokens,
            do_sample=task.sampling,
            temperature=task.temperature if task.sampling else None,
            top_p=task.top_p if task.sampling else None,
            seed=task.seed,
            streamer=streamer,
        )
        streamer.flush()
        lengths = self._prompt_lengths or [0] * len(jobs)
        outputs = []
        for i, _job in enumerate(jobs):
            n = len(streamer.tokens[i])
            self.metrics.inc("internvlu_prompt_tokens_total", lengths[i])
            self.metrics.inc("internvlu_completion_tokens_total", n)
            outputs.append(ChatOutput(streamer.texts[i], lengths[i], n, "stop" if streamer.stopped[i] else "length"))
        return outputs

    def _images(self, jobs: list[Job]) -> list[ImageOutput]:
        task: ImageTask = jobs[0].task
        n = task.n
        generators = [torch.Generator("cpu").manual_seed(job.task.seed + i) for job in jobs for i in range(n)]
        if task.think:
            for job in jobs:
                job.emit("phase", "thinking")
        self._step, self._steps_total = 0, task.steps
        result = self.pipe.generate(
            [job.task.prompt for job in jobs],
            think=task.think,
            images=[list(job.task.images) for job in jobs] if task.images else None,
            height=task.height,
            width=task.width,
            num_images_per_prompt=n,
            num_inference_steps=task.steps,
            all_cfg_scale=task.guidance,
            part_cfg_scale=task.image_guidance,
            generator=generators,
            max_thought_tokens=task.max_thought_tokens,
            preserve_unedited=task.preserve,
            progress=False,
        )
        outputs = []
        for k, job in enumerate(jobs):
            seeds = [job.task.seed + i for i in range(n)]
            settings = {**result.settings, "seed": job.task.seed, "seeds": seeds}
            thought = result.thoughts[k] if result.thoughts else None
            outputs.append(ImageOutput(result.images[k * n:(k + 1) * n], seeds, thought, settings))
        self.metrics.inc("internvlu_images_generated_total", len(result.images))
        return outputs


class BatchTextStreamer:
    """transformers streamer for a batch: per-row text deltas go to each row's job.

    transformers calls `put` with the prompt ids first (2-D, empty when generating from embeddings)
    and then with one new token per row (1-D); `end` when done. Rows stop at their first stop id.
    """

    def __init__(self, tokenizer: Any, jobs: list[Job], stop_ids: tuple[int, ...], should_abort: Any) -> None:
        self.tokenizer = tokenizer
        self.jobs = jobs
        self.stop_ids = set(stop_ids)
        self.should_abort = should_abort
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.texts: list[str] = [""] * len(jobs)
        self.stopped: list[bool] = [False] * len(jobs)

    def put(self, value: torch.Tensor) -> None:
        if self.should_abort():
            raise JobCancelled("every request of this batch was cancelled")
        if value.dim() != 1:
            return  # the prompt
        for i, token in enumerate(value.tolist()):
            if self.stopped[i]:
                continue
            if token in self.stop_ids:
                self.stopped[i] = True
                continue
            self.tokens[i].append(token)
            self._emit(i, final=False)

    def end(self) -> None:
        self.flush()

    def flush(self) -> None:
        for i in range(len(self.jobs)):
            self._emit(i, final=True)

    def _emit(self, i: int, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens[i], skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return  # an incomplete UTF-8 character: wait for the next token
        old = self.texts[i]
        if text.startswith(old):
            delta = text[len(old):]
        else:
            # Detokenisation rewrote earlier text (rare); only append, the final text is complete.
            delta = text[len(old):] if len(text) > len(old) else ""
        self.texts[i] = text
        if delta:
            self.jobs[i].emit("delta", delta)
