"""KVCacheManager: which blocks each request holds, prefix-cache lookups, and slot allocation.

Ids and counts only; the tensors live in worker/kv_cache.py. A request's blocks cover its tokens in
order: token i lives in block `blocks[i // block_size]` at offset `i % block_size`.

Sharing: `fork(parent, child)` gives the child the parent's whole block table by reference (one
more ref per block), as n > 1 outputs and beam search need. Full blocks are never written again,
so sharing them is free. A shared *partial* last block is copied on write: before a request
appends into a block whose ref_cnt > 1, it gets a fresh block and a (src, dst) copy is queued
(`take_copies()`), which the worker applies to every layer's KV tensor before the next forward.
"""

from __future__ import annotations

from npu_serve.engine.block_hash import hash_block
from npu_serve.engine.block_pool import Block, BlockPool
from npu_serve.engine.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_caching=enable_prefix_caching)
        self._blocks: dict[str, list[Block]] = {}
        self._num_cached: dict[str, int] = {}  # how many of a request's blocks are registered
        self._copies: list[tuple[int, int]] = []  # copy-on-write (src, dst) block pairs, not yet applied

    @property
    def capacity_tokens(self) -> int:
        return self.pool.num_usable_blocks * self.block_size

    def num_used_blocks(self) -> int:
        return self.pool.num_usable_blocks - self.pool.num_free_blocks

    def block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self._blocks.get(request_id, ())]

    def _extend_hashes(self, req: Request) -> None:
        bs = self.block_size
        hashes = req.block_hashes
        for i in range(len(hashes), req.num_tokens // bs):
            hashes.append(hash_block(hashes[i - 1] if i else None, req.token_slice(i * bs, (i + 1) * bs)))

    def get_computed_blocks(self, req: Request) -> tuple[list[Block], int]:
        """Longest run of this request's leading full blocks already in the prefix cache.

        At most num_tokens - 1 tokens can be hits: the last token must run through the model to give
        the logits the next token is sampled from.
        """
        if not self.enable_prefix_caching:
            return [], 0
        self._extend_hashes(req)
        hits: list[Block] = []
        for block_hash in req.block_hashes[: (req.num_tokens - 1) // self.block_size]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def allocate_slots(self, req: Request, num_new_tokens: int, computed: list[Block] = ()) -> bool:
        """Make room for `num_new_tokens` more tokens after the computed ones (those already counted in
        req.num_computed_tokens plus `computed`, fresh prefix-cache hits). False, changing nothing, when
        the pool is too small; the caller then preempts or waits."""
        bs = self.block_size
        held = self._blocks.setdefault(req.request_id, [])
        num_computed = req.num_computed_tokens + len(computed) * bs
        need = cdiv(num_computed + num_new_tokens, bs) - len(held) - len(computed)
        # The next token goes into a partial block still shared with a fork: copy it first.
        cow = num_new_tokens > 0 and num_computed % bs != 0 and held[num_computed // bs].ref_cnt > 1
        # Hits whose ref count is 0 sit in the free queue: taking them shrinks what is free.
        revived = sum(1 for b in computed if b.ref_cnt == 0)
        if need + cow + revived > self.pool.num_free_blocks:
            if not held:
                del self._blocks[req.request_id]
            return False
        if cow:
            i = num_computed // bs
            (fresh,) = self.pool.get_new_blocks(1)
            self._copies.append((held[i].block_id, fresh.block_id))
            self.pool.free_blocks([held[i]])  # still held by the other fork(s)
            held[i] = fresh
        self.pool.touch(list(computed))
        held.extend(computed)
        if need > 0:
            held.extend(self.pool.get_new_blocks(need))
        if self.enable_prefix_caching:
            # Register every block that is full once this step's tokens are written. Safe before the
            # forward runs: the whole batch's K/V is written before any attention reads it.
            self._extend_hashes(req)
            num_full = (num_computed + num_new_tokens) // bs
            start = self._num_cached.get(req.request_id, 0)
            for i in range(start, num_full):
                self.pool.cache_full_block(held[i], req.block_hashes[i])
            self._num_cached[req.request_id] = max(start, num_full)
        return True

    def fork(self, parent: Request, child: Request) -> None:
        """Share every block of `parent` with `child` (which must hold none): one more ref each."""
        if self._blocks.get(child.request_id):
            raise RuntimeError(f"fork target {child.request_id!r} already holds blocks")
        blocks = list(self._blocks.get(parent.request_id, ()))
        self.pool.touch(blocks)
        self._blocks[child.request_id] = blocks
        self._num_cached[child.request_id] = self._num_cached.get(parent.request_id, 0)

    def take_copies(self) -> list[tuple[int, int]]:
        """The copy-on-write (src, dst) pairs queued since the last call; the worker must apply them
        before the forward that writes into dst."""
        copies, self._copies = self._copies, []
        return copies

    def free(self, req: Request) -> None:
        """Release every block the request holds (tail first, so its prefix is evicted last)."""
        blocks = self._blocks.pop(req.request_id, [])
        self._num_cached.pop(req.request_id, None)
        self.pool.free_blocks(blocks[::-1])
