"""CPU paged-attention decode kernel (`cpu_decode.cpp`, C++/OpenMP): build on first use, call.

The extension is compiled lazily with `torch.utils.cpp_extension.load` the first time `available()`
or `paged_decode()` runs, and cached in torch's extension dir (`TORCH_EXTENSIONS_DIR`, default
`~/.cache/torch_extensions`), so later processes only load the .so. It is built with
`-march=native`; the module name carries a hash of this CPU's feature flags so that a cache dir
shared between different machines never hands one a binary with instructions it lacks.

`available()` never raises: if the build fails (no compiler, no headers) it logs a warning once and
returns False, and the caller keeps the torch path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import threading

import torch

logger = logging.getLogger(__name__)

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_decode.cpp")
# IEEE semantics on purpose: no -ffast-math (the kernel is written so that GCC vectorises anyway).
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17"]

_lock = threading.Lock()
_module = None
_failed: str | None = None


def _cpu_tag() -> str:
    """Short hash of the CPU's feature flags (and the machine type), part of the module name."""
    flags = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags += line
                    break
    except OSError:
        pass
    return hashlib.sha1(flags.encode()).hexdigest()[:10]


def _ensure_ninja_on_path() -> None:
    """torch's `load` runs `ninja` from PATH; the pip `ninja` package's binary sits in the venv's
    bin dir, which is not on PATH when the venv's python is run without activating it."""
    if shutil.which("ninja"):
        return
    try:
        import ninja  # type: ignore[import-not-found]
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _load():
    """The compiled extension module; builds it on first call. Raises on build failure."""
    global _module, _failed
    with _lock:
        if _module is not None:
            return _module
        if _failed is not None:
            raise RuntimeError(_failed)
        try:
            from torch.utils.cpp_extension import load

            _ensure_ninja_on_path()
            _module = load(
                name=f"npu_serve_cpu_decode_{_cpu_tag()}",
                sources=[_SOURCE],
                extra_cflags=_CFLAGS,
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
        except Exception as exc:  # any build/load failure means "use the torch path"
            _failed = f"CPU paged-decode kernel unavailable: {type(exc).__name__}: {exc}"
            raise RuntimeError(_failed) from exc
        return _module


def available() -> bool:
    """True when the kernel is built (building it now if needed). Logs a warning once on failure."""
    if _module is not None:
        return True
    if _failed is not None:
        return False
    try:
        _load()
        return True
    except RuntimeError:
        logger.warning("%s; falling back to the torch decode path", _failed)
        return False


def paged_decode(
    q: torch.Tensor,  # [nd, H, D], fp32 / bf16 / fp16
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], q's dtype, contiguous
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, DV], q's dtype, contiguous (DV may differ from D)
    block_tables: torch.Tensor,  # int [nd, max_blocks], padded with 0
    seq_lens: torch.Tensor,  # int [nd]
    scale: float,
    window: int | None = None,  # a query at position L-1 sees keys L-window .. L-1 only
    softcap: float | None = None,  # scores -> softcap * tanh(scores / softcap) before the softmax
    sinks: torch.Tensor | None = None,  # [H] per-head sink logits (softmax denominator only)
) -> torch.Tensor:  # [nd, H, DV], q's dtype
    """Decode attention (one query per request, attending to its seq_len cached tokens, or the last
    `window` of them) over the paged cache, read in place. Query head h uses KV head h // (H // Hkv).
    A request with seq_len 0 gets zeros. Raises RuntimeError on bad shapes/dtypes or block ids out
    of range (blocks wholly before a request's window are never read, nor checked).

    The caches are not copied: pass the layer's `(key_cache, value_cache)` tensors. q, tables,
    lengths and sinks are made contiguous (int32, float32) here, which is free when they already are.
    """
    mod = _load()
    return mod.paged_decode(
        q.contiguous(),
        k_cache,
        v_cache,
        block_tables.to(torch.int32).contiguous(),
        seq_lens.to(torch.int32).contiguous(),
        float(scale),
        int(window or 0),
        float(softcap or 0.0),
        None if sinks is None else sinks.to(torch.float32).contiguous(),
    )
