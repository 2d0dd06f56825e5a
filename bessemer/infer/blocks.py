"""Which KV-cache blocks each sequence owns, and which blocks hold a token prefix another request can reuse.

The pool has `num_blocks` blocks of `block_size` positions. A sequence gets a block table: block i holds its
positions [i * block_size, (i + 1) * block_size). A full block is named by a digest of its tokens chained
with its parent's digest, so equal names mean an equal whole prefix, not just equal tokens in the block.
Named blocks are shared (reference counts) and outlive their sequence: unreferenced ones wait in LRU order
and are evicted only when a new block is needed and no never-used block is left.

Everything here is host bookkeeping (lists and dicts); the tensors live in bessemer.infer.kv_cache.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ROOT = b"bessemer-kv-root"


def block_digests(tokens: Sequence[int], block_size: int, count: int) -> list[bytes]:
    """Chained digests of the first `count` full blocks of `tokens`."""
    out, parent = [], ROOT
    arr = np.asarray(tokens[: count * block_size], dtype=np.int64)
    for i in range(count):
        parent = hashlib.blake2b(
            parent + arr[i * block_size : (i + 1) * block_size].tobytes(), digest_size=16
        )
        parent = parent.digest()
        out.append(parent)
    return out


@dataclass
class Allocation:
    """The blocks of one sequence and how many of its leading positions were found already computed."""

    table: list[int]
    cached_tokens: int
    named: int  # leading blocks that carry a name (shared or registered); later ones are private


class BlockManager:
    """Reference-counted blocks with prefix sharing; `prefix_cache=False` never shares (the baseline)."""

    def __init__(self, num_blocks: int, block_size: int, prefix_cache: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"kv cache: {num_blocks} blocks of {block_size} positions; use 1 or more of each"
            )
        self.num_blocks, self.block_size, self.prefix_cache = num_blocks, block_size, prefix_cache
        self._never_used = list(range(num_blocks - 1, -1, -1))  # pop() hands out block 0 first
        self._refs = [0] * num_blocks
        self._name_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}
        self._pending: set[int] = set()  # named, but their keys are written by a prefill not yet run
        self._idle: collections.OrderedDict[int, None] = collections.OrderedDict()  # named, unreferenced: LRU
        self.hit_tokens = 0  # prompt positions served from the cache, over the manager's life

    def blocks_for(self, length: int) -> int:
        return -(-length // self.block_size)

    @property
    def available(self) -> int:
        """Blocks a new sequence could take now (never used, or cached and evictable)."""
        return len(self._never_used) + len(self._idle)

    @property
    def cached(self) -> int:
        return len(self._block_of)

    def allocate(self, prompt: Sequence[int], length: int) -> Allocation | None:
        """Blocks for `length` positions whose first ones hold `prompt`; None when the pool cannot give them
        now, or when the prompt's next block is being computed by a prefill that has not run yet (sharing
        it after that prefill beats computing it twice: ask again then)."""
        hits: list[int] = []
        names: list[bytes] = []
        if self.prefix_cache:
            # at least the last prompt token is always computed: its logits pick the first new token
            names = block_digests(prompt, self.block_size, len(prompt) // self.block_size)
            for name in names[: (len(prompt) - 1) // self.block_size]:
                block = self._block_of.get(name)
                if block is None:
                    break
                if block in self._pending:
                    return None
                hits.append(block)
        need = self.blocks_for(length) - len(hits)
        if need > self.available - sum(1 for b in hits if b in self._idle):
            return None
        for block in hits:
            self._idle.pop(block, None)
            self._refs[block] += 1
        table = hits + [self._take() for _ in range(need)]
        named = len(hits)
        # name the prompt's other full blocks now, so a request arriving while they are computed waits for them
        for block, name in zip(table[named:], names[named:]):
            if name in self._block_of:
                break  # computed elsewhere already (the prompt's last block); keep this copy private
            self._name(block, name)
            self._pending.add(block)
            named += 1
        self.hit_tokens += len(hits) * self.block_size
        return Allocation(table, len(hits) * self.block_size, named)

    def computed(self, alloc: Allocation) -> None:
        """The prefill that writes `alloc`'s prompt blocks has run: others may read them now."""
        self._pending.difference_update(alloc.table[: alloc.named])

    def extend_names(self, alloc: Allocation, tokens: Sequence[int], written: int) -> None:
        """Name the full blocks among the first `written` positions (prompt and generated tokens), so a later
        request continuing this conversation reuses them."""
        if not self.prefix_cache:
            return
        full = min(written // self.block_size, len(alloc.table))
        if full <= alloc.named:
            return
        names = block_digests(tokens, self.block_size, full)
        for i in range(alloc.named, full):
            if names[i] in self._block_of:
                break
            self._name(alloc.table[i], names[i])
            alloc.named = i + 1

    def release(self, alloc: Allocation) -> None:
        """Drop a sequence's references: named blocks stay cached (LRU), the rest are free at once."""
        for block in reversed(alloc.table):  # tail first: a chain's end is evicted before its start
            self._refs[block] -= 1
            if self._refs[block]:
                continue
            if block in self._pending:  # its prefill never ran: the keys are not there
                self._pending.discard(block)
                self._unname(block)
            if block in self._name_of:
                self._idle[block] = None
            else:
                self._never_used.append(block)
        alloc.table = []

    def _take(self) -> int:
        if self._never_used:
            block = self._never_used.pop()
        else:
            block, _ = self._idle.popitem(last=False)
            self._unname(block)
        self._refs[block] = 1
        return block

    def _name(self, block: int, name: bytes) -> None:
        self._name_of[block] = name
        self._block_of[name] = block

    def _unname(self, block: int) -> None:
        name = self._name_of.pop(block, None)
        if name is not None and self._block_of.get(name) == block:
            del self._block_of[name]
