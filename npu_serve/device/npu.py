"""The Ascend NPU platform (torch.npu.*, provided by torch_npu over CANN).

`import_torch_npu()` is the ONE place in npu-serve that imports torch_npu. It is lazy (nothing
imports torch_npu at module top) because the import loads the CANN runtime, which is missing on
every non-Ascend machine, and because torch_npu patches torch on import. We use `torch.npu.*`
rather than `torch.accelerator`, whose NPU coverage depends on the torch_npu version.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

import torch

from npu_serve.device.base import Platform
from npu_serve.errors import DeviceUnavailable

logger = logging.getLogger(__name__)


def import_torch_npu() -> ModuleType:
    """Import torch_npu, or raise DeviceUnavailable saying which of the usual three things is wrong."""
    try:
        return importlib.import_module("torch_npu")
    except ModuleNotFoundError as e:
        if e.name == "torch_npu":
            raise DeviceUnavailable(
                "NPU requested but torch-npu is not installed; install the torch-npu build that "
                f"matches torch {torch.__version__} (pip install 'npu-serve[npu]') on a machine with CANN."
            ) from e
        raise DeviceUnavailable(_broken_message(e)) from e
    except (ImportError, OSError, RuntimeError) as e:
        raise DeviceUnavailable(_broken_message(e)) from e


def _broken_message(e: BaseException) -> str:
    text = str(e)
    if isinstance(e, OSError) or ".so" in text or "Ascend" in text or "libascend" in text:
        return ("torch_npu is installed but the Ascend CANN runtime could not be loaded "
                f"({type(e).__name__}: {text}); run `source /usr/local/Ascend/ascend-toolkit/set_env.sh` "
                "(or your CANN install's set_env.sh) and check the NPU driver.")
    return (f"torch_npu failed to import ({type(e).__name__}: {text}); this usually means torch-npu was "
            f"built for a different torch than the installed {torch.__version__}; install matching versions.")


class NpuPlatform(Platform):
    name = "npu"
    attention_backend = "npu"
    # Ascend's fused attention ops (npu_fused_infer_attention_score with a block table) need the
    # KV block size to be a multiple of 128 for prefill.
    default_block_size = 128
    # HCCL, registered with torch.distributed by torch_npu (imported in __init__ above).
    dist_backend = "hccl"
    visible_devices_env = "ASCEND_RT_VISIBLE_DEVICES"

    def __init__(self, index: int | None = None):
        import_torch_npu()  # registers torch.npu; raises DeviceUnavailable with the reason
        if not torch.npu.is_available():
            raise DeviceUnavailable("torch_npu imported but reports no NPU device (check npu-smi info "
                                    "and ASCEND_RT_VISIBLE_DEVICES).")
        super().__init__(0 if index is None else index)

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
        # vllm-ascend's worker sets the device before anything allocates or joins HCCL
        # (vllm_ascend/worker/worker.py `_init_device`); ascend-notes.md, "For tensor parallel on Ascend".
        torch.npu.set_device(self.torch_device)

    def synchronize(self) -> None:
        torch.npu.synchronize(self.torch_device)

    def mem_get_info(self) -> tuple[int, int]:
        return torch.npu.mem_get_info(self.torch_device)

    def empty_cache(self) -> None:
        torch.npu.empty_cache()

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)
        torch.npu.manual_seed_all(seed)

    def describe(self) -> str:
        return f"{self.torch_device} ({torch.npu.get_device_name(self.torch_device)})"
