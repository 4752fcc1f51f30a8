"""CPU bf16 linear over a packed weight (`cpu_gemm.h`, AVX512-BF16, C++): build on first use, pack, call.

`available()` is True only where the extension builds and the CPU has AVX512-BF16; elsewhere the
caller keeps `torch.nn.functional.linear`. The reference is `F.linear` in float32 (the test).
"""

from __future__ import annotations

import torch

from npu_serve_kernels.cpu_ops import EXT as _EXT

# Decode batches: the rows npu-serve sends to the kernel by default where oneDNN has AMX for larger inputs.
DECODE_ROWS = 32


def available() -> bool:
    """True when the kernel is built (building it now if needed) and this CPU has AVX512-BF16."""
    return _EXT.available() and bool(_EXT.load().gemm_available())


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_amx() -> bool:
    """Whether this CPU offers AMX-BF16 (oneDNN's tiles then beat the kernel on prefill-sized inputs)."""
    return "amx_bf16" in _cpu_flags()


def has_avx512_bf16() -> bool:
    """Whether this CPU has the instructions the kernel needs (a flag check: builds nothing)."""
    return {"avx512f", "avx512bw", "avx512_bf16"} <= _cpu_flags()


def pack(weight: torch.Tensor):
    """A packed copy of a bf16 `weight` [N, K] (the extension's PackedWeight): called with bf16 `x`
    [M, K] (rows contiguous) and an optional bf16 `bias` [N], it returns `x @ weight.T + bias` with
    fp32 sums and one rounding to bf16. Raises RuntimeError for anything else."""
    return _EXT.load().PackedWeight(weight)


def variant() -> str:
    """Which tiles the kernel runs here: "dot" (VDPBF16PS) or "fma" (fp32 FMAs over widened weights),
    chosen by timing both on first use. They give the same bits (cpu_gemm.h); only speed differs."""
    return str(_EXT.load().gemm_variant())


def set_variant(name: str) -> None:
    """Force "dot" or "fma" (tests, benchmarks)."""
    _EXT.load().gemm_set_variant(name)
