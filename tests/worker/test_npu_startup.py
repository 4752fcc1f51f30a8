"""Starting the engine on an NPU that cannot run the model: refused with one line naming the fix, before
any weight is loaded. The model directories here hold config.json only (no weights, no tokenizer), so
reaching a weight load would fail differently; the fake torch_npu stands in for the stack."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig

from npu_serve.config import EngineConfig
from npu_serve.errors import DeviceUnavailable, UnsupportedModel
from npu_serve.loader import load_engine
from tests.attention.fake_torch_npu import PROFILES, install_fake


def _config_only(tmp_path, **overrides) -> str:
    cfg = dict(vocab_size=256, hidden_size=576, intermediate_size=64, num_hidden_layers=2, num_attention_heads=9,
               num_key_value_heads=3, max_position_embeddings=2048)  # SmolLM2-135M's attention geometry
    cfg.update(overrides)
    LlamaConfig(**cfg).save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".json") == []
    return str(tmp_path)


CASES = {
    # name: (config overrides, engine settings, stack, env, error type, words of the one line)
    "head size 96": (dict(head_dim=96), {}, "cann8.5", {}, UnsupportedModel,
                     ["layer 0", "head size 96", "64, 128 or 192", "--device cpu"]),
    "ATB decode past 128 x 128": (dict(head_dim=192, num_attention_heads=4, num_key_value_heads=2), {}, "cann8.5",
                                  {"NPU_SERVE_NPU_DECODE_OP": "atb"}, UnsupportedModel,
                                  ["128 x 128", "here 128 x 192", "unset NPU_SERVE_NPU_DECODE_OP"]),
    "block size 64": ({}, dict(block_size=64), "cann9.1", {}, UnsupportedModel, ["--block-size 64", "(128)"]),
    "float32": ({}, dict(dtype="float32"), "cann8.5", {}, UnsupportedModel, ["float16/bfloat16", "--dtype bfloat16"]),
    "logit softcap": (dict(attn_logit_softcapping=50.0), {}, "cann8.5", {}, UnsupportedModel,
                      ["softcapping (50.0)", "--device cpu"]),
    "MLA key != value head size": (dict(qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128), {}, "cann9.1",
                                   {}, UnsupportedModel, ["key head size 192 differs from value head size 128"]),
    "old CANN": ({}, {}, PROFILES["cann8.5"].but(cann="8.2.RC1"), {}, DeviceUnavailable, ["CANN 8.2.RC1 is older than 8.3.RC1"]),
    "310P": ({}, {}, PROFILES["cann8.5"].but(soc=202), {}, DeviceUnavailable, ["310P", "Atlas A2"]),
    "NNAL not sourced": ({}, {}, PROFILES["cann8.5"].but(nnal=False), {}, DeviceUnavailable,
                         ["nnal/atb/set_env.sh"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_refused_before_any_weight_loads(tmp_path, monkeypatch, name):
    overrides, settings, stack, env, error, words = CASES[name]
    monkeypatch.delenv("NPU_SERVE_NPU_DECODE_OP", raising=False)
    monkeypatch.delenv("NPU_SERVE_ATTENTION_BACKEND", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    install_fake(monkeypatch, stack)
    model = _config_only(tmp_path, **overrides)
    with pytest.raises(error) as err:
        load_engine(EngineConfig(model=model, device="npu", **settings))
    message = str(err.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


def test_smollm2_geometry_passes_the_checks(tmp_path, monkeypatch):
    """The default model's 9-over-3 heads at head_dim 64 pass every check and reach the ATB warm-up, the
    first step that needs a real device (the fake has none), after the checks and before the weights."""
    monkeypatch.delenv("NPU_SERVE_NPU_DECODE_OP", raising=False)
    fake = install_fake(monkeypatch, "cann8.5")
    import npu_serve.device.npu as npu_platform

    reached = []
    monkeypatch.setattr(npu_platform.NpuPlatform, "warm_up", lambda self: reached.append("warm_up") or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        load_engine(EngineConfig(model=_config_only(tmp_path), device="npu"))
    assert reached == ["warm_up"] and fake.npu.device_calls == ["set_device(0)"]
