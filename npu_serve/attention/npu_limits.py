"""What the Ascend attention ops accept, as documented, checked once per layer at engine build.

Each limit names where it was read; a layer that breaks one is refused before any weight loads
(`NpuAttentionBackend.unsupported`), with one sentence naming the fix, instead of an aclnn error in the
first forward. The fake torch_npu of the tests (tests/attention/fake_torch_npu.py) enforces the same
documented limits from the op side, so the two are checked against each other.
"""

from __future__ import annotations

import torch

from npu_serve.attention.backend import AttentionLayer
from npu_serve.device.npu_caps import DECODE_ATB

# npu_fused_infer_attention_score (FIA), input_layout="TND": query/key/value head sizes must be equal and
# 64, 128 or 192 (aclnn error 561002 "When layout is TND, queryD ... must be same equal 192/128/64", quoted
# in vllm-ascend PR #9632 and issue #8045). (192, 128) is allowed without a paged cache only.
FIA_TND_HEAD_DIMS = (64, 128, 192)
# FIA page attention: block_size 128..512, a multiple of 128 (op-plugin 26.0.0
# docs/en/custom_APIs/torch_npu/torch_npu-npu_fused_infer_attention_score.md, "Page attention scenarios").
FIA_BLOCK_MULTIPLE = 128
FIA_MAX_BLOCK = 512
# Same document: num_heads / num_kv_heads must be whole and at most 64; N <= 256; at most 4096 requests
# per TND call (fia_groups splits bigger batches). Its KV_N x D <= 65535 rule for a (blocknum, blocksize,
# H) cache follows from N <= 256 and D <= 192.
FIA_MAX_GQA_GROUP = 64
FIA_MAX_HEADS = 256
# ATB PagedAttentionOperation (torch_npu._npu_paged_attention): block_size x head_dim <= 128 x 128 and
# block_size % 16 == 0 (shared/ascend-notes.md item 4, from the ATB operation docs).
ATB_PA_MAX_BLOCK_X_DIM = 128 * 128
ATB_PA_BLOCK_MULTIPLE = 16
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


def layer_problem(layer: AttentionLayer, block_size: int | None, dtype: torch.dtype | None,
                  decode_op: str) -> str | None:
    """None when the Ascend backend computes `layer` exactly with these settings; else why not."""
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        return (f"the Ascend fused attention ops take float16/bfloat16, not {str(dtype).replace('torch.', '')}; "
                "run with --dtype bfloat16")
    if layer.has_sinks:
        return ("attention sinks (per-head sink logits): npu_fused_infer_attention_score has no sink input "
                "(vllm-ascend passes them only to npu_fused_infer_attention_score_v2, which npu-serve does not "
                "call); serve this model with --device cpu")
    if layer.logit_softcap is not None:
        return (f"attention logit softcapping ({layer.logit_softcap}): npu_fused_infer_attention_score has no "
                "softcap input (op-plugin 26.0.0 docs); serve this model with --device cpu")
    if layer.v_head_dim != layer.head_dim:
        return (f"key head size {layer.head_dim} differs from value head size {layer.v_head_dim} (MLA as "
                "transformers runs it): FIA's page-attention mode needs key and value caches of identical shape "
                "(op-plugin 26.0.0 docs, npu_fused_infer_attention_score constraints); serve it with --device cpu")
    if layer.head_dim not in FIA_TND_HEAD_DIMS:
        return (f"head size {layer.head_dim}: npu_fused_infer_attention_score in TND layout takes head sizes "
                "64, 128 or 192 only (aclnn error 561002); serve this model with --device cpu")
    return _heads_problem(layer) or _block_problem(layer, block_size, decode_op)


def _heads_problem(layer: AttentionLayer) -> str | None:
    heads, kv_heads = layer.num_heads, layer.num_kv_heads
    if kv_heads < 1 or heads % kv_heads or heads // kv_heads > FIA_MAX_GQA_GROUP or heads > FIA_MAX_HEADS:
        return (f"{heads} query heads over {kv_heads} KV heads: npu_fused_infer_attention_score needs a whole "
                f"group of at most {FIA_MAX_GQA_GROUP} query heads per KV head and at most {FIA_MAX_HEADS} heads")
    return None


def _block_problem(layer: AttentionLayer, block_size: int | None, decode_op: str) -> str | None:
    if block_size is None:
        return None
    if block_size % FIA_BLOCK_MULTIPLE or not FIA_BLOCK_MULTIPLE <= block_size <= FIA_MAX_BLOCK:
        return (f"--block-size {block_size}: npu_fused_infer_attention_score with a block table takes "
                f"{FIA_BLOCK_MULTIPLE} to {FIA_MAX_BLOCK} in steps of {FIA_BLOCK_MULTIPLE}; leave --block-size unset (128)")
    if decode_op == DECODE_ATB and layer.sliding_window is None:
        if block_size % ATB_PA_BLOCK_MULTIPLE or block_size * layer.head_dim > ATB_PA_MAX_BLOCK_X_DIM:
            return (f"NPU_SERVE_NPU_DECODE_OP=atb: ATB paged attention needs block_size x head_dim <= 128 x 128 "
                    f"(here {block_size} x {layer.head_dim}); unset NPU_SERVE_NPU_DECODE_OP (FIA decode) or use "
                    f"--block-size {max(16, ATB_PA_MAX_BLOCK_X_DIM // layer.head_dim // 16 * 16)}")
    return None


def fia_pre_tokens(sliding_window: int) -> int:
    """FIA's `pre_tokens` for a window of `sliding_window` keys (the query itself included).

    op-plugin 26.0.0 docs/en/custom_APIs/torch_npu/torch_npu-npu_fusion_attention.md, sparse_mode=4 (band,
    origin at the lower-right vertex): the figure with pre_tockens=6 keeps 7 keys in the last row, the
    diagonal and the 6 before it. A transformers window W keeps W keys (positions > p - W), so W - 1.
    vllm-ascend main (commit ac357ed4bb) passes pre_tokens=sliding_window; its own SWA mask
    (releases/v0.13.0 attention_mask.py `get_swa_mask`, tril(-sliding_window)) keeps W keys, as we do.
    Unverified on hardware: tests/npu/test_npu_ops.py checks it against the torch reference.
    """
    return sliding_window - 1
