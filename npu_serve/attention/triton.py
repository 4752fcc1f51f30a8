"""The CUDA backend: our Triton kernels from npu_serve_kernels (paged decode + varlen prefill).

triton and the kernel modules are imported on first use, so importing this file (or the registry)
costs nothing on machines without triton. Tests run the same kernels on CPU tensors under
TRITON_INTERPRET=1, which must be set before triton is imported.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from npu_serve.attention.backend import AttentionBackend, AttentionLayer, AttentionMetadata


def _load_kernels() -> tuple[ModuleType, ModuleType]:
    try:
        from npu_serve_kernels.paged_attention import triton_kernels as attention
        from npu_serve_kernels.reshape_and_cache import triton_kernels as cache
    except ImportError as e:
        raise RuntimeError(
            f"the triton attention backend needs triton and the npu_serve_kernels package ({e}); "
            "install triton and the project (pip install -e .)"
        ) from e
    return attention, cache


class TritonAttentionBackend(AttentionBackend):
    """Decodes (the first num_decodes requests) go through the GQA-packed decode kernel; prefills and
    chunks through the varlen kernel. Both read the whole context from the paged cache."""

    name = "triton"

    def __init__(self) -> None:
        self._attention: ModuleType | None = None
        self._cache: ModuleType | None = None

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
        layer: AttentionLayer,
    ) -> torch.Tensor:
        scale = layer.scale
        if self._attention is None:
            if not query.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
                raise RuntimeError("the triton attention backend runs on CUDA tensors "
                                   "(CPU only under TRITON_INTERPRET=1, for tests)")
            self._attention, self._cache = _load_kernels()
        attention, cache = self._attention, self._cache
        cache.reshape_and_cache(key, value, kv_cache, meta.slot_mapping)

        out = torch.empty_like(query)
        num_decodes, num_reqs = meta.num_decodes, meta.num_reqs
        if num_decodes:
            attention.paged_decode(
                out[:num_decodes], query[:num_decodes], kv_cache,
                meta.block_tables[:num_decodes], meta.seq_lens[:num_decodes], scale,
            )
        if num_reqs > num_decodes:
            attention.paged_prefill(
                out, query, kv_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc, scale,
                first_req=num_decodes, num_reqs=num_reqs - num_decodes,
                max_query_len=max(meta.query_lens_cpu[num_decodes:]),
            )
        return out
