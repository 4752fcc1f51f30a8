"""CPU paged-attention decode kernel (`cpu_decode.h`, C++): build on first use, call.

The extension is compiled the first time `available()` or `paged_decode()` runs and cached
(`_cpu_build.py` says where and how). `available()` never raises: if the build fails (no compiler,
no headers) it logs a warning once and returns False, and the caller keeps the torch path.
"""

from __future__ import annotations

import torch

from npu_serve_kernels.cpu_ops import EXT as _EXT


def _load():
    """The compiled extension module; builds it on first call. Raises RuntimeError on build failure."""
    return _EXT.load()


def available() -> bool:
    """True when the kernel is built (building it now if needed). Logs a warning once on failure."""
    return _EXT.available()


def paged_decode(
    q: torch.Tensor,  # [nd, H, D], fp32 / bf16 / fp16
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], q's dtype, contiguous
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, DV], q's dtype, contiguous (DV may differ from D)
    block_tables: torch.Tensor,  # int [nd, max_blocks], padded with 0
    seq_lens: torch.Tensor,  # int [nd]
    scale: float,
    window: int | None = None,  # a query at position L-1 sees keys L-window .. L-1 only
    softcap: float | None = None,  # scores -> softcap * tanh(scores / softcap) before the softmax
    sinks: torch.Tensor | None = None,  # [H] per-head sink logits (softmax denominator only)
) -> torch.Tensor:  # [nd, H, DV], q's dtype
    """Decode attention (one query per request, attending to its seq_len cached tokens, or the last
    `window` of them) over the paged cache, read in place. Query head h uses KV head h // (H // Hkv).
    A request with seq_len 0 gets zeros. Raises RuntimeError on bad shapes/dtypes or block ids out
    of range (blocks wholly before a request's window are never read, nor checked).

    The caches are not copied: pass the layer's `(key_cache, value_cache)` tensors. q, tables,
    lengths and sinks are made contiguous (int32, float32) here, which is free when they already are.
    """
    mod = _load()
    return mod.paged_decode(
        q.contiguous(),
        k_cache,
        v_cache,
        block_tables.to(torch.int32).contiguous(),
        seq_lens.to(torch.int32).contiguous(),
        float(scale),
        int(window or 0),
        float(softcap or 0.0),
        None if sinks is None else sinks.to(torch.float32).contiguous(),
    )


def paged_prefill(
    q: torch.Tensor,  # [n, H, D] bf16, heads contiguous: the request's last n tokens
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D] bf16, contiguous, holding all seq_len keys
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, DV] bf16, contiguous
    block_table: torch.Tensor,  # int [max_blocks]: the request's block ids
    seq_len: int,
    scale: float,
) -> torch.Tensor | None:  # [n, H, DV] bf16, or None where the kernel does not run
    """Causal prefill attention (`cpu_prefill.h`): query i (at position seq_len - n + i) attends to
    keys 0..seq_len - n + i, read from the paged cache in place. Runs only for bf16 on CPUs with
    AVX512-BF16 (on AMX tiles where they run), with head_dim a multiple of 32 and DV of 16, up to 16384
    keys; returns None elsewhere (the caller keeps torch's SDPA). Raises RuntimeError for inputs that
    do not fit together."""
    mod = _load()
    return mod.paged_prefill(q, k_cache, v_cache, block_table.to(torch.int32).contiguous(), int(seq_len),
                             float(scale))
