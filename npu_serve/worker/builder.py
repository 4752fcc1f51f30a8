"""Builds a ready EngineCore from an EngineConfig, in this order: device platform (on Ascend: stack probe
and refusals), dtype, attention backend, the model's config.json checked against the backend (refusals
before any weight loads), platform warm-up, weights, a profiling forward on accelerators, KV cache."""

from __future__ import annotations

import logging
import os

import torch

from npu_serve.config import EngineConfig, EngineFacts
from npu_serve.engine.engine_core import EngineCore
from npu_serve.engine.scheduler import SchedulerConfig
from npu_serve.errors import InvalidParameter
from npu_serve.worker.kv_cache import KVCacheSpec
from npu_serve.worker.memory_profile import MemoryProfile, profile_forward
from npu_serve.worker.preflight import check_before_load, load_config

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


def _num_blocks(config: EngineConfig, spec: KVCacheSpec, profile: MemoryProfile | None) -> int:
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    if profile is None:  # cpu: a share of free RAM, capped
        return spec.num_blocks_for(min(config.cpu_kv_cache_max_bytes, _available_ram() // 4))
    blocks = spec.num_blocks_for(profile.kv_budget(config.kv_cache_memory_fraction))
    logger.info("KV cache: %d blocks (%.2f GiB) after a %d-token profiling forward", blocks,
                blocks * spec.bytes_per_block / 2**30, profile.num_tokens)
    return blocks


def build_engine_core(config: EngineConfig) -> tuple[EngineCore, EngineFacts, object]:
    from npu_serve.attention.registry import get_backend
    from npu_serve.device import resolve_dtype, resolve_platform
    from npu_serve.models import load_model, resolve_model

    torch.manual_seed(config.seed)
    platform = resolve_platform(config.device)  # NPU: probes the stack, refuses what it cannot run
    # transformers only after the platform is known (see npu_serve/device/__init__.py).
    from npu_serve.attention import hf_bridge
    from npu_serve.worker.model_runner import ModelRunner

    dtype = resolve_dtype(config.dtype, platform)
    resolved = resolve_model(config.model)
    block_size = config.block_size or platform.default_block_size
    backend_name = os.environ.get("NPU_SERVE_ATTENTION_BACKEND") or platform.attention_backend
    backend = get_backend(backend_name)
    backend.configure(block_size=block_size, dtype=dtype)
    # config.json only: a head size or feature the device cannot run is refused before any weight loads.
    check_before_load(load_config(resolved.path), resolved.name, backend)
    platform.warm_up()
    loaded = load_model(resolved, platform, dtype)
    layers = hf_bridge.install(loaded.model, backend)  # the loaded modules' facts, checked again
    spec = KVCacheSpec.from_layers(layers, dtype, block_size)  # the real K and V sizes of every layer
    profile = None
    if platform.profiles_memory and config.num_kv_blocks is None:
        profile = profile_forward(loaded.model, platform, spec, backend, layers, config.max_num_batched_tokens,
                                  config.max_num_seqs)
    num_blocks = _num_blocks(config, spec, profile)
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
