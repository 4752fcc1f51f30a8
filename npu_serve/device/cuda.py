"""The CUDA platform (torch.cuda.*)."""

from __future__ import annotations

import torch

from npu_serve.device.base import Platform


class CudaPlatform(Platform):
    name = "cuda"
    attention_backend = "triton"
    default_block_size = 16
    dist_backend = "nccl"
    visible_devices_env = "CUDA_VISIBLE_DEVICES"

    def __init__(self, index: int | None = None):
        super().__init__(0 if index is None else index)

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available()

    def device_count(self) -> int:
        return torch.cuda.device_count()

    def set_device(self) -> None:
        torch.cuda.set_device(self.torch_device)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.torch_device)

    def mem_get_info(self) -> tuple[int, int]:
        return torch.cuda.mem_get_info(self.torch_device)

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def reset_peak_memory_stats(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.torch_device)

    def peak_memory_allocated(self) -> int:
        return int(torch.cuda.max_memory_allocated(self.torch_device))

    def memory_allocated(self) -> int:
        return int(torch.cuda.memory_allocated(self.torch_device))

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)
        torch.cuda.manual_seed_all(seed)

    def describe(self) -> str:
        return f"{self.torch_device} ({torch.cuda.get_device_name(self.torch_device)})"
