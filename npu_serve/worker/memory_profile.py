"""KV cache sizing on accelerators from a profiling forward at `max_num_batched_tokens`.

Taking a share of the memory that is free after loading the weights leaves nothing for activations:
the first long prefill (attention workspaces, the MLP's intermediate, float32 logits) then runs out of
memory mid-serving. As vllm-ascend does (releases/v0.13.0 vllm_ascend/worker/worker.py
`determine_available_memory`, and vLLM's GPU worker), before the cache exists we run one forward of the
largest step the scheduler can hand out, `max_num_batched_tokens` tokens over `max_num_seqs` requests
(at most), each sampling one row of logits, read the allocator's peak, and size the cache as

    kv_bytes = fraction x total - (memory in use before the forward) - (the forward's extra peak)

The forward writes its K/V into a small cache of its own, whose bytes are left out of the peak (the real
cache holds those tokens too). The CPU keeps its own rule (a share of free RAM, capped).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from npu_serve.attention.backend import AttentionBackend, AttentionLayer, AttentionMetadata
from npu_serve.worker.forward_context import ForwardContext, forward_context
from npu_serve.worker.kv_cache import KVCacheSpec, allocate_kv_caches

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryProfile:
    total_bytes: int  # the device's memory
    used_bytes: int  # in use before the profiling forward: weights, runtime, other processes
    activation_peak_bytes: int  # the forward's peak above that, its own KV blocks left out
    num_tokens: int  # what the forward ran
    num_seqs: int

    def kv_budget(self, fraction: float) -> int:
        return max(0, int(fraction * self.total_bytes) - self.used_bytes - self.activation_peak_bytes)


def dummy_batch(num_tokens: int, num_seqs: int, block_size: int) -> tuple[list[int], list[list[int]], int]:
    """Lengths of `num_seqs` prefills sharing `num_tokens`, their block tables (blocks 1.., block 0 is the
    null block), and the number of blocks they need."""
    num_seqs = max(1, min(num_seqs, num_tokens))
    lens = [num_tokens // num_seqs + (1 if i < num_tokens % num_seqs else 0) for i in range(num_seqs)]
    tables, next_block = [], 1
    for n in lens:
        need = -(-n // block_size)
        tables.append(list(range(next_block, next_block + need)))
        next_block += need
    return lens, tables, next_block


@torch.inference_mode()
def profile_forward(model: torch.nn.Module, platform, spec: KVCacheSpec, backend: AttentionBackend,
                    layers: list[AttentionLayer], num_tokens: int, num_seqs: int) -> MemoryProfile:
    """Run the largest step once on `platform` and measure what it needs beyond the weights. The model
    must already route attention through `backend` (hf_bridge.install returned `layers`)."""
    device = platform.torch_device
    lens, tables, num_blocks = dummy_batch(num_tokens, num_seqs, spec.block_size)
    platform.synchronize()
    platform.empty_cache()
    free, total = platform.mem_get_info()
    baseline = platform.memory_allocated()
    platform.reset_peak_memory_stats()
    caches = allocate_kv_caches(spec, num_blocks, device)
    cache_bytes = num_blocks * spec.bytes_per_block
    meta, input_ids, positions, last = _dummy_inputs(lens, tables, spec.block_size, device)
    with forward_context(ForwardContext(meta, caches, backend, layers)):
        logits = model(input_ids=input_ids, position_ids=positions, use_cache=False, logits_to_keep=last).logits
        logits.float()  # the sampler works on float32 logits
    platform.synchronize()
    peak = platform.peak_memory_allocated()
    del caches, logits
    platform.empty_cache()
    profile = MemoryProfile(total_bytes=total, used_bytes=total - free,
                            activation_peak_bytes=max(0, peak - baseline - cache_bytes),
                            num_tokens=sum(lens), num_seqs=len(lens))
    logger.info("memory profile: %s", profile)
    return profile


def _dummy_inputs(lens: list[int], tables: list[list[int]], block_size: int, device):
    qsl, slots = [0], []
    for n, table in zip(lens, tables):
        qsl.append(qsl[-1] + n)
        slots += [table[p // block_size] * block_size + p % block_size for p in range(n)]
    width = max(len(t) for t in tables)
    padded = [t + [0] * (width - len(t)) for t in tables]
    meta = AttentionMetadata(
        num_tokens=qsl[-1], num_decodes=0,
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        block_tables=torch.tensor(padded, dtype=torch.int32, device=device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc_cpu=qsl, seq_lens_cpu=list(lens), block_size=block_size,
    )
    # Token id 0 everywhere: the values do not matter for memory, only the shapes.
    input_ids = torch.zeros((1, qsl[-1]), dtype=torch.long, device=device)
    positions = torch.tensor([[p for n in lens for p in range(n)]], dtype=torch.long, device=device)
    last = torch.tensor([q - 1 for q in qsl[1:]], dtype=torch.long, device=device)
    return meta, input_ids, positions, last
