"""A compute-only node of a multi-node tensor-parallel engine (`npu-serve serve --node-rank K`, K > 0).

It runs the node's ranks (local rank 0 in this process, the others spawned) and no HTTP server: it
takes every engine setting from global rank 0 (WorkerSpec), so the model path must exist on every
node. Exit code 0 after rank 0's SHUTDOWN; non-zero if any rank of this node failed or lost rank 0.
"""

from __future__ import annotations

import logging

from npu_serve.config import EngineConfig

logger = logging.getLogger(__name__)


def serve_node(config: EngineConfig) -> int:
    from npu_serve.device import resolve_platform
    from npu_serve.distributed.processes import spawn_ranks, stop_processes
    from npu_serve.distributed.topology import node_ranks, resolve_master_port
    from npu_serve.distributed.worker import run_worker

    infos = node_ranks(config, resolve_platform(config.device).name, resolve_master_port(config))
    print(f"npu-serve: node {config.node_rank} of {config.nnodes}: ranks {infos[0].rank}..{infos[-1].rank} of "
          f"{config.tensor_parallel_size}, meeting at {infos[0].master_addr}:{infos[0].master_port}", flush=True)
    children = spawn_ranks(infos[1:])
    try:
        code = run_worker(infos[0])
    finally:
        stop_processes(children, grace_s=10.0)
    failed = [p for p in children if p.exitcode != 0]
    for p in failed:
        logger.error("%s exited with code %s", p.name, p.exitcode)
    return code or (1 if failed else 0)
