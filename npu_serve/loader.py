"""load_engine: from an EngineConfig to a running EngineCore, on one device or over tensor-parallel ranks.

The one place where the torch-free engine meets the torch side (worker/, distributed/): `LLM` and
`AsyncEngine` call it at construction.
"""

from __future__ import annotations

from npu_serve.config import EngineConfig, EngineFacts
from npu_serve.engine.engine_core import EngineCore
from npu_serve.errors import InvalidParameter


def load_engine(config: EngineConfig) -> tuple[EngineCore, EngineFacts, object]:
    """(engine core, facts, tokenizer). With tensor_parallel_size > 1 this process is global rank 0:
    it starts (or meets) the other ranks first; `core.executor.shutdown()` stops them."""
    if config.node_rank != 0:
        raise InvalidParameter("node_rank", f"node_rank {config.node_rank} only computes: the engine (and its "
                               "HTTP server) runs on node 0; start this node with `npu-serve serve --node-rank "
                               f"{config.node_rank} ...` (npu_serve.distributed.node.serve_node)")
    if config.tensor_parallel_size > 1:
        from npu_serve.distributed.executor import start_tensor_parallel

        return start_tensor_parallel(config)
    from npu_serve.device import resolve_dtype, resolve_platform

    platform = resolve_platform(config.device)  # first: NPU probes and refusals; then transformers may load
    from npu_serve.worker.builder import build_rank, make_engine_core

    built = build_rank(config, platform, resolve_dtype(config.dtype, platform))
    return make_engine_core(config, built, built.runner)
