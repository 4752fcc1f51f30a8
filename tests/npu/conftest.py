"""tests/npu: the first-contact suite, run on a real Ascend NPU (scripts/npu_check.sh) and skipped
elsewhere with the reason (never silently): everything shared/ascend-notes.md lists as unverified.

The platform is started once per session, as the engine starts it (stack probe, refusals, ATB
registration and warm-up); a machine where that fails skips every test here with the platform's own
one-line reason.
"""

from __future__ import annotations

import pytest

_state: dict = {}


def start_npu():
    """The started NpuPlatform, or pytest.skip with why not. Cached for the session."""
    if "platform" not in _state:
        import sys

        from npu_serve.device import npu as npu_module
        from npu_serve.device.npu import NpuPlatform
        from npu_serve.errors import DeviceUnavailable, InvalidParameter

        if npu_module._kept_out and sys.modules.get("torch_npu", 0) is None:
            # An earlier test's CPU engine kept torch_npu out of this test process: look for the real one,
            # so the skip reason (or the NPU) is this machine's, not that test's.
            del sys.modules["torch_npu"]
            npu_module._kept_out = False

        try:
            platform = NpuPlatform()
            platform.warm_up()
            _state["platform"] = platform
        except (DeviceUnavailable, InvalidParameter) as e:
            _state["platform"] = None
            _state["reason"] = f"no usable Ascend NPU here: {e}"
    if _state["platform"] is None:
        pytest.skip(_state["reason"])
    return _state["platform"]


@pytest.fixture
def npu():
    return start_npu()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/npu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.npu)
