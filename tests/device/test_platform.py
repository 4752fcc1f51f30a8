"""Platform resolution, the torch_npu import guard, and dtype resolution."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from npu_serve.device import CpuPlatform, CudaPlatform, NpuPlatform, resolve_dtype, resolve_platform
from npu_serve.device import cpu as cpu_module
from npu_serve.device import npu as npu_module
from npu_serve.device.npu import import_torch_npu
from npu_serve.errors import DeviceUnavailable, InvalidParameter

PACKAGE = Path(__file__).resolve().parents[2] / "npu_serve"


@pytest.fixture
def no_torch_npu(monkeypatch):
    """Make `import torch_npu` fail as it does where torch-npu is not installed (and forget that an earlier
    test's CPU engine kept torch_npu out of this process, which fails the import the same way)."""
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    monkeypatch.setattr(npu_module, "_kept_out", False)


@pytest.fixture
def failing_torch_npu(monkeypatch, tmp_path):
    """Install a torch_npu that raises `exc` on import, as a broken CANN or torch mismatch does."""
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(exc: str) -> None:
        (tmp_path / "torch_npu.py").write_text(f"raise {exc}\n")

    return install


def test_auto_picks_the_best_available_device(no_torch_npu):
    platform = resolve_platform("auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert platform.name == expected
    assert resolve_platform().name == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(DeviceUnavailable, match="CUDA"):
        resolve_platform("cuda")
    assert not CudaPlatform.is_available()


def test_npu_guard_when_torch_npu_is_missing(no_torch_npu):
    with pytest.raises(DeviceUnavailable, match="torch-npu is not installed"):
        import_torch_npu()
    with pytest.raises(DeviceUnavailable, match="not installed"):
        resolve_platform("npu")
    assert NpuPlatform.is_available() is False
    assert resolve_platform("auto").name != "npu"


@pytest.mark.parametrize("exc, message", [
    ('OSError("libascendcl.so: cannot open shared object file")', "CANN runtime"),
    ('ImportError("libhccl.so: cannot open shared object file")', "CANN runtime"),
    ('RuntimeError("torch_npu was built against torch 2.1")', "different torch"),
])
def test_npu_guard_explains_a_broken_install(failing_torch_npu, exc, message, caplog):
    failing_torch_npu(exc)
    with pytest.raises(DeviceUnavailable, match=message):
        import_torch_npu()
    with pytest.raises(DeviceUnavailable, match=message):
        resolve_platform("npu:0")
    # "auto" still falls back, but says why it skipped an installed torch_npu.
    assert resolve_platform("auto").name != "npu"
    assert "skipping npu" in caplog.text


def test_torch_npu_is_imported_in_exactly_one_place():
    pattern = re.compile(r"^\s*(import torch_npu|from torch_npu)|import_module\(\s*[\"']torch_npu", re.M)
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == ["device/npu.py"]


def test_a_cpu_engine_keeps_torch_npu_out(monkeypatch):
    """transformers imports an installed torch_npu by itself; once the platform is CPU nobody may."""
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    monkeypatch.setattr(npu_module, "_kept_out", False)
    assert resolve_platform("cpu").name == "cpu"
    assert sys.modules["torch_npu"] is None
    import importlib.util

    assert importlib.util.find_spec("torch_npu") is None
    with pytest.raises(DeviceUnavailable, match="already runs a CPU/CUDA engine"):
        import_torch_npu()


def test_importing_the_package_does_not_import_torch_npu(tmp_path):
    # A torch_npu that explodes on import: merely importing our modules must not trigger it.
    (tmp_path / "torch_npu.py").write_text("raise SystemExit('torch_npu imported')\n")
    code = "import npu_serve.device, npu_serve.models, sys; assert 'torch_npu' not in sys.modules; print('ok')"
    env_path = f"{tmp_path}:{PACKAGE.parent}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cpu:1", "", "auto:0"])
def test_unknown_device_is_invalid(device):
    with pytest.raises(InvalidParameter) as err:
        resolve_platform(device)
    assert err.value.param == "device"


def test_platform_defaults():
    cpu = resolve_platform("cpu")
    assert isinstance(cpu, CpuPlatform)
    assert cpu.torch_device == torch.device("cpu")
    assert (cpu.default_block_size, cpu.attention_backend) == (16, "cpu")
    assert (CudaPlatform.default_block_size, CudaPlatform.attention_backend) == (16, "triton")
    # Ascend's fused attention needs 128-multiples for prefill.
    assert (NpuPlatform.default_block_size, NpuPlatform.attention_backend) == (128, "npu")
    free, total = cpu.mem_get_info()
    assert 0 < free <= total
    cpu.synchronize()
    cpu.empty_cache()
    cpu.manual_seed_all(7)
    a = torch.rand(3)
    cpu.manual_seed_all(7)
    assert torch.equal(a, torch.rand(3))


@pytest.mark.parametrize("name, dtype", [
    ("float32", torch.float32), ("fp32", torch.float32), ("bfloat16", torch.bfloat16),
    ("BF16", torch.bfloat16), ("float16", torch.float16), ("fp16", torch.float16),
])
def test_resolve_dtype_names(name, dtype):
    assert resolve_dtype(name, resolve_platform("cpu")) is dtype


def test_unknown_dtype_is_invalid():
    with pytest.raises(InvalidParameter) as err:
        resolve_dtype("int8", resolve_platform("cpu"))
    assert err.value.param == "dtype"


def test_cpu_auto_dtype_is_bfloat16_where_the_linear_kernel_runs(monkeypatch):
    """On AVX512-BF16 CPUs auto means bf16 without timing oneDNN (whose bf16 matmul can lose to fp32
    there while our kernel wins); elsewhere the timed choice stands."""
    from npu_serve_kernels.linear import cpu as kernel

    timed = []
    monkeypatch.setattr(cpu_module, "_time_matmul", lambda dt: timed.append(dt) or (1.0 if dt is torch.bfloat16 else 0.5))
    try:
        monkeypatch.setattr(kernel, "has_avx512_bf16", lambda: True)
        cpu_module._fastest_cpu_dtype.cache_clear()
        assert resolve_dtype("auto", resolve_platform("cpu")) is torch.bfloat16 and timed == []
        monkeypatch.setattr(kernel, "has_avx512_bf16", lambda: False)
        cpu_module._fastest_cpu_dtype.cache_clear()
        assert resolve_dtype("auto", resolve_platform("cpu")) is torch.float32 and len(timed) == 2
    finally:
        cpu_module._fastest_cpu_dtype.cache_clear()


def test_cpu_auto_dtype_is_measured_once_and_quickly():
    cpu_module._fastest_cpu_dtype.cache_clear()
    t0 = time.perf_counter()
    first = resolve_dtype("auto", resolve_platform("cpu"))
    elapsed = time.perf_counter() - t0
    assert first in (torch.float32, torch.bfloat16)
    # The budget is ~100 ms; allow slack for a box busy with other tests.
    assert elapsed < 0.5
    t0 = time.perf_counter()
    assert resolve_dtype("auto", resolve_platform("cpu")) is first
    assert time.perf_counter() - t0 < 0.01  # cached for the process
