"""npu-serve: continuous batching over a paged KV cache for HF transformers models (Ascend, CUDA, CPU).

Thread and OpenMP wait-policy settings are applied before anything imports torch.
"""

from npu_serve import runtime_env as _runtime_env

_runtime_env.apply()

from npu_serve.outputs import CompletionOutput, FinishReason, RequestOutput  # noqa: E402
from npu_serve.sampling_params import SamplingParams  # noqa: E402

__version__ = "0.1.0"
__all__ = ["LLM", "AsyncEngine", "SamplingParams", "RequestOutput", "CompletionOutput", "FinishReason"]


def __getattr__(name: str):
    # LLM and AsyncEngine pull in torch; importing them lazily keeps `npu-serve keys ...` and the
    # engine's torch-free half light.
    if name == "LLM":
        from npu_serve.llm import LLM

        return LLM
    if name == "AsyncEngine":
        from npu_serve.engine.async_engine import AsyncEngine

        return AsyncEngine
    raise AttributeError(name)
