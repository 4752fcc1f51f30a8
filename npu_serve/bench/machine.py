"""How busy the machine was during a run, so a reader can tell a clean measurement from a noisy one.

On a 2-core box the benchmark client, the server and anything else running share the same cores.
Per run the results record, in cores busy on average over the run (CPU seconds / wall seconds):
- machine: all CPUs, from /proc/stat;
- client: this process (the benchmark itself);
- server: the process tree under `--server-pid`, when given (threads and child processes);
- other = machine - client - server: someone else's load. Large values mean the numbers are not clean.
Also the share of the run's wall time in which every runnable task was stalled on memory
(/proc/pressure/memory "full"): a machine short of memory evicts and rereads program pages, and a
run can then crawl with idle cores. Linux only (/proc); elsewhere the fields are null.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from npu_serve.bench.errors import BenchError

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float | None:
    """CPU seconds all CPUs spent not idle since boot (None without /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    v = [int(x) for x in fields]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    busy = sum(v[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy / _TICK


def memory_stall_seconds() -> float | None:
    """Seconds, since boot, in which all non-idle tasks were stalled on memory (None without PSI)."""
    try:
        for line in Path("/proc/pressure/memory").read_text().splitlines():
            if line.startswith("full"):
                return int(line.rsplit("total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        pass
    return None


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(x) for x in task.read_text().split()]
        except OSError:
            pass
    return kids


def tree_cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of `pid` and all its descendants alive now (None if pid is gone)."""
    total, todo, seen = 0.0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            if p == pid:
                return None
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
        todo += _children(p)
    return total


def check_pid(pid: int) -> None:
    if not Path(f"/proc/{pid}").exists():
        raise BenchError(f"--server-pid {pid}: no such process (or no /proc on this system)")


def client_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class CpuUse:
    """Average cores busy over one run, and the 1-minute load average just before it."""

    load_avg_1m_before: float | None
    machine_cores: float | None
    client_cores: float | None
    server_cores: float | None
    other_cores: float | None
    memory_stall_fraction: float | None = None


class CpuMeter:
    """`m = CpuMeter(server_pid); ...run...; use = m.stop()`."""

    def __init__(self, server_pid: int | None = None):
        self.server_pid = server_pid
        try:
            self.load = os.getloadavg()[0]
        except OSError:
            self.load = None
        self.t0 = time.perf_counter()
        self.machine0 = machine_busy_seconds()
        self.client0 = client_cpu_seconds()
        self.server0 = tree_cpu_seconds(server_pid) if server_pid else None
        self.stall0 = memory_stall_seconds()

    def stop(self) -> CpuUse:
        wall = time.perf_counter() - self.t0
        if wall <= 0:
            return CpuUse(self.load, None, None, None, None)
        machine1 = machine_busy_seconds()
        machine = (machine1 - self.machine0) / wall if machine1 is not None and self.machine0 is not None else None
        client = (client_cpu_seconds() - self.client0) / wall
        server = None
        if self.server0 is not None:
            s1 = tree_cpu_seconds(self.server_pid)
            server = (s1 - self.server0) / wall if s1 is not None else None
        other = machine - client - (server or 0.0) if machine is not None else None
        stall1 = memory_stall_seconds()
        stall = (stall1 - self.stall0) / wall if stall1 is not None and self.stall0 is not None else None
        return CpuUse(self.load, machine, client, server, other if server is not None else None, stall)
