"""RequestTracker: every engine request the server runs, from submission to its one end.

`start` registers a RequestRecord (the drain reads `active` to cut what is still running at its
deadline), `output` is called with each snapshot the handler receives (time to first token, the
gaps between tokens, queue time), `finish` is called exactly once however the request ended
(finished, client gone, moderation, error, drain) and records the metrics and the one log line:

    finished id=chatcmpl-1 key=nps-1a2b3c4d model=m prompt_tokens=12 completion_tokens=8 ttft=0.031 e2e=0.210 finish_reason=length

No prompt or output text is logged unless `log_requests`; API keys never are (only the key's
public id, which the auth middleware puts in the scope).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from npu_serve.outputs import RequestOutput

logger = logging.getLogger("npu_serve.requests")

ABORT, ERROR, CONTENT_FILTER = "abort", "error", "content_filter"


@dataclass(eq=False)
class RequestRecord:
    request_id: str  # the engine's
    response_id: str  # what the client sees
    model: str
    key_id: str | None
    arrival: float  # monotonic, when the request reached the server
    prompt_tokens: int
    n: int
    first_token: float | None = None
    last_token: float | None = None
    seen: list[int] = field(default_factory=list)  # tokens seen so far, per choice
    last: RequestOutput | None = None
    queued: bool = False  # queue time observed
    cut: bool = False  # the drain ended it at its deadline: "abort" is an answer, not a failure
    done: bool = False

    @property
    def completion_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.last.outputs) if self.last is not None else 0


class RequestTracker:
    def __init__(self, metrics: Any, log_requests: bool = False):
        self.metrics = metrics
        self.log_requests = log_requests
        self.active: dict[str, RequestRecord] = {}

    def start(self, *, request_id: str, response_id: str, model: str, key_id: str | None, arrival: float,
              prompt_ids: list[int], n: int, params: Any = None, tokenizer: Any = None) -> RequestRecord:
        record = RequestRecord(request_id, response_id, model, key_id, arrival, len(prompt_ids), n)
        self.active[request_id] = record
        if self.log_requests:
            text = tokenizer.decode(prompt_ids) if tokenizer is not None else prompt_ids
            logger.info("request id=%s key=%s prompt=%r params=%s", response_id, key_id or "-", text, params)
        return record

    def output(self, record: RequestRecord, out: RequestOutput) -> None:
        """One snapshot arrived (on the event loop, as the handler reads it)."""
        now = time.monotonic()
        m = self.metrics
        if not record.queued and out.queue_time is not None:
            record.queued = True
            m.queue.labels(record.model).observe(out.queue_time)
        record.last = out
        if len(record.seen) < len(out.outputs):
            record.seen += [0] * (len(out.outputs) - len(record.seen))
        new = 0
        for o in out.outputs:
            new = max(new, len(o.token_ids) - record.seen[o.index])
            record.seen[o.index] = max(record.seen[o.index], len(o.token_ids))
        if new <= 0:
            return
        if record.first_token is None:
            record.first_token = now
            m.ttft.labels(record.model).observe(now - record.arrival)
        else:
            gap = (now - record.last_token) / new  # coalesced snapshots: the gap spread evenly
            for _ in range(new):
                m.itl.labels(record.model).observe(gap)
        record.last_token = now

    def finish(self, record: RequestRecord, unfinished: str = ABORT, override: str | None = None) -> None:
        """The request ended; choices that had not finished end with `unfinished`. `override`
        replaces every reason (moderation refused a whole answer). Idempotent."""
        if record.done:
            return
        record.done = True
        self.active.pop(record.request_id, None)
        now = time.monotonic()
        outputs = record.last.outputs if record.last is not None else []
        if override is not None:
            reasons = [override] * max(len(outputs), record.n)
        elif outputs:
            reasons = [o.finish_reason or unfinished for o in outputs]
        else:
            reasons = [unfinished] * record.n
        m, model = self.metrics, record.model
        m.prompt_tokens.labels(model).inc(record.prompt_tokens)
        m.generation_tokens.labels(model).inc(record.completion_tokens)
        for reason in reasons:
            m.request_success.labels(model, reason).inc()
        m.e2e.labels(model).observe(now - record.arrival)
        ttft = f"{record.first_token - record.arrival:.3f}" if record.first_token is not None else "-"
        logger.info("finished id=%s key=%s model=%s prompt_tokens=%d completion_tokens=%d ttft=%s e2e=%.3f "
                    "finish_reason=%s", record.response_id, record.key_id or "-", model, record.prompt_tokens,
                    record.completion_tokens, ttft, now - record.arrival, ",".join(reasons))
        if self.log_requests:
            logger.info("output id=%s text=%r", record.response_id, [o.text for o in outputs])
