"""The CPU backend: our C++ kernels for decodes and, in bf16 where the CPU has AVX512-BF16, for prefills;
the torch reference for the rest.

Decode attention on CPU is bound by memory traffic. The torch path gathers each request's blocks
into a padded copy and SDPA copies again; the kernel (kernels/npu_serve_kernels/paged_attention/
cpu_decode.h) reads every K/V row of the paged cache once, in place, for all query heads that
share it. Measured per layer (64 decodes, contexts 32-640, SmolLM2 heads, bf16): 0.63 ms against
5.8 ms for the bucketed torch path on 1 thread, 0.36 ms against 3.9 ms on 2
(scripts/bench_cpu_decode.py). If the kernel cannot be built here (no compiler, no ninja), this
backend logs it once and behaves exactly like the torch reference.

Prefills of plain layers (no window, softcap or sinks) in bf16 go to the prefill kernel
(kernels/npu_serve_kernels/paged_attention/cpu_prefill.h; AMX tiles where they run, else VDPBF16PS)
where it runs: torch's flash attention was ~19% of a 512-token prefill step (an AMX Xeon), and 2-3x
slower at lengths off its block sizes; ~16% of the c=32 benchmark on a Zen 5 EPYC without AMX. The
C++ decoder layer calls the same kernel, so both paths give the same bits. fp32 keeps torch's SDPA, whose bits
the exactness tests compare with transformers' generate().
"""

from __future__ import annotations

import torch

from npu_serve.attention.backend import AttentionLayer, AttentionMetadata
from npu_serve.attention.torch_ref import TorchAttentionBackend


class CpuAttentionBackend(TorchAttentionBackend):
    name = "cpu"

    def __init__(self) -> None:
        super().__init__()
        from npu_serve_kernels.paged_attention import cpu as kernel

        self._kernel = kernel if kernel.available() else None

    @property
    def uses_kernel(self) -> bool:
        return self._kernel is not None

    def _prefill(self, q, kv_cache, table, seq_len: int, layer: AttentionLayer,
                 sinks: torch.Tensor | None = None) -> torch.Tensor:
        plain = layer.sliding_window is None and layer.logit_softcap is None and sinks is None
        if self._kernel is not None and plain:
            out = self._kernel.paged_prefill(q.contiguous(), *kv_cache, table, seq_len, layer.scale)
            if out is not None:
                return out
        return super()._prefill(q, kv_cache, table, seq_len, layer, sinks)

    def _forward_decodes(self, query, kv_cache, meta: AttentionMetadata, layer: AttentionLayer,
                         sinks: torch.Tensor | None, out: torch.Tensor) -> None:
        if self._kernel is None or query.device.type != "cpu":
            return super()._forward_decodes(query, kv_cache, meta, layer, sinks, out)
        nd = meta.num_decodes
        key_cache, value_cache = kv_cache
        out[:nd] = self._kernel.paged_decode(query[:nd], key_cache, value_cache, meta.block_tables[:nd],
                                             meta.seq_lens[:nd], layer.scale, layer.sliding_window,
                                             layer.logit_softcap, sinks)
