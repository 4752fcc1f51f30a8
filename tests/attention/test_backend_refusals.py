"""Which layer features each backend computes, and that the others refuse them by name before a
model is served (AttentionBackend.unsupported, asked for every layer at engine build)."""

from __future__ import annotations

import pytest

from npu_serve.attention.backend import AttentionLayer
from npu_serve.attention.registry import get_backend

PLAIN = AttentionLayer(layer_idx=0, num_heads=8, num_kv_heads=2, head_dim=64, v_head_dim=64, scale=0.125)
FEATURED = {
    "sliding-window attention (window 4096)": AttentionLayer(0, 8, 2, 64, 64, 0.125, sliding_window=4096),
    "attention logit softcapping (50.0)": AttentionLayer(0, 8, 2, 64, 64, 0.125, logit_softcap=50.0),
    "attention sinks": AttentionLayer(0, 8, 2, 64, 64, 0.125, has_sinks=True),
    "different key and value head sizes (192 and 128)": AttentionLayer(0, 8, 8, 192, 128, 0.07),
}


@pytest.mark.parametrize("name", ["torch", "cpu", "triton", "npu"])
def test_plain_layers_run_everywhere(name):
    assert get_backend(name).unsupported(PLAIN) is None


@pytest.mark.parametrize("name", ["torch", "cpu", "triton"])
@pytest.mark.parametrize("feature", list(FEATURED))
def test_torch_cpu_and_triton_compute_every_feature(name, feature):
    assert get_backend(name).unsupported(FEATURED[feature]) is None


NPU_REFUSALS = {  # feature -> what the Ascend backend's reason must name
    "attention logit softcapping (50.0)": "attention logit softcapping (50.0)",
    "attention sinks": "attention sinks",
    "different key and value head sizes (192 and 128)": "key head size 192 differs from value head size 128",
}


@pytest.mark.parametrize("feature", list(NPU_REFUSALS))
def test_npu_refuses_what_its_fused_ops_are_not_given(feature):
    """FIA has no softcap or sink input, and its paged mode needs K and V of one shape: the Ascend
    backend must say so up front, naming the op and what to do instead."""
    reason = get_backend("npu").unsupported(FEATURED[feature])
    assert reason is not None and NPU_REFUSALS[feature] in reason
    assert "npu_fused_infer_attention_score" in reason and "--device cpu" in reason


def test_npu_runs_sliding_windows_in_fia_band_mode():
    assert get_backend("npu").unsupported(FEATURED["sliding-window attention (window 4096)"]) is None
