"""The device seam: everything device-specific the engine and runner need, behind one object.

Memory, synchronisation, seeding and defaults go through a `Platform`, so the rest of the code never
calls `torch.cuda.*` or `torch.npu.*` directly (and never `torch.accelerator`, which torch_npu
does not fully back). Subclasses: cpu.py, cuda.py, npu.py; `npu_serve.device.resolve_platform`
picks one by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import torch


class Platform(ABC):
    name: ClassVar[str]  # "cpu" | "cuda" | "npu"
    attention_backend: ClassVar[str]  # name of the attention backend that suits this device
    # KV cache block size. 16 keeps padding waste small; npu overrides it (see npu.py).
    default_block_size: ClassVar[int] = 16
    # The step's token budget when the user gives none (EngineConfig.max_num_batched_tokens).
    default_max_num_batched_tokens: ClassVar[int] = 2048
    # Accelerators size the KV cache from a profiling forward (worker/memory_profile.py); the CPU takes a
    # share of free RAM instead.
    profiles_memory: ClassVar[bool] = True
    # torch.distributed backend of the model's collectives under tensor parallelism.
    dist_backend: ClassVar[str] = "gloo"
    # The variable that chooses which devices this process sees (None: every process sees the host).
    visible_devices_env: ClassVar[str | None] = None

    def __init__(self, index: int | None = None):
        self.index = index

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.name, self.index) if self.index is not None else torch.device(self.name)

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """True if this kind of device can be used in this process. Never raises."""

    def default_dtype(self) -> torch.dtype:
        """The dtype `--dtype auto` means here. Accelerators: bfloat16 (native, half the memory)."""
        return torch.bfloat16

    def device_count(self) -> int:
        """Devices this process can see (1 for the host)."""
        return 1

    def set_device(self) -> None:
        """Make this platform's device the process's current one. Tensor-parallel ranks call it before
        init_process_group, as HCCL and NCCL bind a communicator to the current device."""

    def synchronize(self) -> None:
        """Wait for every queued kernel on this device (timing, memory profiling)."""

    @abstractmethod
    def mem_get_info(self) -> tuple[int, int]:
        """(free, total) bytes of the memory that KV cache blocks would come from."""

    def empty_cache(self) -> None:
        """Return cached allocator blocks to the device, so mem_get_info sees them as free."""

    def warm_up(self) -> None:
        """Called once the model passed its checks, before weights load: load lazy runtimes now (Ascend's
        ATB), so their failures surface at start and not in the first forward."""

    def prepare_model(self, model: torch.nn.Module, dtype: torch.dtype, config) -> None:
        """Called once the weights are loaded, before the attention is installed: swap in this device's
        faster modules (the CPU's small-batch bf16 linears). `config` is the EngineConfig."""

    def fast_decoder(self, model: torch.nn.Module, layers, config):
        """Called once the attention is installed: this device's own forward for the model's decoder
        stack (worker/fast_decoder.py), or None for transformers' forward. The model runner checks it
        against transformers' forward before using it."""
        return None

    def greedy_argmax(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The sampler's `logits.argmax(dim=-1)` for greedy rows on this device: a callable on fp32
        or model-dtype [N, V] logits giving int64 [N] with torch's rule (first maximum, NaN the
        largest), or None for torch's own."""
        return None

    def logits_to_float(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The sampler's `logits.float()` on this device (same bits), or None for torch's own."""
        return None

    def reset_peak_memory_stats(self) -> None:
        """Start a new peak for `peak_memory_allocated` (memory profiling)."""

    def peak_memory_allocated(self) -> int:
        """The most bytes the allocator held since `reset_peak_memory_stats`."""
        return 0

    def memory_allocated(self) -> int:
        """Bytes the allocator holds for live tensors now."""
        return 0

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def describe(self) -> str:
        """One line for the startup log."""
        return str(self.torch_device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.torch_device})"
