"""The stack facts, printed for the report (scripts/npu_check.sh folds the STACK line into its table),
and a startup refusal on the real stack: a head size FIA cannot run is refused before weights load."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.npu.conftest import start_npu


def test_stack_probe():
    """Never skips silently: off an NPU the skip reason is the platform's own refusal or import error."""
    platform = start_npu()
    caps = platform.capabilities
    facts = {
        "device": platform.describe(), "torch": torch.__version__, "torch_npu": caps.torch_npu_version,
        "cann": caps.cann_version, "soc": caps.soc_version, "soc_family": caps.soc_family,
        "write_op": caps.write_op, "scatter_cache_mode": caps.scatter_has_cache_mode,
        "schema_source": caps.schema_source, "atb": caps.atb_error or "ok", "decode_op": platform.decode_op,
        "visible": os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "(all)"),
        "alloc_conf": os.environ.get("PYTORCH_NPU_ALLOC_CONF"),
    }
    print("STACK " + json.dumps(facts))
    assert caps.problems(platform.decode_op) == []
    assert os.environ.get("PYTORCH_NPU_ALLOC_CONF")
    # The scatter op's schema was read from the registered op (the real thing), not guessed.
    if caps.has_scatter_pa_kv_cache:
        assert caps.schema_source == "torch.ops", caps.schema_source


def test_memory_counters_move(npu):
    npu.reset_peak_memory_stats()
    before = npu.memory_allocated()
    x = torch.empty(64 << 20, dtype=torch.uint8, device=npu.torch_device)
    assert npu.memory_allocated() >= before + (64 << 20) and npu.peak_memory_allocated() >= 64 << 20
    del x
    free, total = npu.mem_get_info()
    assert 0 < free <= total


def test_startup_refuses_an_unsupported_head_size_before_weights(npu, tmp_path):
    from transformers import LlamaConfig

    from npu_serve.config import EngineConfig
    from npu_serve.errors import UnsupportedModel
    from npu_serve.loader import load_engine

    LlamaConfig(vocab_size=256, hidden_size=384, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, head_dim=96).save_pretrained(tmp_path)  # config only, no weights
    with pytest.raises(UnsupportedModel, match="head size 96"):
        load_engine(EngineConfig(model=str(tmp_path), device="npu"))
