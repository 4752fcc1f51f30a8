"""Every rank but 0: join the world, load this rank's shard, then run each step's forward as rank 0
sends it, until SHUTDOWN (exit 0) or until rank 0 or another rank is gone (exit 1).

Workers keep no per-request state (engine/messages.py): each step's message carries the whole batch.
A worker that fails leaves its reason in the rendezvous store, for rank 0's error message.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback

import torch

from npu_serve.distributed.group import Control, RankGroup, WorkerSpec, join
from npu_serve.distributed.topology import RankInfo
from npu_serve.engine.messages import SchedulerOutput
from npu_serve.errors import DeviceUnavailable, DistributedError

logger = logging.getLogger(__name__)


def worker_main(info: RankInfo) -> None:
    """The target of a spawned rank."""
    # Ctrl-C in a terminal reaches the whole process group: the engine process decides; a worker
    # that lost rank 0 exits on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(run_worker(info))


def run_worker(info: RankInfo) -> int:
    """Join, build, serve steps. Returns the process exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format=f"%(asctime)s %(levelname)s rank{info.rank} %(name)s: %(message)s")
    if info.threads is not None:
        torch.set_num_threads(info.threads)
    group: RankGroup | None = None
    try:
        from npu_serve.device import resolve_dtype

        platform = platform_for_rank(info.device_type, info.local_rank, info.nproc_per_node)
        from npu_serve.worker.builder import build_rank  # transformers only after the platform (device/__init__)

        group = join(info, platform)
        spec = group.recv()
        if not isinstance(spec, WorkerSpec):
            raise DistributedError(f"expected rank 0's WorkerSpec first, got {type(spec).__name__}")
        if spec.device_type != info.device_type:
            raise DistributedError(f"rank 0 runs on {spec.device_type} but this node resolved {info.device_type}; "
                                   "give every node the same --device")
        built = build_rank(spec.config, platform, resolve_dtype(spec.dtype, platform), spec.shard, group)
    except BaseException as exc:  # noqa: BLE001 - reported, then this rank exits non-zero
        logger.error("rank %d failed to start: %s", info.rank, "".join(traceback.format_exception(exc)))
        if group is not None:
            group.report_error(f"{type(exc).__name__}: {exc}")
        return 1
    logger.info("rank %d ready (pid %d)", info.rank, os.getpid())
    return serve_steps(built.runner, group)


def serve_steps(runner, group: RankGroup) -> int:
    while True:
        try:
            message = group.recv()
        except Exception as exc:  # noqa: BLE001 - rank 0 is gone or timed out
            logger.error("rank %d lost rank 0: %s: %s", group.rank, type(exc).__name__, exc)
            return 1
        if isinstance(message, SchedulerOutput):
            try:
                runner.forward(message)
            except Exception as exc:  # noqa: BLE001 - the others are stuck without us: leave, say why
                logger.exception("rank %d: step failed", group.rank)
                group.report_error(f"step failed: {type(exc).__name__}: {exc}")
                return 1
        elif message is Control.PING:
            try:
                group.all_min(0)
            except Exception as exc:  # noqa: BLE001
                logger.error("rank %d: heartbeat failed: %s", group.rank, exc)
                return 1
        elif message is Control.SHUTDOWN:
            group.close()
            return 0
        else:
            group.report_error(f"unknown message {type(message).__name__}")
            return 1


def platform_for_rank(device_type: str, local_rank: int, nproc_per_node: int):
    """The platform of local rank `local_rank`: the host, or the local_rank-th visible device."""
    from npu_serve.device import resolve_platform

    if device_type == "cpu":
        return resolve_platform("cpu")
    platform = resolve_platform(device_type)  # imports torch_npu where needed, with its clear errors
    visible = platform.device_count()
    if visible < nproc_per_node:
        env = platform.visible_devices_env
        raise DeviceUnavailable(f"{nproc_per_node} ranks per node need {nproc_per_node} {device_type} devices, but "
                                f"this process sees {visible} ({env}={os.environ.get(env)!r})")
    return resolve_platform(f"{device_type}:{local_rank}")
