"""Builds one rank's ModelRunner from an EngineConfig (model, attention backend, KV cache), and rank 0's
EngineCore around an executor. Every tensor-parallel rank runs `build_rank` with the same config at the
same point (its collectives, the sharded load and the KV block agreement, happen in lockstep).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from npu_serve.attention import hf_bridge
from npu_serve.config import EngineConfig, EngineFacts, default_attention_backend
from npu_serve.engine.engine_core import EngineCore, Executor
from npu_serve.engine.scheduler import SchedulerConfig
from npu_serve.errors import InvalidParameter
from npu_serve.models import LoadedModel
from npu_serve.worker.kv_cache import KVCacheSpec
from npu_serve.worker.model_runner import ModelRunner

if TYPE_CHECKING:
    from npu_serve.device.base import Platform
    from npu_serve.distributed.group import RankGroup
    from npu_serve.distributed.sharding import ShardPlan

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
    """Blocks this rank can hold. On CPU the ranks of a node share its RAM and the cap is for all ranks
    together (so a TP engine holds about as many tokens as a single-rank one)."""
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    if platform.name == "cpu":
        budget = min(config.cpu_kv_cache_max_bytes // config.tensor_parallel_size,
                     _available_ram() // 4 // config.nproc_per_node)
    else:
        platform.synchronize()
        free, _total = platform.mem_get_info()
        budget = int(free * config.kv_cache_memory_fraction)
    return spec.num_blocks_for(budget)


def build_rank(config: EngineConfig, platform: Platform, dtype: torch.dtype, shard: ShardPlan | None = None,
               group: RankGroup | None = None) -> RankBuild:
    """Load this rank's (share of the) model and allocate its KV cache. Under tensor parallelism all
    ranks agree on the smallest block count any of them can hold."""
    from npu_serve.attention.registry import get_backend
    from npu_serve.models import load_model, resolve_model

    torch.manual_seed(config.seed)
    backend_name = default_attention_backend(platform.attention_backend, config)
    try:
        backend = get_backend(backend_name)
    except ValueError as e:  # an unknown name from NPU_SERVE_ATTENTION_BACKEND
        raise InvalidParameter("attention_backend", str(e)) from None
    loaded = load_model(resolve_model(config.model), platform, dtype, shard, group.rank if group else 0)
    block_size = config.block_size or platform.default_block_size
    spec = KVCacheSpec.from_hf_config(loaded.config, dtype, block_size, shard)
    # The attention facts of this rank's share of the heads; UnsupportedModel before any KV is allocated.
    heads = (shard.num_heads, shard.num_kv_heads) if shard is not None and shard.tp_size > 1 else None
    layers = hf_bridge.install(loaded.model, backend, heads)
    num_blocks = _num_blocks(config, spec, platform)
    if group is not None:
        num_blocks = group.all_min(num_blocks)
    # Its dry forward (one token, every attention call checked) runs on every rank at once: it has collectives.
    runner = ModelRunner(loaded.model, platform.torch_device, spec, num_blocks, backend, layers)
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
    """Rank 0's scheduler and engine around `executor` (the runner itself, or the tensor-parallel one)."""
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
                        built.num_blocks, max_len, loaded.eos_token_ids, built.runner.backend.name,
                        config.tensor_parallel_size)
    logger.info("engine ready: %s", facts)
    return core, facts, loaded.tokenizer
