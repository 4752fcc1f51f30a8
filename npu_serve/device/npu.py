"""The Ascend NPU platform (torch.npu.*, provided by torch_npu over CANN).

`import_torch_npu()` is the ONE place in npu-serve that imports torch_npu (and, below, its ATB module).
It is lazy (nothing imports torch_npu at module top) because the import loads the CANN runtime, which
is missing on every non-Ascend machine, and because torch_npu patches torch on import. torch's own
device-backend autoload is switched off in runtime_env (TORCH_DEVICE_BACKEND_AUTOLOAD=0) so that a
broken CANN cannot break `import torch` for `--device cpu`. We use `torch.npu.*` rather than
`torch.accelerator`, whose NPU coverage depends on the torch_npu version.

Platform start, in order (each step as vllm-ascend's worker does it, releases/v0.13.0
vllm_ascend/worker/worker.py, unless noted):
1. `PYTORCH_NPU_ALLOC_CONF=expandable_segments:True` unless the user set it (vllm-ascend main
   vllm_ascend/platform.py `_set_pytorch_npu_alloc_env`), before torch_npu's allocator starts.
2. import torch_npu; `torch.npu.set_device(index)` before any allocation (`_init_device`).
   `ASCEND_RT_VISIBLE_DEVICES` chooses which chips the process sees (vllm_ascend/platform.py
   `device_control_env_var`), so index 0 is the first visible one.
3. register the ATB ops (`_register_atb_extensions()`), probe the stack into `NpuCapabilities`, and
   refuse what npu-serve cannot run on (npu_caps.py), each with one line naming the fix.
4. `warm_up()`, called by the engine builder once the model passed its checks and before weights
   load: one ATB matmul (`_warm_up_atb`), so a missing NNAL fails here and not in the first forward.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from types import ModuleType

import torch

from npu_serve.device.base import Platform
from npu_serve.device.npu_caps import (
    DECODE_ATB, SET_ENV, WRITE_ATB, NpuCapabilities, probe, requested_decode_op,
)
from npu_serve.errors import DeviceUnavailable

logger = logging.getLogger(__name__)

ALLOC_CONF_ENV = "PYTORCH_NPU_ALLOC_CONF"
_current_caps: NpuCapabilities | None = None
_kept_out = False


def keep_torch_npu_out() -> None:
    """This process runs a CPU/CUDA engine: make `import torch_npu` (and find_spec) fail from now on, for
    everyone, unless it is already loaded. A None entry in sys.modules is how Python spells that."""
    global _kept_out
    if "torch_npu" not in sys.modules:
        sys.modules["torch_npu"] = None
        _kept_out = True


def import_torch_npu() -> ModuleType:
    """Import torch_npu, or raise DeviceUnavailable saying which of the usual three things is wrong."""
    os.environ.setdefault(ALLOC_CONF_ENV, "expandable_segments:True")
    try:
        return importlib.import_module("torch_npu")
    except ModuleNotFoundError as e:
        if _kept_out and sys.modules.get("torch_npu", 0) is None:
            raise DeviceUnavailable("NPU requested in a process that already runs a CPU/CUDA engine; torch_npu "
                                    "was kept out of it: start a new process with --device npu.") from e
        if e.name == "torch_npu":
            raise DeviceUnavailable(
                "NPU requested but torch-npu is not installed; install the torch-npu build that "
                f"matches torch {torch.__version__} (pip install 'npu-serve[npu]') on a machine with CANN."
            ) from e
        raise DeviceUnavailable(_broken_message(e)) from e
    except (ImportError, OSError, RuntimeError) as e:
        raise DeviceUnavailable(_broken_message(e)) from e


def register_atb_ops() -> str | None:
    """Register torch_npu's ATB ops now (op-plugin op_plugin/python/atb/_atb_ops.py, branch 7.2.0:
    `_register_atb_extensions` re-raises the error of loading libop_plugin_atb.so, i.e. NNAL's libatb.so).
    None when they are usable, else the reason."""
    try:
        atb = importlib.import_module("torch_npu.op_plugin.atb._atb_ops")
        atb._register_atb_extensions()
    except (ImportError, OSError, RuntimeError, AttributeError) as e:
        return f"{type(e).__name__}: {e}".strip()
    return None


def current_capabilities() -> NpuCapabilities:
    """The capabilities probed by the last NPU platform start in this process."""
    if _current_caps is None:
        raise DeviceUnavailable("the NPU attention backend needs the NPU platform started first (--device npu)")
    return _current_caps


def _broken_message(e: BaseException) -> str:
    text = str(e)
    if isinstance(e, OSError) or ".so" in text or "Ascend" in text or "libascend" in text:
        return ("torch_npu is installed but the Ascend CANN runtime could not be loaded "
                f"({type(e).__name__}: {text}); run `{SET_ENV}` (or your CANN install's set_env.sh) and check "
                "the NPU driver (npu-smi info).")
    return (f"torch_npu failed to import ({type(e).__name__}: {text}); this usually means torch-npu was "
            f"built for a different torch than the installed {torch.__version__}; install matching versions.")


class NpuPlatform(Platform):
    name = "npu"
    attention_backend = "npu"
    # Ascend's fused attention with a block table (FIA) needs a KV block size that is a multiple of 128
    # (op-plugin 26.0.0 docs, npu_fused_infer_attention_score, page attention constraints), and
    # vllm-ascend's backend supports 128 only (`get_supported_block_size`).
    default_block_size = 128
    # HCCL, registered with torch.distributed by torch_npu (imported in __init__ above).
    dist_backend = "hccl"
    visible_devices_env = "ASCEND_RT_VISIBLE_DEVICES"

    def __init__(self, index: int | None = None):
        global _current_caps
        npu = import_torch_npu()  # registers torch.npu; raises DeviceUnavailable with the reason
        if not torch.npu.is_available():
            raise DeviceUnavailable("torch_npu imported but reports no NPU device (check npu-smi info "
                                    "and ASCEND_RT_VISIBLE_DEVICES).")
        super().__init__(0 if index is None else index)
        if self.index >= torch.npu.device_count():
            raise DeviceUnavailable(f"npu:{self.index} requested but only {torch.npu.device_count()} NPU(s) are "
                                    "visible (ASCEND_RT_VISIBLE_DEVICES).")
        torch.npu.set_device(self.index)
        self.decode_op = requested_decode_op()
        self.capabilities = probe(npu, register_atb_ops())
        problems = self.capabilities.problems(self.decode_op)
        if problems:
            raise DeviceUnavailable("\n".join(problems))
        _current_caps = self.capabilities
        self._npu = npu
        logger.info("npu: %s", self.capabilities.describe())

    @classmethod
    def is_available(cls) -> bool:
        try:
            import_torch_npu()
            return bool(torch.npu.is_available())
        except DeviceUnavailable as e:
            cause = e.__cause__
            if not (isinstance(cause, ModuleNotFoundError) and cause.name == "torch_npu"):
                # Installed but broken: "auto" moves on, but the user likely meant to use the NPU.
                logger.warning("skipping npu: %s", e)
            return False
        except RuntimeError as e:  # torch.npu.is_available() itself failing (driver trouble)
            logger.warning("skipping npu: %s", e)
            return False

    def device_count(self) -> int:
        return torch.npu.device_count()

    def set_device(self) -> None:
        # __init__ set it already; a tensor-parallel rank sets it again right before it joins HCCL
        # (vllm_ascend/worker/worker.py `_init_device`; ascend-notes.md, "For tensor parallel on Ascend").
        torch.npu.set_device(self.torch_device)

    def warm_up(self) -> None:
        """One ATB matmul when this stack's ops use ATB (vllm-ascend `_warm_up_atb`: without it "the first
        operation (ReshapeAndCache) may cause performance degradation"), so NNAL trouble fails at start."""
        caps = self.capabilities
        if caps.write_op != WRITE_ATB and self.decode_op != DECODE_ATB:
            return
        try:
            x = torch.rand((2, 4), dtype=torch.float16, device=self.torch_device)
            weight = torch.rand((2, 4), dtype=torch.float16, device=self.torch_device)
            c = torch.rand((4, 4), dtype=torch.float32, device=self.torch_device)
            self._npu._npu_matmul_add_fp32(x, weight, c)
            self.synchronize()
        except (OSError, RuntimeError) as e:
            raise DeviceUnavailable(f"the ATB warm-up failed ({type(e).__name__}: {e}); install NNAL and run "
                                    f"`{SET_ENV}` before starting.") from e

    def synchronize(self) -> None:
        torch.npu.synchronize(self.torch_device)

    def mem_get_info(self) -> tuple[int, int]:
        return torch.npu.mem_get_info(self.torch_device)

    def empty_cache(self) -> None:
        torch.npu.empty_cache()

    def reset_peak_memory_stats(self) -> None:
        torch.npu.reset_peak_memory_stats(self.torch_device)

    def peak_memory_allocated(self) -> int:
        # vllm-ascend reads the same counter after its profiling run (worker.py determine_available_memory).
        return int(torch.npu.memory_stats(self.torch_device)["allocated_bytes.all.peak"])

    def memory_allocated(self) -> int:
        return int(torch.npu.memory_stats(self.torch_device)["allocated_bytes.all.current"])

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)
        torch.npu.manual_seed_all(seed)

    def describe(self) -> str:
        return f"npu:{self.index} ({torch.npu.get_device_name(self.index)}; {self.capabilities.describe()})"
