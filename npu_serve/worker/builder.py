"""Builds a ModelRunner from an EngineConfig (model, attention backend, KV cache), and the EngineCore
around an executor."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from npu_serve.config import EngineConfig, EngineFacts, default_attention_backend
from npu_serve.engine.engine_core import EngineCore, Executor
from npu_serve.engine.scheduler import SchedulerConfig
from npu_serve.errors import InvalidParameter
from npu_serve.models import LoadedModel
from npu_serve.worker.kv_cache import KVCacheSpec
from npu_serve.worker.model_runner import ModelRunner

if TYPE_CHECKING:
    from npu_serve.device.base import Platform

logger = logging.getLogger(__name__)


@dataclass
class RankBuild:
    runner: ModelRunner
    loaded: LoadedModel
    platform: Platform
    dtype: torch.dtype
    num_blocks: int
    block_size: int


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def _num_blocks(config: EngineConfig, spec: KVCacheSpec, platform) -> int:
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    if platform.name == "cpu":
        budget = min(config.cpu_kv_cache_max_bytes, _available_ram() // 4)
    else:
        platform.synchronize()
        free, _total = platform.mem_get_info()
        budget = int(free * config.kv_cache_memory_fraction)
    return spec.num_blocks_for(budget)


def build_rank(config: EngineConfig, platform: Platform, dtype: torch.dtype) -> RankBuild:
    """Load the model and allocate its KV cache."""
    from npu_serve.attention.registry import get_backend
    from npu_serve.models import load_model, resolve_model

    torch.manual_seed(config.seed)
    backend_name = default_attention_backend(platform.attention_backend, config)
    try:
        backend = get_backend(backend_name)
    except ValueError as e:  # an unknown name from NPU_SERVE_ATTENTION_BACKEND
        raise InvalidParameter("attention_backend", str(e)) from None
    loaded = load_model(resolve_model(config.model), platform, dtype)
    block_size = config.block_size or platform.default_block_size
    spec = KVCacheSpec.from_hf_config(loaded.config, dtype, block_size)
    num_blocks = _num_blocks(config, spec, platform)
    runner = ModelRunner(loaded.model, platform.torch_device, spec, num_blocks, backend)
    return RankBuild(runner, loaded, platform, dtype, num_blocks, block_size)


def max_model_len(config: EngineConfig, loaded: LoadedModel, num_blocks: int, block_size: int) -> int:
    capacity = (num_blocks - 1) * block_size
    max_len = loaded.max_position_embeddings
    if config.max_model_len is not None:
        if config.max_model_len > max_len:
            raise InvalidParameter("max_model_len", f"max_model_len {config.max_model_len} exceeds the model's {max_len}")
        if config.max_model_len > capacity:
            raise InvalidParameter("max_model_len", f"max_model_len {config.max_model_len} does not fit the KV cache "
                                   f"({num_blocks} blocks of {block_size} = {capacity} tokens)")
        return config.max_model_len
    if max_len > capacity:
        logger.warning("max_model_len lowered from %d to the KV cache's %d tokens", max_len, capacity)
        return capacity
    return max_len


def make_engine_core(config: EngineConfig, built: RankBuild, executor: Executor) -> tuple[EngineCore, EngineFacts, object]:
    """The scheduler and engine around `executor` (today the runner itself)."""
    loaded = built.loaded
    max_len = max_model_len(config, loaded, built.num_blocks, built.block_size)
    sched = SchedulerConfig(
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        max_model_len=max_len,
        block_size=built.block_size,
        num_blocks=built.num_blocks,
        enable_prefix_caching=config.enable_prefix_caching,
    )
    core = EngineCore(sched, executor, loaded.tokenizer, loaded.eos_token_ids)
    facts = EngineFacts(loaded.name, built.platform.name, str(built.dtype).replace("torch.", ""), built.block_size,
                        built.num_blocks, max_len, loaded.eos_token_ids, built.runner.backend.name)
    logger.info("engine ready: %s", facts)
    return core, facts, loaded.tokenizer
