"""SamplingParams: what one request asks of the sampler and the stop logic (vLLM 0.6.0 names).

Every refusal rule of the MaaS contract lives in `_verify()`, and raises `InvalidParameter` naming
the parameter, so the offline API and the HTTP server (which turns it into a 400) refuse alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from npu_serve.errors import InvalidParameter

_GREEDY_EPS = 1e-5


@dataclass
class SamplingParams:
    n: int = 1
    best_of: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    use_beam_search: bool = False
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    # Filled by the engine, not the user: the model's EOS ids (for min_tokens and ignore_eos).
    all_stop_token_ids: set[int] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.best_of is None:
            self.best_of = self.n
        if self.logit_bias is not None:
            self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
        self._verify()
        if self.is_greedy:
            # vLLM 0.6.0: greedy ignores the truncation knobs; normalise so the sampler takes its fast path.
            self.top_p, self.top_k, self.min_p = 1.0, -1, 0.0

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS and not self.use_beam_search

    @property
    def max_stop_str_len(self) -> int:
        return max((len(s) for s in self.stop), default=0)

    def _verify(self) -> None:
        def bad(param: str, message: str) -> InvalidParameter:
            return InvalidParameter(param, message)

        if not isinstance(self.n, int) or self.n < 1:
            raise bad("n", f"n must be at least 1, got {self.n}.")
        if self.best_of < self.n:
            raise bad("best_of", f"best_of must be greater than or equal to n, got n={self.n} and best_of={self.best_of}.")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise bad("presence_penalty", f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise bad("frequency_penalty", f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")
        if not 0.0 < self.repetition_penalty <= 2.0:
            raise bad("repetition_penalty", f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}.")
        if self.temperature < 0.0:
            raise bad("temperature", f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < -1 or self.top_k == 0:
            raise bad("top_k", f"top_k must be -1 (disable), or at least 1, got {self.top_k}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", f"min_p must be in [0, 1], got {self.min_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad("max_tokens", f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.min_tokens < 0:
            raise bad("min_tokens", f"min_tokens must be greater than or equal to 0, got {self.min_tokens}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, got {self.min_tokens}.")
        if self.logprobs is not None and self.logprobs < 0:
            raise bad("logprobs", f"logprobs must be non-negative, got {self.logprobs}.")
        if self.prompt_logprobs is not None and self.prompt_logprobs < 0:
            raise bad("prompt_logprobs", f"prompt_logprobs must be non-negative, got {self.prompt_logprobs}.")
        if any(not s for s in self.stop):
            raise bad("stop", "stop cannot contain an empty string.")
        if self.use_beam_search:
            self._verify_beam_search(bad)
        else:
            self._verify_non_beam_search(bad)

    def _verify_beam_search(self, bad) -> None:
        if self.n < 2 or self.best_of < 2:
            raise bad("n", f"n must be greater than 1 when using beam search, got n={self.n}.")
        if self.temperature > _GREEDY_EPS:
            raise bad("temperature", "temperature must be 0 when using beam search.")
        if self.top_p < 1.0 - _GREEDY_EPS:
            raise bad("top_p", "top_p must be 1 when using beam search.")
        if self.top_k != -1:
            raise bad("top_k", "top_k must be -1 when using beam search.")
        if self.early_stopping not in (True, False, "never"):
            raise bad("early_stopping", f"early_stopping must be True, False, or 'never', got {self.early_stopping}.")
        # Beam search ranks candidates by the model's own log-probabilities (engine/beam_search.py);
        # the logits transforms of worker/logits_processors.py never run for it, so asking for one
        # would be silently dropped.
        for name, unused in (("logit_bias", bool(self.logit_bias)), ("min_tokens", self.min_tokens > 0),
                             ("presence_penalty", self.presence_penalty != 0.0),
                             ("frequency_penalty", self.frequency_penalty != 0.0),
                             ("repetition_penalty", self.repetition_penalty != 1.0)):
            if unused:
                raise bad(name, f"{name} is not supported with beam search (use_beam_search=true).")

    def _verify_non_beam_search(self, bad) -> None:
        if self.early_stopping is not False:
            raise bad("early_stopping", "early_stopping is not effective and must be False when not using beam search.")
        if abs(self.length_penalty - 1.0) > _GREEDY_EPS:
            raise bad(
                "length_penalty",
                "length_penalty is not effective and must be the default value of 1.0 when not using beam search "
                "(it requires use_beam_search=true, top_k=-1 and best_of > 1).",
            )
        greedy = self.temperature < _GREEDY_EPS or self.top_k == 1
        if greedy and self.best_of > 1:
            param = "n" if self.n > 1 else "best_of"
            raise bad(
                param,
                f"{param} must be 1 when using greedy sampling (temperature 0 or top_k 1); "
                f"got n={self.n}, best_of={self.best_of}. Sampling several outputs needs temperature > 0 and top_k != 1.",
            )
