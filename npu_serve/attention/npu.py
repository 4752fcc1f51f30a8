"""The Ascend backend: torch_npu's fused ops, chosen from the probed stack (`NpuCapabilities`).

Per step (the calls are ours, written from these vllm-project/vllm-ascend and Ascend/op-plugin sources):
- write K/V, by capability (shared/ascend-notes.md item 1):
  - ATB `torch_npu._npu_reshape_and_cache(key, value, key_cache, value_cache, slot_indices)` with int32
    slots: how vllm-ascend writes A2/A3 caches on every CANN 8.x (releases/v0.13.0
    vllm_ascend/attention/attention_v1.py `AscendAttentionBackendImpl.reshape_and_cache`);
  - `torch_npu.npu_scatter_pa_kv_cache(..., cache_mode="Norm")` (ND layout) only where the op's schema has
    `cache_mode` (op-plugin >= 26.0.0, CANN 9.x; vllm-ascend main vllm_ascend/device/device_op.py
    `BaseDeviceAdaptor.reshape_and_cache`, commit af672dd6e8). On CANN 8.3-8.5 the same op writes NZ only.
- attention: `torch_npu.npu_fused_infer_attention_score` (FIA) over the paged cache, `input_layout="TND"`,
  `block_table`, `sparse_mode=3` and the 2048x2048 int8 causal mask, one call for the whole mixed batch
  (releases/v0.13.0 attention_v1.py `forward_fused_infer_attention` / `_get_fia_params`; the mask is
  `AttentionMaskBuilder.get_splitfuse_attn_mask` in attention_mask.py). TND takes the cumulative query
  ends and the per-request KV lengths as host lists (`AscendAttentionMetadataBuilder.build`). Pure-decode
  steps go through FIA too, as vllm-ascend >= 0.13 does in eager mode; `NPU_SERVE_NPU_DECODE_OP=atb`
  chooses ATB `torch_npu._npu_paged_attention` (host int32 `context_lens`, preallocated `out`; attention_v1.py
  `forward_paged_attention`) within its block_size x head_dim <= 128 x 128 limit (item 4).
- sliding windows: FIA band mode, `sparse_mode=4`, `pre_tokens`, `next_tokens=0`, as vllm-ascend main
  (attention_v1.py, commit ac357ed4bb), with pre_tokens from the op's documented band (npu_limits.py).
  Windowed layers never use ATB paged attention (it has no window; vllm-ascend routes them to FIA too).
- FIA's page attention needs `blocknum` >= the blocks the whole call needs by `actual_seq_lengths_kv`
  (op-plugin 26.0.0 docs, item 10). Requests sharing prefix blocks can need more than the pool holds, so a
  batch is split into consecutive groups that each fit (one group, one call, in every other case).

Per-step work (int32 slots, the host lengths, the groups) is built once per step, at the first layer,
into `NpuStepMetadata`, and reused by every layer. torch_npu is imported only through
npu_serve.device.npu.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

from npu_serve.attention.backend import AttentionBackend, AttentionLayer, AttentionMetadata
from npu_serve.attention.npu_limits import fia_pre_tokens, layer_problem
from npu_serve.device.npu import current_capabilities, import_torch_npu
from npu_serve.device.npu_caps import DECODE_ATB, WRITE_SCATTER, NpuCapabilities, requested_decode_op

# sparse_mode=3 (rightDownCausal) and 4 (band) read causality from this fixed-size compressed mask,
# whatever the sequence lengths; 1 marks a masked (future) position.
FIA_MASK_SIZE = 2048


def causal_mask_2048(device: torch.device) -> torch.Tensor:
    """Built as vllm-ascend builds it (releases/v0.13.0 attention_mask.py `get_splitfuse_attn_mask`): float
    triu on the host, then int8, then the device (ascend-notes item 11)."""
    return torch.triu(torch.ones(FIA_MASK_SIZE, FIA_MASK_SIZE), diagonal=1).to(torch.int8).to(device)


@dataclass(frozen=True)
class FiaGroup:
    """Consecutive requests [req_start, req_end) (tokens [tok_start, tok_end)) for one FIA call."""

    req_start: int
    req_end: int
    tok_start: int
    tok_end: int
    q_ends: list[int]  # cumulative query ends within the group (TND's actual_seq_lengths)
    kv_lens: list[int]  # per-request context lengths (actual_seq_lengths_kv)


@dataclass(frozen=True)
class NpuStepMetadata:
    """What every layer of one step hands the ops, built once per step."""

    slots: torch.Tensor  # int32 [T] on the device
    block_tables: torch.Tensor  # int32 [B, max_blocks] on the device
    context_lens: torch.Tensor  # int32 [B] on the host (ATB paged attention reads it there)
    pure_decode: bool
    groups: tuple[FiaGroup, ...]

    @classmethod
    def build(cls, meta: AttentionMetadata, num_blocks: int) -> NpuStepMetadata:
        return cls(
            slots=meta.slot_mapping.to(torch.int32),
            block_tables=meta.block_tables.to(torch.int32),
            context_lens=torch.tensor(meta.seq_lens_cpu, dtype=torch.int32),
            pure_decode=meta.num_decodes == meta.num_reqs,
            groups=tuple(fia_groups(meta.query_start_loc_cpu, meta.seq_lens_cpu, meta.block_size, num_blocks)),
        )


def fia_groups(qsl: list[int], seq_lens: list[int], block_size: int, num_blocks: int,
               max_batch: int = 4096) -> list[FiaGroup]:
    """Split requests into consecutive groups whose blocks (by their KV lengths) fit `num_blocks` and
    whose count stays within FIA's TND batch limit. One group unless prefix sharing or size demands."""
    groups, start, used = [], 0, 0
    for r, length in enumerate(seq_lens):
        need = -(-length // block_size)
        if r > start and (used + need > num_blocks or r - start >= max_batch):
            groups.append(_group(qsl, seq_lens, start, r))
            start, used = r, 0
        used += need
    if seq_lens:
        groups.append(_group(qsl, seq_lens, start, len(seq_lens)))
    return groups


def _group(qsl: list[int], seq_lens: list[int], start: int, end: int) -> FiaGroup:
    base = qsl[start]
    return FiaGroup(start, end, base, qsl[end], [q - base for q in qsl[start + 1: end + 1]], list(seq_lens[start:end]))


class NpuAttentionBackend(AttentionBackend):
    name = "npu"

    def __init__(self, caps: NpuCapabilities | None = None, decode_op: str | None = None) -> None:
        self._caps = caps  # None: the running NPU platform's, read at first use
        self.decode_op = decode_op if decode_op is not None else requested_decode_op()
        self._block_size: int | None = None
        self._dtype: torch.dtype | None = None
        self._npu: ModuleType | None = None
        self._masks: dict[torch.device, torch.Tensor] = {}
        self._step_for: AttentionMetadata | None = None
        self._step: NpuStepMetadata | None = None

    @property
    def caps(self) -> NpuCapabilities:
        if self._caps is None:
            self._caps = current_capabilities()
        return self._caps

    @property
    def write_op(self) -> str:
        return self.caps.write_op

    def configure(self, block_size: int, dtype: torch.dtype) -> None:
        self._block_size, self._dtype = block_size, dtype

    def unsupported(self, layer: AttentionLayer) -> str | None:
        return layer_problem(layer, self._block_size, self._dtype, self.decode_op)

    def forward(self, query, key, value, kv_cache, meta: AttentionMetadata, layer: AttentionLayer) -> torch.Tensor:
        key_cache, value_cache = kv_cache  # each [num_blocks, block_size, Hkv, D], contiguous
        if self._npu is None:
            self._npu = import_torch_npu()
        npu = self._npu
        step = self._step_metadata(meta, key_cache.shape[0])
        self._write(npu, key.contiguous(), value.contiguous(), key_cache, value_cache, step.slots)
        query = query.contiguous()
        if step.pure_decode and self.decode_op == DECODE_ATB and layer.sliding_window is None:
            return self._decode_atb(npu, query, key_cache, value_cache, step, layer)
        return self._fia(npu, query, key_cache, value_cache, step, meta, layer)

    def _step_metadata(self, meta: AttentionMetadata, num_blocks: int) -> NpuStepMetadata:
        if self._step_for is not meta:  # the first layer of a new step
            self._step = NpuStepMetadata.build(meta, num_blocks)
            self._step_for = meta
        return self._step

    def _write(self, npu, key, value, key_cache, value_cache, slots: torch.Tensor) -> None:
        if self.write_op == WRITE_SCATTER:
            # vllm-ascend main vllm_ascend/device/device_op.py, BaseDeviceAdaptor.reshape_and_cache: "Norm" is
            # the ND [num_blocks, block_size, Hkv, D] cache (the default, "PA_NZ", expects NZ-formatted caches).
            npu.npu_scatter_pa_kv_cache(key=key, value=value, key_cache=key_cache, value_cache=value_cache,
                                        slot_mapping=slots, cache_mode="Norm")
        else:
            # releases/v0.13.0 vllm_ascend/attention/attention_v1.py, reshape_and_cache (A2/A3, every CANN 8.x).
            npu._npu_reshape_and_cache(key=key, value=value, key_cache=key_cache, value_cache=value_cache,
                                       slot_indices=slots)

    @staticmethod
    def _decode_atb(npu, query, key_cache, value_cache, step: NpuStepMetadata, layer: AttentionLayer):
        # releases/v0.13.0 attention_v1.py, forward_paged_attention: context_lens on the host, int32.
        out = torch.empty_like(query)
        npu._npu_paged_attention(
            query=query, key_cache=key_cache, value_cache=value_cache, num_kv_heads=layer.num_kv_heads,
            num_heads=layer.num_heads, scale_value=float(layer.scale), block_table=step.block_tables,
            context_lens=step.context_lens, out=out,
        )
        return out

    def _fia(self, npu, query, key_cache, value_cache, step: NpuStepMetadata, meta: AttentionMetadata,
             layer: AttentionLayer) -> torch.Tensor:
        num_blocks, block_size, num_kv_heads, head_dim = key_cache.shape
        # releases/v0.13.0 attention_v1.py, _get_fia_params: the paged cache goes in as
        # [num_blocks, block_size, Hkv*D]; TND query/output are [T, H, D].
        key = key_cache.view(num_blocks, block_size, num_kv_heads * head_dim)
        value = value_cache.view(num_blocks, block_size, -1)
        band = {}
        if layer.sliding_window is not None:
            band = {"sparse_mode": 4, "pre_tokens": fia_pre_tokens(layer.sliding_window), "next_tokens": 0}
        outs = []
        for g in step.groups:
            out, _lse = npu.npu_fused_infer_attention_score(
                query=query[g.tok_start:g.tok_end], key=key, value=value, atten_mask=self._mask(query.device),
                block_table=step.block_tables[g.req_start:g.req_end], input_layout="TND", block_size=block_size,
                actual_seq_lengths=g.q_ends, actual_seq_lengths_kv=g.kv_lens,
                num_key_value_heads=layer.num_kv_heads, num_heads=layer.num_heads, scale=float(layer.scale),
                **({"sparse_mode": 3} | band),
            )
            outs.append(out)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _mask(self, device: torch.device) -> torch.Tensor:
        mask = self._masks.get(device)
        if mask is None:
            mask = self._masks[device] = causal_mask_2048(device)
        return mask
