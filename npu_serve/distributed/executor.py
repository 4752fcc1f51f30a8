"""Rank 0 of a tensor-parallel engine: starts (or meets) the other ranks, sends each step's message, runs
its own share of the forward, samples, and watches the other ranks.

Start (`start_tensor_parallel`): check from config.json that the model splits (nothing started yet)
-> spawn this node's other ranks (torch.multiprocessing, spawn) -> rendezvous -> send every rank the
one WorkerSpec -> every rank loads its shard and the ranks agree on the KV block count -> EngineCore.

A step: under a lock, broadcast `so.for_workers()` and run rank 0's forward (the collectives inside
it keep the ranks in lockstep); then sample, outside the lock, from rank 0's logits. A failure in the
first half leaves the ranks out of step, so it is fatal (DistributedError: the engine stops, the
server exits non-zero); a failure in sampling only fails that step's requests, as on one device.

Watching (a daemon thread): the process sentinels of the spawned ranks (a death is seen at once,
even while the engine thread is stuck in a collective), and, whenever no step ran for a quarter of
the timeout, a PING that every rank answers with an all-reduce. The heartbeat finds dead remote ranks
while the engine idles, and keeps the other ranks' wait for the next message from timing out.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

import torch

from npu_serve.config import EngineConfig, EngineFacts
from npu_serve.distributed.group import Control, RankGroup, WorkerSpec, join
from npu_serve.distributed.sharding import ShardPlan
from npu_serve.distributed.processes import first_exit, rank_of, spawn_ranks, stop_processes
from npu_serve.distributed.topology import node_ranks, resolve_master_port
from npu_serve.distributed.worker import platform_for_rank
from npu_serve.engine.engine_core import EngineCore
from npu_serve.engine.messages import RunnerOutput, SchedulerOutput
from npu_serve.errors import DistributedError, InvalidParameter, NpuServeError

logger = logging.getLogger(__name__)

_HEARTBEAT_MAX_S = 30.0
_POLL_S = 0.2


class TensorParallelExecutor:
    """The Executor (engine/engine_core.py) of rank 0 over every tensor-parallel rank."""

    def __init__(self, runner, group: RankGroup, workers: list[BaseProcess], restore_threads: int | None = None):
        self.runner = runner
        self.group = group
        self.workers = workers
        self.heartbeat_s = min(_HEARTBEAT_MAX_S, group.info.timeout_s / 4)
        self.last_message_bytes = 0
        self._restore_threads = restore_threads
        self._lock = threading.Lock()  # one conversation with the ranks at a time: a step or a ping
        self._last = time.monotonic()
        self._dead: str | None = None
        self._on_dead: list[Callable[[str], None]] = []
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._watch, name="npu-serve-tp-watch", daemon=True)
        self._thread.start()

    # -- Executor -----------------------------------------------------------------------------------
    def execute(self, so: SchedulerOutput) -> RunnerOutput:
        if not so.scheduled and not so.block_copies:
            return self.runner.sample(so, None)  # only rank 0 keeps per-request state
        with self._lock:
            if self._dead is not None:
                raise DistributedError(self._dead)
            try:
                self.last_message_bytes = self.group.send(so.for_workers())
                logits = self.runner.forward(so)
            except Exception as exc:
                reason = self._explain(f"a step failed on rank 0 ({type(exc).__name__}: {exc})")
                self._die(reason)
                raise DistributedError(reason) from exc
            finally:
                self._last = time.monotonic()
        return self.runner.sample(so, logits)

    def watch(self, on_dead: Callable[[str], None]) -> None:
        self._on_dead.append(on_dead)
        if self._dead is not None:
            on_dead(self._dead)

    def shutdown(self) -> None:
        """Tell every rank to exit, wait for the spawned ones, leave the process group. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        # A step stuck in a collective holds the lock; once the ranks are known dead, do not wait for it.
        talked = self._lock.acquire(timeout=2.0 if self._dead is not None else self.group.info.timeout_s)
        try:
            if talked and self._dead is None:
                try:
                    self.group.send(Control.SHUTDOWN)
                except Exception:  # noqa: BLE001 - they are gone already; nothing to tell
                    logger.warning("could not tell the ranks to shut down", exc_info=True)
            stop_processes(self.workers, grace_s=10.0 if self._dead is None else 0.5)
            if talked:
                self.group.close()
        finally:
            if talked:
                self._lock.release()
        self._thread.join(5)
        if self._restore_threads is not None:
            torch.set_num_threads(self._restore_threads)

    # -- watching -----------------------------------------------------------------------------------
    def _watch(self) -> None:
        sentinels = {p.sentinel: p for p in self.workers}
        while not self._stop.is_set() and self._dead is None:
            if sentinels:
                ready = multiprocessing.connection.wait(list(sentinels), timeout=_POLL_S)
            else:
                self._stop.wait(_POLL_S)
                ready = []
            if self._stop.is_set():
                return
            if ready:
                self._die(self._explain("a rank exited"))
                return
            if time.monotonic() - self._last >= self.heartbeat_s and self._lock.acquire(blocking=False):
                try:
                    if self._dead is None and not self._stop.is_set():
                        self.group.send(Control.PING)
                        self.group.all_min(0)
                except Exception as exc:  # noqa: BLE001
                    self._die(self._explain(f"a heartbeat failed ({type(exc).__name__}: {exc})"))
                finally:
                    self._last = time.monotonic()
                    self._lock.release()

    def _explain(self, what: str) -> str:
        """`what`, with the exit codes of dead spawned ranks and the reasons ranks left in the store."""
        for p in self.workers:
            p.join(0.2)  # a rank that is dying (its sockets closed first) has an exit code in a moment
        details = [f"rank {rank_of(p)} (pid {p.pid}) exited with code {p.exitcode}"
                   for p in self.workers if p.exitcode is not None]
        details += [f"rank {r}: {msg}" for r, msg in self.group.errors().items()]
        return f"tensor parallelism failed: {what}" + (f"; {'; '.join(details)}" if details else "")

    def _die(self, reason: str) -> None:
        if self._dead is not None:
            return
        self._dead = reason
        logger.error("%s", reason)
        for callback in list(self._on_dead):
            try:
                callback(reason)
            except Exception:  # noqa: BLE001
                logger.exception("on_dead callback failed")
        stop_processes(self.workers, grace_s=0.5)  # the survivors cannot make progress without it


# -- start -----------------------------------------------------------------------------------------
def start_tensor_parallel(config: EngineConfig) -> tuple[EngineCore, EngineFacts, object]:
    """Start this node's ranks and build rank 0's engine; see the module docstring."""
    import torch.distributed as dist

    from npu_serve.device import resolve_dtype, resolve_platform
    from npu_serve.models import resolve_model

    if dist.is_initialized():
        raise InvalidParameter("tensor_parallel_size", "this process already belongs to a tensor-parallel engine; "
                               "shut that one down first (LLM.shutdown(), AsyncEngine.shutdown())")
    device_type = resolve_platform(config.device).name  # first: NPU probes and refusals; then transformers
    from npu_serve.worker.builder import build_rank, make_engine_core
    from npu_serve.worker.preflight import load_config

    _check_accelerator(device_type)
    platform = platform_for_rank(device_type, 0, config.nproc_per_node)
    resolved = resolve_model(config.model)  # converts a GGUF once, before any rank reads it
    shard = ShardPlan.for_config(load_config(resolved.path), config.tensor_parallel_size)
    infos = node_ranks(config, device_type, resolve_master_port(config))
    dtype = resolve_dtype(config.dtype, platform)
    saved_threads = torch.get_num_threads()
    if infos[0].threads is not None:
        torch.set_num_threads(infos[0].threads)
    workers = spawn_ranks(infos[1:])
    group = executor = None
    try:
        group = join(infos[0], platform, alive=lambda: first_exit(workers))
        group.send(WorkerSpec(config, str(dtype).replace("torch.", ""), device_type, shard))
        built = build_rank(config, platform, dtype, shard, group)
        executor = TensorParallelExecutor(built.runner, group, workers, restore_threads=saved_threads)
        return make_engine_core(config, built, executor)
    except BaseException as exc:
        if executor is not None:  # the ranks are up and waiting: tell them, then give up
            executor.shutdown()
            raise
        reason = _start_failure(exc, workers, group)
        stop_processes(workers, grace_s=0.5)
        if group is not None:
            group.close()
        torch.set_num_threads(saved_threads)
        if isinstance(exc, NpuServeError) and not isinstance(exc, DistributedError):
            raise
        raise DistributedError(reason) from exc


def _start_failure(exc: BaseException, workers: list[BaseProcess], group: RankGroup | None) -> str:
    time.sleep(0.2)  # let a rank that failed finish writing its reason
    details = [f"rank {r}: {m}" for r, m in (group.errors() if group is not None else {}).items()]
    dead = first_exit(workers)
    if dead:
        details.append(dead + " (its log says why)")
    return f"tensor-parallel start failed: {type(exc).__name__}: {exc}" + (f"; {'; '.join(details)}" if details else "")


def _check_accelerator(device_type: str) -> None:
    """transformers builds its device mesh on the machine's accelerator; the ranks must run there too."""
    accelerator = torch._C._get_accelerator().type
    if accelerator != device_type:
        raise InvalidParameter("device", f"tensor parallelism runs on this machine's accelerator ({accelerator}), "
                               f"not on {device_type} (transformers builds its device mesh there)")
