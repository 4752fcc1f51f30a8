"""Device platforms, resolved by name: `resolve_platform("auto" | "cpu" | "cuda[:i]" | "npu[:i]")`.

"auto" picks npu, then cuda, then cpu, skipping (silently) any that is not usable here. Naming a
device explicitly raises DeviceUnavailable with the reason when it cannot be used.

A process that resolves to a CPU or CUDA platform keeps torch_npu out for good (`keep_torch_npu_out`):
transformers imports an installed torch_npu on its own (`is_torch_npu_available`, reached by
`from transformers import AttentionInterface`), so a broken CANN would crash a `--device cpu` engine
and a working one would patch torch for nothing. So the engine builder resolves the platform before
anything imports transformers.
"""

from __future__ import annotations

import torch

from npu_serve.device.base import Platform
from npu_serve.device.cpu import CpuPlatform
from npu_serve.device.cuda import CudaPlatform
from npu_serve.device.npu import NpuPlatform, keep_torch_npu_out
from npu_serve.errors import DeviceUnavailable, InvalidParameter

__all__ = ["Platform", "CpuPlatform", "CudaPlatform", "NpuPlatform", "resolve_platform", "resolve_dtype"]

_PLATFORMS: dict[str, type[Platform]] = {"npu": NpuPlatform, "cuda": CudaPlatform, "cpu": CpuPlatform}
_AUTO_ORDER = ("npu", "cuda", "cpu")

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_platform(device: str = "auto") -> Platform:
    platform = _resolve(device)
    if platform.name != "npu":
        keep_torch_npu_out()
    return platform


def _resolve(device: str) -> Platform:
    name, _, index_text = device.strip().lower().partition(":")
    if name == "auto" and not index_text:
        for candidate in _AUTO_ORDER:
            if _PLATFORMS[candidate].is_available():
                return _PLATFORMS[candidate]()
    cls = _PLATFORMS.get(name)
    if cls is None or (index_text and not index_text.isdigit()) or (name == "cpu" and index_text):
        raise InvalidParameter("device", f"unknown device {device!r}; expected auto, cpu, cuda[:N] or npu[:N].")
    index = int(index_text) if index_text else None
    if cls is CudaPlatform and not torch.cuda.is_available():
        raise DeviceUnavailable("CUDA requested but not available: this torch "
                                f"({torch.__version__}) has no CUDA support or no GPU is visible.")
    if cls is CudaPlatform and index is not None and index >= torch.cuda.device_count():
        raise DeviceUnavailable(f"{device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist.")
    return cls(index)  # NpuPlatform raises DeviceUnavailable itself, with the reason


def resolve_dtype(name: str | torch.dtype, platform: Platform) -> torch.dtype:
    """Map `--dtype` to a torch dtype; "auto" asks the platform (bf16 on accelerators, measured on cpu)."""
    if isinstance(name, torch.dtype):
        return name
    key = name.strip().lower()
    if key == "auto":
        return platform.default_dtype()
    if key not in _DTYPES:
        raise InvalidParameter("dtype", f"unknown dtype {name!r}; expected auto, float32 (fp32), "
                               "bfloat16 (bf16) or float16 (fp16).")
    return _DTYPES[key]
