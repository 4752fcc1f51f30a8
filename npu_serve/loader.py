"""load_engine: from an EngineConfig to a running EngineCore, on one device.

The one place where the torch-free engine meets the torch side (worker/): `LLM` and
`AsyncEngine` call it at construction.
"""

from __future__ import annotations

from npu_serve.config import EngineConfig, EngineFacts
from npu_serve.engine.engine_core import EngineCore


def load_engine(config: EngineConfig) -> tuple[EngineCore, EngineFacts, object]:
    """(engine core, facts, tokenizer); `core.executor.shutdown()` stops what the executor started."""
    from npu_serve.device import resolve_dtype, resolve_platform
    from npu_serve.worker.builder import build_rank, make_engine_core

    platform = resolve_platform(config.device)
    built = build_rank(config, platform, resolve_dtype(config.dtype, platform))
    return make_engine_core(config, built, built.runner)
