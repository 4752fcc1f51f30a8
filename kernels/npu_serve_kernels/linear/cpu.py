"""CPU bf16 linear over a packed weight (`cpu_gemm.h`, AVX512-BF16, AMX where the CPU has it, C++):
build on first use, pack, call.

`available()` is True only where the extension builds and the CPU has AVX512-BF16; elsewhere the
caller keeps `torch.nn.functional.linear`. The reference is `F.linear` in float32 (the test).
"""

from __future__ import annotations

import torch

from npu_serve_kernels._cpu_build import cpu_flags
from npu_serve_kernels.cpu_ops import EXT as _EXT

# Where the CPU has AMX but the kernel cannot use it (built without it, or Linux refused the tiles), rows
# up to this many go to the AVX512 tiles and larger inputs to oneDNN's AMX: measured on a 2-core Xeon with
# AMX (SmolLM2's linears, 2 threads), oneDNN caught up with the FMA tiles at ~24 rows.
DECODE_ROWS = 16


def available() -> bool:
    """True when the kernel is built (building it now if needed) and this CPU has AVX512-BF16."""
    return _EXT.available() and bool(_EXT.load().gemm_available())


def has_amx() -> bool:
    """Whether this CPU offers AMX-BF16 (a flag check: builds nothing)."""
    return "amx_bf16" in cpu_flags()


def amx_available() -> bool:
    """Whether the kernel runs AMX tiles here (built with them, and Linux lets this process use them)."""
    return available() and bool(_EXT.load().gemm_amx_available())


def has_avx512_bf16() -> bool:
    """Whether this CPU has the instructions the kernel needs (a flag check: builds nothing)."""
    return {"avx512f", "avx512bw", "avx512_bf16"} <= cpu_flags()


def pack(weight: torch.Tensor):
    """A packed copy of a bf16 `weight` [N, K] (the extension's PackedWeight): called with bf16 `x`
    [M, K] (rows contiguous) and an optional bf16 `bias` [N], it returns `x @ weight.T + bias` with
    fp32 sums and one rounding to bf16. Raises RuntimeError for anything else."""
    return _EXT.load().PackedWeight(weight)


def linear_many(x: torch.Tensor, weights: list, biases: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """`[w(x, b) for w, b in zip(weights, biases)]` for 1 to 3 packed weights (`pack`) of x's K inputs, the
    same bits, computed as one task list where the AMX tiles run (cpu_gemm.h: linear_many)."""
    return list(_EXT.load().linear_many(x, weights, biases))


def variant() -> str:
    """Which tiles the kernel runs here: "dot" (VDPBF16PS), "fma" (fp32 FMAs over widened weights) or
    "amx" (TDPBF16PS), chosen by timing them on first use. dot and fma give the same bits; amx sums in
    its own order and, once chosen, runs every row count (cpu_gemm.h)."""
    return str(_EXT.load().gemm_variant())


def set_variant(name: str) -> None:
    """Force "dot", "fma" or "amx" (tests, benchmarks); RuntimeError for "amx" where it cannot run."""
    _EXT.load().gemm_set_variant(name)
