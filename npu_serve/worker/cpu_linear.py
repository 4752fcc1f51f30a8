"""Decode-sized linears on CPU through our bf16 matrix-vector kernel (npu_serve_kernels.linear).

A decode step multiplies every weight matrix by a handful of rows (one per running request). oneDNN's
bf16 GEMM through torch reads the weights at a fraction of what one core can stream at M = 1..8
(perf-notes.md: ~27 ms of a 32 ms SmolLM2 token in `aten::mm`), so each `nn.Linear` of a bf16 model
on CPU gets a forward that sends inputs of at most `max_rows` rows to the kernel and everything else
(prefill chunks, big batches, other dtypes) to `F.linear` as before. Same contract as `F.linear`
(fp32 sums, one rounding to bf16); only the order of the fp32 sums differs (cpu_gemv.h).

Installed by CpuPlatform.prepare_model; EngineConfig.cpu_gemv_rows chooses `max_rows` (0: off).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def install(model: torch.nn.Module, max_rows: int) -> int:
    """Give every bf16 `nn.Linear` of `model` the small-batch forward; returns how many got it
    (0 when `max_rows` is 0, the kernel cannot be built here, or no linear is bf16)."""
    if max_rows <= 0:
        return 0
    from npu_serve_kernels.linear import cpu as kernel

    if not kernel.available():
        logger.info("bf16 GEMV kernel unavailable on this CPU: linears stay on torch")
        return 0
    max_rows = min(max_rows, kernel.MAX_ROWS)
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.bfloat16 \
                and module.weight.device.type == "cpu" and module.weight.is_contiguous():
            module.forward = _small_batch_forward(module, max_rows, kernel.linear_bf16)
            module._npu_serve_gemv_rows = max_rows  # read by fast_decoder, which routes rows the same way
            count += 1
    logger.info("bf16 GEMV kernel on %d linear layers (inputs of up to %d rows)", count, max_rows)
    return count


def _small_batch_forward(module: torch.nn.Linear, max_rows: int, linear_bf16):
    def forward(x: torch.Tensor) -> torch.Tensor:
        k = x.shape[-1]
        rows = x.numel() // k if k else 0
        if 1 <= rows <= max_rows and x.dtype == torch.bfloat16 and not x.requires_grad:
            x2 = x.reshape(rows, k)
            if x2.stride(1) != 1:
                x2 = x2.contiguous()
            y = linear_bf16(x2, module.weight, module.bias)
            return y.view(*x.shape[:-1], y.shape[-1])
        return F.linear(x, module.weight, module.bias)

    return forward
