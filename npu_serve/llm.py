"""LLM: the offline API (vLLM's names). Runs the engine loop on the caller's thread until every
prompt is done, and returns one RequestOutput per prompt, in order; raises RequestFailed when every
one of them failed inside the engine.

With tensor_parallel_size > 1 the other ranks run in spawned processes until `shutdown()` (or the
`with` block ends); a script that builds one must guard its entry point with
`if __name__ == "__main__":`, as every spawn-based program must.
"""

from __future__ import annotations

from typing import Sequence

from npu_serve.config import EngineConfig, engine_options
from npu_serve.engine.client import EngineStats
from npu_serve.errors import RequestFailed
from npu_serve.outputs import RequestOutput
from npu_serve.sampling_params import SamplingParams


@engine_options
class LLM:
    def __init__(self, model: str | None = None, **engine_kwargs):
        """Load the model (`model`: an HF directory, a .gguf file, or None for the default)."""
        self._start(EngineConfig.from_kwargs("LLM", model=model, **engine_kwargs))

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLM:
        llm = cls.__new__(cls)
        llm._start(config)
        return llm

    def _start(self, config: EngineConfig) -> None:
        from npu_serve.loader import load_engine

        self.config = config
        self.engine, self.facts, self.tokenizer = load_engine(config)
        self._counter = 0

    def stats(self) -> EngineStats:
        return self.engine.stats(self.facts.tensor_parallel_size)

    def shutdown(self) -> None:
        """Stop the other tensor-parallel ranks (nothing to do on one device). Idempotent."""
        self.engine.executor.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def generate(self, prompts: str | list[int] | Sequence[str | list[int]],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} sampling params for {len(prompts)} prompts")
        # Validate everything before queueing anything, so a bad prompt refuses the whole call cleanly.
        parents = []
        for prompt, p in zip(prompts, params):
            parents.append(self.engine.make_parent(str(self._counter), prompt, p))
            self._counter += 1
        for parent in parents:
            self.engine.add(parent)
        done: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished:
            for out in self.engine.step(want_snapshots=False):
                done[out.request_id] = out
        outputs = [done[p.request_id] for p in parents]
        errors = [o.error for o in outputs if o.error is not None]
        if outputs and len(errors) == len(outputs):  # nothing came back but failures: say so, loudly
            raise RequestFailed(f"every request failed inside the engine: {errors[0]}")
        return outputs

    def chat(self, messages, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             chat_template: str | None = None, add_generation_prompt: bool = True) -> list[RequestOutput]:
        """`messages`: one conversation (a list of {"role", "content"}) or a list of conversations."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [self.apply_chat_template(c, chat_template, add_generation_prompt) for c in conversations]
        return self.generate(prompts, sampling_params)

    def apply_chat_template(self, conversation, chat_template: str | None = None,
                            add_generation_prompt: bool = True) -> list[int]:
        text = self.tokenizer.apply_chat_template(conversation, chat_template=chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)
        # The template already holds the special tokens it wants (BOS, <|im_start|>...).
        return self.tokenizer.encode(text, add_special_tokens=False)

    def get_tokenizer(self):
        return self.tokenizer
