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
    if "torch" in sys.modules and (wait_policy is not None or threads is not None):
        import torch  # already loaded: only the thread count can still change

        if n is not None:
            torch.set_num_threads(n)


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None
