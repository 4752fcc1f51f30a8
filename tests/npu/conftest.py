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
        from npu_serve.device.npu import NpuPlatform
        from npu_serve.errors import DeviceUnavailable, InvalidParameter

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
