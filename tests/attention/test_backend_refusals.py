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


@pytest.mark.parametrize("feature", list(FEATURED))
def test_npu_refuses_what_its_fused_ops_are_not_given(feature):
    """The Ascend backend passes none of these to torch_npu's ops yet: it must say so up front."""
    reason = get_backend("npu").unsupported(FEATURED[feature])
    assert reason is not None and feature in reason and "npu" in reason
