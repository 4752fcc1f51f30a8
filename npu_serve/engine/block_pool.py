"""BlockPool: fixed-size KV blocks as ids and reference counts (no tensors; those live in worker/).

Invariants, checked by tests under random operation sequences:
- block 0 is the null block: never handed out, never freed (padding in block tables points at it);
- `ref_cnt >= 0`; a block is in the free queue exactly when its ref_cnt is 0;
- the free queue is in LRU order: blocks freed earlier are reused first, so a freed block that holds a
  hashed (prefix-cache) full block stays reusable as long as possible; reusing it for new data evicts
  its hash.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(eq=False)
class Block:
    block_id: int
    ref_cnt: int = 0
    block_hash: bytes | None = None  # set once the block is full and registered in the prefix cache


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool = True):
        if num_blocks < 2:
            raise ValueError(f"need at least 2 KV blocks (one is the null block), got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.null_block = self.blocks[0]
        self.null_block.ref_cnt = 1  # pinned forever
        # id -> Block, in LRU order (front = evict first). An OrderedDict gives O(1) removal of a
        # block that gets touched again by a prefix-cache hit.
        self._free: OrderedDict[int, Block] = OrderedDict((b.block_id, b) for b in self.blocks[1:])
        self._cached: dict[bytes, Block] = {}

    # -- queries --------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now (free, including ones that still hold cached data)."""
        return len(self._free)

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    def get_cached_block(self, block_hash: bytes) -> Block | None:
        return self._cached.get(block_hash)

    # -- transitions ----------------------------------------------------------------------------
    def get_new_blocks(self, n: int) -> list[Block]:
        """Pop n blocks from the LRU end of the free queue, evicting any cached hash they hold."""
        if n > len(self._free):
            raise ValueError(f"cannot allocate {n} blocks, only {len(self._free)} free")
        out = []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            if block.block_hash is not None:
                if self._cached.get(block.block_hash) is block:
                    del self._cached[block.block_hash]
                block.block_hash = None
            block.ref_cnt = 1
            out.append(block)
        return out

    def touch(self, blocks: list[Block]) -> None:
        """Take one more reference on blocks found in the prefix cache (they may be in the free queue)."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def free_blocks(self, blocks: list[Block]) -> None:
        """Drop one reference on each block; blocks that reach 0 join the free queue's MRU end in the
        order given (callers pass a request's blocks tail-first, so its prefix is evicted last)."""
        for block in blocks:
            if block is self.null_block:
                continue
            if block.ref_cnt <= 0:
                raise RuntimeError(f"block {block.block_id} freed more often than allocated")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self._free[block.block_id] = block

    def cache_full_block(self, block: Block, block_hash: bytes) -> None:
        """Register a full block under its chained hash so later requests with the same prefix reuse it."""
        if not self.enable_caching or block.block_hash is not None:
            return
        if block_hash in self._cached:
            return  # another block already holds this content; this one stays private
        block.block_hash = block_hash
        self._cached[block_hash] = block

    def reset_prefix_cache(self) -> None:
        for block in self._cached.values():
            block.block_hash = None
        self._cached.clear()
