"""Builds a ready EngineCore from an EngineConfig: device, dtype, model, attention backend, KV cache."""

from __future__ import annotations

import logging
import os

import torch

from npu_serve.attention import hf_bridge
from npu_serve.config import EngineConfig, EngineFacts
from npu_serve.engine.engine_core import EngineCore
from npu_serve.engine.scheduler import SchedulerConfig
from npu_serve.errors import InvalidParameter
from npu_serve.worker.kv_cache import KVCacheSpec
from npu_serve.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)


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


def build_engine_core(config: EngineConfig) -> tuple[EngineCore, EngineFacts, object]:
    from npu_serve.attention.registry import get_backend
    from npu_serve.device import resolve_dtype, resolve_platform
    from npu_serve.models import load_model, resolve_model

    torch.manual_seed(config.seed)
    platform = resolve_platform(config.device)
    dtype = resolve_dtype(config.dtype, platform)
    loaded = load_model(resolve_model(config.model), platform, dtype)
    block_size = config.block_size or platform.default_block_size
    backend_name = os.environ.get("NPU_SERVE_ATTENTION_BACKEND") or platform.attention_backend
    backend = get_backend(backend_name)
    layers = hf_bridge.install(loaded.model, backend)  # UnsupportedModel before any KV is allocated
    spec = KVCacheSpec.from_layers(layers, dtype, block_size)  # the real K and V sizes of every layer
    num_blocks = _num_blocks(config, spec, platform)
    capacity = (num_blocks - 1) * block_size
    max_len = loaded.max_position_embeddings
    if config.max_model_len is not None:
        if config.max_model_len > max_len:
            raise InvalidParameter("max_model_len", f"max_model_len {config.max_model_len} exceeds the model's {max_len}")
        if config.max_model_len > capacity:
            raise InvalidParameter("max_model_len", f"max_model_len {config.max_model_len} does not fit the KV cache "
                                   f"({num_blocks} blocks of {block_size} = {capacity} tokens)")
        max_len = config.max_model_len
    elif max_len > capacity:
        logger.warning("max_model_len lowered from %d to the KV cache's %d tokens", max_len, capacity)
        max_len = capacity
    runner = ModelRunner(loaded.model, platform.torch_device, spec, num_blocks, backend, layers)
    sched = SchedulerConfig(
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        max_model_len=max_len,
        block_size=block_size,
        num_blocks=num_blocks,
        enable_prefix_caching=config.enable_prefix_caching,
    )
    core = EngineCore(sched, runner, loaded.tokenizer, loaded.eos_token_ids)
    facts = EngineFacts(loaded.name, platform.name, str(dtype).replace("torch.", ""), block_size, num_blocks,
                        max_len, loaded.eos_token_ids, backend.name)
    logger.info("engine ready: %s", facts)
    return core, facts, loaded.tokenizer
