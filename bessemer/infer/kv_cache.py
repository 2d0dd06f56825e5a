"""A preallocated KV cache: one slot per position, so rows of a batch may sit at different positions."""

from __future__ import annotations

import math
import mmap

import torch

from bessemer.models.config import ModelConfig


class KVCache:
    """Static cache of shape [B, H_kv, max_len + 1, D] per layer; the extra last slot absorbs padding writes.

    Slot i holds position i. Each forward first calls `prepare(positions)` (records which slots fill), then
    every layer `update`s its keys and values into those slots and reads the cache back.

    bucket: 0 reads every slot each step (static shapes, for torch.compile); N > 0 reads only the slots below
    the highest position of the step rounded up to a multiple of N, so short sequences in a long cache do not
    pay attention over empty slots.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        max_len: int,
        device=None,
        dtype: torch.dtype = torch.float32,
        bucket: int = 0,
    ):
        shape = (batch_size, cfg.kv_heads, max_len + 1, cfg.dim_per_head)
        self.max_len = max_len
        self.bucket = bucket
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.key_positions = torch.full((batch_size, max_len + 1), -1, dtype=torch.long, device=device)
        self._slots: torch.Tensor | None = None
        self._read = max_len + 1
        self.next_top: int | None = None  # the caller's host copy of the next step's highest position

    @property
    def batch_size(self) -> int:
        return self.key_positions.shape[0]

    def prepare(self, positions: torch.Tensor) -> torch.Tensor:
        # reading the top position back would sync with the device: callers say it (next_top); a compiled
        # static-shape step skips the check (its callers check)
        checked = self.bucket or not torch.compiler.is_compiling()
        top = -1
        if checked:
            top = self.next_top if self.next_top is not None else int(positions.max())
            self.next_top = None
        if top >= self.max_len:
            raise ValueError(f"position {top} is beyond the cache length {self.max_len}")
        # padding (position -1) writes go to the spare last slot, which stays marked empty
        self._slots = torch.where(positions >= 0, positions, self.max_len)
        self.key_positions.scatter_(1, self._slots, positions.clamp(min=-1))
        self.key_positions[:, self.max_len] = -1
        if self.bucket:
            # every row's history lies below its current position, so slots past the step's top stay unread
            self._read = min(self.max_len, -(-(top + 1) // self.bucket) * self.bucket)
        return self.key_positions[:, : self._read]

    def update(self, layer_id: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(k.shape[0], device=k.device)[:, None]
        self.k[layer_id][rows, :, self._slots] = k.transpose(1, 2).to(self.k[layer_id].dtype)
        self.v[layer_id][rows, :, self._slots] = v.transpose(1, 2).to(self.v[layer_id].dtype)
        return self.k[layer_id][:, :, : self._read], self.v[layer_id][:, :, : self._read]

    def reset_rows(self, rows: torch.Tensor | list[int]) -> None:
        """Empty the given rows (a finished request frees its slot for the next one)."""
        self.key_positions[rows] = -1

    def rows(self, start: int, stop: int) -> KVCache:
        """A cache over rows [start, stop) that shares this cache's storage (prefill one request into its row)."""
        view = object.__new__(KVCache)
        view.max_len, view.bucket = self.max_len, self.bucket
        view.k = [t[start:stop] for t in self.k]
        view.v = [t[start:stop] for t in self.v]
        view.key_positions = self.key_positions[start:stop]
        view._slots, view._read, view.next_top = None, self.max_len + 1, None
        return view


class PagedKVCache:
    """Keys and values in a pool of fixed-size blocks per layer, [num_blocks * block_size + 1, H_kv, D]; each
    row of the batch reads its positions through a block table (bessemer.infer.blocks decides the tables).

    The model sees the same interface as KVCache: `prepare` writes this step's slots and `update` returns a
    contiguous [B, H_kv, S, D] view per layer, gathered from the row's blocks. Gathering copies the keys once
    per layer and step (on a GPU that is one extra read and write of the sequence's cache: a paged attention
    kernel would read the blocks in place); in exchange the results equal the static cache's exactly.
    The last slot of the pool absorbs padding writes.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        num_blocks: int,
        block_size: int,
        max_batch: int,
        max_len: int,
        device=None,
        dtype: torch.dtype = torch.float32,
    ):
        self.block_size, self.max_len = block_size, max_len
        self.spare = num_blocks * block_size
        shape = (self.spare + 1, cfg.kv_heads, cfg.dim_per_head)
        self.k = [zeros(shape, device, dtype) for _ in range(cfg.n_layers)]
        self.v = [zeros(shape, device, dtype) for _ in range(cfg.n_layers)]
        # host copy of every row's block table; unused entries point at block 0 and are masked by position
        self.tables = torch.zeros(max_batch, -(-max_len // block_size), dtype=torch.long)
        self._rows: torch.Tensor | None = None
        self._slots = self._read = None
        self.next_top: int | None = None

    def set_table(self, row: int, blocks: list[int]) -> None:
        self.tables[row] = 0
        self.tables[row, : len(blocks)] = torch.tensor(blocks, dtype=torch.long)

    def rows(self, rows: list[int]) -> PagedKVCache:
        """The cache as seen by a batch made of `rows` (in that order); shares the pool."""
        view = object.__new__(PagedKVCache)
        view.__dict__.update(self.__dict__)
        view._rows = self.tables[rows].to(self.k[0].device)
        view.next_top = None
        return view

    def prepare(self, positions: torch.Tensor) -> torch.Tensor:
        if self._rows is None:
            raise ValueError("PagedKVCache: call rows([...]) to pick the batch's rows first")
        top = self.next_top if self.next_top is not None else int(positions.max())
        self.next_top = None
        if top >= self.max_len:
            raise ValueError(f"position {top} is beyond the cache length {self.max_len}")
        bs = self.block_size
        pos = positions.clamp(min=0)
        slots = self._rows.gather(1, pos // bs) * bs + pos % bs
        self._slots = torch.where(positions >= 0, slots, self.spare)
        # read whole blocks up to the step's top: every row's history lies below its current position
        span = torch.arange(-(-(top + 1) // bs) * bs, device=positions.device)
        self._read = self._rows[:, span // bs] * bs + span % bs
        # a row sees its positions up to the highest it writes now (an idle row, position -1, sees none)
        seen = positions.max(1, keepdim=True).values
        return torch.where(span[None] <= seen, span[None], -1)

    def update(self, layer_id: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool_k, pool_v = self.k[layer_id], self.v[layer_id]
        flat = self._slots.reshape(-1)
        pool_k[flat] = k.transpose(1, 2).reshape(flat.numel(), *pool_k.shape[1:]).to(pool_k.dtype)
        pool_v[flat] = v.transpose(1, 2).reshape(flat.numel(), *pool_v.shape[1:]).to(pool_v.dtype)
        return pool_k[self._read].transpose(1, 2), pool_v[self._read].transpose(1, 2)


def zeros(shape: tuple[int, ...], device, dtype: torch.dtype) -> torch.Tensor:
    """torch.zeros; on the CPU from fresh anonymous memory, which the system hands out zeroed and only as it is
    touched. A server's pool of blocks for every row's full context is gigabytes for a real model: writing its
    zeros took seconds before the port opened, and held memory no request had used yet."""
    if torch.device(device or "cpu").type != "cpu" or math.prod(shape) == 0:
        return torch.zeros(shape, device=device, dtype=dtype)
    count = math.prod(shape)
    return torch.frombuffer(mmap.mmap(-1, count * dtype.itemsize), dtype=dtype, count=count).view(shape)
