"""Builds one rank's ModelRunner from an EngineConfig, and rank 0's EngineCore around an executor.

`build_rank`, in this order, once the caller resolved the device platform (on Ascend: the stack probe
and refusals): attention backend, the model's config.json checked against the backend (refusals before
any weight loads), platform warm-up, weights (the rank's shard under tensor parallelism), a profiling
forward on accelerators, KV cache, the runner (whose dry forward checks every attention call).
transformers is imported only after the platform is known (npu_serve/device/__init__.py says why).

Every tensor-parallel rank runs `build_rank` with the same config at the same point, so what has
collectives in it (the sharded load, the profiling and dry forwards, the KV block agreement) runs in
lockstep; the attention facts, the checks and the KV cache are those of the rank's share of the heads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from npu_serve.config import EngineConfig, EngineFacts, default_attention_backend
from npu_serve.engine.engine_core import EngineCore, Executor
from npu_serve.engine.scheduler import SchedulerConfig
from npu_serve.errors import InvalidParameter
from npu_serve.worker.kv_cache import KVCacheSpec
from npu_serve.worker.memory_profile import MemoryProfile, profile_forward
from npu_serve.worker.preflight import check_before_load, load_config

if TYPE_CHECKING:
    from npu_serve.device.base import Platform
    from npu_serve.distributed.group import RankGroup
    from npu_serve.distributed.sharding import ShardPlan
    from npu_serve.models import LoadedModel
    from npu_serve.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)


@dataclass
class RankBuild:
    runner: ModelRunner
    loaded: LoadedModel
    platform: Platform
    dtype: torch.dtype
    num_blocks: int
    block_size: int
    max_num_batched_tokens: int


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
    """Blocks this rank can hold."""
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    if profile is None:
        # cpu: a share of free RAM, capped. A node's ranks share its RAM and the cap is for all ranks
        # together, so a tensor-parallel engine holds about as many tokens as a single-rank one.
        return spec.num_blocks_for(min(config.cpu_kv_cache_max_bytes // config.tensor_parallel_size,
                                       _available_ram() // 4 // config.nproc_per_node))
    blocks = spec.num_blocks_for(profile.kv_budget(config.kv_cache_memory_fraction))
    logger.info("KV cache: %d blocks (%.2f GiB) after a %d-token profiling forward", blocks,
                blocks * spec.bytes_per_block / 2**30, profile.num_tokens)
    return blocks


def build_rank(config: EngineConfig, platform: Platform, dtype: torch.dtype, shard: ShardPlan | None = None,
               group: RankGroup | None = None) -> RankBuild:
    """Load this rank's (share of the) model and allocate its KV cache; see the module docstring. Under
    tensor parallelism all ranks agree on the smallest block count any of them can hold."""
    from npu_serve.attention import hf_bridge
    from npu_serve.attention.registry import get_backend
    from npu_serve.models import load_model, resolve_model
    from npu_serve.worker.model_runner import ModelRunner

    torch.manual_seed(config.seed)
    resolved = resolve_model(config.model)
    block_size = config.block_size or platform.default_block_size
    max_num_batched_tokens = config.max_num_batched_tokens or platform.default_max_num_batched_tokens
    try:
        backend = get_backend(default_attention_backend(platform.attention_backend, config))
    except ValueError as e:  # an unknown name from NPU_SERVE_ATTENTION_BACKEND
        raise InvalidParameter("attention_backend", str(e)) from None
    backend.configure(block_size=block_size, dtype=dtype)
    # (query heads, KV heads) of this rank: what its attention computes and the backend must accept.
    heads = (shard.num_heads, shard.num_kv_heads) if shard is not None and shard.tp_size > 1 else None
    # config.json only: a head size or feature the device cannot run is refused before any weight loads.
    check_before_load(load_config(resolved.path), resolved.name, backend, heads)
    platform.warm_up()
    loaded = load_model(resolved, platform, dtype, shard, group.rank if group else 0)
    platform.prepare_model(loaded.model, dtype, config)
    layers = hf_bridge.install(loaded.model, backend, heads)  # the loaded modules' facts, checked again
    spec = KVCacheSpec.from_layers(layers, dtype, block_size)  # the real K and V sizes of this rank's layers
    profile = None
    if platform.profiles_memory and config.num_kv_blocks is None:
        profile = profile_forward(loaded.model, platform, spec, backend, layers, max_num_batched_tokens,
                                  config.max_num_seqs)
    num_blocks = _num_blocks(config, spec, profile)
    if group is not None:
        num_blocks = group.all_min(num_blocks)
    fast = platform.fast_decoder(loaded.model, layers, config) if heads is None else None
    runner = ModelRunner(loaded.model, platform.torch_device, spec, num_blocks, backend, layers, fast,
                         platform.greedy_argmax(), platform.logits_to_float())
    return RankBuild(runner, loaded, platform, dtype, num_blocks, block_size, max_num_batched_tokens)


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
    """Rank 0's scheduler and engine around `executor` (the runner itself, or the tensor-parallel one)."""
    loaded = built.loaded
    max_len = max_model_len(config, loaded, built.num_blocks, built.block_size)
    sched = SchedulerConfig(
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=built.max_num_batched_tokens,
        max_model_len=max_len,
        block_size=built.block_size,
        num_blocks=built.num_blocks,
        enable_prefix_caching=config.enable_prefix_caching,
    )
    core = EngineCore(sched, executor, loaded.tokenizer, loaded.eos_token_ids)
    facts = EngineFacts(loaded.name, built.platform.name, str(built.dtype).replace("torch.", ""), built.block_size,
                        built.num_blocks, max_len, loaded.eos_token_ids, built.runner.backend.name,
                        config.tensor_parallel_size)
    logger.info("engine ready: %s", facts)
    return core, facts, loaded.tokenizer
