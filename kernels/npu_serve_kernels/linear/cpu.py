"""CPU bf16 linear for 1-32 rows (`cpu_gemv.h`, AVX512-BF16, C++): build on first use, call.

`available()` is True only where the extension builds and the CPU has AVX512-BF16; elsewhere the
caller keeps `torch.nn.functional.linear`. The reference is `F.linear` in float32 (the test).
"""

from __future__ import annotations

import torch

from npu_serve_kernels.cpu_ops import EXT as _EXT
MAX_ROWS = 32


def available() -> bool:
    """True when the kernel is built (building it now if needed) and this CPU has AVX512-BF16."""
    return _EXT.available() and bool(_EXT.load().gemv_available())


def linear_bf16(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x @ weight.T + bias` for bf16 `x` [M, K] (1 <= M <= MAX_ROWS, rows contiguous), contiguous bf16
    `weight` [N, K] and `bias` [N]: fp32 sums, one rounding to bf16. Raises RuntimeError otherwise."""
    return _EXT.load().linear_bf16(x, weight, bias)
