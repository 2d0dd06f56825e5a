"""ParallelDims: the device layout from the parallel config, checked against the world size, and its mesh."""

from __future__ import annotations

from dataclasses import dataclass

from bessemer.config import ParallelSection
from bessemer.errors import ConfigError


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    tp: int
    pp: int
    cp: int
    world_size: int

    @classmethod
    def from_config(cls, cfg: ParallelSection, world_size: int) -> ParallelDims:
        fixed = cfg.dp_replicate * cfg.tp * cfg.pp * cfg.cp
        for name in ("dp_replicate", "tp", "pp", "cp"):
            if getattr(cfg, name) < 1:
                raise ConfigError(f"parallel.{name}={getattr(cfg, name)} must be >= 1")
        dp_shard = cfg.dp_shard
        if dp_shard == -1:
            if world_size % fixed:
                raise ConfigError(
                    f"parallel: dp_replicate x tp x pp x cp = {fixed} does not divide the world size {world_size}; "
                    f"pick sizes whose product divides {world_size}"
                )
            dp_shard = world_size // fixed
        if dp_shard < 1 or fixed * dp_shard != world_size:
            raise ConfigError(
                f"parallel: dp_replicate x dp_shard x tp x pp x cp = {fixed * max(dp_shard, 0)} but the world size is "
                f"{world_size}; make the product equal {world_size} (or set parallel.dp_shard=-1)"
            )
        return cls(cfg.dp_replicate, dp_shard, cfg.tp, cfg.pp, cfg.cp, world_size)

    @property
    def dp_size(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1
