"""Greedy argmax over fp32 CPU logits rows (`cpu_argmax.h`, C++): build on first use, call.

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
    if (logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2
            and logits.shape[1] > 0 and logits.stride(1) == 1 and available()):
        return _EXT.load().argmax_rows(logits)
    return logits.argmax(dim=-1)
