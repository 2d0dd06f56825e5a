"""A preallocated KV cache: one slot per position, so rows of a batch may sit at different positions."""

from __future__ import annotations

import torch

from bessemer.models.config import ModelConfig


class KVCache:
    """Static cache of shape [B, H_kv, max_len + 1, D] per layer; the extra last slot absorbs padding writes.

    Slot i holds position i. Each forward first calls `prepare(positions)` (records which slots fill), then
    every layer `update`s its keys and values into those slots and reads the whole cache back.
    """

    def __init__(
        self, cfg: ModelConfig, batch_size: int, max_len: int, device=None, dtype: torch.dtype = torch.float32
    ):
        shape = (batch_size, cfg.kv_heads, max_len + 1, cfg.dim_per_head)
        self.max_len = max_len
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.key_positions = torch.full((batch_size, max_len + 1), -1, dtype=torch.long, device=device)
        self._slots: torch.Tensor | None = None

    def prepare(self, positions: torch.Tensor) -> torch.Tensor:
        if int(positions.max()) >= self.max_len:
            raise ValueError(f"position {int(positions.max())} is beyond the cache length {self.max_len}")
        # padding (position -1) writes go to the spare last slot, which stays marked empty
        self._slots = torch.where(positions >= 0, positions, self.max_len)
        self.key_positions.scatter_(1, self._slots, positions.clamp(min=-1))
        self.key_positions[:, self.max_len] = -1
        return self.key_positions

    def update(self, layer_id: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(k.shape[0], device=k.device)[:, None]
        self.k[layer_id][rows, :, self._slots] = k.transpose(1, 2).to(self.k[layer_id].dtype)
        self.v[layer_id][rows, :, self._slots] = v.transpose(1, 2).to(self.v[layer_id].dtype)
        return self.k[layer_id], self.v[layer_id]

    def reset_rows(self, rows: torch.Tensor | list[int]) -> None:
        """Empty the given rows (a finished request frees its slot for the next one)."""
        self.key_positions[rows] = -1
