"""Process settings that must be in place before torch (and its OpenMP runtime) loads.

libgomp reads OMP_WAIT_POLICY and OMP_NUM_THREADS once, when torch is first imported. Its default
spin-wait makes decode up to 50x slower when another process (a client, a test runner, uvicorn's
event loop on the same cores) holds a core, so we default to PASSIVE: about 30% slower on an idle
box, never pathological on a shared one. `NPU_SERVE_OMP_WAIT_POLICY=ACTIVE` opts back in.

torch >= 2.5 also imports every installed device extension at `import torch` (its "torch.backends"
entry points): torch_npu registers one, so a box with a broken CANN fails `import torch` itself, before
any guard of ours, even for `--device cpu`. `TORCH_DEVICE_BACKEND_AUTOLOAD=0` (unless the user set it)
turns that off; npu_serve.device.npu imports torch_npu itself when the NPU is asked for (vllm-ascend's
unit tests run with the same setting).

glibc's malloc hands every block over 128 KiB (its mmap threshold, which adapts only up to the largest
block freed so far) to mmap and returns it on free, so each activation of a prefill step ([2048 tokens,
1536] is 6 MiB in bf16) and each step's logits ([32, 49152] floats, 6 MiB) came back as fresh pages to be
faulted in and zeroed by the kernel: ~12% of a 2048-token prefill step's time in perf (exc_page_fault,
clear_page). `tune_malloc` keeps blocks up to 32 MiB in the heap and the heap from being trimmed below
512 MiB, so freed activations are reused (32 prompts of ~250 tokens: page faults 430k-760k -> 21k-28k,
prefill 6.4-7.6 s -> 4.6 s);
`NPU_SERVE_MALLOC_TUNING=0` or the user's own MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ leave
glibc's defaults alone.

`advise_huge_pages` asks Linux for 2 MiB pages (transparent huge pages, madvise(MADV_HUGEPAGE)) on a
range, for the CPU KV cache: decode attention reads each request's scattered 16-token blocks, and with
4 KiB pages every block is a TLB miss or two (a c=32 decode step of SmolLM2 reads ~230 MB of cache
across 30 layers). Measured on a 2-core Xeon with AMX, THP set to `madvise` (its default on Debian):
the decode kernel over 30 layers' caches 1.06x faster, a c=32 decode step 1.02x (both paired in one
process). Where THP is `never` the advice changes nothing; `NPU_SERVE_HUGE_PAGES=0` skips it.

This module must not import torch. `npu_serve/__init__.py` calls `apply()` first thing; the CLI
calls it again with its flags before anything imports torch.
"""

from __future__ import annotations

import os
import sys

DEFAULT_WAIT_POLICY = "PASSIVE"


def apply(threads: int | None = None, wait_policy: str | None = None) -> None:
    """Set OpenMP threads and wait policy unless the user already set them (explicit args win)."""
    policy = wait_policy or os.environ.get("NPU_SERVE_OMP_WAIT_POLICY") or DEFAULT_WAIT_POLICY
    if wait_policy is not None or "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = policy.upper()
    n = threads or _int_env("NPU_SERVE_THREADS")
    if n is not None:
        os.environ["OMP_NUM_THREADS"] = str(n)
        os.environ["MKL_NUM_THREADS"] = str(n)
    os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
    # Tokenizers' own thread pool fights OpenMP for the same 2 cores and warns after fork.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Never let transformers try to reach a model hub: models come from local paths only.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    tune_malloc()
    if "torch" in sys.modules and (wait_policy is not None or threads is not None):
        import torch  # already loaded: only the thread count can still change

        if n is not None:
            torch.set_num_threads(n)


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


# mallopt's parameter numbers (glibc's malloc.h) and the values tune_malloc sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for it on 64-bit
TRIM_THRESHOLD = 512 << 20
_malloc_tuned = False


MADV_HUGEPAGE = 14  # <asm-generic/mman-common.h>
HUGE_PAGE_BYTES = 2 << 20


def advise_huge_pages(address: int, nbytes: int) -> bool:
    """Ask Linux to back the whole 2 MiB pages inside [address, address + nbytes) with huge pages
    (module docstring: why). Call it before the memory is first written: pages already faulted in stay
    small until the kernel's background collapse gets to them. True when the advice was taken. The mark
    stays on the range: memory of the heap that malloc hands out again later keeps it (harmless)."""
    if sys.platform != "linux" or os.environ.get("NPU_SERVE_HUGE_PAGES", "1") == "0":
        return False
    start = -(-address // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    end = (address + nbytes) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    if end <= start:
        return False
    import ctypes

    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return False
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return madvise(start, end - start, MADV_HUGEPAGE) == 0


def tune_malloc() -> bool:
    """Keep big freed blocks in glibc's heap for reuse (module docstring: why). True when set now or
    before; False where it does not apply (not glibc, opted out, the user's own MALLOC_* settings)."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if os.environ.get("NPU_SERVE_MALLOC_TUNING", "1") == "0" or sys.platform != "linux":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _malloc_tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _malloc_tuned
