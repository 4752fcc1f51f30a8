"""AsyncEngine: the engine loop on its own thread, asyncio on the outside.

Message-shaped boundary: requests go in through a thread-safe inbox (add / abort), outputs come back
through one small mailbox per request. A mailbox holds only the latest cumulative snapshot (as
vLLM's RequestOutputCollector merges deltas), so a slow client gets coarser updates, never an
unbounded queue. The loop never blocks on the HTTP side; it sleeps only when it has no work.

It implements `EngineClient` (engine/client.py), the one thing the server depends on. Its single
link to the torch side is `npu_serve.loader.load_engine`, called at construction; the engine package
itself imports neither torch nor npu_serve.worker.

Death: when the loop breaks, or the executor reports its workers gone (a tensor-parallel rank died
or a collective timed out, reported from the executor's own watch thread even while the loop is
stuck inside a step), every waiting request gets EngineDeadError, `is_healthy` turns False and
`dead_reason` says why; the server then answers 503 and exits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import uuid
from typing import AsyncIterator

from npu_serve.config import EngineConfig, EngineFacts, engine_options
from npu_serve.engine.client import EngineStats
from npu_serve.engine.engine_core import EngineCore
from npu_serve.engine.watchdog import StepWatchdog, resolve_step_timeout
from npu_serve.errors import EngineDeadError, InvalidParameter
from npu_serve.outputs import RequestOutput
from npu_serve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class _Mailbox:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.event = asyncio.Event()
        self.latest: RequestOutput | BaseException | None = None

    def put(self, item: RequestOutput | BaseException) -> None:  # on the event loop
        if not isinstance(self.latest, BaseException):  # an error is never overwritten
            self.latest = item
        self.event.set()

    async def get(self) -> RequestOutput:
        await self.event.wait()
        self.event.clear()
        item, self.latest = self.latest, None
        if isinstance(item, BaseException):
            raise item
        return item


def _put_all(items: list[tuple[_Mailbox, RequestOutput]]) -> None:  # on the event loop
    for box, out in items:
        box.put(out)


@engine_options
class AsyncEngine:
    def __init__(self, model: str | None = None, **engine_kwargs):
        """Load the model and start the engine loop on its own thread."""
        self._start(EngineConfig.from_kwargs("AsyncEngine", model=model, **engine_kwargs))

    @classmethod
    def from_config(cls, config: EngineConfig) -> AsyncEngine:
        engine = cls.__new__(cls)
        engine._start(config)
        return engine

    def _start(self, config: EngineConfig) -> None:
        from npu_serve.loader import load_engine  # torch loads here, not at import

        self.config = config
        core, facts, tokenizer = load_engine(config)
        self.core: EngineCore = core
        self.facts: EngineFacts = facts
        self.tokenizer = tokenizer
        self.model_name = facts.model_name
        self.max_model_len = facts.max_model_len
        self.eos_token_ids = facts.eos_token_ids
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self.dead_error: BaseException | None = None
        # Queue accounting for stats(): requests put in the inbox (counted on the event loop) and
        # taken out (on the engine thread); each counter has one writer, so no lock is needed.
        self._inbox_in = self._inbox_in_tokens = self._inbox_out = self._inbox_out_tokens = 0
        self.watchdog = StepWatchdog(resolve_step_timeout(config.step_timeout, facts.device), self._on_stuck)
        self._thread = threading.Thread(target=self._run, name="npu-serve-engine", daemon=True)
        core.executor.watch(self._on_executor_dead)
        self._thread.start()

    # -- public API (EngineClient) ------------------------------------------------------------------
    @property
    def is_healthy(self) -> bool:
        return self.dead_error is None and self._thread.is_alive()

    @property
    def dead_reason(self) -> str | None:
        if self.dead_error is not None:
            return str(self.dead_error)
        return None if self._thread.is_alive() else "the engine loop has stopped"

    def stats(self) -> EngineStats:
        """Read without locking (each number may be a step old). `waiting` and `waiting_tokens`
        include requests still in the inbox, so admission sees them at once; a request moving from
        the inbox to the queue may briefly count twice, never zero times."""
        stats = self.core.stats(self.facts.tensor_parallel_size)
        buckets, step_sum = self.watchdog.histogram()
        return dataclasses.replace(
            stats, waiting=stats.waiting + max(0, self._inbox_in - self._inbox_out),
            waiting_tokens=stats.waiting_tokens + max(0, self._inbox_in_tokens - self._inbox_out_tokens),
            step_seconds_buckets=buckets, step_seconds_sum=step_sum)

    def kv_cache_usage(self) -> tuple[int, int]:
        """(blocks in use, usable blocks): a shortcut to stats()."""
        kv = self.core.scheduler.kv
        return kv.num_used_blocks(), kv.pool.num_usable_blocks

    async def generate(self, prompt: str | list[int], sampling_params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        if not self.is_healthy:
            raise EngineDeadError(f"the engine is not running: {self.dead_reason}")
        request_id = request_id or uuid.uuid4().hex
        parent = self.core.make_parent(request_id, prompt, sampling_params)
        box = _Mailbox(asyncio.get_running_loop())
        with self._lock:
            if request_id in self._mailboxes:
                raise InvalidParameter("request_id", f"request id {request_id!r} is already in use")
            self._mailboxes[request_id] = box
        self._inbox_in_tokens += len(parent.prompt_token_ids)
        self._inbox_in += 1  # before the put: never counted as out before it was in
        self._inbox.put(("add", parent))
        if self.dead_error is not None:  # died between the health check and registering the mailbox
            with self._lock:
                self._mailboxes.pop(request_id, None)
            raise EngineDeadError(f"the engine is not running: {self.dead_reason}")
        finished = False
        try:
            while not finished:
                out = await box.get()
                finished = out.finished
                yield out
        finally:
            with self._lock:
                self._mailboxes.pop(request_id, None)
            if not finished:  # the consumer went away (disconnect, cancel, break): free everything
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    async def shutdown(self) -> None:
        self.watchdog.stop()
        self._stopping = True
        self._inbox.put(("stop", None))
        # A dead engine's thread may be stuck in a step that will never finish: do not wait long for it.
        await asyncio.to_thread(self._thread.join, 30 if self.dead_error is None else 2)
        await asyncio.to_thread(self.core.executor.shutdown)

    # -- the loop (engine thread) -------------------------------------------------------------------
    def _run(self) -> None:
        core = self.core
        try:
            while not self._stopping and self.dead_error is None:
                self._drain_inbox(block=not core.has_unfinished)
                if self._stopping:
                    break
                if core.has_unfinished:
                    with self.watchdog.step():
                        outputs = core.step()
                    if self.dead_error is not None:  # the watchdog gave up on this step meanwhile
                        break
                    self._publish(outputs)
        except BaseException as exc:  # the loop itself broke: nothing can make progress any more
            logger.exception("engine loop died")
            self._fail_all(exc if isinstance(exc, EngineDeadError) else EngineDeadError(f"engine loop died: {exc!r}"))
            core.executor.shutdown()
        else:  # shut down: whoever still waits gets an answer instead of hanging
            self._fail_all(EngineDeadError("the engine was shut down"))
        finally:
            self.watchdog.stop()

    def _on_stuck(self, seconds: float) -> None:  # on the watchdog thread
        message = (f"the engine is stuck: one step has run for {seconds:.1f} s "
                   f"(step timeout {self.watchdog.timeout_s:g} s)")
        logger.error("%s; failing every waiting request", message)
        self._fail_all(EngineDeadError(message))

    def _on_executor_dead(self, reason: str) -> None:  # any thread
        logger.error("the engine's workers are gone: %s", reason)
        self._fail_all(EngineDeadError(reason))
        self._stopping = True
        self._inbox.put(("stop", None))

    def _fail_all(self, cause: EngineDeadError) -> None:
        if self.dead_error is None:  # the first cause wins: a later "shut down" does not hide it
            self.dead_error = cause  # before the snapshot below: generate() re-checks it after registering
        with self._lock:
            boxes = list(self._mailboxes.values())
        for box in boxes:
            try:
                box.loop.call_soon_threadsafe(box.put, EngineDeadError(str(self.dead_error)))
            except RuntimeError:  # that event loop is closed already
                pass

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        added = added_tokens = 0
        while True:
            kind, payload = item
            if kind == "add":
                self.core.add(payload)
                added += 1
                added_tokens += len(payload.prompt_token_ids)
            elif kind == "abort":
                out = self.core.abort(payload)
                if out is not None:
                    self._publish([out])
            elif kind == "stop":
                self._stopping = True
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
        # Counted out of the inbox only once in the queue: briefly twice, never zero times.
        self._inbox_out_tokens += added_tokens
        self._inbox_out += added

    def _publish(self, outputs: list[RequestOutput]) -> None:
        with self._lock:
            targets = [(self._mailboxes.get(o.request_id), o) for o in outputs]
        # One wake-up of each event loop per step, not one per request: each call_soon_threadsafe
        # writes to the loop's self-pipe and queues a callback, 32 of them a step at c=32.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Mailbox, RequestOutput]]] = {}
        for box, out in targets:
            if box is not None:
                by_loop.setdefault(box.loop, []).append((box, out))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that event loop is closed: nobody is listening any more
                pass
