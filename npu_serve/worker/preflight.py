"""The checks that need only the model's config.json, run before any weight is loaded.

Loading a 70B model takes minutes; learning afterwards that the device cannot run its head size wastes
them and hides the reason in a stack trace. So the engine builder reads config.json first, turns it
into per-layer attention facts and asks the backend (`unsupported`) about each, with the block size
and dtype it will run, and refuses with one line naming the layer and the fix.
"""

from __future__ import annotations

from typing import Any

from npu_serve.attention.backend import AttentionBackend, AttentionLayer
from npu_serve.errors import UnsupportedModel


def load_config(path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


def check_before_load(config: Any, name: str, backend: AttentionBackend,
                      heads: tuple[int, int] | None = None) -> list[AttentionLayer]:
    """The layers' facts from the config (hf_bridge.attention_layers_from_config); UnsupportedModel (one
    line) for the first layer the backend cannot compute. `heads` = (query heads, KV heads) of this rank
    under tensor parallelism. hf_bridge, and with it transformers, is imported here, after the platform
    is resolved (npu_serve/device/__init__.py says why)."""
    from dataclasses import replace

    from npu_serve.attention import hf_bridge

    layers = hf_bridge.attention_layers_from_config(config)
    if heads is not None:
        layers = [replace(layer, num_heads=heads[0], num_kv_heads=heads[1]) for layer in layers]
    for layer in layers:
        reason = backend.unsupported(layer)
        if reason is not None:
            raise UnsupportedModel(f"{name}: layer {layer.layer_idx} cannot run on the {backend.name} "
                                   f"attention backend: {reason}")
    return layers
