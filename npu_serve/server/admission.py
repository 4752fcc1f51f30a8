"""Admission: refuse a generation request at once when the engine's queue is already full.

"Waiting" means what the engine means by it (EngineStats.waiting: queued, not yet computing, the
inbox included) plus the requests this server admitted and has not handed to the engine yet (their
body is being read, validated, tokenized). The latter hold a `Ticket` from admission until the
engine has the request (`Ticket.submitted`, see serving.run_request) or the request fails first;
without tickets, a hundred requests arriving together would all see an empty queue and all pass.

The check runs in the gate middleware before the body is read, so a refusal costs no JSON parsing
and no tokenizing, and refused requests cannot slow the admitted ones down. The token budget is
checked the same way, against the tokens already queued (a prompt's length is unknown until it is
tokenized): a request is admitted while the queue holds fewer than `max_waiting_tokens`, so the
requests admitted together may overshoot the budget by their own prompts (each at most the context
length; how many, the request limit bounds).
"""

from __future__ import annotations

from npu_serve.engine.client import EngineStats

QUEUE_FULL = "waiting_requests"  # refusal reasons (the `reason` label of npu_serve:request_refused_total)
TOKEN_BUDGET = "waiting_tokens"


class Ticket:
    """One admitted request between admission and the engine's inbox. (Tokenizing and submitting
    run without an await between them, so in transit a request is counted, its tokens need not be.)"""

    def __init__(self, controller: AdmissionController):
        self._controller = controller
        self.open = True
        controller.in_transit += 1

    def submitted(self) -> None:
        """The engine counts this request now (or it failed before): stop counting it here. Idempotent."""
        if self.open:
            self.open = False
            self._controller.in_transit -= 1


class AdmissionController:
    """All methods run on the event loop; no locking needed."""

    def __init__(self, max_waiting_requests: int | None, max_waiting_tokens: int | None):
        self.max_waiting_requests = max_waiting_requests
        self.max_waiting_tokens = max_waiting_tokens
        self.in_transit = 0

    def refusal(self, stats: EngineStats | None) -> str | None:
        """Why a new request must wait elsewhere (a reason label), or None to admit it."""
        waiting = (stats.waiting if stats else 0) + self.in_transit
        tokens = stats.waiting_tokens if stats else 0
        if self.max_waiting_requests is not None and waiting >= self.max_waiting_requests:
            return QUEUE_FULL
        if self.max_waiting_tokens is not None and tokens >= self.max_waiting_tokens:
            return TOKEN_BUDGET
        return None

    def admit(self) -> Ticket:
        return Ticket(self)

    @staticmethod
    def message(reason: str) -> str:
        if reason == QUEUE_FULL:
            return "The server is overloaded: too many requests are waiting. Retry shortly."
        return "The server is overloaded: too many prompt tokens are waiting. Retry shortly."
