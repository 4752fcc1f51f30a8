"""The CPU platform: always available; the reference for every other device."""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Callable

import torch

from npu_serve.device.base import Platform

logger = logging.getLogger(__name__)

# The default model's MLP shape (hidden 576 -> intermediate 1536) at a decode-sized batch.
_BENCH_M, _BENCH_K, _BENCH_N = 32, 576, 1536
_BENCH_REPS = 3
_BENCH_DEADLINE_S = 0.08  # the whole probe stays under ~100 ms, even on a busy box


class CpuPlatform(Platform):
    name = "cpu"
    attention_backend = "cpu"
    default_block_size = 16
    # Prompt chunks of at most ~512 tokens a step: a CPU prefills ~0.6 ms a token (SmolLM2, 2 cores), so
    # a 2048-token step stalls every running decode for ~1.4 s and gives a burst of prompts one shared,
    # late first token. With 512, measured in the server at c=32 (docs/speed-issue12.md, eighth round):
    # TTFT p50 3.3-3.4 s -> 1.1-1.4 s, ITL p99 1.0-1.2 s -> 0.46-0.49 s, output tok/s unchanged
    # (274-275 vs 265-292); at c=8 TTFT p50 1.3-1.5 s -> 0.7-0.9 s.
    default_max_num_batched_tokens = 512
    profiles_memory = False

    @classmethod
    def is_available(cls) -> bool:
        return True

    def default_dtype(self) -> torch.dtype:
        """bfloat16 on CPUs with AVX512-BF16 (npu-serve's linear kernel runs it); elsewhere float32 or
        bfloat16, whichever runs this CPU's matmuls faster (measured once per process).

        Why not always measure: on a Xeon with AVX512-BF16 but no AMX, oneDNN's bf16 matmul timed
        slower than fp32 (0.87 vs 0.70 ms), yet bf16 through our kernel serves SmolLM2 several times
        faster than fp32 (decode reads half the bytes; docs/speed-issue12.md). CPUs without those
        instructions emulate bf16 by converting to fp32 and may be slower in bf16; there a flag check
        would miss oneDNN's actual kernel choice, so we time the real op instead.
        """
        return _fastest_cpu_dtype()

    def mem_get_info(self) -> tuple[int, int]:
        """(MemAvailable, MemTotal) from /proc/meminfo; falls back to sysconf elsewhere."""
        try:
            info = {}
            with open("/proc/meminfo") as f:
                for line in f:
                    key, value = line.split(":", 1)
                    info[key] = int(value.split()[0]) * 1024  # kB
            return info["MemAvailable"], info["MemTotal"]
        except (OSError, KeyError, ValueError):
            page = os.sysconf("SC_PAGE_SIZE")
            return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page

    def prepare_model(self, model: torch.nn.Module, dtype: torch.dtype, config) -> None:
        """bf16 models: linears through our kernel over packed weights (worker/cpu_linear.py)."""
        if dtype == torch.bfloat16:
            from npu_serve.worker import cpu_linear

            cpu_linear.install(model, config.cpu_gemv_rows)

    def fast_decoder(self, model: torch.nn.Module, layers, config):
        """Llama-shaped layers through our C++ layer (worker/fast_decoder.py), unless turned off."""
        if not config.cpu_fast_decoder:
            return None
        from npu_serve.worker import fast_decoder

        return fast_decoder.build(model, layers)

    def greedy_argmax(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Our C++ argmax (kernels/npu_serve_kernels/sampling): torch's compares one element at a
        time, ~2.3 ms a step at 32 rows of a 49k vocabulary. None where the extension cannot build."""
        from npu_serve_kernels.sampling import cpu as kernel

        return kernel.argmax if kernel.available() else None

    def logits_to_float(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Our C++ bf16 -> fp32 copy on the helper pool (decoder/cpu_fused.h `to_float`): torch's took
        ~1.2 ms a c=32 step on its OpenMP threads. None where the extension cannot build."""
        from npu_serve_kernels.sampling import cpu as kernel

        return kernel.to_float if kernel.available() else None

    def describe(self) -> str:
        return f"cpu ({torch.get_num_threads()} threads)"


@functools.cache
def _fastest_cpu_dtype() -> torch.dtype:
    from npu_serve_kernels.linear import cpu as kernel

    if kernel.has_avx512_bf16():
        logger.info("cpu dtype auto: bfloat16 (AVX512-BF16: npu-serve's linear kernel)")
        return torch.bfloat16
    best = {dt: _time_matmul(dt) for dt in (torch.float32, torch.bfloat16)}
    choice = min(best, key=best.get)
    logger.info("cpu dtype auto: float32 %.2f ms, bfloat16 %.2f ms per matmul -> %s",
                best[torch.float32] * 1e3, best[torch.bfloat16] * 1e3, choice)
    return choice


def _time_matmul(dtype: torch.dtype) -> float:
    """Best-of-a-few seconds for one [M x K] @ [K x N] matmul (after one warm-up call)."""
    a = torch.randn(_BENCH_M, _BENCH_K).to(dtype)
    b = torch.randn(_BENCH_K, _BENCH_N).to(dtype)
    torch.mm(a, b)  # warm-up: oneDNN picks and JITs its kernel on the first call
    best = float("inf")
    deadline = time.perf_counter() + _BENCH_DEADLINE_S / 2
    for _ in range(_BENCH_REPS):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
    return best
