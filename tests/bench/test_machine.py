"""The CPU meter against real processes: a busy grandchild counts toward its server's tree."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from npu_serve.bench.errors import BenchError
from npu_serve.bench.machine import CpuMeter, check_pid, tree_cpu_seconds

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")

BUSY = "import time\nt = time.time()\nwhile time.time() - t < 2.0: pass"


def test_server_tree_includes_grandchildren_and_other_is_the_rest():
    # a shell (the "server") whose child burns CPU: only the tree walk can see that CPU time
    server = subprocess.Popen(["/bin/sh", "-c", f"{sys.executable} -c '{BUSY}'; true"])
    try:
        time.sleep(0.3)
        meter = CpuMeter(server.pid)
        time.sleep(1.0)
        use = meter.stop()
    finally:
        server.wait(10)
    assert use.server_cores > 0.1  # the busy grandchild (a whole core on an idle machine)
    assert use.machine_cores >= use.server_cores - 0.05
    assert use.client_cores < 0.5  # this test process mostly slept
    assert use.other_cores == pytest.approx(use.machine_cores - use.client_cores - use.server_cores)
    assert tree_cpu_seconds(server.pid) is None  # gone


def test_without_a_server_pid_other_is_unknown_and_a_missing_pid_is_refused():
    use = CpuMeter().stop()
    assert use.server_cores is None and use.other_cores is None
    with pytest.raises(BenchError, match="no such process"):
        check_pid(2**22 + 12345)  # above any pid_max Linux allows
