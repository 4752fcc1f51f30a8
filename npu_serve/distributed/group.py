"""A rank's membership of the tensor-parallel world: the rendezvous, the process groups, the channel.

- Rendezvous: torch.distributed's TCP store on node 0 (master_addr:master_port). Each rank announces
  itself there before joining the process group, so rank 0 can wait for its spawned workers while
  watching them (a worker that dies on the way is reported at once, not after a timeout), and a rank
  that fails to start leaves its reason in the store for rank 0's error message.
- The model's collectives run on the default group (HCCL on npu, NCCL on cuda, Gloo on cpu; the
  device is set before the group is created, as Ascend requires).
- Control messages (each step's SchedulerOutput, heartbeats, shutdown) go over a separate Gloo group
  on host memory: rank 0 pickles a message and broadcasts its length, then its bytes.
"""

from __future__ import annotations

import enum
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from npu_serve.config import EngineConfig
from npu_serve.distributed.sharding import ShardPlan
from npu_serve.distributed.topology import RankInfo
from npu_serve.errors import DistributedError

_PREFIX = "npu_serve/"
# Joining waits at least this long, whatever distributed_timeout says: a spawned rank may need a
# minute to import torch on a loaded machine, and a local rank that dies meanwhile is reported at once.
JOIN_MIN_S = 180.0


class Control(enum.Enum):
    PING = "ping"  # heartbeat: every rank answers with an all-reduce (proves they are all there)
    SHUTDOWN = "shutdown"  # leave the loop and exit 0


@dataclass(frozen=True)
class WorkerSpec:
    """Rank 0's first message: the one config every rank builds from, and what rank 0 resolved."""

    config: EngineConfig
    dtype: str
    device_type: str
    shard: ShardPlan


class RankGroup:
    def __init__(self, info: RankInfo, store: dist.Store, control: dist.ProcessGroup):
        self.info = info
        self.store = store
        self.control = control
        self._size = torch.zeros(1, dtype=torch.int64)

    @property
    def rank(self) -> int:
        return self.info.rank

    # -- messages from rank 0 -----------------------------------------------------------------------
    def send(self, message: Any) -> int:
        """Broadcast `message` from rank 0 to every rank; returns its size in bytes."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._size[0] = len(data)
        dist.broadcast(self._size, src=0, group=self.control)
        dist.broadcast(torch.frombuffer(bytearray(data), dtype=torch.uint8), src=0, group=self.control)
        return len(data)

    def recv(self) -> Any:
        dist.broadcast(self._size, src=0, group=self.control)
        buf = torch.empty(int(self._size[0]), dtype=torch.uint8)
        dist.broadcast(buf, src=0, group=self.control)
        return pickle.loads(buf.numpy().tobytes())

    def all_min(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.control)
        return int(t[0])

    # -- startup status in the store ----------------------------------------------------------------
    def report_error(self, message: str) -> None:
        try:
            self.store.set(f"{_PREFIX}error/{self.rank}", message[-2000:])
        except Exception:  # noqa: BLE001 - the store may be gone with rank 0; the exit code still tells
            pass

    def errors(self) -> dict[int, str]:
        """Reasons other ranks left in the store (best effort)."""
        found = {}
        for r in range(self.info.world_size):
            key = f"{_PREFIX}error/{r}"
            try:
                if r != self.rank and self.store.check([key]):
                    found[r] = self.store.get(key).decode(errors="replace")
            except Exception:  # noqa: BLE001
                break
        return found

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def join(info: RankInfo, platform, alive: Callable[[], str | None] = lambda: None) -> RankGroup:
    """Set this rank's device, meet the others at the rendezvous, create the process groups.

    Rank 0 hosts the store and waits there for every rank, calling `alive()` while it waits: a
    non-None answer (a spawned worker died) aborts the start with that reason."""
    platform.set_device()
    # transformers binds each rank's accelerator from LOCAL_RANK when it builds the device mesh.
    os.environ["LOCAL_RANK"] = str(info.local_rank)
    timeout = timedelta(seconds=info.timeout_s)
    store = dist.TCPStore(info.master_addr, info.master_port, info.world_size, is_master=info.rank == 0,
                          timeout=timedelta(seconds=max(info.timeout_s, JOIN_MIN_S)), wait_for_workers=False)
    store.set(f"{_PREFIX}joined/{info.rank}", str(os.getpid()))
    if info.rank == 0:
        _wait_for_ranks(store, info, alive)
    dist.init_process_group(platform.dist_backend, store=store, rank=info.rank, world_size=info.world_size,
                            timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=timeout)
    return RankGroup(info, store, control)


def _wait_for_ranks(store: dist.Store, info: RankInfo, alive: Callable[[], str | None]) -> None:
    keys = [f"{_PREFIX}joined/{r}" for r in range(info.world_size)]
    deadline = time.monotonic() + max(info.timeout_s, JOIN_MIN_S)
    while True:
        missing = [r for r, k in enumerate(keys) if not store.check([k])]
        if not missing:
            return
        problem = alive()
        if problem is not None:
            raise DistributedError(f"a rank failed before the rendezvous: {problem}")
        if time.monotonic() > deadline:
            raise DistributedError(f"ranks {missing} did not join the rendezvous at {info.master_addr}:"
                                   f"{info.master_port} within {max(info.timeout_s, JOIN_MIN_S):g} s; start every "
                                   "node with the same --tensor-parallel-size, --nnodes, --master-addr and --master-port")
        time.sleep(0.05)
