"""The CPU meter against real processes: a busy grandchild counts toward its server's tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from npu_serve.bench.errors import BenchError
from npu_serve.bench.machine import CpuMeter, check_pid, tree_cpu_seconds

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")

# Burns 0.5 s of CPU time (not wall time, so a loaded machine only makes it slower), says so, then idles.
BURN = "import time\nwhile time.process_time() < 0.5: pass\nprint(1, flush=True)\ntime.sleep(60)"


def test_server_tree_includes_grandchildren_and_other_is_the_rest():
    # a shell (the "server") whose child burns CPU: only the tree walk can see that CPU time
    server = subprocess.Popen(["/bin/sh", "-c", f"{sys.executable} -c '{BURN}'; true"], stdout=subprocess.PIPE,
                              start_new_session=True)
    try:
        meter = CpuMeter(server.pid)
        assert server.stdout.readline().strip() == b"1"
        use = meter.stop()
        assert tree_cpu_seconds(server.pid) >= 0.45  # (clock ticks round down) the grandchild's CPU time counts toward the shell's tree
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
    assert use.server_cores > 0
    assert use.machine_cores >= use.server_cores - 0.05
    assert use.other_cores == pytest.approx(use.machine_cores - use.client_cores - use.server_cores)
    assert tree_cpu_seconds(server.pid) is None  # gone


def test_without_a_server_pid_other_is_unknown_and_a_missing_pid_is_refused():
    use = CpuMeter().stop()
    assert use.server_cores is None and use.other_cores is None
    with pytest.raises(BenchError, match="no such process"):
        check_pid(2**22 + 12345)  # above any pid_max Linux allows
