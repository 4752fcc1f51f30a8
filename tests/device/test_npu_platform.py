"""NPU platform start on the fake torch_npu: the stack probe, and every refusal as one line naming the fix.

The fake stands in for torch_npu + CANN (tests/attention/fake_torch_npu.py); the platform code under test
is the real one: set_device, ATB registration, the capability probe, the refusals.
"""

from __future__ import annotations

import os
import types

import pytest
import torch

from npu_serve.device import resolve_platform
from npu_serve.device.npu_caps import cann_release, op_arguments, probe, version_tuple
from npu_serve.errors import DeviceUnavailable, InvalidParameter
from tests.attention.fake_torch_npu import PROFILES, install_fake


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("NPU_SERVE_NPU_DECODE_OP", raising=False)


@pytest.mark.parametrize("name, write_op", [("cann8.5", "atb"), ("cann9.1", "scatter")])
def test_probe_reads_the_stack(monkeypatch, name, write_op):
    fake = install_fake(monkeypatch, name)
    platform = resolve_platform("npu")
    caps = platform.capabilities
    assert caps.cann_version == fake.profile.cann and caps.torch_npu_version == fake.profile.torch_npu
    assert (caps.soc_version, caps.soc_family) == (223, "A2")
    assert caps.has_scatter_pa_kv_cache and caps.scatter_has_cache_mode == (name == "cann9.1")
    assert caps.write_op == write_op and caps.has_atb and caps.has_fused_infer_attention
    assert caps.schema_source == "signature"
    assert fake.npu.device_calls == ["set_device(0)"] and fake.atb_registered
    assert "CANN " + fake.profile.cann in platform.describe()


def test_set_device_uses_the_requested_index(monkeypatch):
    fake = install_fake(monkeypatch, PROFILES["cann8.5"].but(num_devices=2))
    assert resolve_platform("npu:1").index == 1
    assert fake.npu.device_calls == ["set_device(1)"]
    with pytest.raises(DeviceUnavailable, match="only 2 NPU"):
        resolve_platform("npu:2")


def test_schema_is_read_from_the_registered_op():
    """On a real stack the op's registered schema is the truth: define both versions of
    npu_scatter_pa_kv_cache (op_plugin_functions.yaml, branches 7.3.0 and 26.0.0) in a test namespace."""
    base = ("npu_scatter_pa_kv_cache(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
            "Tensor slot_mapping, *, Tensor? compress_lens=None, Tensor? compress_seq_offsets=None, "
            "Tensor? seq_lens=None{}) -> ()")
    libs = {}
    for ns, extra in (("npu_serve_probe85", ""), ("npu_serve_probe91", ", str? cache_mode='PA_NZ'")):
        libs[ns] = torch.library.Library(ns, "DEF")
        libs[ns].define(base.format(extra))
    args85, source = op_arguments(None, "npu_scatter_pa_kv_cache", torch.ops.npu_serve_probe85)
    assert source == "torch.ops" and "slot_mapping" in args85 and "cache_mode" not in args85
    args91, _ = op_arguments(None, "npu_scatter_pa_kv_cache", torch.ops.npu_serve_probe91)
    assert "cache_mode" in args91
    assert op_arguments(object(), "missing_op", torch.ops.npu_serve_probe85) == (None, "none")


@pytest.mark.parametrize("text, expected", [("8.3.RC1", (8, 3)), ("8.5.1", (8, 5)), ("9.1.0", (9, 1)),
                                            ("8.2.rc1", (8, 2)), (None, None), ("garbage", None)])
def test_cann_release(text, expected):
    assert cann_release(text) == expected


def test_version_tuple():
    assert version_tuple("2.8.0.post2") == (2, 8, 0) and version_tuple("2.7.1.dev20250724") == (2, 7, 1)
    assert version_tuple("2.10.0+gitabc") == (2, 10, 0) and version_tuple("") is None


REFUSALS = {
    # name: (profile changes, decode op, words the one line must hold)
    "CANN 8.2": (dict(cann="8.2.RC1", torch_npu="2.8.0"), None, ["CANN 8.2.RC1 is older than 8.3.RC1", "upgrade CANN"]),
    "torch-npu 2.6": (dict(torch_npu="2.6.0"), None, ["torch-npu 2.6.0 is older than 2.7.1", "install a matching pair"]),
    "no CANN": (dict(cann=None), None, ["found no CANN toolkit", "ascend-toolkit/set_env.sh"]),
    "310P": (dict(soc=202), None, ["310P", "no bfloat16", "serve on an Atlas A2"]),
    "unknown SoC": (dict(soc=104), None, ["SoC version 104", "Atlas A2/A3"]),
    "A5 without cache_mode": (dict(soc=260), None, ["Ascend 950 (A5)", "CANN >= 9.0"]),
    "NNAL missing on CANN 8.5": (dict(nnal=False), None, ["nnal/atb/set_env.sh", "ascend-toolkit/set_env.sh",
                                                          "_npu_reshape_and_cache"]),
    "NNAL missing, ATB decode on 9.1": (dict(cann="9.1.0", torch_npu="2.10.0.post4", cache_mode=True, nnal=False),
                                        "atb", ["_npu_paged_attention", "nnal/atb/set_env.sh"]),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refusals_are_one_line_naming_the_fix(monkeypatch, name):
    changes, decode_op, words = REFUSALS[name]
    if decode_op:
        monkeypatch.setenv("NPU_SERVE_NPU_DECODE_OP", decode_op)
    install_fake(monkeypatch, PROFILES["cann8.5"].but(**changes))
    with pytest.raises(DeviceUnavailable) as err:
        resolve_platform("npu")
    message = str(err.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


def test_nnal_is_only_needed_where_atb_is_used(monkeypatch):
    fake = install_fake(monkeypatch, PROFILES["cann9.1"].but(nnal=False))
    platform = resolve_platform("npu")  # scatter + "Norm" writes, FIA decodes: no ATB op is called
    assert not platform.capabilities.has_atb and platform.capabilities.write_op == "scatter"
    platform.warm_up()  # nothing to warm up
    assert fake.calls == []


def test_several_problems_are_one_line_each(monkeypatch):
    install_fake(monkeypatch, PROFILES["cann8.2"].but(soc=202))
    with pytest.raises(DeviceUnavailable) as err:
        resolve_platform("npu")
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and any("310P" in line for line in lines) and any("CANN 8.2" in line for line in lines)


def test_unknown_decode_op_is_refused(monkeypatch):
    monkeypatch.setenv("NPU_SERVE_NPU_DECODE_OP", "flash")
    install_fake(monkeypatch, "cann8.5")
    with pytest.raises(InvalidParameter, match="NPU_SERVE_NPU_DECODE_OP"):
        resolve_platform("npu")


def test_allocator_defaults_to_expandable_segments_unless_set(monkeypatch):
    monkeypatch.delenv("PYTORCH_NPU_ALLOC_CONF", raising=False)
    install_fake(monkeypatch, "cann8.5")
    resolve_platform("npu")
    assert os.environ["PYTORCH_NPU_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_NPU_ALLOC_CONF", "max_split_size_mb:256")
    resolve_platform("npu")
    assert os.environ["PYTORCH_NPU_ALLOC_CONF"] == "max_split_size_mb:256"


def test_probe_without_a_soc_query(monkeypatch):
    fake = install_fake(monkeypatch, "cann8.5")
    fake.npu = types.ModuleType("torch_npu.npu")  # a torch_npu without get_soc_version
    caps = probe(fake, None)
    assert caps.soc_version is None and caps.soc_family == "unknown"
