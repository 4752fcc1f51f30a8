"""The ranks a node spawns: started with torch.multiprocessing (spawn), stopped politely then firmly."""

from __future__ import annotations

import time
from multiprocessing.process import BaseProcess

import torch.multiprocessing

from npu_serve.distributed.topology import RankInfo


def spawn_ranks(infos: list[RankInfo]) -> list[BaseProcess]:
    """One daemon process per rank, running worker.worker_main. Spawn, not fork: a forked child of a
    process that has started threads (uvicorn, the engine, OpenMP) inherits locks it cannot release."""
    from npu_serve.distributed.worker import worker_main

    ctx = torch.multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=worker_main, args=(info,), name=f"npu-serve-rank{info.rank}", daemon=True)
             for info in infos]
    for p in procs:
        p.start()
    return procs


def rank_of(p: BaseProcess) -> str:
    return p.name.rsplit("rank", 1)[-1]


def first_exit(procs: list[BaseProcess]) -> str | None:
    for p in procs:
        if p.exitcode is not None:
            return f"rank {rank_of(p)} (pid {p.pid}) exited with code {p.exitcode}"
    return None


def stop_processes(procs: list[BaseProcess], grace_s: float) -> None:
    """Wait up to `grace_s` for them to exit on their own, then terminate, then kill."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(2)
        if p.is_alive():
            p.kill()
            p.join(2)
