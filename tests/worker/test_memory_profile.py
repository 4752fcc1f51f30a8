"""KV sizing on accelerators: a profiling forward at max_num_batched_tokens runs before the cache exists,
and the cache gets fraction x total minus what is in use minus the forward's peak (as vllm-ascend's
determine_available_memory). No accelerator here: a CPU platform that says it profiles, with memory
counters the test controls, stands in for one; the model, attention and builder are the real ones."""

from __future__ import annotations

import pytest

import npu_serve.device
import npu_serve.worker.model_runner as model_runner
from npu_serve.attention.torch_ref import TorchAttentionBackend
from npu_serve.config import EngineConfig
from npu_serve.device.cpu import CpuPlatform
from npu_serve.loader import load_engine
from npu_serve.worker.memory_profile import MemoryProfile, dummy_batch

MIB = 1 << 20


class ProfiledCpu(CpuPlatform):
    """An "accelerator" of 64 MiB with 8 MiB in use, whose allocator peak the attention spy sets."""

    profiles_memory = True

    def __init__(self):
        super().__init__()
        self.peak = 0
        self.events: list[str] = []

    def mem_get_info(self) -> tuple[int, int]:
        return 56 * MIB, 64 * MIB

    def memory_allocated(self) -> int:
        return 0

    def reset_peak_memory_stats(self) -> None:
        self.events.append("reset peak")
        self.peak = 0

    def peak_memory_allocated(self) -> int:
        return self.peak


def test_kv_budget_and_dummy_batch():
    profile = MemoryProfile(total_bytes=100, used_bytes=30, activation_peak_bytes=20, num_tokens=8, num_seqs=2)
    assert profile.kv_budget(0.9) == 40 and profile.kv_budget(0.4) == 0
    lens, tables, num_blocks = dummy_batch(num_tokens=40, num_seqs=3, block_size=16)
    assert lens == [14, 13, 13] and tables == [[1], [2], [3]] and num_blocks == 4
    assert dummy_batch(5, 128, 16)[0] == [1] * 5  # never more requests than tokens


def test_profiling_forward_sizes_the_cache_before_it_is_allocated(monkeypatch, tiny_llama_dir):
    platform = ProfiledCpu()
    monkeypatch.setattr(npu_serve.device, "resolve_platform", lambda device: platform)
    monkeypatch.setenv("NPU_SERVE_ATTENTION_BACKEND", "torch")
    seen = []
    forward = TorchAttentionBackend.forward

    def spy(self, query, key, value, kv_cache, meta, *rest):
        if not seen or seen[-1][0] != meta.num_tokens:
            platform.events.append(f"attention {meta.num_tokens} tokens in {meta.num_reqs} requests")
        seen.append((meta.num_tokens, kv_cache))
        # The forward's peak: 4 MiB of activations on top of the profiling cache (both layers).
        layer_bytes = sum(t.numel() * t.element_size() for t in kv_cache)  # key + value
        platform.peak = max(platform.peak, 4 * MIB + 2 * layer_bytes)
        return forward(self, query, key, value, kv_cache, meta, *rest)

    monkeypatch.setattr(TorchAttentionBackend, "forward", spy)
    allocate = model_runner.allocate_kv_caches

    def runner_cache(spec, num_blocks, device):
        platform.events.append(f"KV cache of {num_blocks} blocks")
        return allocate(spec, num_blocks, device)

    monkeypatch.setattr(model_runner, "allocate_kv_caches", runner_cache)
    core, facts, _ = load_engine(EngineConfig(model=str(tiny_llama_dir), device="cpu", dtype="float32",
                                                    max_num_batched_tokens=96, max_num_seqs=4))
    bytes_per_block = core.executor.spec.bytes_per_block
    expected = (int(0.9 * 64 * MIB) - 8 * MIB - 4 * MIB) // bytes_per_block
    assert facts.num_blocks == expected
    assert platform.events[:3] == ["reset peak", "attention 96 tokens in 4 requests", f"KV cache of {expected} blocks"]


@pytest.mark.parametrize("fraction, blocks", [(0.2, 2)])
def test_too_little_memory_still_gives_the_minimum(fraction, blocks):
    # The block pool needs the null block plus one: sizing never returns fewer than 2 (KVCacheSpec).
    import torch

    from npu_serve.worker.kv_cache import KVCacheSpec, LayerKVShape

    spec = KVCacheSpec((LayerKVShape(2, 16, 16),) * 2, torch.float32, 16)
    profile = MemoryProfile(total_bytes=64 * MIB, used_bytes=60 * MIB, activation_peak_bytes=MIB, num_tokens=96,
                            num_seqs=4)
    assert spec.num_blocks_for(profile.kv_budget(fraction)) == blocks
