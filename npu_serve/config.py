"""EngineConfig: what the user asked for, frozen and validated once.

Runtime facts discovered while loading (the resolved device, dtype, block count, EOS ids, the
effective max_model_len) travel in `EngineFacts`, never by mutating the config.
"""

from __future__ import annotations

from dataclasses import dataclass

from npu_serve.errors import InvalidParameter


@dataclass(frozen=True)
class EngineConfig:
    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    max_model_len: int | None = None
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    block_size: int | None = None
    num_kv_blocks: int | None = None
    enable_prefix_caching: bool = True
    # KV cache budget when num_kv_blocks is not given: on CPU a fixed share of available RAM, capped;
    # on accelerators the cache grows until the process uses this fraction of the device's total memory,
    # counting the weights and the peak of a profiling forward at max_num_batched_tokens (as vLLM's
    # gpu_memory_utilization; worker/memory_profile.py).
    kv_cache_memory_fraction: float = 0.9
    cpu_kv_cache_max_bytes: int = 4 << 30
    seed: int = 0

    def __post_init__(self) -> None:
        def positive(name: str, value: int | None) -> None:
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InvalidParameter(name, f"{name} must be a positive integer, got {value!r}")

        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size", "num_kv_blocks"):
            positive(name, getattr(self, name))
        if self.num_kv_blocks is not None and self.num_kv_blocks < 2:
            raise InvalidParameter("num_kv_blocks", "num_kv_blocks must be at least 2 (block 0 is reserved)")
        if not 0.0 < self.kv_cache_memory_fraction <= 1.0:
            raise InvalidParameter("kv_cache_memory_fraction", "kv_cache_memory_fraction must be in (0, 1]")


@dataclass(frozen=True)
class EngineFacts:
    model_name: str
    device: str
    dtype: str
    block_size: int
    num_blocks: int
    max_model_len: int
    eos_token_ids: frozenset[int]
    attention_backend: str
