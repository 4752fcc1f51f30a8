"""Who is who in a tensor-parallel engine: ranks, nodes, the rendezvous. Torch-free.

The names follow torchrun: `nnodes` nodes, `node_rank` of each, `nproc_per_node` =
tensor_parallel_size / nnodes ranks on every node, global rank = node_rank * nproc_per_node +
local_rank, and the rendezvous (torch.distributed's TCP store) at master_addr:master_port on node 0.
Global rank 0 is the engine process on node 0 (it schedules and samples); local ranks 1.. of each node
are spawned processes; on nodes > 0 local rank 0 is the `npu-serve serve --node-rank K` process.

Each rank uses the device of its local rank among those the process sees, so
`ASCEND_RT_VISIBLE_DEVICES` / `CUDA_VISIBLE_DEVICES` choose a node's devices, as with torchrun.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from npu_serve.config import EngineConfig

TORCHRUN_DEFAULT_PORT = 29500


@dataclass(frozen=True)
class RankInfo:
    rank: int
    local_rank: int
    world_size: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int
    timeout_s: float
    device_type: str  # "cpu" | "cuda" | "npu": the platform rank 0 resolved
    threads: int | None  # torch threads for this rank (CPU ranks share the node's cores); None = leave as is

    @property
    def init_method(self) -> str:
        return f"tcp://{self.master_addr}:{self.master_port}"


def node_ranks(config: EngineConfig, device_type: str, master_port: int) -> list[RankInfo]:
    """The ranks this node runs (its local rank 0 first)."""
    n = config.nproc_per_node
    threads = cpu_threads_per_rank(n) if device_type == "cpu" else None
    return [RankInfo(config.node_rank * n + local, local, config.tensor_parallel_size, n, config.node_rank,
                     config.master_addr, master_port, config.distributed_timeout, device_type, threads)
            for local in range(n)]


def resolve_master_port(config: EngineConfig) -> int:
    """The configured port; else a free one on a single node (only this node's processes meet there),
    else torchrun's default."""
    if config.master_port is not None:
        return config.master_port
    if config.nnodes > 1:
        return TORCHRUN_DEFAULT_PORT
    with socket.socket() as s:
        s.bind((config.master_addr, 0))
        return s.getsockname()[1]


def cpu_threads_per_rank(ranks_on_node: int) -> int | None:
    """CPU ranks split the node's cores, unless the user chose a thread count (--threads,
    NPU_SERVE_THREADS or OMP_NUM_THREADS)."""
    if any(os.environ.get(v) for v in ("NPU_SERVE_THREADS", "OMP_NUM_THREADS")):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // ranks_on_node)
