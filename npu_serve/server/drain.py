"""Graceful drain: stop taking work, let running requests finish, then let the process exit.

`begin()` (on SIGTERM/SIGINT, see signals.py; ModelArts and Kubernetes send SIGTERM before a
rolling upgrade takes the instance away):
1. at once: `/health` answers 503 (the load balancer stops routing here) and every new API
   request gets 503 + Retry-After (gate.py);
2. requests already admitted run on, for up to `timeout_s` (default 60 s: ModelArts expects a
   drain of about 60 s, done within 90);
3. at the deadline, what still runs is aborted in the engine and answered as ended: streams get a
   last chunk with finish_reason "abort", the usage chunk if asked, and `[DONE]`; whole answers
   come back 200 with finish_reason "abort" and what was generated;
4. once nothing is in flight (or `CUT_GRACE_S` after the cut), `on_done` runs (the server exits, 0).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

CUT_GRACE_S = 5.0  # after the cut: time for the aborted streams to send their last chunk and [DONE]
_POLL_S = 0.05


class Drainer:
    def __init__(self, state: Any, timeout_s: float):
        self._state = state  # ServerState: inflight, tracker, engine
        self.timeout_s = timeout_s
        self.draining = False
        self.on_done: Callable[[], None] | None = None
        self.task: asyncio.Task | None = None

    def begin(self) -> None:
        """Start draining (on the event loop). A second call does nothing."""
        if self.draining:
            return
        self.draining = True
        logger.warning("draining: /health is 503 and new requests are refused; %d request(s) in flight get up "
                       "to %g s to finish", self._state.inflight, self.timeout_s)
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        state = self._state
        deadline = time.monotonic() + self.timeout_s
        while state.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_S)
        if state.inflight > 0:
            logger.warning("drain timeout (%g s): ending %d request(s) with finish_reason \"abort\"",
                           self.timeout_s, len(state.tracker.active))
            grace_end = time.monotonic() + CUT_GRACE_S
            while state.inflight > 0 and time.monotonic() < grace_end:
                self._cut()  # again each round: a request admitted just before the drain may register late
                await asyncio.sleep(_POLL_S)
        logger.info("drained: %d request(s) still in flight", state.inflight)
        if self.on_done is not None:
            self.on_done()

    def _cut(self) -> None:
        state = self._state
        for record in list(state.tracker.active.values()):
            if not record.cut:
                record.cut = True
                state.engine.abort(record.request_id)
