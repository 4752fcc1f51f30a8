"""Greedy argmax over fp32 or bf16 CPU logits rows (`cpu_argmax.h`, C++), and the logits' fp32 copy
for everything else the sampler does (`to_float`, ../decoder/cpu_fused.h): build on first use, call.

`argmax(logits)` equals `logits.argmax(dim=-1)` (the first index of each row's maximum, NaN counting
as the maximum) and takes torch's path for anything the kernel does not take (another dtype or
device, non-contiguous rows, an empty vocabulary), so it is safe to call everywhere.
"""

from __future__ import annotations

import torch

from npu_serve_kernels.cpu_ops import EXT as _EXT


def available() -> bool:
    """True when the extension is built (building it now if needed)."""
    return _EXT.available()


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """int64 [N]: `logits.argmax(dim=-1)` for logits [N, V]."""
    if (logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.bfloat16) and logits.dim() == 2
            and logits.shape[1] > 0 and logits.stride(1) == 1 and available()):
        return _EXT.load().argmax_rows(logits)
    return logits.argmax(dim=-1)


def to_float(logits: torch.Tensor) -> torch.Tensor:
    """`logits.float()` with the same bits; bf16 on our helper pool (torch's copy of a c=32 step's
    32 x 49152 logits took ~1.2 ms on its OpenMP threads)."""
    if logits.dtype == torch.float32:
        return logits
    if logits.device.type == "cpu" and available():
        return _EXT.load().to_float(logits)
    return logits.float()
