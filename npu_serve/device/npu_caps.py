"""What the installed Ascend stack can do: probed once, at NPU platform start, into `NpuCapabilities`.

Every Ascend op npu-serve calls is chosen from this object, and every stack it cannot run on is
refused here, with one line naming the fix, before a weight is loaded. The facts and where they were
read (see also shared/ascend-notes.md):

- `torch.version.cann` (set by torch_npu) and `torch_npu.__version__`. The mixed-batch FIA call (TND,
  block_table, sparse_mode=3, 2048x2048 int8 mask) came to vllm-ascend behind a CANN 8.3 gate
  (commit f1f2c8f5e5, `torch.version.cann.startswith("8.3")`); Ascend/pytorch pairs CANN 8.3.RC1 with
  torch-npu 2.7.1 first. Older stacks are refused (notes item 2).
- `npu_scatter_pa_kv_cache`: absent before op-plugin 7.2.0 (CANN 8.3); its `cache_mode` keyword
  (`"Norm"` = the ND cache layout) exists from op-plugin 26.0.0 (CANN 9.0) on, and before that the op
  writes the NZ layout only (op_plugin/config/op_plugin_functions.yaml on branches 7.2.0, 7.3.0,
  26.0.0). We read the op's own schema instead of trusting version numbers (notes item 1).
- ATB ops (`_npu_reshape_and_cache`, `_npu_paged_attention`, `_npu_matmul_add_fp32`) live in
  libop_plugin_atb.so, which needs NNAL's libatb.so; op-plugin's op_plugin/python/atb/_atb_ops.py
  (branch 7.2.0) stores the load error and raises it at the first ATB call, mid-forward. vllm-ascend
  registers them at worker start (`_register_atb_extensions()`, releases/v0.13.0
  vllm_ascend/worker/worker.py); the platform does the same and records the outcome here (item 5).
- SoC: `torch_npu.npu.get_soc_version()`, ranges from vllm-ascend vllm_ascend/device/hardware.py
  (`device_type_from_runtime_soc`): 220-225 A2 (910B), 250-255 A3, 200-205 310P, 260 A5 (item 9).

This module never imports torch_npu: device/npu.py hands it the imported module.
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass
from types import ModuleType

import torch

MIN_CANN = (8, 3)  # 8.3.RC1 and later
MIN_TORCH_NPU = (2, 7, 1)
# Pairs vllm-ascend builds its images with (shared/ascend-notes.md, "Container images").
KNOWN_GOOD_PAIRS = "CANN 8.5.1 with torch 2.8.0 + torch-npu 2.8.0.post2, or CANN 9.1.0 with torch 2.10.0 + torch-npu 2.10.0.post4"
SET_ENV = "source /usr/local/Ascend/ascend-toolkit/set_env.sh && source /usr/local/Ascend/nnal/atb/set_env.sh"

WRITE_SCATTER = "scatter"  # npu_scatter_pa_kv_cache(..., cache_mode="Norm")
WRITE_ATB = "atb"  # ATB _npu_reshape_and_cache
DECODE_FIA = "fia"  # npu_fused_infer_attention_score, as every other step
DECODE_ATB = "atb"  # ATB _npu_paged_attention
DECODE_OP_ENV = "NPU_SERVE_NPU_DECODE_OP"


def requested_decode_op() -> str:
    """The op pure-decode steps use: "fia" (default) or "atb" (`NPU_SERVE_NPU_DECODE_OP=atb`).

    FIA by default because vllm-ascend >= 0.13 decodes through FIA in eager mode and calls ATB's
    `_npu_paged_attention` only inside captured full-decode graphs (releases/v0.13.0
    vllm_ascend/attention/utils.py `using_paged_attention`); ATB stays available where its limits allow.
    """
    value = (os.environ.get(DECODE_OP_ENV) or DECODE_FIA).strip().lower()
    if value not in (DECODE_FIA, DECODE_ATB):
        from npu_serve.errors import InvalidParameter

        raise InvalidParameter(None, f"{DECODE_OP_ENV}={value!r}: expected {DECODE_FIA!r} or {DECODE_ATB!r}")
    return value


@dataclass(frozen=True)
class NpuCapabilities:
    """One Ascend software stack and chip, as probed. Frozen: probed once, then only read."""

    torch_version: str
    torch_npu_version: str
    cann_version: str | None  # torch.version.cann, e.g. "8.3.RC1", "8.5.1", "9.1.0"; None if unset
    soc_version: int | None  # torch_npu.npu.get_soc_version()
    has_scatter_pa_kv_cache: bool
    scatter_has_cache_mode: bool  # the op's schema has `cache_mode` (CANN >= 9.0)
    has_fused_infer_attention: bool  # npu_fused_infer_attention_score
    atb_error: str | None  # None: ATB ops registered (NNAL found); else why not
    schema_source: str = "none"  # where the scatter op's arguments were read: "torch.ops", "signature", "none"

    @property
    def has_atb(self) -> bool:
        return self.atb_error is None

    @property
    def soc_family(self) -> str:
        return soc_family(self.soc_version)

    @property
    def write_op(self) -> str:
        """The KV write op for this stack. Scatter only where its schema has `cache_mode`, so that "Norm"
        (our ND cache) can be asked for; ATB everywhere else, as vllm-ascend writes A2/A3 caches on every
        CANN 8.x release (releases/v0.13.0 vllm_ascend/attention/attention_v1.py `reshape_and_cache`; main
        moved to scatter + "Norm" in commit af672dd6e8, on CANN 9.x)."""
        return WRITE_SCATTER if self.has_scatter_pa_kv_cache and self.scatter_has_cache_mode else WRITE_ATB

    def problems(self, decode_op: str = DECODE_FIA) -> list[str]:
        """Why npu-serve cannot run on this stack with this decode op: one line each, naming the fix.
        Empty when it can."""
        found = []
        tnpu = version_tuple(self.torch_npu_version)
        if tnpu is None or tnpu < MIN_TORCH_NPU:
            found.append(f"torch-npu {self.torch_npu_version} is older than 2.7.1, the first release with the fused "
                         f"attention calls npu-serve makes; install a matching pair ({KNOWN_GOOD_PAIRS}).")
        cann = cann_release(self.cann_version)
        if cann is None:
            found.append(f"torch.version.cann is {self.cann_version!r}: torch_npu found no CANN toolkit; run `{SET_ENV}` "
                         "before starting, or install CANN >= 8.3.RC1.")
        elif cann < MIN_CANN:
            found.append(f"CANN {self.cann_version} is older than 8.3.RC1, the first release whose "
                         "npu_fused_infer_attention_score takes a paged KV cache in TND layout with sparse_mode=3 "
                         f"(vllm-ascend gates it on 8.3); upgrade CANN and torch-npu ({KNOWN_GOOD_PAIRS}).")
        if not self.has_fused_infer_attention:
            found.append(f"torch-npu {self.torch_npu_version} has no npu_fused_infer_attention_score; install "
                         f"torch-npu >= 2.7.1 on CANN >= 8.3.RC1 ({KNOWN_GOOD_PAIRS}).")
        found += self._soc_problems()
        needs_atb = [what for what, uses in (("the KV cache write (_npu_reshape_and_cache)", self.write_op == WRITE_ATB),
                                             ("decode (_npu_paged_attention)", decode_op == DECODE_ATB)) if uses]
        if needs_atb and not self.has_atb:
            found.append(f"the ATB ops this stack needs for {' and '.join(needs_atb)} could not be loaded "
                         f"({self.atb_error}); install NNAL and run `{SET_ENV}` before starting.")
        return found

    def _soc_problems(self) -> list[str]:
        family = self.soc_family
        if family == "310P":
            return [f"SoC {self.soc_version} is an Atlas 300I/310P: it has no bfloat16 and needs its own fp16/NZ "
                    "attention path (vllm-ascend keeps a separate 310P backend), which npu-serve does not have; "
                    "serve on an Atlas A2 (910B) or A3."]
        if family == "A5" and self.write_op == WRITE_ATB:
            # vllm-ascend never calls ATB on A5 (worker.py skips _register_atb_extensions there).
            return [f"SoC {self.soc_version} is an Ascend 950 (A5): npu-serve writes its KV cache there only with "
                    "npu_scatter_pa_kv_cache(cache_mode=\"Norm\"), which this stack lacks; install CANN >= 9.0 with "
                    "its torch-npu."]
        if family == "unknown":
            return [f"SoC version {self.soc_version} is none of Atlas A2 (220-225), A3 (250-255) or A5 (260); "
                    "npu-serve's Ascend path is written for Atlas A2/A3 (910B/910C): serve there, or with --device cpu."]
        return []

    def describe(self) -> str:
        """One line for the startup log and the hardware probe."""
        atb = "ATB ok" if self.has_atb else f"ATB missing ({self.atb_error})"
        return (f"CANN {self.cann_version}, torch {self.torch_version}, torch-npu {self.torch_npu_version}, "
                f"SoC {self.soc_version} ({self.soc_family}), write op {self.write_op} "
                f"(scatter {'with' if self.scatter_has_cache_mode else 'without'} cache_mode, read from "
                f"{self.schema_source}), {atb}")


def soc_family(soc: int | None) -> str:
    """vllm-ascend vllm_ascend/device/hardware.py, device_type_from_runtime_soc."""
    if soc is None:
        return "unknown"
    if 220 <= soc <= 225:
        return "A2"
    if 250 <= soc <= 255:
        return "A3"
    if 200 <= soc <= 205:
        return "310P"
    if soc == 260:
        return "A5"
    return "unknown"


def version_tuple(text: str | None) -> tuple[int, int, int] | None:
    """(major, minor, patch) of "2.8.0.post2", "2.7.1.dev20250724", "2.10.0+gitabc"; None if unparsable."""
    m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


def cann_release(text: str | None) -> tuple[int, int] | None:
    """(major, minor) of a CANN version: "8.3.RC1" -> (8, 3), "9.1.0" -> (9, 1); None if unset or unparsable.
    Every 8.3 release candidate counts as 8.3 (the minimum is 8.3.RC1, the first one)."""
    v = version_tuple(text)
    return (v[0], v[1]) if v else None


def probe(torch_npu: ModuleType, atb_error: str | None) -> NpuCapabilities:
    """Read the stack's facts from an imported torch_npu. `atb_error` is the outcome of registering the
    ATB ops (device/npu.py does it, as the one place that imports torch_npu's modules)."""
    scatter = hasattr(torch_npu, "npu_scatter_pa_kv_cache")
    args, source = op_arguments(torch_npu, "npu_scatter_pa_kv_cache") if scatter else (None, "none")
    get_soc = getattr(getattr(torch_npu, "npu", None), "get_soc_version", None)
    return NpuCapabilities(
        torch_version=torch.__version__,
        torch_npu_version=str(getattr(torch_npu, "__version__", "unknown")),
        cann_version=getattr(torch.version, "cann", None),
        soc_version=int(get_soc()) if get_soc is not None else None,
        has_scatter_pa_kv_cache=scatter,
        scatter_has_cache_mode=bool(args) and "cache_mode" in args,
        has_fused_infer_attention=hasattr(torch_npu, "npu_fused_infer_attention_score"),
        atb_error=atb_error,
        schema_source=source,
    )


def op_arguments(torch_npu: ModuleType, name: str, namespace=None) -> tuple[frozenset[str] | None, str]:
    """The argument names of op `name` and where they were read.

    First the registered schema (`torch.ops.npu.<name>`, every overload: op-plugin registers its ops in
    the "npu" namespace from op_plugin_functions.yaml), which is what the op really accepts; then the
    Python signature of `torch_npu.<name>`. (None, "none") when neither can be read: callers then take
    the safe choice (no `cache_mode`, so the ATB write).
    """
    ns = namespace if namespace is not None else getattr(torch.ops, "npu")
    try:
        packet = getattr(ns, name)
        names = set()
        for overload in packet.overloads():
            names.update(a.name for a in getattr(packet, overload)._schema.arguments)
        if names:
            return frozenset(names), "torch.ops"
    except (AttributeError, RuntimeError):
        pass
    try:
        return frozenset(inspect.signature(getattr(torch_npu, name)).parameters), "signature"
    except (AttributeError, TypeError, ValueError):
        return None, "none"
