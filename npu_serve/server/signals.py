"""DrainingServer: uvicorn.Server whose SIGTERM/SIGINT start a drain instead of a 5-second stop.

uvicorn (0.54, as installed; the same since 0.29) installs `handle_exit` for SIGINT and SIGTERM with
`signal.signal` inside `capture_signals()`. Its own handler sets `should_exit` (the server stops
accepting, waits `timeout_graceful_shutdown` for connections, then cancels them), records the
signal, and after serving re-raises every recorded signal with `signal.raise_signal`, so a SIGTERM
ends the process with the default action (exit status 143), not 0.

We override `handle_exit` alone: the first signal asks the event loop to `Drainer.begin()` (the
handler runs between two bytecodes of the main thread, which also runs the loop, so it only
schedules); the drain sets `should_exit` when it is done. A second signal stops at once
(`force_exit`: no waiting for connections, no lifespan shutdown). Signals are never recorded in
`_captured_signals`, so nothing is re-raised and a drained server exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn

from npu_serve.server.drain import Drainer

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drainer: Drainer):
        super().__init__(config)
        self.drainer = drainer
        drainer.on_done = self._drained
        self.signals: list[int] = []  # every signal received, in order
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if len(self.signals) > 1 or self._loop is None or self._loop.is_closed():
            logger.warning("%s again: stopping at once, without waiting for running requests", name)
            self.force_exit = True
            self.should_exit = True
            return
        logger.warning("%s: draining (a second signal stops at once)", name)
        self._loop.call_soon_threadsafe(self.drainer.begin)

    @property
    def forced(self) -> bool:
        return self.force_exit

    def _drained(self) -> None:
        self.should_exit = True
