"""The Ascend backend: torch_npu's fused ops, called the way vllm-ascend calls them.

Per step (sources are vllm-project/vllm-ascend files; the calls are ours, written from them):
- write K/V: `torch_npu.npu_scatter_pa_kv_cache(..., cache_mode="Norm")` (the ND cache layout), as
  `A5DeviceAdaptor.reshape_and_cache` in vllm_ascend/device/device_op.py; or, with
  `write_op="atb"`, ATB's `torch_npu._npu_reshape_and_cache(key, value, key_cache, value_cache,
  slot_indices)`, as `BaseDeviceAdaptor.reshape_and_cache` there and
  `AscendAttentionBackendImpl.forward` in vllm_ascend/attention/attention_v1.py.
- pure decode: ATB's `torch_npu._npu_paged_attention(...)`, as `_forward_decode_only` in
  attention_v1.py, with the context lengths as a host int32 tensor (`AscendAttentionMetadataBuilder.
  build` passes `seq_lens_cpu` there).
- anything with a prefill or chunk: `torch_npu.npu_fused_infer_attention_score` over the paged cache
  with `input_layout="TND"`, `sparse_mode=3` and the 2048x2048 int8 causal mask, as
  `_forward_v1_style` in attention_v1.py; the mask is `AttentionMaskBuilder`'s
  `chunked_prefill_attn_mask` in vllm_ascend/attention/attention_mask.py. TND takes cumulative query
  lengths (`actual_seq_lengths_q = query_start_loc_cpu[1:].tolist()` in `build`) and per-request KV
  lengths as host lists.

Metadata handed to the ops is int32 (block tables, slots, context lengths). The fused ops take only
float16/bfloat16, and FIA with a block table needs the KV block size to be a multiple of 128.
torch_npu is imported only through npu_serve.device.npu.import_torch_npu.
"""

from __future__ import annotations

from types import ModuleType

import torch

from npu_serve.attention.backend import AttentionBackend, AttentionLayer, AttentionMetadata
from npu_serve.device.npu import import_torch_npu

# sparse_mode=3 (rightDownCausal) reads causality from this fixed-size compressed mask whatever the
# sequence lengths are; 1 marks a masked (future) position.
FIA_MASK_SIZE = 2048
FIA_BLOCK_MULTIPLE = 128
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


def causal_mask_2048(device: torch.device) -> torch.Tensor:
    return torch.triu(torch.ones(FIA_MASK_SIZE, FIA_MASK_SIZE, dtype=torch.int8, device=device), diagonal=1)


class NpuAttentionBackend(AttentionBackend):
    name = "npu"

    def __init__(self, write_op: str = "scatter") -> None:
        if write_op not in ("scatter", "atb"):
            raise ValueError(f"write_op must be 'scatter' or 'atb', not {write_op!r}")
        self.write_op = write_op
        self._npu: ModuleType | None = None
        self._masks: dict[torch.device, torch.Tensor] = {}

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
        layer: AttentionLayer,
    ) -> torch.Tensor:
        scale = layer.scale
        if query.dtype not in _SUPPORTED_DTYPES:
            raise ValueError(f"the Ascend fused attention ops take float16/bfloat16, not {query.dtype}; "
                             "run with --dtype bfloat16 (or the torch backend for float32)")
        if self._npu is None:
            self._npu = import_torch_npu()
        npu = self._npu
        key_cache, value_cache = kv_cache  # each [num_blocks, block_size, Hkv, D]
        query = query.contiguous()
        self._write(npu, key.contiguous(), value.contiguous(), key_cache, value_cache,
                    meta.slot_mapping.to(torch.int32))
        block_tables = meta.block_tables.to(torch.int32)
        if meta.num_decodes == meta.num_reqs:
            return self._decode(npu, query, key_cache, value_cache, block_tables, meta, scale)
        return self._mixed(npu, query, key_cache, value_cache, block_tables, meta, scale)

    def _write(self, npu, key, value, key_cache, value_cache, slots: torch.Tensor) -> None:
        if self.write_op == "scatter":
            # vllm_ascend/device/device_op.py, A5DeviceAdaptor.reshape_and_cache; "Norm" is the ND
            # [num_blocks, block_size, Hkv, D] cache (the other modes expect NZ-formatted caches).
            npu.npu_scatter_pa_kv_cache(key=key, value=value, key_cache=key_cache, value_cache=value_cache,
                                        slot_mapping=slots, cache_mode="Norm")
        else:
            # vllm_ascend/device/device_op.py, BaseDeviceAdaptor.reshape_and_cache (ATB op).
            npu._npu_reshape_and_cache(key=key, value=value, key_cache=key_cache, value_cache=value_cache,
                                       slot_indices=slots)

    @staticmethod
    def _decode(npu, query, key_cache, value_cache, block_tables, meta: AttentionMetadata, scale: float):
        # vllm_ascend/attention/attention_v1.py, AscendAttentionBackendImpl._forward_decode_only: the
        # ATB kernel reads context_lens on the host, so it gets a CPU int32 tensor.
        out = torch.empty_like(query)
        context_lens = torch.tensor(meta.seq_lens_cpu, dtype=torch.int32)
        npu._npu_paged_attention(
            query=query, key_cache=key_cache, value_cache=value_cache,
            num_kv_heads=key_cache.shape[2], num_heads=query.shape[1], scale_value=float(scale),
            block_table=block_tables, context_lens=context_lens, out=out,
        )
        return out

    def _mixed(self, npu, query, key_cache, value_cache, block_tables, meta: AttentionMetadata, scale: float):
        num_blocks, block_size, num_kv_heads, head_dim = key_cache.shape
        if block_size % FIA_BLOCK_MULTIPLE:
            raise ValueError(f"npu_fused_infer_attention_score with a block table needs a KV block size that "
                             f"is a multiple of {FIA_BLOCK_MULTIPLE}, got {block_size}")
        # vllm_ascend/attention/attention_v1.py, AscendAttentionBackendImpl._forward_v1_style: the paged
        # cache goes in as [num_blocks, block_size, Hkv*D]; TND query/output are [T, H, D].
        out, _lse = npu.npu_fused_infer_attention_score(
            query=query,
            key=key_cache.view(num_blocks, block_size, num_kv_heads * head_dim),
            value=value_cache.view(num_blocks, block_size, num_kv_heads * head_dim),
            atten_mask=self._mask(query.device),
            block_table=block_tables,
            input_layout="TND",
            block_size=block_size,
            actual_seq_lengths=list(meta.query_start_loc_cpu[1:]),  # cumulative, as TND wants
            actual_seq_lengths_kv=list(meta.seq_lens_cpu),
            num_key_value_heads=num_kv_heads,
            num_heads=query.shape[1],
            scale=float(scale),
            sparse_mode=3,
        )
        return out

    def _mask(self, device: torch.device) -> torch.Tensor:
        mask = self._masks.get(device)
        if mask is None:
            mask = self._masks[device] = causal_mask_2048(device)
        return mask
