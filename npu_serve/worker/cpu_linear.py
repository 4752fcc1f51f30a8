"""Decode-sized linears on CPU through our bf16 kernel over packed weights (npu_serve_kernels.linear).

A decode step multiplies every weight matrix by a handful of rows (one per running request). oneDNN's
bf16 GEMM through torch reads the weights at a fraction of what one core can stream at M = 1..8
(perf-notes.md: ~27 ms of a 32 ms SmolLM2 token in `aten::mm`) and repacks them on every call, so
each `nn.Linear` of a bf16 model on CPU gets a copy of its weight packed for the kernel (once, here:
memory for a second copy of the linear weights) and a forward that sends inputs of at most `max_rows`
rows to the kernel and everything else (prefill chunks, big batches, other dtypes) to `F.linear` as
before. Same contract as `F.linear` (fp32 sums, one rounding to bf16); only the order of the fp32 sums
differs (cpu_gemm.h).

Prefill chunks go to the kernel too: without AMX its FMA tiles ran SmolLM2's linears at 250 rows in
0.63x of oneDNN's time on a Xeon whose VDPBF16PS is half as fast as its FMAs; with AMX its AMX tiles
ran them in 0.35-0.5x of oneDNN's time at 8-256 rows and 0.83-0.98x at 2048 (2-core Xeon with AMX,
2 threads, scripts/bench_cpu_gemv.py). Only where the CPU has AMX and the kernel cannot use it does
oneDNN keep inputs of more than DECODE_ROWS rows.

Installed by CpuPlatform.prepare_model; EngineConfig.cpu_gemv_rows chooses `max_rows` (0: off, None:
the default above).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


ALL_ROWS = 2**62  # "every input size" as a row limit (the C++ Linear compares rows against it)


def install(model: torch.nn.Module, max_rows: int | None) -> int:
    """Give every bf16 `nn.Linear` of `model` the kernel forward for inputs of up to `max_rows` rows
    (None: all of them, or DECODE_ROWS on a CPU whose AMX the kernel cannot use); returns how many got it (0 when `max_rows` is 0, the
    kernel cannot be built here, or no linear is bf16)."""
    if max_rows is not None and max_rows <= 0:
        return 0
    from npu_serve_kernels.linear import cpu as kernel

    if not kernel.available():
        logger.info("bf16 linear kernel unavailable on this CPU: linears stay on torch")
        return 0
    if max_rows is None:
        max_rows = kernel.DECODE_ROWS if kernel.has_amx() and kernel.variant() != "amx" else ALL_ROWS
    count = size = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.bfloat16 \
                and module.weight.device.type == "cpu" and module.weight.is_contiguous():
            packed = kernel.pack(module.weight)
            module.forward = _kernel_forward(module, max_rows, packed)
            # Read by fast_decoder, whose C++ Linear routes rows the same way to the same copy.
            module._npu_serve_gemv_rows = max_rows
            module._npu_serve_packed = packed
            count += 1
            size += packed.data.numel() * packed.data.element_size()
    if count:
        logger.info("bf16 linear kernel (%s tiles) on %d linear layers (inputs of %s), %.0f MiB of packed weights",
                    kernel.variant(), count, "every size" if max_rows >= ALL_ROWS else f"up to {max_rows} rows",
                    size / 2**20)
    return count


def _kernel_forward(module: torch.nn.Linear, max_rows: int, packed):
    def forward(x: torch.Tensor) -> torch.Tensor:
        k = x.shape[-1]
        rows = x.numel() // k if k else 0
        if 1 <= rows <= max_rows and x.dtype == torch.bfloat16 and not x.requires_grad:
            x2 = x.reshape(rows, k)
            if x2.stride(1) != 1:
                x2 = x2.contiguous()
            y = packed(x2, module.bias)
            return y.view(*x.shape[:-1], y.shape[-1])
        return F.linear(x, module.weight, module.bias)

    return forward
